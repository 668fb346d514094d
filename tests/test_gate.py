"""edgecv gate: decision logic on synthetic timing samples, exit codes and JSON on real ONNX bundles."""

from __future__ import annotations

import importlib.util
import json
import shutil

import jsonschema
import numpy as np
import pytest
import torch

from edgecv.bench.gate import classify, decide, ratio_ci, trimmed_mean
from edgecv.contracts.bench import load_schema
from tests.bench_util import ColourNet, TinyNet, export_onnx, make_bundle
from tests.conftest import make_image_folder

FAST = ["--rounds", "8", "--max-rounds", "16", "--sessions", "4", "--block-time", "5ms"]


# ------------------------------------------------------------------------------------------ statistics / decision
def test_trimmed_mean_cuts_outliers():
    assert trimmed_mean(np.array([1, 2, 3, 4, 100.0])) == pytest.approx(3.0)
    assert trimmed_mean(np.array([5.0])) == 5.0


def _noisy_rounds(true_ratio, n, rng, noise=0.03, burst_p=0.1):
    """Per-round ratios as a shared noisy machine produces them: lognormal jitter + occasional bursts that hit
    one side of a round only."""
    r = true_ratio * np.exp(rng.normal(0, noise, n))
    burst = rng.random(n) < burst_p
    r[burst] *= np.exp(rng.choice([-1, 1], burst.sum()) * rng.uniform(0.2, 0.6, burst.sum()))
    return r


def test_identical_passes_and_slower_fails_on_synthetic_trials():
    rng = np.random.default_rng(0)
    same = [decide(_noisy_rounds(1.0, 20, rng), 1.10, seed=i, n_boot=1000).verdict for i in range(20)]
    slow = [decide(_noisy_rounds(1.2, 20, rng), 1.10, seed=i, n_boot=1000).verdict for i in range(20)]
    assert same.count("pass") >= 19
    assert slow.count("regression") >= 19


def test_ci_brackets_point_and_narrows_with_rounds():
    rng = np.random.default_rng(1)
    p, lo, hi = ratio_ci(_noisy_rounds(1.05, 12, rng, burst_p=0), n_boot=2000)
    assert lo <= p <= hi
    p2, lo2, hi2 = ratio_ci(_noisy_rounds(1.05, 120, rng, burst_p=0), n_boot=2000)
    assert (hi2 - lo2) < (hi - lo)
    assert lo2 < 1.05 < hi2


def test_classify_and_inconclusive_policies():
    assert classify(0.98, 1.04, 1.10) == "pass"
    assert classify(1.12, 1.20, 1.10) == "regression"
    assert classify(1.05, 1.15, 1.10) == "inconclusive"
    straddle = np.array([1.02, 1.18] * 10)  # too noisy to decide: interval straddles 1.10, point ~1.10
    assert decide(straddle, 1.10, final=False) is None  # caller runs more rounds
    d = decide(straddle, 1.10, on_inconclusive="point")
    assert d.inconclusive and d.verdict == ("regression" if d.ratio > 1.10 else "pass") and "inconclusive" in d.label
    assert decide(straddle, 1.10, on_inconclusive="fail").verdict == "regression"
    assert decide(straddle, 1.10, on_inconclusive="pass").verdict == "pass"
    low = np.array([0.95, 1.14] * 10)  # straddles, point ~1.04 < limit
    assert decide(low, 1.10).verdict == "pass" and decide(low, 1.10).inconclusive


def test_session_level_bias_widens_the_interval_instead_of_deciding():
    """Rounds on one session pair share its memory layout: a pair measured 13 % 'slower' with tight rounds (seen on
    a CI runner for two identical models) must not prove a regression once the rounds come from several pairs."""
    rng = np.random.default_rng(4)
    one_pair = np.array([1.13 * np.exp(rng.normal(0, 0.002, 20))])
    assert decide(one_pair, 1.10).verdict == "regression"  # a single pair cannot tell layout from model
    pairs = np.exp(np.log([1.13, 0.99, 1.01, 1.0, 0.98, 1.02])[:, None] + rng.normal(0, 0.002, (6, 5)))
    p, lo, hi = ratio_ci(pairs)
    assert lo < 1.0 < p < hi < 1.10  # two-stage bootstrap: the pair-to-pair spread is in the interval
    p_flat, lo_flat, hi_flat = ratio_ci(pairs.ravel())
    assert hi_flat - lo_flat < (hi - lo) / 2  # rounds resampled as if independent: falsely narrow
    d = decide(pairs, 1.10)
    assert d.verdict == "pass" and d.rounds == 30
    # identical models, pair-to-pair layout spread of 5 %, round noise 1 %, 4 pairs x 5 rounds: passes
    same = [decide(np.exp(rng.normal(0, 0.05, (4, 1)) + rng.normal(0, 0.01, (4, 5))), 1.10, seed=i,
                   n_boot=1000).verdict for i in range(50)]
    slow = [decide(np.exp(np.log(1.2) + rng.normal(0, 0.05, (4, 1)) + rng.normal(0, 0.01, (4, 5))), 1.10, seed=i,
                   n_boot=1000).verdict for i in range(50)]
    assert same.count("pass") >= 48 and slow.count("regression") >= 48


def test_session_plan_spreads_rounds_over_pairs():
    from edgecv.bench.gate import GateConfig, session_plan

    assert session_plan(GateConfig()) == (4, 5, 2, 12)  # 20 rounds = 4 pairs x 5, up to 60 rounds = 12 pairs
    assert session_plan(GateConfig(rounds=8, max_rounds=16)) == (4, 2, 2, 8)
    assert session_plan(GateConfig(rounds=4, max_rounds=4, sessions=1)) == (1, 4, 1, 1)


def test_decision_is_reproducible():
    r = _noisy_rounds(1.08, 20, np.random.default_rng(3))
    assert decide(r, 1.10) == decide(r, 1.10)


# ------------------------------------------------------------------------------------------ CLI on real bundles
@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    torch.manual_seed(0)
    base = make_bundle(root / "base", model=TinyNet(3, width=8, depth=1), seed=0)
    same = root / "same"
    shutil.copytree(base, same)  # the same model in a second bundle
    torch.manual_seed(0)
    slow = make_bundle(root / "slow", model=TinyNet(3, width=48, depth=4), seed=0)  # ~50x the compute
    return base, same, slow


def _validate(d):
    jsonschema.validate(d, load_schema("gate"))


def test_gate_identical_passes_exit_0(bundles, cli):
    base, same, _ = bundles
    p = cli("gate", "--baseline", str(base), "--candidate", str(same), "--json", "-", "--quiet", *FAST)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    _validate(d)
    a = d["artifacts"][0]
    assert d["passed"] and a["name"] == "onnx-fp32" and a["latency"]["rounds"] >= 8
    assert a["latency"]["sessions"] >= 4 and len(a["latency"]["session_ratios"]) == a["latency"]["sessions"]
    assert len(a["latency"]["round_ratios"]) == a["latency"]["rounds"] and d["settings"]["sessions"] == 4
    assert a["latency"]["ci_low"] <= a["latency"]["ratio"] <= a["latency"]["ci_high"]
    assert d["reliability"] == "high" and any("no --data" in n for n in d["notes"])


def test_gate_much_slower_fails_exit_1_with_interval(bundles, cli, tmp_path):
    base, _, slow = bundles
    out = tmp_path / "g.json"
    p = cli("gate", "--baseline", str(base), "--candidate", str(slow), "--json", str(out), *FAST)
    assert p.returncode == 1
    assert "regression: onnx-fp32 latency" in p.stderr and "[" in p.stderr  # which artifact, by how much, interval
    assert "REGRESSION" in p.stderr
    d = json.loads(out.read_text())
    _validate(d)
    assert not d["passed"] and d["regressions"] == ["onnx-fp32"] and d["artifacts"][0]["latency"]["ci_low"] > 1.10



def test_gate_accuracy_regression_and_single_artifacts(tmp_path, cli):
    data = make_image_folder(tmp_path / "data", size=32)
    good = make_bundle(tmp_path / "good", model=ColourNet())
    bad = make_bundle(tmp_path / "bad", model=ColourNet((1, 2, 0)))  # same cost, wrong labels
    p = cli("gate", "--baseline", str(good), "--candidate", str(bad), "--data", str(data), "--json", "-", "--quiet",
            "--on-inconclusive", "pass", *FAST)
    assert p.returncode == 1, p.stderr
    d = json.loads(p.stdout)
    _validate(d)
    acc = d["artifacts"][0]["accuracy"]
    assert acc["baseline_top1"] == 100.0 and acc["candidate_top1"] == 0.0 and acc["verdict"] == "regression"
    assert acc["call"]["paired"] and acc["call"]["verdict"] == "worse" and acc["call"]["ref_only"] == acc["n"]
    assert "top-1 -100.00 pt (candidate is worse than the baseline by 100.00 pt on" in p.stderr
    # single .onnx artifacts: no manifest -> accuracy skipped with a note, latency still gated
    f1 = export_onnx(ColourNet(), tmp_path / "a.onnx", 32)
    f2 = export_onnx(ColourNet(), tmp_path / "b.onnx", 32)
    p = cli("gate", "--baseline", str(f1), "--candidate", str(f2), "--data", str(data), "--json", "-", "--quiet",
            "--max-latency-regression", "0.5", *FAST)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["baseline_kind"] == "artifact" and any("accuracy skipped" in n for n in d["notes"])


def test_gate_stored_bench_json_baseline(bundles, cli, tmp_path):
    base, same, _ = bundles
    bj = tmp_path / "bench.json"
    p = cli("bench", str(base), "--no-accuracy", "--json", str(bj), "--quiet", "--min-time", "0.1s", "--rounds", "2")
    assert p.returncode == 0, p.stderr
    p = cli("gate", "--baseline", str(bj), "--candidate", str(same), "--json", "-", "--quiet", *FAST)
    assert p.returncode in (0, 1), p.stderr
    d = json.loads(p.stdout)
    _validate(d)
    assert d["baseline_kind"] == "stored_json" and d["reliability"] == "low"
    lat = d["artifacts"][0]["latency"]
    assert lat["limit"] == pytest.approx(1.10 * 1.5) and "low reliability" in lat["label"]
    assert any("less reliable" in n.lower() for n in d["notes"])
    # a bench file of the older schema still loads as a baseline, with a note that its decisions were unpaired
    from edgecv.bench.gate import GateConfig
    from edgecv.bench.gate.run import _plan

    old = json.loads(bj.read_text())
    old["schema"] = "edgecv.bench/1"
    bj.write_text(json.dumps(old))
    notes = _plan(str(bj), str(same), GateConfig()).notes
    assert sum("edgecv.bench/1 file" in n and "unpaired" in n for n in notes) == 1


def test_gate_bad_input_exit_2(bundles, cli, tmp_path):
    base, _, _ = bundles
    p = cli("gate", "--baseline", str(tmp_path / "none"), "--candidate", str(base))
    assert p.returncode == 2 and "no such file" in p.stderr and "Traceback" not in p.stderr
    j = tmp_path / "x.json"
    j.write_text('{"schema": "something/9"}')
    p = cli("gate", "--baseline", str(j), "--candidate", str(base))
    assert p.returncode == 2 and "edgecv.bench/1" in p.stderr
    p = cli("gate", "--baseline", str(base), "--candidate", str(base), "--metric", "p75")
    assert p.returncode == 2
    t = make_bundle(tmp_path / "t")
    with open(t / "model_fp32.onnx", "ab") as f:
        f.write(b"x")
    p = cli("gate", "--baseline", str(base), "--candidate", str(t))
    assert p.returncode == 2 and "sha256" in p.stderr


def test_gate_nothing_runnable_is_bad_input(tmp_path, cli):
    import importlib.util

    from edgecv.contracts.manifest import ArtifactEntry, load_manifest

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here: the engine would be loaded")
    bundles = []
    for n in ("a", "b"):
        b = make_bundle(tmp_path / n)
        (b / "m.engine").write_bytes(b"engine")
        man = load_manifest(b)
        man.artifacts = [ArtifactEntry(file="m.engine", format="tensorrt", precision="fp16", runtime="tensorrt")]
        man.write(b)
        bundles.append(b)
    p = cli("gate", "--baseline", str(bundles[0]), "--candidate", str(bundles[1]))
    assert p.returncode == 2 and "nothing to gate" in p.stderr and "tensorrt" in p.stderr.lower()


def test_single_artifacts_read_their_input_shape_from_the_file(tmp_path):
    """A single .onnx / OpenVINO .xml / .pte has no manifest: the gate and bench take the shape from the file."""
    from edgecv.bench.artifacts import input_shape, resolve_source

    model = TinyNet(3, width=8, depth=1)
    onnx_path = export_onnx(model, tmp_path / "m.onnx", 24, dynamic_batch=False)
    files = [onnx_path]
    if importlib.util.find_spec("openvino"):
        from edgecv.export import openvino as ov_export

        files += ov_export.convert(onnx_path, tmp_path / "m.xml")[:1]
    if importlib.util.find_spec("executorch"):
        from edgecv.export import pte

        pte.export_fp32(model, tmp_path / "m.pte", 24)
        files.append(tmp_path / "m.pte")
    for f in files:
        art = resolve_source(f).artifacts[0]
        assert input_shape(art, 2) == (2, 3, 24, 24), f
