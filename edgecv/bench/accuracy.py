"""Top-1 / top-5, balanced accuracy and macro-F1 of an artifact *through its runtime* on the evaluation images.

The images are preprocessed once with the manifest's :class:`~edgecv.data.preprocess.Preprocess` (the same
``to_array`` every runtime sees in deployment) and fed in batches the artifact accepts: its fixed batch size,
or ``batch_size`` when the batch dimension is dynamic. A short last batch is zero-padded for fixed-batch
artifacts and the padding rows are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecv.data.arrays import to_arrays, topk_correct
from edgecv.data.datasets import load_eval_dataset
from edgecv.data.metrics import baseline_check, confusion_matrix, summary
from edgecv.data.preprocess import Preprocess
from edgecv.runtimes.base import predict_all
from edgecv.targets.stats import CONFIDENCE, pack, top1_interval


@dataclass
class EvalSet:
    x: np.ndarray  # N,C,H,W float32
    y: np.ndarray  # N int64
    data: str
    preprocess: dict
    class_names: list[str] | None = None


def load_eval_arrays(data: str, class_names: list[str], preprocess: dict, limit: int | None = None,
                     skip_bad: bool = False, allow_duplicates: bool = False, log=None) -> EvalSet:
    """Decode + preprocess the evaluation images once (shared by every artifact of a bench run); ``log``
    receives what the scan skipped (:meth:`edgecv.data.scan.ScanReport.lines`)."""
    ds = load_eval_dataset(data, class_names, skip_bad=skip_bad, allow_duplicates=allow_duplicates)
    if ds.scan is not None:
        ds.scan.log(log)
    pre = Preprocess.from_dict(preprocess)
    n = len(ds) if limit is None else min(limit, len(ds))
    if limit is not None and n < len(ds):  # a deterministic, class-balanced subset
        from edgecv.data.datasets import sample_calibration

        ds = sample_calibration(ds, n, seed=0)
    xs, ys = to_arrays(ds, pre)
    return EvalSet(xs, ys, str(data), pre.to_dict(), list(class_names))


def evaluate_runner(runner, ev: EvalSet, batch_size: int = 32, desc: str = "accuracy") -> dict:
    """Top-1 (with its Wilson interval and the count right), top-5, balanced accuracy and macro-F1, and the
    per-image top-1 predictions (packed: :func:`edgecv.targets.stats.pack`) that paired comparisons need."""
    logits = predict_all(runner, ev.x, batch_size, desc)
    n = len(ev.y)
    cm = confusion_matrix(ev.y, logits.argmax(1), logits.shape[1])
    s = summary(cm)
    check = baseline_check(cm, ev.class_names)  # no better than always answering the commonest class?
    right = topk_correct(logits, ev.y, 1)
    return {"top1": 100.0 * right / max(n, 1), "top1_ci": list(top1_interval(right, n)), "correct": int(right),
            "top5": 100.0 * topk_correct(logits, ev.y, 5) / max(n, 1),
            "balanced_acc": s["balanced_acc"], "macro_f1": s["macro_f1"],
            "learned": check["learned"] if check else None, "baseline": check,
            "n": int(n), "data": ev.data, "batch_size": int(runner.batch_size or batch_size),
            "predictions": pack(np.asarray(logits).argmax(1))}


def accuracy_set(ev: EvalSet) -> dict:
    """The bench JSON's record of the evaluation images: their labels, in the order every row's predictions are."""
    return {"data": ev.data, "n": int(len(ev.y)), "labels": pack(ev.y), "confidence": CONFIDENCE}
