"""The deploy rule (targets/policy.py), applied once: every line of a bench report agrees with the recommendation
(issue 14 item 6), and artifacts within noise of each other are called so, the more accurate / smaller preferred."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from edgecv.bench.report import _cmp_text, to_markdown
from edgecv.contracts.bench import BenchRow
from edgecv.targets import get_target
from edgecv.targets.policy import deploy_report, not_deployed, precision_comparison, recommend


def _row(name, fmt, prec, rt, p50, p90, top1=None, size=None, budget=None, verdict="none", profile="android"):
    bud = {"metric": "p90_ms", "limit": budget, "source": "target:android", "hardware": "arm64 Android CPU"} \
        if budget else None
    if budget:
        verdict = "pass" if p90 <= budget else "fail"
    return BenchRow(name=name, file=f"{name}.bin", format=fmt, precision=prec, runtime=rt, status="ok",
                    size_bytes=size, measured_on="host", device="cpu", host_proxy=True, profile=profile,
                    primary={"threads": 4, "batch": 1, "p50_ms": p50, "p90_ms": p90, "fps": 1000 / p50},
                    accuracy={"top1": top1} if top1 is not None else None,
                    verdict={"verdict": verdict, "label": verdict, "host_proxy": True, "value": p90, "budget": bud})


def _issue_rows():
    """The cifar10-mini android case of issue 14: pte-int8 1.19x faster on p50 and 0.75 pt more accurate, its p90
    0.003 ms higher than pte-fp32's. It used to recommend pte-fp32 while saying 'deploy pte-int8'."""
    return [_row("pte-fp32", "pte", "fp32", "executorch", 0.113, 0.116, 80.00, 4_400_000, budget=85.0),
            _row("pte-int8", "pte", "int8", "executorch", 0.095, 0.119, 80.75, 1_200_000, budget=85.0),
            _row("ptl-fp32", "ptl", "fp32", "ptl", 0.300, 0.320, 80.00, 4_500_000, budget=85.0)]


def _consistent(result: dict) -> None:
    """Every precision line agrees with the recommendation: a recommended artifact is never the twin a precision
    line says not to deploy, and every 'deploy X' names X."""
    skip = not_deployed(result["precision_comparison"])
    for rec in result["recommended"].values():
        if rec:
            assert rec["name"] not in skip, (rec, result["precision_comparison"])
    for c in result["precision_comparison"]:
        assert f"deploy {c['deploy']} on this runtime" in _cmp_text(c)
    for n in result["notes"]:
        if n.startswith("INT8 is not faster"):
            c = next(c for c in result["precision_comparison"] if f"on {c['runtime']} " in n)
            assert c["deploy"] == c["fp32"] and f"deploy {c['fp32']}" in n


def _result(rows, tolerance=1.0):
    d = deploy_report(rows, get_target("android"), tolerance)
    return {"schema": "edgecv.bench/2", "bundle": "b", "target": "android", "settings": {
        "threads": [4], "batches": [1], "min_runs": 5, "min_time_s": 1, "rounds": 1, "warmup": 1, "data": "d"},
        "budget": rows[0].verdict["budget"], "artifacts": [r.to_dict() for r in rows], **d, "notes": d["notes"]}


def test_issue_case_recommends_what_the_precision_line_says():
    res = _result(_issue_rows())
    (c,) = res["precision_comparison"]
    assert c["faster"] == "int8" and c["deploy"] == "pte-int8"
    assert res["recommended"]["android"]["name"] == "pte-int8"
    _consistent(res)
    md = to_markdown(res)
    assert "deploy pte-int8 on this runtime" in md and "recommended for **android**: `pte-int8`" in md


def test_int8_within_noise_deploys_fp32_everywhere():
    rows = _issue_rows()
    rows[1].primary["p50_ms"] = 0.110  # INT8 only 3 % faster: noise, FP32 deployed
    res = _result(rows)
    assert res["precision_comparison"][0]["deploy"] == "pte-fp32"
    assert res["recommended"]["android"]["name"] == "pte-fp32"
    assert any("INT8 is not faster than FP32 on executorch" in n for n in res["notes"])
    _consistent(res)


def test_int8_faster_but_less_accurate_is_not_deployed():
    rows = _issue_rows()
    rows[1].accuracy["top1"] = 78.5  # 1.5 pt below the best, tolerance 1 pt
    res = _result(rows)
    c = res["precision_comparison"][0]
    assert c["faster"] == "int8" and c["deploy"] == "pte-fp32"
    assert c["deploy_reason"] == ("pte-int8 is more than 1 pt below pte-fp32's top-1 (78.50% vs 80.00%, unpaired: "
                                  "no per-image predictions)")
    assert ", but pte-int8 is more than 1 pt" in _cmp_text(c) and "deploy pte-fp32 on this runtime" in _cmp_text(c)
    assert res["recommended"]["android"]["name"] == "pte-fp32"
    _consistent(res)
    from edgecv.contracts.bench import validate

    validate({**_bench_skeleton(), **{k: res[k] for k in ("recommended", "precision_comparison")}})


def _bench_skeleton() -> dict:
    """A schema-valid bench result with no artifacts (to validate the precision_comparison items alone)."""
    return {"schema": "edgecv.bench/2", "edgecv_version": "0", "created": "2026-01-01T00:00:00+00:00",
            "bundle": "b", "bundle_target": None, "source": None, "target": None, "target_hardware": None,
            "host": "h", "machine": "x86_64",
            "settings": {"threads": [1], "batches": [1], "min_time_s": 1.0, "min_runs": 1, "warmup": 0, "rounds": 1,
                         "data": None, "accuracy": False, "max_images": None, "device": "cpu", "adb": None},
            "budget": None, "accuracy_set": None, "artifacts": [], "recommended": {}, "precision_comparison": [],
            "int8_vs_onnx_fp32": None, "notes": []}


def test_within_noise_across_runtimes_prefers_more_accurate_then_smaller():
    rows = [_row("openvino-fp32", "openvino", "fp32", "openvino", 1.00, 1.10, 80.0, 9_000_000, profile="x86"),
            _row("onnx-fp32", "onnx", "fp32", "onnxruntime", 1.03, 1.12, 80.5, 9_000_000, profile="x86")]
    rec = recommend(rows, None)["x86"]
    assert rec["name"] == "onnx-fp32"  # 3 % slower on p50 is noise; it is 0.5 pt more accurate
    assert "within noise" in rec["reason"] and "openvino-fp32" in rec["reason"]
    rows[1].accuracy["top1"] = 80.0
    rows[0] = replace(rows[0], size_bytes=12_000_000)
    rec = recommend(rows, None)["x86"]
    assert rec["name"] == "onnx-fp32" and "within noise" in rec["reason"]  # equally accurate: the smaller
    rows[1].primary["p50_ms"] = 1.20  # clearly slower now: the fastest wins, no noise remark
    rec = recommend(rows, None)["x86"]
    assert rec["name"] == "openvino-fp32" and "within noise" not in rec["reason"]


def test_reports_are_consistent_on_random_rows():
    """Whatever the figures, the recommendation never contradicts a precision line."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        rows = []
        for fmt, rt in (("pte", "executorch"), ("onnx", "onnxruntime"), ("openvino", "openvino")):
            base = rng.uniform(0.5, 2.0)
            for prec in ("fp32", "int8"):
                p50 = base * rng.uniform(0.6, 1.2)
                rows.append(_row(f"{fmt}-{prec}", fmt, prec, rt, p50, p50 * rng.uniform(1.0, 1.3),
                                 round(rng.uniform(78, 81), 2), int(rng.integers(1, 10)) * 1_000_000,
                                 budget=float(rng.choice([1.0, 2.0, 85.0]))))
        _consistent(_result(rows, tolerance=float(rng.choice([0.5, 1.0, 3.0]))))


def test_faster_int8_over_budget_deploys_fp32_and_says_why():
    rows = _issue_rows()
    for r in rows:
        r.verdict["budget"]["limit"] = 0.118
        r.verdict["verdict"] = "pass" if r.primary["p90_ms"] <= 0.118 else "fail"
    res = _result(rows)
    c = res["precision_comparison"][0]
    assert c["faster"] == "int8" and c["deploy"] == "pte-fp32" and c["deploy_reason"] == "pte-int8 misses the budget"
    assert res["recommended"]["android"]["name"] == "pte-fp32"
    _consistent(res)


def test_comparison_without_tolerance_is_the_pure_speed_rule():
    rows = _issue_rows()
    rows[1].accuracy["top1"] = 10.0
    assert precision_comparison(rows)[0]["deploy"] == "pte-int8"  # autotune's per-candidate figures: speed only
