"""Shared CLI plumbing: output helpers, the --json/--quiet options, rank-aware logging and option callbacks."""

from __future__ import annotations

import click

from edgecv.distributed import rank
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
