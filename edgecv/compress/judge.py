"""Whether the teacher and each stage's student learned anything: the val confusion matrix against the trivial
baselines (:func:`edgecv.data.metrics.baseline_check`), per-class recall and the classes never recognised.

* the teacher is judged before any work: one no better than always answering the commonest class is refused
  (exit 2) unless ``allow_weak_teacher``;
* each stage's student is judged when it finishes: no better than the baseline ends the run (exit 1, the stage
  ``failed``, its checkpoint kept), unless the teacher was allowed weak or the stage trained no epoch (``--epochs-kd
  0``: the student as it started), where it is reported and the run goes on.

Both records (run.json's ``teacher`` and each stage's) carry ``val_balanced_acc``, ``per_class_recall``,
``zero_recall``, ``learned`` and ``baseline``, so teacher and student sit side by side.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from edgecv import distributed as D
from edgecv.contracts.rundir import STAGES
from edgecv.data.datasets import DataBundle
from edgecv.data.metrics import summary, weak_message, zero_recall_message
from edgecv.errors import CheckFailed, UserError
from edgecv.models.checkpoint import load_checkpoint
from edgecv.training.metrics import evaluate_classifier, learned_record, recall_by_class
from edgecv.utils import cache_dir, write_json_atomic

if TYPE_CHECKING:
    from edgecv.compress.config import CompressConfig
    from edgecv.compress.pipeline import Context
    from edgecv.training.teacher import Teacher


def val_confusion(model: nn.Module, bundle: DataBundle, batch_size: int, device: torch.device, desc: str) -> list:
    """The val confusion matrix of ``model`` (sharded under DDP, the same on every rank), model back on the CPU."""
    val = bundle.val.with_transform(bundle.preprocess.eval_transform())
    model.to(device)
    try:
        return evaluate_classifier(model, val, max(batch_size, 64), device, 0, desc=desc)["confusion"].tolist()
    finally:
        model.to("cpu")


def report(cm, class_names: list[str]) -> dict:
    """The run.json fields of a model judged on val: balanced accuracy, per-class recall, the classes at 0 %
    recall, ``learned`` and the ``baseline`` check."""
    rec = learned_record(cm, class_names)
    return {"val_balanced_acc": summary(np.asarray(cm))["balanced_acc"],
            "per_class_recall": recall_by_class(cm, class_names),
            "zero_recall": (rec["baseline"] or {}).get("zero_recall", []), **rec}


def teacher_report(cfg: CompressConfig, bundle: DataBundle, teacher: Teacher, device: torch.device,
                   previous: dict | None, log) -> dict:
    """The teacher's val record (``previous``, run.json's, when it judged this very teacher), checked against
    ``cfg.allow_weak_teacher``: a teacher that learned nothing is a UserError naming the figures."""
    if previous and previous.get("sha256") == teacher.sha256 and "learned" in previous:
        rec = {k: previous.get(k) for k in ("val_top1", "val_balanced_acc", "per_class_recall", "zero_recall",
                                            "learned", "baseline")}
    else:
        cm = _teacher_confusion(cfg, bundle, teacher, device, log)
        rec = {"val_top1": summary(np.asarray(cm))["top1"], **report(cm, bundle.class_names)}
    if rec["learned"] is False:
        msg = f"teacher {teacher.path}: {weak_message(rec['baseline'])}"
        if not cfg.allow_weak_teacher:
            longer = "raise --teacher-epochs" if cfg.teacher is None else "train it longer (edgecv train --epochs)"
            raise UserError(f"{msg}; distilling from it teaches the student nothing: {longer} or pass "
                            "--allow-weak-teacher")
        log(f"warning: {msg} (--allow-weak-teacher: going on)")
    return rec


def _teacher_confusion(cfg: CompressConfig, bundle: DataBundle, teacher: Teacher, device: torch.device,
                       log) -> list:
    """The teacher's val confusion matrix, stored under ``$EDGECV_CACHE/judged/`` by (teacher sha256, val files,
    preprocessing): a later run on the same teacher and data (whose soft labels are cached too) skips the val
    pass (benchmarks/RESULTS.md, issue 28)."""
    from edgecv.compress.softlabels import data_fingerprint, key_digest

    key = {"v": 1, "teacher": teacher.sha256, "val": data_fingerprint(bundle.val),
           "preprocess": bundle.preprocess.to_dict()}
    path = cache_dir() / "judged" / f"{key_digest(key)}.json"
    cm = None
    if D.is_main() and path.is_file():
        try:
            stored = json.loads(path.read_text())
            cm = stored["confusion"] if stored.get("key") == key else None
        except (OSError, ValueError, KeyError):
            cm = None  # unreadable: evaluate again
    cm = D.broadcast_object(cm)  # every rank takes the same path (the val pass is a collective)
    if cm is not None:
        log(f"teacher val: reusing its stored confusion matrix ({path.name})")
        return cm
    cm = val_confusion(teacher.model, bundle, cfg.batch_size, device, "teacher val")
    if D.is_main():
        write_json_atomic(path, {"key": key, "confusion": cm})
    return cm


def judge_stage(ctx: Context, st: str, info: dict) -> None:
    """Add the stage student's :func:`report` to its run.json record ``info``, from the fit's best-epoch confusion
    matrix (``info["val_confusion"]``) or, without one, the stage checkpoint evaluated again. A student no better
    than the baseline raises :class:`CheckFailed` (exit 1) unless the teacher was allowed weak or the stage trained
    no epoch (a warning then)."""
    cm = info.pop("val_confusion", None)
    if cm is None:
        model = load_checkpoint(ctx.out / info["checkpoint"]).build()
        cm = val_confusion(model, ctx.bundle, ctx.cfg.batch_size, ctx.device, f"{st} val")
    info.update(report(cm, ctx.bundle.class_names))
    if info["learned"] is not False:
        return
    msg = f"{st}: student {weak_message(info['baseline'])}"
    if ctx.run.data.get("teacher", {}).get("learned") is False:
        ctx.log(f"warning: {msg} (its teacher is no better: --allow-weak-teacher)")
        return
    if not info.get("epochs"):
        ctx.log(f"warning: {msg} (the stage trained no epoch)")
        return
    raise CheckFailed(f"{msg}; the run stops (checkpoint {ctx.out / info['checkpoint']} kept for inspection)")


def balanced_text(info: dict) -> str:
    """``, balanced B%`` of a judged record (empty when it has none)."""
    return f", balanced {info['val_balanced_acc']:.2f}%" if info.get("val_balanced_acc") is not None else ""


def zero_recall_text(info: dict) -> str:
    """``; val recall 0 % for ...`` naming the classes a judged model that learned never recognises (else empty)."""
    z = zero_recall_message(info.get("baseline") or {}) if info.get("learned") else None
    return f"; {z}" if z else ""


def teacher_gap(run: dict) -> dict | None:
    """The teacher-student loss of run.json's content: each finished stage's val top-1 minus the teacher's (points),
    and the last one's, which is what the run delivers; None before any stage or without the teacher's top-1."""
    t = run.get("teacher", {}).get("val_top1")
    done = [(s, run["stages"][s]["val_top1"]) for s in STAGES
            if run["stages"].get(s, {}).get("status") == "done" and run["stages"][s].get("val_top1") is not None]
    if t is None or not done:
        return None
    return {"stage": done[-1][0], "teacher_top1": t, "student_top1": done[-1][1],
            "top1_pt": round(done[-1][1] - t, 2), "by_stage": {s: round(v - t, 2) for s, v in done}}


def gap_line(gap: dict) -> str:
    """``student (quantize) val top-1 64.70% vs teacher 73.70%: -9.00 pt (distill -8.85, ...)``."""
    stages = ", ".join(f"{s} {v:+.2f}" for s, v in gap["by_stage"].items())
    return (f"student ({gap['stage']}) val top-1 {gap['student_top1']:.2f}% vs teacher {gap['teacher_top1']:.2f}%: "
            f"{gap['top1_pt']:+.2f} pt ({stages})")
