"""Shared CLI plumbing: output helpers, the --json/--quiet options, the options generated from a config
dataclass's fields (:func:`config_options`), rank-aware logging and option callbacks."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import fields

import click

from edgecv.distributed import rank
from edgecv.options import Option, default_of, spec_of
from edgecv.utils import dumps_json, is_quiet, set_quiet


def echo(msg: str = "") -> None:
    click.echo(msg, err=True)


def emit_json(obj) -> None:
    click.echo(dumps_json(obj))


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")(f)


def quiet_option(f):
    def cb(ctx, param, value):
        set_quiet(value)
        return value

    return click.option("--quiet", "-q", is_flag=True, expose_value=False, callback=cb, is_eager=True,
                        help="No progress bars or log lines.")(f)


def log(msg: str) -> None:
    if not is_quiet() and rank() == 0:  # under torchrun only rank 0 logs
        echo(msg)


# ---------------------------------------------------------------------------------------------- generated options
class LazyChoice(click.Choice):
    """A click Choice whose list (its owner's, e.g. training.losses.LOSSES) is read on first use, so that
    building the CLI imports no torch. It describes itself as the Choice it is."""

    def __init__(self, read: Callable[[], tuple[str, ...]]):
        self._read, self.case_sensitive = read, True

    @property
    def choices(self) -> tuple[str, ...]:
        return self._read()

    def to_info_dict(self) -> dict:
        return {**super().to_info_dict(), "param_type": "Choice"}


def _click_type(o: Option):
    if o.choices is not None and not o.free_text:
        return LazyChoice(o.choices)
    if o.path:
        return click.Path(exists=o.exists, dir_okay=o.path != "file", file_okay=o.path != "dir")
    if o.kind in (int, float) and (o.lo is not None or o.hi is not None):
        rng = click.IntRange if o.kind is int else click.FloatRange
        return rng(o.lo, o.hi, min_open=o.lo_open)
    return {int: click.INT, float: click.FLOAT}.get(o.kind)


def _not_given(ctx, param, value):
    return value or None  # a switch left off is "not given": a YAML file or the resumed run keeps its value


def _turned_off(ctx, param, value):
    return not value  # the one flag of a field that is True unless given (export --no-validate)


def _option(name: str, o: Option, callback=None, dest: str | None = None, default=None):
    """The click option of field ``name``; ``default`` shown by --help when not None, else "not given"."""
    dest, help_, shown = dest or name, o.help or None, True if default is not None else None
    if o.switch:
        return click.option(o.flag(name), dest, is_flag=True, callback=_not_given, help=help_)
    decl = o.decl or o.flag(name)
    if o.kind is bool and "/" not in decl:  # one flag: it turns a False field on, or a True one off
        return click.option(decl, dest, is_flag=True, callback=_turned_off if default else None, help=help_)
    if "/" in decl:  # an on/off pair
        return click.option(decl, dest, default=default, show_default=shown, help=help_)
    # a callback parses the text itself (e.g. "500ms", "auto")
    return click.option(decl, dest, default=default, show_default=shown, type=None if callback else _click_type(o),
                        callback=callback, metavar=o.metavar, help=help_)


def _default_text(value):
    """A field's default as its flag spells it: a list as comma-separated text (``--batch 1,8``)."""
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else value


def _field_names(f, renamed: dict[str, str]):
    """``f`` called with each option renamed by ``renamed`` (click name -> field name) to its field's name."""

    @functools.wraps(f)  # keeps the command's name, help and the options declared below (__click_params__)
    def call(*args, **kwargs):
        return f(*args, **{renamed.get(k, k): v for k, v in kwargs.items()})

    return call


def field_option(cls: type, name: str):
    """Decorator: the click option of the one field ``name`` of ``cls``, with its default shown (a command that
    shares a flag with another command's config, e.g. serve's --artifact from PredictConfig)."""
    fld = next(f for f in fields(cls) if f.name == name)
    return _option(name, spec_of(fld), default=_default_text(default_of(fld)))


def config_options(cls: type, callbacks: dict | None = None, before: dict | None = None,
                   dests: dict | None = None, defaults: dict | None = None):
    """Decorator: a click option per field of the config dataclass ``cls`` (edgecv.options), in field order.
    ``defaults`` None: each defaults to None, "not given" (the config's default, a YAML file or a resumed run
    decide; the help says the default); a dict: each defaults to the field's default (or the dict's: the
    command's spelling of it, e.g. "2s"), shown by --help. ``callbacks``: field -> click callback parsing its
    text; ``before``: field -> hand-written CLI-only options placed before it; ``dests``: field -> the option's
    click name where it differs (--help and error messages show it); the command still receives the value under
    the field's name, so it can build ``cls(**options)``. Fields marked ``api_only`` get none."""

    def apply(f):
        decorators, renamed = [], {}
        for fld in fields(cls):
            o = spec_of(fld)
            if o is None or o.api_only:
                continue
            default = None if defaults is None else defaults.get(fld.name, _default_text(default_of(fld)))
            dest = (dests or {}).get(fld.name)
            if dest:
                renamed[dest] = fld.name
            decorators += (before or {}).get(fld.name, [])
            decorators.append(_option(fld.name, o, (callbacks or {}).get(fld.name), dest, default))
        if renamed:
            f = _field_names(f, renamed)
        for d in reversed(decorators):  # click lists options in the reverse order of decoration
            f = d(f)
        return f

    return apply


# ---------------------------------------------------------------------------------------------- option callbacks
def int_list(ctx, param, value):
    if value is None:
        return None
    try:
        out = [int(v) for v in str(value).split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not out or any(v < 1 for v in out):
        raise click.BadParameter(f"expected integers >= 1, got {value!r}")
    return out


def duration(ctx, param, value):
    from edgecv.runtimes.latency import parse_duration

    try:
        return parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def duration_text(seconds: float) -> str:
    """A duration in seconds as its flag spells it, e.g. a default for --help: 2.0 -> "2s", 0.08 -> "80ms"."""
    return f"{seconds:g}s" if seconds >= 1 else f"{seconds * 1000:g}ms"


def opt_duration(ctx, param, value):
    return None if value is None else duration(ctx, param, value)


def target_macs(ctx, param, value):
    if value is None or str(value).strip().lower() == "auto":
        return None if value is None else "auto"
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"expected a fraction in (0, 1] or 'auto', got {value!r}") from None


def warn_unlearned(report: dict, split: str = "val") -> None:
    """The warning lines of a report's ``baseline`` check (:func:`edgecv.data.metrics.baseline_check`): a model no
    better than the trivial baselines, else the classes it never recognises. Printed under --quiet too."""
    from edgecv.data.metrics import weak_message, zero_recall_message

    check = report.get("baseline")
    if not check:
        return
    line = weak_message(check, split) if not check["learned"] else zero_recall_message(check, split)
    if line:
        echo(f"warning: {line}")
