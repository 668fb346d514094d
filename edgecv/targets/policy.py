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

:func:`deploy_report` applies it once to a bench's rows: every line of the report (precision comparison, INT8
notes, recommendation) comes from the same decision. :func:`exit_code` is the bench's exit code.
"""

from __future__ import annotations

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
def measured(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["status"] == "ok" and r["primary"]]


def measured_and_validated(rows: list[dict]) -> list[dict]:
    """Rows timed here whose export validation passed (--include-failed rows are timed but never chosen)."""
    return [r for r in measured(rows) if not any(n.startswith("export validation failed") for n in r["notes"])]


def twins(rows: list[dict]) -> list[tuple[dict, dict]]:
    """(int8 row, fp32 row) of the same format on the same runtime, both measured (unambiguous pairs only)."""
    ok = measured(rows)
    out = []
    for r8 in [r for r in ok if r["precision"] == "int8"]:
        same = [r for r in ok if r["precision"] == "fp32" and r["runtime"] == r8["runtime"] and r["format"] == r8["format"]]
        if len(same) == 1:
            out.append((r8, same[0]))
    return out


def _top1(r: dict) -> float | None:
    return r["accuracy"]["top1"] if r.get("accuracy") else None


def _groups(rows: list[dict], default: str = "host") -> dict[str, list[dict]]:
    """The validated, measured rows per target profile they are judged against."""
    groups: dict[str, list[dict]] = {}
    for r in measured_and_validated(rows):
        groups.setdefault(r["profile"] or default, []).append(r)
    return groups


def qualifying(rs: list[dict], tolerance: float) -> tuple[list[dict], float | None]:
    """The artifacts of one target that keep accuracy (top-1 within ``tolerance`` points of the best measured)
    and pass the budget (or have none); also the best top-1 (None when accuracy was not measured). One no better
    than always answering the commonest class (``learned`` false: data.metrics.baseline_check) is neither."""
    rs = [r for r in rs if not (r["accuracy"] and r["accuracy"].get("learned") is False)]
    accs = [r["accuracy"]["top1"] for r in rs if r["accuracy"]]
    best = max(accs) if accs else None
    keep = [r for r in rs if best is None or (r["accuracy"] and r["accuracy"]["top1"] >= best - tolerance)]
    return [r for r in keep if not r["verdict"] or r["verdict"]["verdict"] in ("pass", "none")], best


def _why_not(r: dict, best: float | None, tolerance: float) -> str:
    if any(n.startswith("export validation failed") for n in r["notes"]):
        return f"{r['name']} failed its export validation"
    if r["verdict"] and r["verdict"]["verdict"] == "fail":
        return f"{r['name']} misses the budget"
    if r["accuracy"] and r["accuracy"].get("learned") is False:  # data.metrics.baseline_check
        return f"{r['name']} is no better than always answering the commonest class"
    if best is not None and r["accuracy"]:
        return f"{r['name']} top-1 {r['accuracy']['top1']:.2f}% is more than {tolerance:g} pt below the best ({best:.2f}%)"
    return f"{r['name']} does not qualify"


def precision_comparison(rows: list[dict], tolerance: float | None = None) -> list[dict]:
    """Per runtime holding FP32 and INT8 of the model: which is faster (p50; INT8 needs >= 5 %), and the one to
    deploy there. The deploy precision follows the measurement, not a rule of thumb.

    With ``tolerance`` (a bench's accuracy tolerance) the deploy choice is the one the recommendation makes:
    when only one twin qualifies (:func:`qualifying`: budget passed, accuracy kept, export validated) it is
    deployed whatever the speed, and ``deploy_reason`` says why the other is not. Without it: speed only."""
    qual: set[str] = set()
    best: dict[str, float | None] = {}
    if tolerance is not None:
        for rs in _groups(rows).values():
            ok, b = qualifying(rs, tolerance)
            qual |= {r["name"] for r in ok}
            best.update({r["name"]: b for r in rs})
    out = []
    for r8, r32 in twins(rows):
        a, b = r8["primary"]["p50_ms"], r32["primary"]["p50_ms"]
        faster = deploy_precision(b, a)
        c = {"runtime": r8["runtime"], "format": r8["format"], "fp32": r32["name"], "int8": r8["name"],
             "fp32_p50_ms": b, "int8_p50_ms": a, "int8_speedup": b / a if a > 0 else None, "faster": faster,
             "deploy": r8["name"] if faster == "int8" else r32["name"]}
        q8, q32 = r8["name"] in qual, r32["name"] in qual
        if tolerance is not None and q8 != q32:
            keep, drop = (r8, r32) if q8 else (r32, r8)
            c["deploy"] = keep["name"]
            if keep["precision"] != faster:
                c["deploy_reason"] = _why_not(drop, best.get(drop["name"]), tolerance)
        out.append(c)
    return out


def not_deployed(comparison: list[dict]) -> set[str]:
    """The precision twin each comparison does not deploy."""
    return {c["int8"] if c["deploy"] == c["fp32"] else c["fp32"] for c in comparison}


def int8_vs_onnx_fp32(rows: list[dict]) -> dict | None:
    """The fastest INT8 artifact (any runtime, export validation passed) against the FP32 ONNX on ONNX Runtime, at
    the primary config: the question "does INT8 pay off at all on this host", answered by one run's numbers."""
    ok = measured_and_validated(rows)
    ref = [r for r in ok if r["format"] == "onnx" and r["precision"] == "fp32" and r["runtime"] == "onnxruntime"]
    int8 = [r for r in ok if r["precision"] == "int8"]
    if len(ref) != 1 or not int8:
        return None
    best = min(int8, key=lambda r: r["primary"]["p50_ms"])
    a, b = best["primary"]["p50_ms"], ref[0]["primary"]["p50_ms"]
    return {"int8": best["name"], "int8_runtime": best["runtime"], "int8_p50_ms": a, "onnx_fp32": ref[0]["name"],
            "onnx_fp32_p50_ms": b, "speedup": b / a if a > 0 else None, "faster": int8_pays(a, b)}


def int8_notes(rows: list[dict], comparison: list[dict] | None = None) -> list[str]:
    """A note (also on the INT8 row) for every runtime on which INT8 is not (meaningfully) faster than FP32."""
    by_name = {r["name"]: r for r in rows}
    out = []
    for c in precision_comparison(rows) if comparison is None else comparison:
        if c["faster"] == "int8" or c["deploy"] != c["fp32"]:
            continue
        msg = (f"INT8 is not faster than FP32 on {c['runtime']} ({c['format']}): p50 {c['int8_p50_ms']:.3f} ms vs "
               f"{c['fp32_p50_ms']:.3f} ms; deploy {c['fp32']} on this runtime (the measurement decides the precision)")
        out.append(msg)
        by_name[c["int8"]]["notes"].append(msg)
    return out


# ------------------------------------------------------------------------------------------------ recommendation
def _cost(r: dict, metric: str) -> float:
    """Lower is better: p90 for a p90 budget, time per frame for an fps budget, p50 without a budget."""
    p = r["primary"]
    if metric == "fps":
        return 1.0 / p["fps"] if p["fps"] else float("inf")
    return p["p90_ms"] if metric == "p90_ms" else p["p50_ms"]


def _candidates(rs: list[dict], tolerance: float, slower: set[str] | None) -> tuple[list[dict], float | None]:
    """:func:`qualifying`, less a non-deployed precision twin while its deployed twin qualifies."""
    passing, best = qualifying(rs, tolerance)
    if slower:
        twin = {}
        for r8, r32 in twins(rs):
            twin[r8["name"]], twin[r32["name"]] = r32["name"], r8["name"]
        names = {r["name"] for r in passing}
        passing = [r for r in passing if not (r["name"] in slower and twin.get(r["name"]) in names)]
    return passing, best


def _pick(passing: list[dict], metric: str) -> tuple[dict, list[dict]]:
    """The fastest, or among those within noise of it the more accurate, then the smaller; and the tied rest."""
    fastest = min(passing, key=lambda r: _cost(r, metric))
    tied = [r for r in passing if not clearly_faster(_cost(fastest, metric), _cost(r, metric))]
    pick = min(tied, key=lambda r: (-(_top1(r) or 0.0), r.get("size_bytes") or float("inf"), _cost(r, metric)))
    return pick, [r for r in tied if r is not pick]


def _why(pick: dict, tied: list[dict], bud: dict | None, metric: str, best: float | None, tolerance: float) -> str:
    why = [f"fastest artifact that {'passes the budget' if bud else 'was measured'}"]
    if tied:
        label = {"fps": "fps", "p90_ms": "p90"}.get(metric, "p50")
        figs = ", ".join(f"{r['name']} {label} {r['primary']['fps' if metric == 'fps' else label + '_ms']:.3f}"
                         for r in [pick, *tied])
        why[0] += (f", within noise (< 5 % apart) of {', '.join(r['name'] for r in tied)} ({figs}): "
                   "the more accurate, then the smaller one is preferred")
    if best is not None:
        why.append(f"top-1 {pick['accuracy']['top1']:.2f}% within {tolerance:g} pt of the best ({best:.2f}%)")
    else:
        why.append("accuracy not measured")
    if pick["host_proxy"]:
        why.append("host-proxy latency: confirm on the target hardware")
    return "; ".join(why)


def recommend(rows: list[dict], profile, tolerance: float = 1.0, slower: set[str] | None = None) -> dict:
    """Per target: the fastest artifact that passes its budget and keeps accuracy.

    ``slower``: artifacts the precision rule does not deploy (:func:`not_deployed`); they are not recommended
    while their precision twin qualifies. "Keeps accuracy" = top-1 within ``tolerance`` points of the best
    top-1 measured among that target's artifacts (when accuracy was measured). "Fastest" = lowest p90 for a
    p90 budget, highest fps for an fps budget, lowest p50 without a budget; artifacts within noise of the
    fastest are equally fast (the more accurate, then the smaller one wins). Returns
    ``{target: {"name", "reason"} | None}``.
    """
    out: dict[str, dict | None] = {}
    for tname, rs in _groups(rows, profile.name if profile else "host").items():
        passing, best = _candidates(rs, tolerance, slower)
        if not passing:
            out[tname] = None
            continue
        bud = passing[0]["verdict"]["budget"] if passing[0]["verdict"] else None
        metric = (bud["metric"] if bud["metric"] == "fps" else "p90_ms") if bud else "p50_ms"
        pick, tied = _pick(passing, metric)
        out[tname] = {"name": pick["name"], "reason": _why(pick, tied, bud, metric, best, tolerance)}
    return out


def deploy_report(rows: list[dict], profile, tolerance: float = 1.0) -> dict:
    """The deploy decision for a bench's rows, made once: precision per runtime, its notes, the recommendation
    and the cross-runtime INT8 line (the keys of the bench JSON they fill), all from the same comparison."""
    comparison = precision_comparison(rows, tolerance)
    return {"recommended": recommend(rows, profile, tolerance, slower=not_deployed(comparison)),
            "precision_comparison": comparison,
            "int8_vs_onnx_fp32": int8_vs_onnx_fp32(rows),
            "notes": int8_notes(rows, comparison)}


def exit_code(result: dict) -> int:
    """0 ok; 1 when a budget applies and no artifact passes it. (A modified or missing artifact is bad input:
    ``run_bench`` refuses it before measuring, exit 2.)"""
    judged = [a for a in result["artifacts"] if a["status"] == "ok" and a["verdict"] and a["verdict"]["verdict"] != "none"]
    if judged and not any(a["verdict"]["verdict"] == "pass" for a in judged):
        return 1
    return 0
