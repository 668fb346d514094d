"""``compress --student auto`` / ``--target-macs auto``: real OpenVINO measurements of tiny models, probe ranking,
the choice in run.json, budget failures and bad flag combinations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecv.autotune.measure import Measurer
from edgecv.autotune.prune_search import search_prune_fraction
from edgecv.autotune.run import compress, validate
from edgecv.autotune.select import SelectionFailed, select_student
from edgecv.compress.config import CompressConfig
from edgecv.errors import UserError
from edgecv.models.registry import create_model
from edgecv.nn.graph import count_macs
from edgecv.targets.budget import Budget
from tests.conftest import make_image_folder, save_untrained_teacher

CLASSES = ["red", "green", "blue"]
CANDS = "tf_mobilenetv3_small_minimal_100,mobilenet_v3_small"
FAST = dict(deploy_size=32, min_time=0.05, probe_epochs=1, probe_images=12, probe_val_images=6)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("adata") / "data", n_train=8, n_val=3)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return save_untrained_teacher(tmp_path_factory.mktemp("ateacher") / "teacher.pt", CLASSES, 16)


def _cfg(data, teacher, out, **kw) -> CompressConfig:
    base = dict(teacher=str(teacher), allow_weak_teacher=True, data=str(data), student="auto", target="x86", candidates=CANDS, img_size=16,
                epochs_kd=1, epochs_prune=1, epochs_qat=1, prune_steps=1, batch_size=12, workers=0, calib_size=8,
                out=str(out), **FAST)
    base.update(kw)
    return CompressConfig(**base)


def _measurer(size=32) -> Measurer:
    cal = [np.random.default_rng(0).standard_normal((4, 3, size, size)).astype(np.float32)]
    return Measurer("x86", size, cal, min_time_s=0.05, rounds=2, warmup=2, min_runs=5)


@pytest.fixture(scope="module")
def selected(data, teacher, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("asel") / "r"
    seen = []
    run = compress(_cfg(data, teacher, out, select_only=True), on_selection=seen.append)
    assert len(seen) == 1
    return out, run


def test_candidates_measured_and_ranked(selected):
    out, run = selected
    sel = run["student_selection"]
    assert [c["arch"] for c in sel["candidates"]] == CANDS.split(",")
    assert sel["measurement"]["runtime"] == "openvino" and sel["measurement"]["deploy_size"] == 32
    assert sel["measurement"]["threads"] == 1
    for c in sel["candidates"]:
        for p in ("fp32", "int8"):
            assert c[p]["p50_ms"] > 0 and c[p]["p90_ms"] >= c[p]["p50_ms"] and c[p]["runtime"] == "openvino"
            assert c[p]["measured_on"] and isinstance(c[p]["host_proxy"], bool)
        assert c["deploy_precision"] in ("fp32", "int8")
        faster = min(("fp32", "int8"), key=lambda k: c[k]["p50_ms"])
        if c["deploy_precision"] == "int8":
            assert faster == "int8"  # INT8 is only deployed where it measured faster
        assert c["deploy_p50_ms"] == c[c["deploy_precision"]]["p50_ms"]
        assert 0 <= c["probe_top1"] <= 100 and c["reason"]
    statuses = sorted(c["status"] for c in sel["candidates"])
    assert statuses == ["chosen", "ranked lower"]
    win = next(c for c in sel["candidates"] if c["status"] == "chosen")
    lose = next(c for c in sel["candidates"] if c["status"] == "ranked lower")
    assert sel["chosen"] == win["arch"] == run["student"]
    # the paired rule: the loser is shown worse than the best probe, or it is not and the winner is the faster
    assert lose["probe_vs_best"] is not None or win["probe_vs_best"] is not None
    if all(c["probe_vs_best"] is None or c["probe_vs_best"]["keeps"] for c in (win, lose)):
        assert win["deploy_p50_ms"] <= lose["deploy_p50_ms"]
    else:
        assert win["probe_vs_best"] is None and not lose["probe_vs_best"]["keeps"]
    assert all(len(c["probe_top1_ci"]) == 2 for c in (win, lose)) and sel["probe"]["tolerance_pt"] == 1.0
    assert sel["probe"]["epochs"] == 1 and sel["probe"]["img_size"] == 16


def test_choice_recorded_in_run_json(selected):
    out, run = selected
    disk = json.loads((out / "run.json").read_text())
    assert disk["student_selection"]["chosen"] == disk["student"]
    assert disk["config"]["student"] == "auto" and disk["config"]["target"] == "x86"
    assert disk["completed"] == [] and not list(out.glob("*.pt"))  # --select-only: no stage ran


def test_resume_reuses_the_choice(selected, data, teacher):
    out, run = selected
    logs = []
    r2 = compress(_cfg(data, teacher, out, select_only=True), resume=True, log=logs.append)
    assert r2["student_selection"] == run["student_selection"]
    assert any("reusing the choice" in m for m in logs)


def test_too_tight_budget_fails_before_writing(data, teacher, tmp_path):
    out = tmp_path / "r"
    with pytest.raises(SelectionFailed, match="no candidate meets the budget p90 <= 1e-06 ms") as ei:
        compress(_cfg(data, teacher, out, budget_ms=1e-6, probe_epochs=0, candidates="tf_mobilenetv3_small_minimal_100"))
    sel = ei.value.selection
    assert all(c["status"] == "dropped: over budget" and "misses the budget" in c["reason"] for c in sel["candidates"])
    assert all(c["fp32"]["p50_ms"] > 0 and c["int8"]["p50_ms"] > 0 for c in sel["candidates"])
    assert not out.exists()


def test_single_candidate_within_budget():
    """One candidate within a (generous) budget wins on latency alone, no probe needed."""
    m = _measurer()
    try:
        sel = select_student(["tf_mobilenetv3_small_minimal_100"], 3, m, Budget("p90_ms", 1e6, "cli", "x86"), None)
    finally:
        m.close()
    (c,) = sel["candidates"]
    assert c["status"] == "chosen" and c["within_budget"] is True and c["reason"].startswith("the only candidate within the budget")


def test_prune_search_measures_every_step():
    torch.manual_seed(0)
    model = create_model("tf_mobilenetv3_small_minimal_100", 3).eval()
    m = _measurer()
    try:
        res = search_prune_fraction(model, 32, 3, m, Budget("p90_ms", 1e-6, "cli", "x86"), chunk=0.75)
    finally:
        m.close()
    steps = res["steps"]
    assert [s["target_fraction"] for s in steps] == [1.0, 0.25]
    assert all(s["fp32"]["p50_ms"] > 0 and s["int8"]["p50_ms"] > 0 and s["meets_budget"] is False for s in steps)
    assert steps[-1]["macs"] <= 0.25 * steps[0]["macs"] and res["met"] is False and "floor" in res["note"]
    assert count_macs(model, 32) == steps[0]["macs"]  # the search prunes a copy


@pytest.mark.slow
def test_full_run_auto_student_and_auto_macs(data, teacher, tmp_path):
    run = compress(_cfg(data, teacher, tmp_path / "r", target_macs="auto", budget_ms=1e6))
    assert run["completed"] == ["distill", "prune", "quantize"]
    pr = run["stages"]["prune"]
    assert pr["target_macs_mode"] == "auto" and pr["latency_search"]["met"] is True
    assert pr["latency_search"]["fraction"] == 1.0 and pr["budget_met"] is True
    assert pr["latency_final"]["fp32"]["p50_ms"] > 0 and run["student"] == run["student_selection"]["chosen"]


NOPROBE = dict(probe_epochs=None, probe_images=None, probe_val_images=None, candidates=None)


@pytest.mark.parametrize("kw,msg", [
    (dict(student="mobilenet_v3_small", target="x86", target_macs="auto", **NOPROBE),
     "--target-macs auto needs a latency budget"),
    (dict(target=None), "--student auto needs --target"),
    (dict(target="all"), "--target must be one of x86, android, jetson"),
    (dict(budget_ms=1.0, budget_fps=30.0), "not both"),
    (dict(candidates="mobilenet_v3_small,resnet18"), "unknown student(s) resnet18"),
    (dict(student="mobilenet_v3_small"), "--probe-epochs only applies with --student auto"),
    (dict(student="mobilenet_v3_small", **NOPROBE), "--target only applies with --student auto or --target-macs auto"),
    (dict(target_macs="lots"), "--target-macs must be a fraction"),
])
def test_bad_combinations_are_user_errors(kw, msg, tmp_path):
    cfg = _cfg("x", "t.pt", tmp_path / "r", **kw)
    with pytest.raises(UserError) as ei:
        validate(cfg)
    assert msg in str(ei.value)


@pytest.mark.parametrize("args,msg", [
    (["--target-macs", "auto", "--target", "x86"], "--target-macs auto needs a latency budget"),
    (["--target-macs", "auto"], "--target-macs auto needs --target"),
    (["--student", "auto", "--target", "x86", "--budget-ms", "1", "--budget-fps", "9"], "not both"),
    (["--probe-epochs", "1"], "only applies with --student auto"),
])
def test_cli_bad_combinations_exit_2(cli, tmp_path, args, msg):
    r = cli("compress", "--data", str(tmp_path / "nodata"), *args, "--out", str(tmp_path / "o"), "--quiet")
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr and msg in lines[0], r.stderr
    assert not (tmp_path / "o").exists()


def test_cli_too_tight_budget_exit_1_with_table(cli, data, teacher, tmp_path):
    out = tmp_path / "o"
    r = cli("compress", "--teacher", str(teacher), "--allow-weak-teacher", "--data", str(data), "--img-size", "16", "--student", "auto",
            "--target", "x86", "--candidates", "tf_mobilenetv3_small_minimal_100", "--deploy-size", "32",
            "--min-time", "50ms", "--budget-ms", "0.000001", "--workers", "0", "--out", str(out))
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert "tf_mobilenetv3_small_minimal_100" in r.stderr and "dropped: over budget" in r.stderr  # the table
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("edgecv: error: --student auto: no candidate meets the budget p90 <= 1e-06 ms")
    assert not out.exists()


def test_bench_precision_comparison_and_recommendation():
    from edgecv.contracts.bench import BenchRow
    from edgecv.targets.policy import precision_comparison, recommend

    def row(name, fmt, prec, rt, p50):
        return BenchRow(name=name, format=fmt, precision=prec, runtime=rt, status="ok", host_proxy=False, profile="x86",
                        primary={"threads": 1, "batch": 1, "p50_ms": p50, "p90_ms": p50 * 1.05, "fps": 1000 / p50},
                        verdict={"verdict": "none", "budget": None})

    rows = [row("onnx-fp32", "onnx", "fp32", "onnxruntime", 2.0), row("onnx-int8", "onnx", "int8", "onnxruntime", 1.95),
            row("openvino-fp32", "openvino", "fp32", "openvino", 2.4), row("openvino-int8", "openvino", "int8", "openvino", 1.2)]
    cmp_ = {c["runtime"]: c for c in precision_comparison(rows)}
    assert cmp_["onnxruntime"]["faster"] == "fp32" and cmp_["onnxruntime"]["deploy"] == "onnx-fp32"
    assert cmp_["openvino"]["faster"] == "int8" and cmp_["openvino"]["int8_speedup"] == pytest.approx(2.0)
    rows[3].primary["p50_ms"] = 2.39  # now INT8 on OpenVINO is not meaningfully faster either
    slower = {c["int8"] for c in precision_comparison(rows) if c["faster"] == "fp32"}
    assert slower == {"onnx-int8", "openvino-int8"}
    # onnx-int8 has the lowest p50 of all but measured not faster than its FP32 twin: its twin is recommended
    assert recommend(rows, None)["x86"]["name"] == "onnx-int8"
    assert recommend(rows, None, slower=slower)["x86"]["name"] == "onnx-fp32"
