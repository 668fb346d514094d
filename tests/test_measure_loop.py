"""Issue 26 item 2: one measuring loop and the bench contract.

``bench``, ``serve --artifact auto`` and ``compress --student auto`` produce their figures through the same function,
:func:`edgecv.runtimes.measure.measure` (wrapped here by a recorder that still runs the real one on real runtimes);
the bench file loader (:func:`edgecv.contracts.bench.load_bench`) refuses a wrong / old schema and bad JSON with one
line and exit 2 through the CLI (``gate --baseline``, ``serve --bench-json``), and reads today's files unchanged.
"""

from __future__ import annotations

import json

import pytest

import edgecv.runtimes.measure as M
from edgecv.bench.bench import BenchConfig, run_bench
from edgecv.contracts.bench import BenchReport, load_bench
from tests.bench_util import TinyNet, export_onnx, make_bundle
from tests.conftest import make_image_folder, run_cli, save_untrained_teacher

SIZE = 16
FAST_BENCH = BenchConfig(min_time_s=0.02, min_runs=3, warmup=1, rounds=1, accuracy=False)


def _two_artifact_bundle(root):
    """onnx-fp32 and a larger 'onnx-int8' (both export-validated): something for --artifact auto to choose from."""
    from edgecv.contracts.manifest import ArtifactEntry, load_manifest
    from edgecv.utils import sha256_file

    b = make_bundle(root, model=TinyNet(3, width=8, depth=1), size=SIZE)
    big = export_onnx(TinyNet(3, width=32, depth=3), root / "model_int8.onnx", SIZE)
    man = load_manifest(b)
    man.artifacts[0].validation = {"status": "passed", "accuracy": 90.0}
    man.artifacts.append(ArtifactEntry(file=big.name, format="onnx", precision="int8", runtime="onnxruntime",
                                       sha256=sha256_file(big), input_shape=[1, 3, SIZE, SIZE],
                                       validation={"status": "passed", "accuracy": 90.0}))
    man.write(b)
    return b


@pytest.fixture()
def recorder(monkeypatch):
    """Every call of the one measuring loop, wherever it comes from: (caller module, keys, result)."""
    real = M.measure
    calls: list[tuple[str, list, dict]] = []

    def wrap(cands, plan, **kw):
        import sys

        out = real(cands, plan, **kw)
        calls.append((sys._getframe(1).f_globals["__name__"], [c.key for c in cands], out))
        return out

    import edgecv.bench.bench as bench_mod
    import edgecv.serve.select as select_mod

    for mod in (bench_mod, select_mod):
        assert mod.measure is real  # the callers hold the one function, not a copy
        monkeypatch.setattr(mod, "measure", wrap)
    monkeypatch.setattr(M, "measure", wrap)  # autotune imports it at call time
    return calls


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return _two_artifact_bundle(tmp_path_factory.mktemp("loop") / "b")


def test_bench_and_serve_auto_measure_through_the_one_loop(recorder, bundle):
    from edgecv.serve.predictor import load_predictor

    res = run_bench(str(bundle), FAST_BENCH)
    p = load_predictor(bundle, artifact="auto")
    p.close()
    callers = [c for c, _, _ in recorder]
    assert callers == ["edgecv.bench.bench", "edgecv.serve.select"]
    (_, bench_keys, bench_out), (_, serve_keys, serve_out) = recorder
    assert bench_keys == serve_keys == ["onnx-fp32", "onnx-int8"]
    # the figures in the bench JSON and in the selection are the ones the loop measured
    for row in res["artifacts"]:
        assert row["latency"] == bench_out[row["name"]].latency and row["measured_on"] == bench_out[row["name"]].measured_on
    assert p.selection["p50_ms"] == {k: round(m.latency[0]["p50_ms"], 4) for k, m in serve_out.items()}


def test_a_single_file_is_timed_at_the_shape_its_open_runner_declares(tmp_path, monkeypatch):
    """A bare .onnx (no manifest): the loop reads the input shape from the runner it has open, loading the file once
    per thread count, not once more per batch size just to learn its shape."""
    import edgecv.runtimes.base as base

    real, loads = base.load_runner, []

    def counted(*args, **kw):
        loads.append(args[1])
        return real(*args, **kw)

    monkeypatch.setattr(base, "load_runner", counted)
    monkeypatch.setattr(M, "load_runner", counted)
    f = export_onnx(TinyNet(3, width=8, depth=1), tmp_path / "m.onnx", 24)  # dynamic batch, 24 px
    res = run_bench(str(f), BenchConfig(min_time_s=0.02, min_runs=3, warmup=1, rounds=1, accuracy=False,
                                        threads=[1], batches=[1, 2]))
    row = res["artifacts"][0]
    assert row["status"] == "ok" and [x["batch"] for x in row["latency"]] == [1, 2]
    assert len(loads) == 1, loads


def test_an_unknown_input_shape_is_bad_input(tmp_path):
    """A bare .onnx whose height and width are dynamic and no manifest giving them: one UserError, nothing timed."""
    import torch

    from edgecv.errors import UserError

    f = tmp_path / "m.onnx"
    torch.onnx.export(TinyNet(3, width=8, depth=1).eval(), torch.randn(1, 3, 24, 24), str(f), input_names=["input"],
                      output_names=["logits"], opset_version=17, dynamo=False,
                      dynamic_axes={"input": {0: "batch", 2: "h", 3: "w"}, "logits": {0: "batch"}})
    with pytest.raises(UserError, match=r"m\.onnx: input shape unknown: the file declares \[None, 3, None, None\]"):
        run_bench(str(f), FAST_BENCH)


@pytest.mark.slow
def test_student_auto_measures_through_the_one_loop(recorder, tmp_path):
    from edgecv.autotune.run import compress
    from edgecv.compress.config import CompressConfig

    data = make_image_folder(tmp_path / "data", n_train=8, n_val=3)
    teacher = save_untrained_teacher(tmp_path / "teacher.pt", ["red", "green", "blue"], 16)
    cfg = CompressConfig(teacher=str(teacher), allow_weak_teacher=True, data=str(data), student="auto", target="x86",
                         candidates="tf_mobilenetv3_small_minimal_100,mobilenet_v3_small", img_size=16, epochs_kd=1,
                         epochs_prune=1, epochs_qat=1, prune_steps=1, batch_size=12, workers=0, calib_size=8,
                         out=str(tmp_path / "r"), deploy_size=32, min_time=0.05, probe_epochs=1, probe_images=12,
                         probe_val_images=6, select_only=True)
    run = compress(cfg)
    assert [c for c, _, _ in recorder] == ["edgecv.autotune.measure"]
    (_, keys, out), = recorder
    assert {k for k, _ in keys} == {"tf_mobilenetv3_small_minimal_100", "mobilenet_v3_small"}
    sel = {c["arch"]: c for c in run["student_selection"]["candidates"]}
    for (arch, prec), m in out.items():  # the selection's figures are the loop's
        assert sel[arch][prec]["p50_ms"] == m.latency[0]["p50_ms"]
        assert sel[arch][prec]["host_proxy"] is m.host_proxy is False  # an x86 host measuring for x86


def test_todays_bench_file_loads_unchanged(bundle, tmp_path):
    res = run_bench(str(bundle), FAST_BENCH)
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(res))
    rep, notes = load_bench(path)
    assert isinstance(rep, BenchReport) and notes == []
    assert rep.to_dict() == json.loads(path.read_text())  # same keys, same order, same values
    assert list(rep.to_dict()) == list(res) and list(rep.artifacts[0].to_dict()) == list(res["artifacts"][0])


BAD = {
    "bad JSON": ("{not json", "not readable JSON"),
    "wrong schema": (json.dumps({"schema": "edgecv.gate/1", "artifacts": []}), "not an edgecv bench JSON"),
    "old schema": (json.dumps({"schema": "edgecv.bench/0", "artifacts": []}), "not an edgecv bench JSON"),
}


@pytest.fixture(scope="module")
def bad_files(bundle, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    files = {}
    for name, (text, _) in BAD.items():
        files[name] = d / f"{name.replace(' ', '_')}.json"
        files[name].write_text(text)
    res = run_bench(str(bundle), FAST_BENCH)
    del res["artifacts"][0]["status"]  # the current schema, but a row without its status
    files["incomplete"] = d / "incomplete.json"
    files["incomplete"].write_text(json.dumps(res))
    return files


@pytest.mark.parametrize("case", [*BAD, "incomplete"])
@pytest.mark.parametrize("command", ["gate", "serve"])
def test_bad_bench_files_are_one_line_exit_2(command, case, bundle, bad_files):
    f = str(bad_files[case])
    args = ["gate", "--baseline", f, "--candidate", str(bundle)] if command == "gate" else \
        ["serve", str(bundle), "--bench-json", f, "--port", "0"]
    p = run_cli(*args, timeout=120)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    want = BAD[case][1] if case in BAD else "does not follow edgecv.bench/2"
    assert lines[0].startswith("edgecv: error: ") and want in lines[0] and f in lines[0]
