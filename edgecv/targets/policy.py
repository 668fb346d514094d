"""The deploy policy: which precision and which artifact to deploy, from measured figures. One home for the rule.

The rule (:func:`clearly_faster`): one figure beats another only when it is below ``NOISE_MARGIN`` x the other
(within 5 % it is noise on these hosts). Applied

* to the precision on one runtime (:func:`int8_pays`, :func:`deploy_precision`): INT8 is deployed only where its
  p50 is clearly below the FP32 p50 of the same runtime, same run; else FP32. Used by ``--student auto``'s
  per-candidate figures and by ``edgecv bench``, where a twin that does not qualify for the recommendation
  (misses the budget, loses accuracy, failed validation) is not deployed while the other does
  (:func:`precision_comparison`);
* to the recommendation per target (:func:`recommend`): among the artifacts that pass the budget and keep
  accuracy, the fastest; the non-deployed precision twin of a runtime is never recommended while its deployed
  twin qualifies; artifacts within noise of the fastest count as equally fast and the more accurate, then the
  smaller one is preferred (the reason says so).

"Keeps accuracy" (:func:`judge_accuracy`) is non-inferiority against the most accurate artifact of the target,
decided on the same images: where both rows carry per-image predictions, the paired comparison of
:mod:`edgecv.targets.stats` (exact McNemar on the discordant images, the interval of the top-1 difference) refuses
an artifact only where the test shows it worse and the measured drop reaches the tolerance; on 360 images a
1-pt gap is "not distinguishable". Rows without per-image predictions (bench files of schema ``edgecv.bench/1``,
export-validation figures) fall back to the unpaired rule: top-1 within the tolerance of the best.

:func:`deploy_report` applies it once to a bench's rows (typed :class:`~edgecv.contracts.bench.BenchRow` records,
the bench contract): every line of the report (precision comparison, INT8
notes, recommendation, accuracy calls) comes from the same decision, and :func:`reason` writes each
recommendation's reason from the :class:`Choice` that was made. :func:`exit_code` is the bench's exit code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgecv.contracts.bench import BenchRow
from edgecv.targets import (
    ACCURACY_TOLERANCE,  # declared with the profiles: bench's config reads it numpy-free
)
from edgecv.targets.stats import CONFIDENCE, Paired, compare, unpack

NOISE_MARGIN = 0.95  # a figure must be >= 5 % lower than another to count as lower
INT8_NOT_FASTER = NOISE_MARGIN  # INT8 must be >= 5 % faster than FP32 (p50) to count as faster


def clearly_faster(a: float, b: float) -> bool:
    """Latency ``a`` beats ``b`` by more than the noise margin (same run)."""
    return a < NOISE_MARGIN * b


def int8_pays(int8_p50: float, fp32_p50: float) -> bool:
    """INT8 beats FP32 by more than the noise margin (same runtime, same run)."""
    return clearly_faster(int8_p50, fp32_p50)


def deploy_precision(fp32_p50: float, int8_p50: float) -> str:
    """``"int8"`` where it pays, else ``"fp32"``."""
    return "int8" if int8_pays(int8_p50, fp32_p50) else "fp32"


# ------------------------------------------------------------------------------------------------ bench rows
def measured(rows: Sequence[BenchRow]) -> list[BenchRow]:
    return [r for r in rows if r.measured]


def measured_and_validated(rows: Sequence[BenchRow]) -> list[BenchRow]:
    """Rows timed here whose export validation passed (--include-failed rows are timed but never chosen)."""
    return [r for r in measured(rows) if not r.failed_validation]


def twins(rows: Sequence[BenchRow]) -> list[tuple[BenchRow, BenchRow]]:
    """(int8 row, fp32 row) of the same format on the same runtime, both measured (unambiguous pairs only)."""
    ok = measured(rows)
    out = []
    for r8 in [r for r in ok if r.precision == "int8"]:
        same = [r for r in ok if r.precision == "fp32" and r.runtime == r8.runtime and r.format == r8.format]
        if len(same) == 1:
            out.append((r8, same[0]))
    return out


def _groups(rows: Sequence[BenchRow], default: str = "host") -> dict[str, list[BenchRow]]:
    """The validated, measured rows per target profile they are judged against."""
    groups: dict[str, list[BenchRow]] = {}
    for r in measured_and_validated(rows):
        groups.setdefault(r.profile or default, []).append(r)
    return groups


# ------------------------------------------------------------------------------------------------ accuracy
@dataclass(frozen=True)
class AccuracyCall:
    """One artifact's top-1 judged against the most accurate artifact of its target (:func:`judge_accuracy`)."""

    reference: str | None  # the most accurate artifact (None: accuracy not measured)
    keeps: bool  # not shown worse than the reference by at least the tolerance
    clause: str  # what reason lines say, after "<artifact> is"
    paired: Paired | None = None  # the paired comparison (None: the reference itself, or no per-image predictions)
    is_reference: bool = False

    def to_dict(self) -> dict:
        verdict = "reference" if self.is_reference else None
        return {"reference": self.reference, "keeps": self.keeps, "text": self.clause,
                "paired": self.paired is not None,
                **(self.paired.to_dict() if self.paired else {"verdict": verdict})}


def correct_per_image(r: BenchRow, labels) -> np.ndarray | None:
    """Which evaluation images ``r`` gets right, from its stored predictions (None: none stored)."""
    acc = r.accuracy
    if labels is None or not acc or not acc.get("predictions"):
        return None
    pred = unpack(acc["predictions"])
    return pred == labels if pred.shape == np.shape(labels) else None


def _top1_text(r: BenchRow) -> str:
    acc = r.accuracy
    ci = acc.get("top1_ci")
    return (f"top-1 {acc['top1']:.2f}%" + (f" ({CONFIDENCE * 100:g} % CI {ci[0]:.2f}-{ci[1]:.2f}, "
                                            f"{acc['n']} images)" if ci else ""))


def call_against(ref: BenchRow, r: BenchRow, tolerance: float, labels=None) -> AccuracyCall:
    """Row ``r``'s top-1 against row ``ref``'s (rows with ``name`` and ``accuracy``): paired (exact McNemar and
    the interval of the difference, :func:`edgecv.targets.stats.compare`) where both carry per-image predictions
    of ``labels``, else unpaired (top-1 within ``tolerance`` points). Used by bench (against the most accurate
    artifact) and the gate (the candidate against the baseline)."""
    a, b = correct_per_image(ref, labels), correct_per_image(r, labels)
    if a is not None and b is not None:
        p = compare(a, b, tolerance)
        return AccuracyCall(ref.name, p.keeps, p.text(ref.name), p)
    keeps = r.top1 >= ref.top1 - tolerance
    how = f"within {tolerance:g} pt of" if keeps else f"more than {tolerance:g} pt below"
    return AccuracyCall(ref.name, keeps, f"{how} {ref.name}'s top-1 ({r.top1:.2f}% vs {ref.top1:.2f}%, "
                        "unpaired: no per-image predictions)")


def judge_accuracy(rs: Sequence[BenchRow], tolerance: float, labels=None) -> dict[str, AccuracyCall]:
    """Every row of one target against the most accurate one (:func:`call_against`). Empty when no accuracy
    was measured; a row without accuracy among rows with it does not keep accuracy, nor does one no better than
    always answering the commonest class (``learned`` false: data.metrics.baseline_check), which never sets the
    bar either (a constant answer on a skewed set can have the best top-1)."""
    with_acc = [r for r in rs if r.accuracy]
    if not with_acc:
        return {}
    learned = [r for r in with_acc if r.accuracy.get("learned") is not False]
    best = max(learned or with_acc, key=lambda r: r.top1)
    out = {}
    for r in rs:
        if not r.accuracy:
            out[r.name] = AccuracyCall(best.name, False, "without an accuracy measurement")
        elif r.accuracy.get("learned") is False:
            out[r.name] = AccuracyCall(best.name, False, "no better than always answering the commonest class")
        elif r is best:
            out[r.name] = AccuracyCall(best.name, True, f"the most accurate: {_top1_text(r)}", is_reference=True)
        else:
            out[r.name] = call_against(best, r, tolerance, labels)
    return out


def qualifying(rs: Sequence[BenchRow], tolerance: float, labels=None) -> tuple[list[BenchRow], dict[str, AccuracyCall]]:
    """The artifacts of one target that keep accuracy (:func:`judge_accuracy`: not shown worse than the most
    accurate by at least ``tolerance`` points) and pass the budget (or have none); also every row's call."""
    calls = judge_accuracy(rs, tolerance, labels)
    keep = [r for r in rs if not calls or calls[r.name].keeps]
    return [r for r in keep if not r.verdict or r.verdict["verdict"] in ("pass", "none")], calls


def _why_not(r: BenchRow, call: AccuracyCall | None, slower: set[str] | None = None, who: str | None = None) -> str:
    """Why ``r`` is not chosen (the first reason that applies); ``who`` names it (default: its name)."""
    who = who or r.name
    if r.failed_validation:
        return f"{who} failed its export validation"
    if r.verdict and r.verdict["verdict"] == "fail":
        return f"{who} misses the budget"
    if call is not None and not call.keeps:
        return f"{who} is {call.clause}"
    if slower and r.name in slower:
        return f"{who} is the precision not deployed on {r.runtime}"
    return f"{who} does not qualify"


def precision_comparison(rows: Sequence[BenchRow], tolerance: float | None = None, labels=None) -> list[dict]:
    """Per runtime holding FP32 and INT8 of the model: which is faster (p50; INT8 needs >= 5 %), and the one to
    deploy there. The deploy precision follows the measurement, not a rule of thumb.

    With ``tolerance`` (a bench's accuracy tolerance) the deploy choice is the one the recommendation makes:
    when only one twin qualifies (:func:`qualifying`: budget passed, accuracy kept, export validated) it is
    deployed whatever the speed, and ``deploy_reason`` says why the other is not. Without it: speed only."""
    qual: set[str] = set()
    calls: dict[str, AccuracyCall] = {}
    if tolerance is not None:
        for rs in _groups(rows).values():
            ok, cs = qualifying(rs, tolerance, labels)
            qual |= {r.name for r in ok}
            calls.update(cs)
    out = []
    for r8, r32 in twins(rows):
        a, b = r8.primary["p50_ms"], r32.primary["p50_ms"]
        faster = deploy_precision(b, a)
        c = {"runtime": r8.runtime, "format": r8.format, "fp32": r32.name, "int8": r8.name,
             "fp32_p50_ms": b, "int8_p50_ms": a, "int8_speedup": b / a if a > 0 else None, "faster": faster,
             "deploy": r8.name if faster == "int8" else r32.name}
        q8, q32 = r8.name in qual, r32.name in qual
        if tolerance is not None and q8 != q32:
            keep, drop = (r8, r32) if q8 else (r32, r8)
            c["deploy"] = keep.name
            if keep.precision != faster:
                c["deploy_reason"] = _why_not(drop, calls.get(drop.name))
        out.append(c)
    return out


def not_deployed(comparison: list[dict]) -> set[str]:
    """The precision twin each comparison does not deploy."""
    return {c["int8"] if c["deploy"] == c["fp32"] else c["fp32"] for c in comparison}


def int8_vs_onnx_fp32(rows: Sequence[BenchRow]) -> dict | None:
    """The fastest INT8 artifact (any runtime, export validation passed) against the FP32 ONNX on ONNX Runtime, at
    the primary config: the question "does INT8 pay off at all on this host", answered by one run's numbers."""
    from edgecv.contracts.formats import FORMATS, ONNX

    ok, fp32 = measured_and_validated(rows), FORMATS[(ONNX, "fp32")]
    ref = [r for r in ok if (r.format, r.precision, r.runtime) == (*fp32.key, fp32.runtime)]
    int8 = [r for r in ok if r.precision == "int8"]
    if len(ref) != 1 or not int8:
        return None
    best = min(int8, key=lambda r: r.primary["p50_ms"])
    a, b = best.primary["p50_ms"], ref[0].primary["p50_ms"]
    return {"int8": best.name, "int8_runtime": best.runtime, "int8_p50_ms": a, "onnx_fp32": ref[0].name,
            "onnx_fp32_p50_ms": b, "speedup": b / a if a > 0 else None, "faster": int8_pays(a, b)}


def int8_notes(rows: Sequence[BenchRow], comparison: list[dict] | None = None) -> list[tuple[str, str]]:
    """``(INT8 row name, note)`` for every runtime on which INT8 is not (meaningfully) faster than FP32: a note of
    the report and of that row."""
    out = []
    for c in precision_comparison(rows) if comparison is None else comparison:
        if c["faster"] == "int8" or c["deploy"] != c["fp32"]:
            continue
        msg = (f"INT8 is not faster than FP32 on {c['runtime']} ({c['format']}): p50 {c['int8_p50_ms']:.3f} ms vs "
               f"{c['fp32_p50_ms']:.3f} ms; deploy {c['fp32']} on this runtime (the measurement decides the precision)")
        out.append((c["int8"], msg))
    return out


# ------------------------------------------------------------------------------------------------ recommendation
def _cost(r: BenchRow, metric: str) -> float:
    """Lower is better: p90 for a p90 budget, time per frame for an fps budget, p50 without a budget."""
    p = r.primary
    if metric == "fps":
        return 1.0 / p["fps"] if p["fps"] else float("inf")
    return p["p90_ms"] if metric == "p90_ms" else p["p50_ms"]


def _candidates(rs: Sequence[BenchRow], tolerance: float, slower: set[str] | None,
                labels) -> tuple[list[BenchRow], dict[str, AccuracyCall]]:
    """:func:`qualifying`, less a non-deployed precision twin while its deployed twin qualifies."""
    passing, calls = qualifying(rs, tolerance, labels)
    if slower:
        twin = {}
        for r8, r32 in twins(rs):
            twin[r8.name], twin[r32.name] = r32.name, r8.name
        names = {r.name for r in passing}
        passing = [r for r in passing if not (r.name in slower and twin.get(r.name) in names)]
    return passing, calls


def _pick(passing: list[BenchRow], metric: str) -> tuple[BenchRow, list[BenchRow]]:
    """The fastest, or among those within noise of it the more accurate, then the smaller; and the tied rest."""
    fastest = min(passing, key=lambda r: _cost(r, metric))
    tied = [r for r in passing if not clearly_faster(_cost(fastest, metric), _cost(r, metric))]
    pick = min(tied, key=lambda r: (-(r.top1 or 0.0), r.size_bytes or float("inf"), _cost(r, metric)))
    return pick, [r for r in tied if r is not pick]


@dataclass
class Choice:
    """The recommendation for one target, as decided: the reason line is written from this (:func:`reason`)."""

    pick: BenchRow
    tied: list[BenchRow]  # within noise of the pick's speed (the pick won on accuracy, then size)
    passed_over: list[tuple[BenchRow, str]]  # clearly faster artifacts that were not chosen, and why
    budget: dict | None
    metric: str
    accuracy: AccuracyCall | None  # the pick's accuracy call (None: not measured)


def _label(metric: str) -> str:
    return {"fps": "fps", "p90_ms": "p90"}.get(metric, "p50")


def _fig(r: BenchRow, metric: str, name: bool = True) -> str:
    label = _label(metric)
    fig = f"{label} {r.primary['fps' if metric == 'fps' else label + '_ms']:.3f}"
    return f"{r.name} {fig}" if name else fig


def reason(c: Choice) -> str:
    """The one reason line of a recommendation, from the decision taken: "fastest" only where nothing faster was
    measured, else which faster artifacts were passed over and why; the accuracy call names its test's outcome."""
    if not c.passed_over:
        why = ["fastest artifact measured" + (", within the budget" if c.budget else "")]
    else:
        why = ["fastest artifact that " + ("passes the budget and " if c.budget else "") + "keeps accuracy: "
               + "; ".join(w for _, w in c.passed_over)]
    if c.tied:
        figs = ", ".join(_fig(r, c.metric) for r in [c.pick, *c.tied])
        why[0] += (f"; within noise (< 5 % apart) of {', '.join(r.name for r in c.tied)} ({figs}): "
                   "the more accurate, then the smaller one is preferred")
    why.append(f"{c.pick.name} is {c.accuracy.clause}" if c.accuracy else "accuracy not measured")
    if c.pick.host_proxy:
        why.append("host-proxy latency: confirm on the target hardware")
    return "; ".join(why)


def _choose(rs: Sequence[BenchRow], tolerance: float, slower: set[str] | None, labels) -> Choice | None:
    passing, calls = _candidates(rs, tolerance, slower, labels)
    if not passing:
        return None
    bud = passing[0].verdict["budget"] if passing[0].verdict else None
    metric = (bud["metric"] if bud["metric"] == "fps" else "p90_ms") if bud else "p50_ms"
    pick, tied = _pick(passing, metric)
    unit = "" if metric == "fps" else " ms"
    faster = [r for r in rs if r not in passing and clearly_faster(_cost(r, metric), _cost(pick, metric))]
    over = [(r, _why_not(r, calls.get(r.name), slower, f"the faster {r.name} ({_fig(r, metric, False)}{unit})"))
            for r in faster]
    return Choice(pick, tied, over, bud, metric, calls.get(pick.name))


def recommend(rows: Sequence[BenchRow], profile, tolerance: float = ACCURACY_TOLERANCE, slower: set[str] | None = None,
              labels=None) -> dict:
    """Per target: the fastest artifact that passes its budget and keeps accuracy.

    ``slower``: artifacts the precision rule does not deploy (:func:`not_deployed`); they are not recommended
    while their precision twin qualifies. "Keeps accuracy" = not shown worse than the most accurate artifact of
    that target by at least ``tolerance`` top-1 points (:func:`judge_accuracy`: paired on the images of
    ``labels`` where the rows carry per-image predictions). "Fastest" = lowest p90 for a p90 budget, highest fps
    for an fps budget, lowest p50 without a budget; artifacts within noise of the fastest are equally fast (the
    more accurate, then the smaller one wins). Returns ``{target: {"name", "reason"} | None}``.
    """
    out: dict[str, dict | None] = {}
    for tname, rs in _groups(rows, profile.name if profile else "host").items():
        c = _choose(rs, tolerance, slower, labels)
        out[tname] = {"name": c.pick.name, "reason": reason(c)} if c else None
    return out


def accuracy_calls(rows: Sequence[BenchRow], tolerance: float = ACCURACY_TOLERANCE, labels=None) -> dict[str, dict]:
    """Every measured row's accuracy call against the most accurate artifact of its target (JSON form)."""
    out: dict[str, dict] = {}
    for rs in _groups(rows).values():
        out.update({k: v.to_dict() for k, v in judge_accuracy(rs, tolerance, labels).items()})
    return out


def deploy_report(rows: Sequence[BenchRow], profile, tolerance: float = ACCURACY_TOLERANCE, labels=None) -> dict:
    """The deploy decision for a bench's rows, made once: precision per runtime, its notes, the recommendation,
    the cross-runtime INT8 line and each artifact's accuracy call (the keys of the bench JSON they fill), all from
    the same comparison. ``labels``: the evaluation set's labels, which the rows' per-image predictions are of."""
    comparison = precision_comparison(rows, tolerance, labels)
    notes = int8_notes(rows, comparison)
    row_notes: dict[str, list[str]] = {}
    for name, msg in notes:
        row_notes.setdefault(name, []).append(msg)
    return {"recommended": recommend(rows, profile, tolerance, slower=not_deployed(comparison), labels=labels),
            "precision_comparison": comparison,
            "int8_vs_onnx_fp32": int8_vs_onnx_fp32(rows),
            "notes": [msg for _, msg in notes],
            "row_notes": row_notes,
            "accuracy": accuracy_calls(rows, tolerance, labels)}


def exit_code(rows: Sequence[BenchRow]) -> int:
    """0 ok; 1 when a budget applies and no artifact of the bench's ``rows`` passes it. (A modified or missing
    artifact is bad input: ``run_bench`` refuses it before measuring, exit 2.)"""
    judged = [a for a in rows if a.status == "ok" and a.verdict and a.verdict["verdict"] != "none"]
    if judged and not any(a.verdict["verdict"] == "pass" for a in judged):
        return 1
    return 0
