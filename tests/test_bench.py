"""edgecv bench end to end on real ONNX bundles (torch.onnx.export + a real manifest) through ONNX Runtime."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch

from edgecv.bench.accuracy import evaluate_runner, load_eval_arrays
from edgecv.bench.bench import BenchConfig, run_bench
from edgecv.bench.report import to_markdown, write_plot
from edgecv.contracts.bench import BenchReport, BenchRow, load_schema, validate
from edgecv.contracts.manifest import ArtifactEntry, load_manifest
from edgecv.runtimes.base import Runner, load_runner
from edgecv.targets.policy import exit_code, int8_notes, recommend
from tests.bench_util import ColourNet, TinyNet, export_onnx, make_bundle
from tests.conftest import make_image_folder

FAST = ["--min-time", "0.05s", "--min-runs", "10", "--warmup", "2", "--rounds", "2"]



@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench") / "bundle"
    # a TensorRT engine: the runtime cannot run on this host (no tensorrt / no GPU) -> skipped with the reason
    trt = ArtifactEntry(file="model_fp16.engine", format="tensorrt", precision="fp16", runtime="tensorrt", sha256=None)
    failed = ArtifactEntry(file="model_int8.pte", format="pte", precision="int8", runtime="executorch",
                           status="failed", error="to_edge_transform_and_lower failed")
    make_bundle(root, model=ColourNet(), extra_entries=[trt, failed])
    (root / "model_fp16.engine").write_bytes(b"serialized engine placeholder")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("benchdata") / "data", size=32)


def test_ort_runner_implements_protocol(bundle):
    r = load_runner("onnxruntime", bundle / "model_fp32.onnx", threads=1)
    assert isinstance(r, Runner)
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    out = r.predict(x)
    assert out.shape == (4, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, x.mean(axis=(2, 3)) * 10, rtol=1e-4, atol=1e-4)
    d = r.describe()
    assert d["runtime"] == "onnxruntime" and d["threads"] == 1 and "host" in d
    r.close()


def test_bench_skips_missing_runtime_and_validates(bundle, data):
    cfg = BenchConfig(data=str(data), min_time_s=0.05, min_runs=10, warmup=2, rounds=2, batches=[1, 4])
    res = run_bench(str(bundle), cfg)
    jsonschema.validate(res, load_schema("bench"))
    arts = {a["name"]: a for a in res["artifacts"]}
    onnx = arts["onnx-fp32"]
    assert onnx["status"] == "ok" and onnx["accuracy"]["top1"] == 100.0  # ColourNet is exact on this data
    assert {(x["threads"], x["batch"]) for x in onnx["latency"]} == {(1, 1), (1, 4)}
    assert onnx["throughput"]["batch"] == 4
    assert onnx["measured_on"] and "thread" in onnx["measured_on"]
    assert onnx["latency"][0]["cpu_p50_ms"] > 0  # 1 thread: CPU time per call recorded (contention check)
    trt = arts["tensorrt-fp16"]
    if importlib.util.find_spec("tensorrt") is None:
        assert trt["status"] == "skipped" and "tensorrt" in trt["reason"].lower() and trt["latency"] == []
    assert arts["pte-int8"]["status"] == "not_exported" and "to_edge" in arts["pte-int8"]["reason"]
    assert res["recommended"]["x86"]["name"] == "onnx-fp32"
    assert exit_code(BenchReport.from_dict(res).artifacts) == 0


def test_accuracy_through_runtime_matches_torch_with_fixed_batch(tmp_path, data):
    torch.manual_seed(0)
    model = TinyNet(3).eval()
    f = export_onnx(model, tmp_path / "fixed.onnx", 32, dynamic_batch=False)  # batch fixed to 1
    b = make_bundle(tmp_path / "b", model=model)
    man = load_manifest(b)
    ev = load_eval_arrays(str(data), man.class_names, man.preprocess)
    r = load_runner("onnxruntime", f, threads=1)
    assert r.batch_size == 1
    got = evaluate_runner(r, ev, batch_size=8)
    with torch.no_grad():
        ref = model(torch.from_numpy(ev.x)).numpy()
    assert got["n"] == len(ev.y) == 12
    assert got["top1"] == pytest.approx(100.0 * float((ref.argmax(1) == ev.y).mean()))


def test_cli_outputs_and_host_proxy_label(bundle, data, tmp_path, cli):
    out_json, md, png = tmp_path / "b.json", tmp_path / "b.md", tmp_path / "b.png"
    p = cli("bench", str(bundle), "--target", "android", "--data", str(data), "--json", str(out_json),
            "--markdown", str(md), "--plot", str(png), *FAST)
    assert p.returncode == 0, p.stderr
    res = json.loads(out_json.read_text())
    validate(res)
    onnx = next(a for a in res["artifacts"] if a["name"] == "onnx-fp32")
    assert onnx["host_proxy"] is True
    assert onnx["verdict"]["label"] in ("pass (host proxy)", "fail (host proxy)")
    assert onnx["verdict"]["budget"] == {"metric": "p90_ms", "limit": 85.0, "source": "target:android",
                                         "hardware": "arm64 Android CPU"}
    assert "capped" in " ".join(res["notes"]) or res["settings"]["threads"] == [4]
    text = md.read_text()
    assert "| onnx-fp32" in text and "host proxy" in text and "measured on:" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "skipped" in p.stderr or importlib.util.find_spec("tensorrt") is not None


def test_cli_json_stdout_and_budget_fail_exit_1(bundle, cli):
    p = cli("bench", str(bundle), "--no-accuracy", "--budget-ms", "0.000001", "--json", "-", "--quiet", *FAST)
    assert p.returncode == 1
    assert "no artifact passes the latency budget" in p.stderr
    res = json.loads(p.stdout)
    validate(res)
    assert next(a for a in res["artifacts"] if a["name"] == "onnx-fp32")["verdict"]["verdict"] == "fail"


def test_modified_artifact_is_bad_input_exit_2(tmp_path, cli):
    """A tampered artifact is bad input, as in gate and export: one line, exit 2, nothing measured or written."""
    b = make_bundle(tmp_path / "b")
    with open(b / "model_fp32.onnx", "ab") as f:
        f.write(b"tampered")
    p = cli("bench", str(b), "--json", str(tmp_path / "o.json"), *FAST)
    assert p.returncode == 2
    assert "sha256 does not match" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "o.json").exists()


def test_bad_input_exit_2(tmp_path, bundle, cli):
    p = cli("bench", str(tmp_path / "nope"))
    assert p.returncode == 2 and "no such file" in p.stderr and "Traceback" not in p.stderr
    p = cli("bench", str(bundle), "--artifacts", "onnx-int8")
    assert p.returncode == 2 and "onnx-int8" in p.stderr
    p = cli("bench", str(bundle), "--threads", "0")
    assert p.returncode == 2
    p = cli("bench", str(bundle), "--budget-ms", "5", "--budget-fps", "30")
    assert p.returncode == 2 and "not both" in p.stderr


def test_single_artifact_file(tmp_path, cli):
    f = export_onnx(TinyNet(3), tmp_path / "m.onnx", 32)
    p = cli("bench", str(f), "--json", "-", "--quiet", *FAST)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    validate(res)
    assert res["artifacts"][0]["name"] == "onnx-fp32" and res["artifacts"][0]["status"] == "ok"


def _row(name, fmt, prec, rt, p50, p90, top1, verdict="none", proxy=False, profile="x86"):
    return BenchRow(name=name, format=fmt, precision=prec, runtime=rt, status="ok", host_proxy=proxy, profile=profile,
                    primary={"threads": 1, "batch": 1, "p50_ms": p50, "p90_ms": p90, "fps": 1000 / p50},
                    accuracy={"top1": top1} if top1 is not None else None,
                    verdict={"verdict": verdict, "budget": {"metric": "p90_ms", "limit": 5.0} if verdict != "none" else None})


def test_int8_not_faster_note_and_recommendation():
    rows = [_row("onnx-fp32", "onnx", "fp32", "onnxruntime", 2.0, 2.2, 80.0, "pass"),
            _row("onnx-int8", "onnx", "int8", "onnxruntime", 2.5, 2.7, 79.8, "pass"),
            _row("openvino-fp32", "openvino", "fp32", "openvino", 2.4, 2.6, 80.0, "pass"),
            _row("openvino-int8", "openvino", "int8", "openvino", 1.2, 1.3, 75.0, "pass")]
    notes = int8_notes(rows)
    assert len(notes) == 1 and notes[0][0] == "onnx-int8" and "INT8 is not faster than FP32 on onnxruntime" in notes[0][1]
    rec = recommend(rows, None, tolerance=1.0)
    # openvino-int8 is fastest but loses 5 points -> not recommended; onnx-fp32 is the fastest that keeps accuracy
    assert rec["x86"]["name"] == "onnx-fp32"
    rows[0].verdict["verdict"] = "fail"
    assert recommend(rows, None)["x86"]["name"] == "openvino-fp32"
    assert recommend(rows, None, tolerance=10)["x86"]["name"] == "openvino-int8"


def test_best_int8_vs_onnx_fp32():
    """The fastest validated INT8 artifact of any runtime against ORT's FP32 ONNX, from the same rows."""
    from edgecv.bench.report import best_int8_text
    from edgecv.targets.policy import int8_vs_onnx_fp32

    rows = [_row("onnx-fp32", "onnx", "fp32", "onnxruntime", 0.53, 0.6, None),
            _row("onnx-int8", "onnx", "int8", "onnxruntime", 1.07, 1.2, None),
            _row("pte-int8", "pte", "int8", "executorch", 0.48, 0.5, None),
            _row("openvino-int8", "openvino", "int8", "openvino", 0.40, 0.45, None)]
    rows[3] = rows[3].with_notes("export validation failed (benched because of --include-failed; never recommended)")
    c = int8_vs_onnx_fp32(rows)
    assert c["int8"] == "pte-int8" and c["faster"] and abs(c["speedup"] - 0.53 / 0.48) < 1e-9
    assert "1.10x faster than onnx-fp32" in best_int8_text(c)
    rows[2].primary["p50_ms"] = 0.54
    c = int8_vs_onnx_fp32(rows)
    assert not c["faster"] and "not faster than" in best_int8_text(c)
    assert int8_vs_onnx_fp32(rows[1:]) is None  # no FP32 ONNX measured


def test_markdown_and_plot_render_without_accuracy(tmp_path, bundle):
    res = run_bench(str(bundle), BenchConfig(min_time_s=0.02, min_runs=5, warmup=1, rounds=1, accuracy=False))
    validate(res)
    md = to_markdown(res)
    assert "accuracy data: not measured" in md and "onnx-fp32" in md
    write_plot(res, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_same_format_precision_entries_get_distinct_names(tmp_path):
    b = make_bundle(tmp_path / "b", model=TinyNet(3))
    from edgecv.utils import sha256_file

    f = export_onnx(TinyNet(3, width=8), b / "other.onnx", 32)
    man = load_manifest(b)
    man.artifacts.append(ArtifactEntry(file=f.name, format="onnx", precision="fp32", runtime="onnxruntime",
                                       size_bytes=f.stat().st_size, sha256=sha256_file(f), input_shape=[1, 3, 32, 32]))
    man.write(b)
    res = run_bench(str(b), BenchConfig(min_time_s=0.01, min_runs=3, warmup=1, rounds=1, accuracy=False))
    validate(res)
    assert sorted(a["name"] for a in res["artifacts"]) == ["onnx-fp32 (model_fp32.onnx)", "onnx-fp32 (other.onnx)"]
    assert all(a["status"] == "ok" for a in res["artifacts"])


def test_include_failed_validation_is_timed_labelled_never_recommended(tmp_path):
    from edgecv.bench.bench import BenchConfig, run_bench
    from edgecv.utils import sha256_file

    root = tmp_path / "b"
    export_onnx(ColourNet((1, 2, 0)), root / "model_int8.onnx", 32)  # a written artifact whose validation failed
    f = root / "model_int8.onnx"
    failed = ArtifactEntry(file=f.name, format="onnx", precision="int8", runtime="onnxruntime", status="failed",
                           sha256=sha256_file(f), size_bytes=f.stat().st_size,
                           error="validation failed: top-1 agreement 96.0% < 97.0%")
    make_bundle(root, model=ColourNet(), extra_entries=[failed])
    cfg = dict(min_time_s=0.02, min_runs=5, warmup=1, rounds=2, accuracy=False)
    default = run_bench(str(root), BenchConfig(**cfg))
    row = next(a for a in default["artifacts"] if a["name"] == "onnx-int8")
    assert row["status"] == "not_exported" and row["primary"] is None
    res = run_bench(str(root), BenchConfig(include_failed=True, **cfg))
    row = next(a for a in res["artifacts"] if a["name"] == "onnx-int8")
    assert row["status"] == "ok" and row["primary"]["p50_ms"] > 0
    assert any(n.startswith("export validation failed") and "96.0%" in n for n in row["notes"])
    assert all(rec is None or rec["name"] != "onnx-int8" for rec in res["recommended"].values())


def test_build_script_entry_is_skipped_not_unexported(tmp_path):
    """The TensorRT build script is written fine but is not a model: the row says so (it once read
    'not_exported: export status ok: no reason recorded')."""
    from edgecv.bench.bench import BenchConfig, run_bench

    root = tmp_path / "b"
    script = ArtifactEntry(file="tensorrt/build_engine.py", format="tensorrt_script", precision="fp16+int8",
                           runtime=None, status="ok")
    make_bundle(root, model=ColourNet(), extra_entries=[script])
    res = run_bench(str(root), BenchConfig(min_time_s=0.02, min_runs=5, warmup=1, rounds=1, accuracy=False))
    row = next(a for a in res["artifacts"] if a["format"] == "tensorrt_script")
    assert row["status"] == "skipped" and "not a model" in row["reason"] and "build_engine.py" in row["reason"]
