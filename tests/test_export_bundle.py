"""edgecv export: every format x precision runnable here, at a tiny image size, validated through the real
runtimes; manifest sha256s; corrupt artifacts detected; unknown target -> exit 2; RUN_DIR sources."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from edgecv.contracts.manifest import load_manifest, verify_artifact
from edgecv.errors import UserError
from edgecv.utils import sha256_file

from .conftest import make_image_folder

S = 32
ARCH = "tf_mobilenetv3_small_minimal_100"
HAS_ET = importlib.util.find_spec("executorch") is not None
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _make_checkpoints(root: Path) -> dict:
    """A float and a QAT checkpoint of a small net trained briefly on class-coloured images (confident logits,
    so the agreement thresholds test the exporters, not ties of an untrained net), plus a RUN_DIR."""
    from edgecv.data.datasets import load_train_val
    from edgecv.data.preprocess import Preprocess
    from edgecv.models.checkpoint import save_checkpoint
    from edgecv.models.registry import create_model
    from edgecv.quant import QuantConfig, calibrate, prepare_qat
    from edgecv.training.loop import TrainConfig, fit

    data = make_image_folder(root / "data", n_train=16, n_val=8, size=S)
    pre = Preprocess(input_size=S, hflip=False)
    b = load_train_val(str(data), preprocess=pre)
    torch.manual_seed(0)
    model = create_model(ARCH, 3)
    cfg = TrainConfig(epochs=10, batch_size=16, lr=1e-2, workers=0, device="cpu", warmup_epochs=0)
    res = fit(model, b.train.with_transform(pre.eval_transform()), b.val.with_transform(pre.eval_transform()), cfg)
    # it must have learned: 3 epochs at 5e-3 left a net that called every image one class (33 % on 3 classes), so
    # top-1 agreement was 24 copies of one answer and the logit bounds measured near-ties of an untrained net
    assert res.best_top1 >= 90.0, res.history
    meta = {"data": str(data)}
    flt = save_checkpoint(root / "float.pt", model, ARCH, b.class_names, pre, metrics=meta)
    prepare_qat(model, QuantConfig(trace_size=S))
    calibrate(model, torch.utils.data.DataLoader(b.train.with_transform(pre.eval_transform()), batch_size=16))
    qat = save_checkpoint(root / "qat.pt", model.eval(), ARCH, b.class_names, pre, metrics=meta,
                          meta={"quant": model.edgecv_quant})
    run = root / "run"
    run.mkdir()
    stages = {}
    for name, src in (("prune", flt), ("quantize", qat)):
        shutil.copy(src, run / f"{name}.pt")
        stages[name] = {"status": "done", "checkpoint": f"{name}.pt", "sha256": sha256_file(run / f"{name}.pt")}
    (run / "run.json").write_text(json.dumps({"schema": "edgecv.run/1", "stages": stages,
                                              "completed": list(stages), "img_size": S, "data": str(data)}))
    return {"data": data, "float": flt, "qat": qat, "run": run}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    torch.set_num_threads(1)
    return _make_checkpoints(tmp_path_factory.mktemp("export_src"))


@pytest.fixture(scope="module")
def bundle_all(ckpts, tmp_path_factory):
    """`export RUN_DIR --target all` once (in-process); the tests below inspect it."""
    from edgecv.export.bundle import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("bundle") / "b"
    res = export_bundle(ckpts["run"], out, ExportOptions(target="all", num_val=24, num_calib=24))
    return out, res


def test_export_all_writes_and_validates_every_format(bundle_all):
    out, res = bundle_all
    man = load_manifest(out)
    got = {(a.format, a.precision): a for a in man.artifacts}
    expected = {("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8"), ("openvino", "fp32"), ("openvino", "int8"),
                ("ptl", "fp32"), ("tensorrt", "fp16"), ("tensorrt", "int8")}
    if HAS_ET:
        expected |= {("pte", "fp32"), ("pte", "int8")}
    assert expected <= set(got), set(got)
    assert res.failed == [], [(a.name, a.error) for a in man.artifacts if a.status == "failed"]
    for key in expected - {("tensorrt", "fp16"), ("tensorrt", "int8")}:
        a = got[key]
        assert a.status == "ok", (a.name, a.error)
        v = a.validation
        assert v["status"] == "passed" and v["n"] == 24, (a.name, v)
        assert v["top1_agreement"] >= (97.0 if a.precision == "int8" else 99.5)
        assert "accuracy" in v and "max_abs_logit_diff" in v
        assert a.sha256 == sha256_file(out / a.file) and a.size_bytes > 0
        assert a.exported_with["torch"] and a.input_shape[1:] == [3, S, S]
        if a.precision == "int8":
            assert v["int8_kernels"] is True, (a.name, a.extra.get("int8_kernels"))
    # ONNX Runtime really runs QLinearConv, OpenVINO really runs int8 convolutions
    assert got[("onnx", "int8")].extra["int8_kernels"]["int8_ops"].get("QLinearConv", 0) > 0
    assert got[("openvino", "int8")].extra["int8_kernels"]["int8_convs"] > 0
    if HAS_ET:  # ExecuTorch INT8 carries the QAT model's quantization: validated against the QAT model
        v = got[("pte", "int8")].validation
        assert v["reference"] == "torch QAT model (fake-quant)" and v["top1_agreement"] >= 99.0, v
        # int8 weights really stored as int8 (not fp32 next to q/dq ops), the QAT model's float stem kept float
        assert got[("pte", "int8")].size_bytes < 0.5 * got[("pte", "fp32")].size_bytes
        assert got[("pte", "int8")].extra["float_modules"] == ["conv_stem"]
    assert got[("onnx", "int8")].validation["reference"] == "torch QAT model (fake-quant)"
    assert got[("onnx", "int8")].size_bytes < 0.5 * got[("onnx", "fp32")].size_bytes
    qdq = got[("onnx", "int8")].extra["qdq_passes"]["conv_output_qdq"]
    assert qdq.get("calibrated", 0) == 0 and qdq.get("trained", 0) > 0, qdq  # QAT simulated every output Q
    assert got[("ptl", "fp32")].extra["optimize_for_mobile"]  # applied, or skipped with the reason
    # source provenance: best stage of the run, fp32 from the prune stage, int8 from QAT
    assert man.source["stage"] == "quantize" and man.source["fp32_source"] == "stage:prune"
    assert man.source["int8_source"] == "qat" and man.source["sha256"]
    assert man.preprocess["input_size"] == S and len(man.class_names) == 3


def test_openvino_companion_bin_recorded(bundle_all):
    out, _ = bundle_all
    a = next(a for a in load_manifest(out).artifacts if a.format == "openvino" and a.precision == "int8")
    (comp,) = a.extra["companions"]
    assert comp.endswith(".bin") and a.extra["companion_sha256"][comp] == sha256_file(out / comp)


def test_tensorrt_script_written_and_compiles(bundle_all):
    import py_compile

    out, _ = bundle_all
    man = load_manifest(out)
    script = next(a for a in man.artifacts if a.format == "tensorrt_script")
    assert script.status == "ok" and script.runtime is None
    py_compile.compile(str(out / script.file), doraise=True)
    text = (out / script.file).read_text()
    for api in ("trt.Builder", "OnnxParser", "BuilderFlag.FP16", "BuilderFlag.INT8", "create_optimization_profile",
                "build_serialized_network"):
        assert api in text
    sh = (out / "tensorrt" / "build_engine.sh").read_text()
    assert "trtexec" in sh and "--int8" in sh and "--minShapes=input:1x3x32x32" in sh
    for p in script.extra["onnx"].values():  # the ONNX files the script points at ship in the bundle
        assert (out / "tensorrt" / p).resolve().is_file()
    for a in man.artifacts:
        if a.format == "tensorrt":
            if HAS_TRT:
                assert a.status == "ok"
            else:
                assert a.status == "skipped" and "tensorrt" in a.error


@pytest.mark.skipif(not HAS_TRT, reason="tensorrt is not installed here (engines are built on the Jetson)")
def test_tensorrt_engine_runs(bundle_all):
    from edgecv.runtimes.base import runner_for_entry

    out, _ = bundle_all
    for a in load_manifest(out).artifacts:
        if a.format == "tensorrt":
            r = runner_for_entry(out, a, device="cuda:0")
            assert r.predict(torch.zeros(2, 3, S, S).numpy()).shape == (2, 3)


def test_corrupt_artifact_detected_by_sha256(bundle_all, tmp_path, cli):
    out, _ = bundle_all
    b = tmp_path / "b"
    shutil.copytree(out, b)
    man = load_manifest(b)
    onnx = next(a for a in man.artifacts if a.format == "onnx" and a.precision == "fp32")
    ov = next(a for a in man.artifacts if a.format == "openvino" and a.precision == "fp32")
    verify_artifact(b, onnx)
    p = cli("export", str(b), "--verify", "--json")
    assert p.returncode == 0, p.stderr
    data = bytearray((b / onnx.file).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (b / onnx.file).write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256"):
        verify_artifact(b, onnx)
    with (b / ov.extra["companions"][0]).open("ab") as f:  # a modified OpenVINO .bin is caught too
        f.write(b"\0")
    with pytest.raises(UserError, match="sha256"):
        verify_artifact(b, ov)
    p = cli("export", str(b), "--verify", "--json")
    assert p.returncode == 2  # a bundle that does not match its manifest is bad input, as in bench and gate
    rep = json.loads(p.stdout)
    assert set(rep["mismatched"]) == {"onnx-fp32", "openvino-fp32"}


def test_unknown_target_exit_2(ckpts, cli, tmp_path):
    p = cli("export", str(ckpts["qat"]), "--target", "tpu", "--out", str(tmp_path / "b"))
    assert p.returncode == 2
    assert p.stderr.strip() == "edgecv: error: --target must be one of android, jetson, x86, all, got 'tpu'"
    assert not (tmp_path / "b").exists()


def test_bad_inputs_exit_2(ckpts, cli, tmp_path):
    p = cli("export", str(ckpts["qat"]), "--precision", "int4", "--out", str(tmp_path / "b"))
    assert p.returncode == 2 and "int4" in p.stderr
    p = cli("export", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "b"))
    assert p.returncode == 2 and "no such" in p.stderr
    p = cli("export", str(ckpts["run"]), "--stage", "distill", "--out", str(tmp_path / "b"))
    assert p.returncode == 2 and "not done" in p.stderr


def test_run_dir_stage_selection(ckpts, tmp_path):
    from edgecv.export.source import resolve_source

    s = resolve_source(ckpts["run"])
    assert s.stage == "quantize" and s.is_qat and s.float_stage == "prune"
    s = resolve_source(ckpts["run"], stage="prune")
    assert s.stage == "prune" and not s.is_qat
    run = tmp_path / "run"
    shutil.copytree(ckpts["run"], run)
    (run / "quantize.pt").write_bytes((run / "quantize.pt").read_bytes() + b"x")
    with pytest.raises(UserError, match="sha256"):
        resolve_source(run)


def test_float_source_int8_is_ptq(ckpts, tmp_path, cli):
    p = cli("export", str(ckpts["float"]), "--target", "x86", "--precision", "int8", "--num-val", "16",
            "--num-calib", "16", "--out", str(tmp_path / "b"), "--json", "--quiet")
    assert p.returncode == 0, p.stderr[-2000:]
    man = json.loads(p.stdout)
    assert man["source"]["int8_source"] == "ptq" and man["failed"] == []
    assert {(a["format"], a["precision"]) for a in man["artifacts"]} == {("onnx", "int8"), ("openvino", "int8")}
    assert all(a["validation"]["int8_kernels"] for a in man["artifacts"])
    assert not (tmp_path / "b" / ".tmp").exists()
    assert Path(tmp_path / "b" / "manifest.json").is_file()
