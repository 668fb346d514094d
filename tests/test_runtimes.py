"""Runner protocol on every runtime present here (ONNX Runtime, OpenVINO, lite interpreter, ExecuTorch);
TensorRT / torch_cuda report RuntimeUnavailable with a reason where their package or GPU is missing."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from edgecv.runtimes.base import Runner, RuntimeUnavailable, load_runner, predict_in_chunks

S = 16


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 4)).eval()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from edgecv.export import onnx as E
    from edgecv.export.openvino import convert
    from edgecv.export.ptl import export_ptl

    d = tmp_path_factory.mktemp("rt")
    m = _net()
    out = {"model": m, "onnx": E.export_fp32(m, d / "m.onnx", S)}
    out["openvino"] = convert(out["onnx"], d / "m.xml")[0]
    export_ptl(m, d / "m.ptl", S)
    out["ptl"] = d / "m.ptl"
    if importlib.util.find_spec("executorch") is not None:
        from edgecv.export.pte import export_fp32

        export_fp32(m, d / "m.pte", S)
        out["executorch"] = d / "m.pte"
    return out


@pytest.mark.parametrize("runtime,key", [("onnxruntime", "onnx"), ("openvino", "openvino"), ("ptl", "ptl"),
                                         ("executorch", "executorch")])
def test_runner_protocol(artifacts, runtime, key):
    if key not in artifacts:
        pytest.skip(f"{runtime} not installed")
    x = np.random.default_rng(0).standard_normal((5, 3, S, S)).astype(np.float32)
    with torch.no_grad():
        ref = artifacts["model"](torch.from_numpy(x)).numpy()
    r = load_runner(runtime, artifacts[key], threads=1)
    assert isinstance(r, Runner)
    assert r.runtime == runtime
    # the input shape as the runtime reads it from the file (the lite interpreter's traced module records none)
    assert r.input_shape is None if runtime == "ptl" else tuple(r.input_shape[1:]) == (3, S, S)
    out = r.predict(x)  # batch 5 even where the artifact has a fixed batch of 1 (ExecuTorch)
    assert out.shape == (5, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)
    r.warmup(x[:1], n=2)
    d = r.describe()
    assert d["runtime"] == runtime and d["threads"] == 1 and "host" in d
    r.close()


def test_openvino_runner_pins_batch_and_f32(artifacts):
    r = load_runner("openvino", artifacts["openvino"], threads=1, batch_size=2)
    assert r.batch_size == 2
    assert r.predict(np.zeros((3, 3, S, S), np.float32)).shape == (3, 4)  # 2 + padded 1
    assert r.describe()["inference_precision"] == "f32"


def test_unknown_runtime_and_missing_devices(artifacts, tmp_path):
    with pytest.raises(RuntimeUnavailable, match="unknown runtime"):
        load_runner("tflite", tmp_path / "x")
    with pytest.raises(RuntimeUnavailable):
        load_runner("onnxruntime", artifacts["onnx"], device="npu")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_tensorrt_unavailable_has_reason(tmp_path):
    with pytest.raises(RuntimeUnavailable, match="tensorrt"):
        load_runner("tensorrt", tmp_path / "model.engine")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_torch_cuda_unavailable_without_gpu(tmp_path):
    with pytest.raises(RuntimeUnavailable, match="CUDA"):
        load_runner("torch_cuda", tmp_path / "x.pt")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_cuda_runner(tmp_path):
    """The torchscript artifact (fp16 weights) on CUDA: the dtype comes from the file, CUDA-graph replay."""
    from edgecv.export.ptl import export_torchscript

    m = _net()
    p = tmp_path / "model-fp16.torchscript"
    export_torchscript(m, p, S, "fp16")
    x = np.random.default_rng(0).standard_normal((4, 3, S, S)).astype(np.float32)
    r = load_runner("torch_cuda", p, device="cuda")
    assert r.precision == "fp16"
    out = r.predict(x)
    with torch.no_grad():
        ref = m(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-2, rtol=1e-2)
    np.testing.assert_allclose(r.predict(x), out, atol=1e-5)  # CUDA graph replay


def test_predict_in_chunks_pads_last_slice():
    calls = []

    def fn(b):
        calls.append(b.shape[0])
        return b.reshape(b.shape[0], -1)[:, :2] + 1

    x = np.arange(5 * 4, dtype=np.float32).reshape(5, 4)
    out = predict_in_chunks(fn, x, 2)
    assert calls == [2, 2, 2] and out.shape == (5, 2)
    np.testing.assert_array_equal(out, x[:, :2] + 1)
