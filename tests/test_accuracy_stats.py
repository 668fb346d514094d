"""Accuracy decisions that respect sample size (issue 27): the statistics of ``targets/stats.py`` against published
values, and every decision built on them (bench's recommendation, the gate's accuracy check, ``--student auto``'s
probe ranking) on constructed per-image predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgecv.bench.gate.run import accuracy_check
from edgecv.bench.report import rows_for_table, to_markdown, top1_cell
from edgecv.contracts.bench import BenchRow, load_bench, validate
from edgecv.targets import stats as S
from edgecv.targets.policy import deploy_report, judge_accuracy, recommend


def outcomes(n: int, both: int, ref_only: int, cand_only: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image correctness of a reference and a candidate with the given 2x2 counts (the rest: both wrong)."""
    ref, cand = np.zeros(n, bool), np.zeros(n, bool)
    ref[:both + ref_only] = True
    cand[:both] = True
    cand[both + ref_only:both + ref_only + cand_only] = True
    return ref, cand


# ------------------------------------------------------------------------------------------------ the statistics
def test_against_published_values():
    # Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables" (2017), ch. 8, Cavo et al. (2012):
    # 59 both, 6 first only, 16 second only, 80 neither. Newcombe square-and-add -0.0621 (-0.1186 to -0.0046),
    # exact conditional McNemar P = 0.052479.
    lo, hi = S.paired_interval(59, 6, 16, 80)
    assert (round(lo, 4), round(hi, 4)) == (-0.1186, -0.0046)
    assert S.mcnemar_exact(16, 6) == pytest.approx(0.052479, abs=1e-6)
    # Wilson interval of 0 of 10: upper bound z^2 / (n + z^2) = 0.2775
    lo, hi = S.top1_interval(0, 10)
    assert lo == pytest.approx(0.0, abs=1e-9) and hi == pytest.approx(27.75, abs=0.01)
    lo, hi = S.top1_interval(349, 360)
    assert lo < 349 / 3.6 < hi and hi - lo < 4.0
    assert S.mcnemar_exact(0, 0) == 1.0


def test_pack_round_trip_and_width():
    for top in (9, 999, 70_000):
        a = np.arange(top + 1) % (top + 1)
        d = S.pack(a)
        assert d["dtype"] == {9: "uint8", 999: "uint16", 70_000: "uint32"}[top] and d["n"] == a.size
        assert (S.unpack(d) == a).all()
    assert len(S.pack(np.zeros(360, int))["base64"]) == 480  # 360 bytes, base64


def test_one_point_on_360_images_is_not_distinguishable():
    ref, cand = outcomes(360, 340, 6, 2)  # 346 vs 342 right: 1.11 pt
    p = S.compare(ref, cand, 1.0)
    assert p.verdict == "not distinguishable" and p.keeps
    assert p.diff == pytest.approx(-4 / 3.6) and p.lo < 0 < p.hi
    text = p.text("onnx-int8")
    assert text.startswith("not distinguishable from onnx-int8 on 360 images") and "exact McNemar p = 0.289" in text
    assert "too few images to tell a 1-pt drop from noise" in text and p.needed > 360


def test_three_points_on_10000_images_is_worse():
    ref, cand = outcomes(10_000, 9_000, 400, 100)  # 94.0 vs 91.0
    p = S.compare(ref, cand, 1.0)
    assert p.verdict == "worse" and not p.keeps and -p.hi > 1.0  # shown worse by more than the tolerance
    assert p.text("a").startswith("worse than a by 3.00 pt on 10000 images (95 % CI 2.")
    assert "more than the 1-pt tolerance" in p.text("a")


def test_identical_predictions_are_equal():
    ref, _ = outcomes(500, 450, 0, 0)
    p = S.compare(ref, ref.copy(), 1.0)
    assert p.verdict == "equal" and p.keeps and p.p == 1.0 and p.diff == 0 and p.lo < 0 < p.hi
    assert "right and wrong on the same 500 images" in p.text("b")


def test_the_paired_test_decides_not_the_percentages():
    # equal top-1s (95.0 % both) on 10,000 images: identical predictions are "equal", 500 images each way are
    # "not distinguishable" and the interval says how far apart they could be
    ref, cand = outcomes(10_000, 9_000, 500, 500)
    p = S.compare(ref, cand, 1.0)
    assert p.diff == 0 and p.verdict == "not distinguishable" and p.hi - p.lo > 0.8
    # the same two top-1s (90.0 % vs 89.0 % on 1,000 images) and opposite decisions: the discordant images decide
    one_way = S.compare(*outcomes(1_000, 880, 20, 10), 0.5)
    lopsided = S.compare(*outcomes(1_000, 890, 10, 0), 0.5)
    assert one_way.diff == lopsided.diff == pytest.approx(-1.0)
    assert one_way.verdict == "not distinguishable" and one_way.keeps
    assert lopsided.verdict == "worse" and not lopsided.keeps and lopsided.p < 0.01


def test_a_real_but_small_drop_is_within_tolerance_and_a_gain_is_better():
    p = S.compare(*outcomes(10_000, 9_000, 30, 0), 1.0)
    assert p.verdict == "within tolerance" and p.keeps and "within the 1-pt tolerance" in p.text("x")
    # a real 0.8-pt drop whose interval reaches past the tolerance: the measured drop decides, it keeps
    p = S.compare(*outcomes(2_000, 1_800, 22, 6), 1.0)
    assert p.verdict == "within tolerance" and p.keeps and -p.lo > 1.0
    assert "a real drop, below the 1-pt tolerance (its interval reaches past it)" in p.text("x")
    p = S.compare(*outcomes(10_000, 9_000, 0, 60), 1.0)
    assert p.verdict == "better" and p.keeps and p.lo > 0


def test_images_needed_is_where_the_test_starts_to_tell():
    n = S.images_needed(4 / 360, 1.0)
    t, psi = 0.01, 4 / 360

    def p_at(k):
        return S.mcnemar_exact(round(k * (psi + t) / 2), round(k * (psi - t) / 2))

    assert 360 < n < 2_000 and p_at(n) < 0.05 <= p_at(n - 1)
    assert S.images_needed(0.05, 0.0) is None


# ------------------------------------------------------------------------------------------------ bench
def _row(name, prec, p50, correct, labels, size=1_000_000):
    pred = np.where(correct, labels, (labels + 1) % 10)
    right = int(correct.sum())
    return BenchRow.from_dict({"name": name, "file": f"{name}.onnx", "format": "onnx", "precision": prec, "runtime": "onnxruntime",
            "status": "ok", "reason": None, "size_bytes": size, "sha256": None, "measured_on": "host", "device": "cpu",
            "host_proxy": False, "profile": None,
            "latency": [{"threads": 1, "batch": 1, "n": 50, "p50_ms": p50, "p90_ms": p50 * 1.2, "p99_ms": p50 * 1.3,
                         "mean_ms": p50, "std_ms": 0.0, "min_ms": p50, "max_ms": p50 * 1.3, "fps": 1000 / p50}],
            "primary": {"threads": 1, "batch": 1, "p50_ms": p50, "p90_ms": p50 * 1.2, "fps": 1000 / p50},
            "throughput": None, "notes": [], "accuracy_decision": None,
            "verdict": {"verdict": "none", "label": "no budget", "host_proxy": False, "value": None, "budget": None},
            "accuracy": {"top1": 100 * right / len(labels), "top1_ci": list(S.top1_interval(right, len(labels))),
                         "correct": right, "top5": 100.0, "n": len(labels), "data": "digits",
                         "predictions": S.pack(pred)}})


def _digits_rows(both: int = 345, int8_only: int = 4, fp32_only: int = 0):
    """The `make demo` case of issue 27: 360 digits images, onnx-fp32 at p50 0.117 ms right on 345, onnx-int8 at
    0.212 ms right on 349 (4 images apart: 95.83 % vs 96.94 %)."""
    labels = np.arange(360) % 10
    int8, fp32 = outcomes(360, both, int8_only, fp32_only)
    return [_row("onnx-fp32", "fp32", 0.117, fp32, labels), _row("onnx-int8", "int8", 0.212, int8, labels)], labels


def test_digits_demo_recommends_the_fastest_artifact():
    rows, labels = _digits_rows()
    rec = recommend(rows, None, 1.0, labels=labels)["host"]
    assert rec["name"] == "onnx-fp32"
    assert rec["reason"].startswith("fastest artifact measured; onnx-fp32 is not distinguishable from onnx-int8 "
                                    "on 360 images (-1.11 pt")
    assert "exact McNemar p = 0.125 on 4 vs 0 images" in rec["reason"]
    # unpaired (no per-image predictions), the old fixed margin refused it: 1.11 pt > 1 pt
    assert recommend(rows, None, 1.0)["host"]["name"] == "onnx-int8"


def test_reason_says_fastest_only_when_it_is():
    rows, labels = _digits_rows(both=309, int8_only=40)  # onnx-fp32 now 11 pt worse on 360 images: refused
    rec = recommend(rows, None, 1.0, labels=labels)["host"]
    assert rec["name"] == "onnx-int8" and not rec["reason"].startswith("fastest artifact measured")
    assert rec["reason"].startswith("fastest artifact that keeps accuracy: the faster onnx-fp32 (p50 0.117 ms) is "
                                    "worse than onnx-int8 by 11.11 pt on 360 images")
    assert "onnx-int8 is the most accurate: top-1 96.94% (95 % CI" in rec["reason"]


def _result(rows, labels):
    d = deploy_report(rows, None, 1.0, labels=labels)
    rows = [r.to_dict() for r in rows]
    for r in rows:
        r["accuracy_decision"] = d["accuracy"][r["name"]]
    return {"schema": "edgecv.bench/2", "edgecv_version": "0", "created": "2026-01-01T00:00:00+00:00", "bundle": "b",
            "bundle_target": None, "source": None, "target": None, "target_hardware": None, "host": "h",
            "machine": "x86_64", "settings": {"threads": [1], "batches": [1], "min_time_s": 1.0, "min_runs": 1,
                                              "warmup": 0, "rounds": 1, "data": "digits", "accuracy": True,
                                              "max_images": None, "accuracy_tolerance": 1.0, "device": "cpu",
                                              "adb": None},
            "budget": None, "accuracy_set": {"data": "digits", "n": len(labels), "labels": S.pack(labels),
                                             "confidence": 0.95},
            "artifacts": rows, "recommended": d["recommended"], "precision_comparison": d["precision_comparison"],
            "int8_vs_onnx_fp32": d["int8_vs_onnx_fp32"], "notes": d["notes"]}


def test_reports_show_interval_sample_size_and_the_call(tmp_path):
    rows, labels = _digits_rows()
    res = _result(rows, labels)
    validate(res)
    table = {r["artifact"].rstrip(" *"): r for r in rows_for_table(res)}
    assert table["onnx-int8"]["top1"] == top1_cell(rows[1].accuracy) == "96.94 [94.6-98.3]"
    assert table["onnx-int8"]["vs_best"] == "reference"
    assert res["artifacts"][1]["accuracy_decision"]["verdict"] == "reference"
    assert table["onnx-fp32"]["vs_best"].startswith("not distinguishable (-1.11 pt [")
    md = to_markdown(res)
    assert "top-1 % [95 % Wilson interval] on 360 images of digits" in md and "96.94 [94.6-98.3]" in md
    dec = res["artifacts"][0]["accuracy_decision"]
    assert dec["verdict"] == "not distinguishable" and dec["n"] == 360 and dec["ref_only"] == 4 and dec["keeps"]
    # written, read back: the current schema loads without a note
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(res))
    rep, notes = load_bench(path)
    assert rep.to_dict() == res and notes == []


def test_older_bench_files_load_with_a_note(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"schema": "edgecv.bench/1", "artifacts": [], "recommended": {}}))
    d, notes = load_bench(path)
    assert d.schema == "edgecv.bench/1" and len(notes) == 1 and "unpaired" in notes[0]
    path.write_text(json.dumps({"schema": "edgecv.bench/9"}))
    with pytest.raises(Exception, match="not an edgecv bench JSON"):
        load_bench(path)


def test_unpaired_rows_keep_the_fixed_margin():
    rows, labels = _digits_rows()
    for r in rows:
        del r.accuracy["predictions"]
    calls = judge_accuracy(rows, 1.0, labels)
    assert not calls["onnx-fp32"].keeps and "unpaired" in calls["onnx-fp32"].clause


# ------------------------------------------------------------------------------------------------ the gate
def _acc(correct, labels):
    return _row("x", "fp32", 1.0, correct, labels).accuracy


@pytest.mark.parametrize("n, both, base_only, cand_only, verdict, call", [
    (10_000, 9_400, 80, 30, "regression", "worse"),  # 0.5 pt worse on 10,000 images
    (200, 188, 2, 1, "pass", "not distinguishable"),  # 0.5 pt worse on 200 images (one image)
    (10_000, 9_400, 0, 0, "pass", "equal"),
])
def test_gate_accuracy_check(n, both, base_only, cand_only, verdict, call):
    labels = np.arange(n) % 10
    base, cand = outcomes(n, both, base_only, cand_only)
    acc = accuracy_check(_acc(base, labels), _acc(cand, labels), labels, 0.5, "same images")
    assert acc["verdict"] == verdict and acc["call"]["verdict"] == call and acc["n"] == n
    assert acc["drop"] == pytest.approx(100 * (base_only - cand_only) / n)
    if verdict == "regression":
        assert acc["label"].startswith("worse than the baseline by 0.50 pt on 10000 images (95 % CI 0.")
        lo, hi = acc["call"]["ci_pt"]
        assert lo < -0.5 < hi < 0 and acc["label"].endswith("a real drop at the 0.5-pt tolerance")
    if call == "not distinguishable":
        assert acc["label"].startswith("not distinguishable from the baseline on 200 images")
    # without predictions (a stored edgecv.bench/1 baseline) the old fixed margin decides
    unpaired = accuracy_check(_acc(base, labels), _acc(cand, labels), None, 0.5, "stored")
    assert unpaired["call"]["paired"] is False and unpaired["verdict"] == "pass"


# ------------------------------------------------------------------------------------------------ --student auto
def test_probe_ranking_uses_the_paired_rule():
    from edgecv.autotune.select import _rank, _rank_probes

    def live():
        return [{"arch": "big", "probe_top1": 90.0, "deploy_p50_ms": 2.0, "deploy_precision": "fp32"},
                {"arch": "small", "probe_top1": 88.0, "deploy_p50_ms": 1.0, "deploy_precision": "int8"}]

    # 2 pt apart on 200 probe images (4 images each way more): not distinguishable, the faster wins
    big, small = outcomes(200, 170, 8, 4)
    rows = live()
    ranked, key = _rank_probes(rows, {"big": big, "small": small}, 1.0)
    win = _rank(ranked, key, "within the budget")
    assert win["arch"] == "small" and rows[1]["probe_vs_best"]["verdict"] == "not distinguishable"
    assert win["reason"].startswith("fastest of the 2 whose probe top-1 is not shown worse than the best by at least "
                                    "1 pt, out of 2 candidates within the budget")
    # 2 pt apart on 10,000 images, all one way: the more accurate wins
    big, small = outcomes(10_000, 8_800, 200, 0)
    rows = live()
    ranked, key = _rank_probes(rows, {"big": big, "small": small}, 1.0)
    win = _rank(ranked, key, "within the budget")
    assert win["arch"] == "big" and rows[1]["probe_vs_best"]["verdict"] == "worse"
    assert "probe worse than big by 2.00 pt" in rows[1]["reason"]
