"""Confusion-matrix metrics: the one home of the formulas (numpy only, so a runtime-only bench never needs torch).

Rows of a confusion matrix are true classes, columns predicted ones. Definitions (as scikit-learn's):

* top-1: ``trace / total``;
* balanced accuracy: the mean per-class recall over the classes that occur in the labels;
* macro-F1: the mean per-class F1 over the classes that occur in the labels or the predictions (a class
  predicted but never true scores F1 = 0).

All three are returned in percent.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``num_classes x num_classes`` int64 counts of (true, predicted) pairs."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, dtype=np.int64), np.asarray(pred, dtype=np.int64)), 1)
    return cm


def per_class(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class ``(precision, recall, f1)`` as fractions (0 where undefined)."""
    cm = np.asarray(cm, dtype=np.float64)
    c = cm.shape[0]
    tp = np.diag(cm)
    prec = np.divide(tp, cm.sum(0), out=np.zeros(c), where=cm.sum(0) > 0)
    rec = np.divide(tp, cm.sum(1), out=np.zeros(c), where=cm.sum(1) > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros(c), where=(prec + rec) > 0)
    return prec, rec, f1


def summary(cm: np.ndarray) -> dict:
    """``{"top1", "balanced_acc", "macro_f1"}`` (percent) of a confusion matrix."""
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    _, rec, f1 = per_class(cm)
    true_present = cm.sum(1) > 0
    any_present = true_present | (cm.sum(0) > 0)
    return {
        "top1": 100.0 * float(np.trace(cm) / total) if total > 0 else 0.0,
        "balanced_acc": 100.0 * float(rec[true_present].mean()) if true_present.any() else 0.0,
        "macro_f1": 100.0 * float(f1[any_present].mean()) if any_present.any() else 0.0,
    }


def logits_summary(logits: np.ndarray, labels: np.ndarray) -> dict:
    """:func:`summary` of the arg-max predictions of ``logits`` (``N x C``)."""
    return summary(confusion_matrix(labels, np.asarray(logits).argmax(1), np.asarray(logits).shape[1]))
