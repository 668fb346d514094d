"""The options of a config dataclass, declared once on its fields.

Each field of a config dataclass (:class:`edgecv.compress.config.CompressConfig`) carries an :class:`Option` in
its ``dataclasses.field`` metadata (:func:`option`): the value's kind and range, its choices (the owner's own list,
read when first needed so that importing the CLI stays cheap), the help text its command shows and how the command
spells it. Two readers:

* :func:`check_fields` -- the one type / range / choice check of a config's values, run by the config's
  ``validate`` for the Python API and the CLI alike (a bad value is one :class:`~edgecv.errors.UserError` naming the
  flag, exit 2 from the CLI);
* ``cli/_common.config_options`` -- writes each field's click option from it.

The field's default is the dataclass default; the command's own default text is part of the help.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields

from edgecv.errors import UserError

KEY = "edgecv.option"


@dataclass(frozen=True)
class Option:
    kind: type | tuple = str  # int | float | bool | str, or a tuple of accepted types
    lo: float | None = None  # range: [lo, hi], (lo, hi] with lo_open; None: no bound
    hi: float | None = None
    lo_open: bool = False
    optional: bool = False  # None is a valid value ("not given": the run decides)
    auto: bool = False  # the string "auto" is valid too (a number or "auto")
    choices: Callable[[], tuple[str, ...]] | None = None  # the valid values (compared as text), from their owner
    free_text: bool = False  # the flag takes text (its help lists the choices); the config's validate refuses others
    help: str = ""
    # how the command line spells it
    decl: str = ""  # the flag(s) when not --field-name, e.g. "--int8-stem/--float-stem" (on/off pair)
    switch: bool = False  # a flag that is only ever turned on: off means "not given"
    path: str = ""  # "file" / "dir": the command takes a path of that kind
    exists: bool = False  # ... that must exist (the command refuses a missing one while parsing)
    metavar: str | None = None
    api_only: str = ""  # not a command-line option; the reason

    def flag(self, name: str) -> str:
        return (self.decl or "--" + name.replace("_", "-")).split("/")[0]


def option(default=MISSING, *, factory=MISSING, **spec) -> Field:
    """A dataclass field with ``default`` (or a ``factory`` making it, for a list) and its :class:`Option`
    (keywords: the Option's fields)."""
    return field(default=default, default_factory=factory, metadata={KEY: Option(**spec)})


def default_of(f: Field):
    """The field's default value (a fresh one from its factory)."""
    return f.default_factory() if f.default is MISSING and f.default_factory is not MISSING else f.default


def spec_of(f: Field) -> Option | None:
    return f.metadata.get(KEY)


def owned(module: str, name: str, auto: bool = False, text: bool = False) -> Callable[[], tuple[str, ...]]:
    """The list ``name`` of ``module`` (its owner), imported when first read; ``auto``: "auto" first;
    ``text``: its values as strings (numbers on the command line)."""

    def read() -> tuple[str, ...]:
        values = tuple(getattr(importlib.import_module(module), name))
        return (("auto",) if auto else ()) + (tuple(map(str, values)) if text else values)

    return read


def _kind_ok(v, kind) -> tuple[bool, str]:
    if kind is float:
        return isinstance(v, int | float) and not isinstance(v, bool) and v == v, "a number"  # no NaN
    if kind is int:
        return isinstance(v, int) and not isinstance(v, bool), "an integer"
    if kind is bool:
        return isinstance(v, bool), "true or false"
    if isinstance(kind, tuple):
        return isinstance(v, kind), "a comma-separated string or a list" if str in kind else "a list"
    return isinstance(v, kind), "a string"


def _range_text(o: Option) -> str:
    if o.lo is not None and o.hi is not None:
        return f" in {'(' if o.lo_open else '['}{o.lo:g}, {o.hi:g}]"
    if o.lo is not None:
        return f" {'>' if o.lo_open else '>='} {o.lo:g}"
    return ""


def check_value(name: str, v, o: Option):
    """One value against its option, as the flag checks it; returns the value (a number written as text, e.g.
    YAML's ``1e-3``, converted as the flag would). UserError naming the flag otherwise."""
    if (v is None and o.optional) or (o.auto and v == "auto"):
        return v
    flag = o.flag(name)
    if o.choices is not None:
        allowed = o.choices()
        if str(v) not in allowed or isinstance(v, bool):
            raise UserError(f"{flag} must be one of {', '.join(allowed)}, got {v!r}")
        return v
    if o.kind in (int, float) and isinstance(v, str):
        try:
            v = o.kind(v.strip())
        except ValueError:
            pass
    ok, kind = _kind_ok(v, o.kind)
    if ok and o.lo is not None:
        ok = v > o.lo if o.lo_open else v >= o.lo
    if ok and o.hi is not None:
        ok = v <= o.hi
    if not ok:
        raise UserError(f"{flag} must be {kind}{_range_text(o)}, got {v!r}")
    return v


def check_fields(config) -> None:
    """Every field of the dataclass instance ``config`` with an :class:`Option` checked (and a number given as text
    converted) in field order; the first bad one raises."""
    for f in fields(config):
        o = spec_of(f)
        if o is not None:
            setattr(config, f.name, check_value(f.name, getattr(config, f.name), o))
