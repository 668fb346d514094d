"""Confusion-matrix metrics: the one home of the formulas (numpy, and scipy for one test: a runtime-only bench never
needs torch).

Rows of a confusion matrix are true classes, columns predicted ones. Definitions (as scikit-learn's):

* top-1: ``trace / total``;
* balanced accuracy: the mean per-class recall over the classes that occur in the labels;
* macro-F1: the mean per-class F1 over the classes that occur in the labels or the predictions (a class
  predicted but never true scores F1 = 0).

All three are returned in percent. :func:`baseline_check` judges a classifier against the trivial baselines of its
evaluation set (the commonest-class rate, uniform chance).
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


# ---------------------------------------------------------------------------------------------- trivial baselines
ALPHA = 0.05  # one-sided significance level of "better than the baseline"
PERMUTATIONS = 1000  # Monte-Carlo permutations of the balanced-accuracy test (seeded: the same answer every run)
LEARNED_NOTHING = "the model has not learned to tell the classes apart"


def _binomial_p(correct: int, n: int, rate: float) -> float:
    """One-sided exact binomial p-value: P(X >= correct) for X ~ Binomial(n, rate) (scipy.special, not
    scipy.stats: 0.5 s to import instead of 2.5 s)."""
    from scipy.special import bdtrc  # P(X > k)

    return float(bdtrc(correct - 1, n, rate))


def _permutation_p(cm: np.ndarray, observed: float, rounds: int = PERMUTATIONS) -> float:
    """P(balanced accuracy >= ``observed``) when the predictions are paired with the true classes at random (the
    predictions' and the classes' counts kept): the exact conditional test of "the answer does not depend on the
    class", estimated from ``rounds`` seeded permutations."""
    c = cm.shape[0]
    y = np.repeat(np.arange(c), cm.sum(1))
    pred = np.concatenate([np.repeat(np.arange(c), cm[i]) for i in range(c)])  # row-major: aligned with y
    w = np.divide(1.0, cm.sum(1), out=np.zeros(c), where=cm.sum(1) > 0) / max(int((cm.sum(1) > 0).sum()), 1)
    rng = np.random.default_rng(0)
    chunk = max(1, min(rounds, 2_000_000 // max(len(y), 1)))
    hits = 0
    for done in range(0, rounds, chunk):
        ys = rng.permuted(np.broadcast_to(y, (min(chunk, rounds - done), len(y))), axis=1)
        hits += int((((ys == pred) * w[ys]).sum(1) >= observed - 1e-12).sum())
    return (hits + 1) / (rounds + 1)


def baseline_check(cm: np.ndarray, class_names: list[str] | None = None, alpha: float = ALPHA) -> dict | None:
    """A classifier against the trivial baselines of its evaluation set (None: fewer than two classes occur).

    * the commonest-class rate: always answering the commonest class scores it in top-1; one-sided exact
      binomial test of top-1 against it;
    * uniform chance (``1 / classes``): what balanced accuracy scores when the answer does not depend on the
      class; one-sided permutation test (:func:`_permutation_p`), run only when top-1 alone does not decide.

    ``learned`` is True when either test rejects "no better" at ``alpha``: a model on a skewed set can stay
    below the commonest-class rate in top-1 and still tell the classes apart. ``zero_recall``: the classes that
    occur and are never recognised; ``answers``: the class the model answers most and its share of the answers.
    Rates in percent, as :func:`summary`."""
    cm = np.asarray(cm, dtype=np.int64)
    support = cm.sum(1)
    present = support > 0
    n, k = int(cm.sum()), int(present.sum())
    if k < 2:
        return None
    names = class_names or [str(i) for i in range(cm.shape[0])]
    s = summary(cm)
    top = int(np.argmax(support))
    correct = int(np.trace(cm))
    p_top1 = _binomial_p(correct, n, support[top] / n)
    p_bal = None if p_top1 < alpha else _permutation_p(cm, s["balanced_acc"] / 100.0)
    _, rec, _ = per_class(cm)
    said = cm.sum(0)
    return {
        "learned": bool(p_top1 < alpha or (p_bal is not None and p_bal < alpha)),
        "n": n, "correct": correct, "top1": s["top1"], "balanced_acc": s["balanced_acc"], "alpha": alpha,
        "commonest": {"class": names[top], "count": int(support[top]), "rate": 100.0 * float(support[top]) / n,
                      "p": p_top1},
        "answers": {"class": names[int(np.argmax(said))], "share": 100.0 * float(said.max()) / n},
        "chance": {"classes": k, "rate": 100.0 / k, "p": p_bal},
        "zero_recall": [names[i] for i in range(cm.shape[0]) if present[i] and rec[i] == 0],
    }


def weak_message(check: dict, split: str = "val") -> str:
    """The warning line of a check whose ``learned`` is False."""
    c, a = check["commonest"], check["answers"]
    if a["share"] >= 100.0:  # a constant answer: its top-1 is that class's share
        head = (f"{split} top-1 {check['top1']:.2f} % equals always answering '{a['class']}' "
                f"({check['correct']}/{check['n']})")
    else:
        head = (f"{split} top-1 {check['top1']:.2f} % (balanced {check['balanced_acc']:.2f} %) is no better than "
                f"always answering '{c['class']}' ({c['rate']:.2f} %, {c['count']}/{check['n']}; one-sided p "
                f"{c['p']:.2g}) or chance ({check['chance']['rate']:.2f} % balanced)")
    return f"{head}: {LEARNED_NOTHING}"


def zero_recall_message(check: dict, split: str = "val") -> str | None:
    """One line naming the classes never recognised on ``split`` (None when there are none)."""
    z = check.get("zero_recall") if check else None
    if not z:
        return None
    shown = ", ".join(f"'{c}'" for c in z[:10]) + (f" and {len(z) - 10} more" if len(z) > 10 else "")
    return f"{split} recall 0 % for {len(z)} class{'es' if len(z) > 1 else ''}: {shown} (never recognised)"
