"""What a baseline and a candidate must share to be gated against each other: the same task.

A gate between models of different tasks answers nothing (a 10-class candidate "passed" against a 3-class
baseline): class names and preprocessing (when both sides have a manifest) and the input shape of every matched
pair must be equal, or the gate refuses with one line saying what differs (exit 2).
"""

from __future__ import annotations

from edgecv.bench.artifacts import Resolved, Source, input_shape
from edgecv.errors import UserError


def _names(names: list[str], most: int = 5) -> str:
    shown = ", ".join(names[:most]) + (", ..." if len(names) > most else "")
    return f"{len(names)} ({shown})"


def _preprocess_diff(a: dict, b: dict) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in keys)


def differences(base: Source, cand: Source, pairs: list[tuple[Resolved, Resolved]]) -> list[str]:
    """What differs between baseline and candidate (empty: the same task)."""
    out: list[str] = []
    bm, cm = base.manifest, cand.manifest
    if bm is not None and cm is not None:
        if list(bm.class_names) != list(cm.class_names):
            out.append(f"class names {_names(list(bm.class_names))} vs {_names(list(cm.class_names))}")
        if dict(bm.preprocess) != dict(cm.preprocess):
            out.append(f"preprocessing {_preprocess_diff(dict(bm.preprocess), dict(cm.preprocess))}")
    for a, b in pairs:
        sa, sb = input_shape(a, 1), input_shape(b, 1)
        if sa != sb:
            out.append(f"{b.name} input shape {list(sa)} vs {list(sb)}")
    return out


def check_same_task(base: Source, cand: Source, pairs: list[tuple[Resolved, Resolved]]) -> None:
    """Raise :class:`UserError` (exit 2) naming every difference, baseline value first."""
    diff = differences(base, cand, pairs)
    if diff:
        raise UserError("baseline and candidate are not the same task (baseline vs candidate): " + "; ".join(diff))
