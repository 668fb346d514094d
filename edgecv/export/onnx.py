"""ONNX export: fp32, fp16 and INT8 QDQ (from the QAT model's deployment form), optional onnxscript clean-up.

INT8 graph (what ONNX Runtime's QDQ node-group selectors need to run real int8 kernels):

* ``torch.onnx.export(edgecv.quant.deploy(qat_model), dynamo=False)`` writes ``Q/DQ(x)`` and ``Q/DQ(W)`` (symmetric
  per-channel, weights stored as float and quantized by a ``QuantizeLinear`` node) into every Conv/Gemm;
* :func:`fold_weight_quantize` replaces ``QuantizeLinear(W_float)`` by an int8 initializer (``DQ(W_int8)``);
* :func:`quantize_bias` rewrites the float bias into an int32 initializer + ``DequantizeLinear`` with
  ``scale = x_scale * w_scale`` (per output channel, axis 0), the form ORT (and TensorRT) expect;
* :func:`add_output_qdq` inserts ``Q/DQ`` after each Conv output. ORT's Conv selector fuses
  ``DQ, DQ, DQ(bias) -> Conv -> Q`` into ``QLinearConv``; without the output ``Q`` the Conv stays float (the
  DQs are just evaluated). The scale is chosen so the insert is exact where possible: when the Conv's output
  flows through ``Relu`` (or nothing) into the next layer's input ``Q`` the consumer's scale is used (ReLU
  commutes with symmetric quantization), otherwise the range observed on calibration images. A QAT model
  prepared by :func:`edgecv.quant.prepare_qat` already carries a *trained* output fake-quant on
  exactly those convs (``Conv -> Q`` in the exported graph, left as it is), so nothing is calibrated and the
  ONNX graph computes what the torch QAT model simulated.

The graph rewrites live in :mod:`edgecv.quant.onnx_rules` (the INT8 scheme); ORT kernel inspection in
:mod:`edgecv.runtimes.introspect`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgecv.contracts.manifest import INPUT_NAME, OUTPUT_NAME
from edgecv.errors import UserError
from edgecv.quant.onnx_rules import add_output_qdq, conv_output_ranges, fold_weight_quantize, quantize_bias
from edgecv.utils import atomic_path


class _Fp16IO(nn.Module):
    """fp32 in / fp32 out around a half-precision model (Cast nodes at the graph boundary)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.half()).float()


def torch_export_onnx(model: nn.Module, path: Path, img_size: int, opset: int = 17, batch: int = 1,
                      dynamic_batch: bool = True) -> Path:
    """``torch.onnx.export`` (TorchScript exporter) with a dynamic batch axis, written atomically."""
    model = model.eval()
    dummy = torch.zeros(batch, 3, img_size, img_size, dtype=torch.float32)
    dyn = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with atomic_path(path) as tmp, torch.no_grad():
        torch.onnx.export(model, (dummy,), str(tmp), dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes=dyn, do_constant_folding=True)
    return path


def export_fp32(model: nn.Module, path: Path, img_size: int, opset: int = 17) -> Path:
    torch_export_onnx(model, path, img_size, opset)
    check(path)
    return path


def export_fp16(model: nn.Module, path: Path, img_size: int, opset: int = 17) -> Path:
    """Half-precision weights and compute, float32 input/output (Cast at the boundary)."""
    import copy

    half = _Fp16IO(copy.deepcopy(model).eval().half())
    torch_export_onnx(half, path, img_size, opset)
    check(path)
    return path


def check(path: Path) -> None:
    import onnx

    onnx.checker.check_model(str(path), full_check=True)


def export_int8_qdq(deploy_model: nn.Module, path: Path, img_size: int, opset: int = 17,
                    calib_batches: list[np.ndarray] | None = None, output_qdq: bool = True) -> dict:
    """The QDQ ONNX of a deploy-form model (:func:`edgecv.quant.deploy`), rewritten for ORT's int8 kernels.
    Returns pass statistics."""
    import onnx

    if opset < 13:
        raise UserError(f"opset {opset}: INT8 QDQ with per-channel weights needs opset >= 13")
    tmp_raw = path.with_name(path.name + ".raw.onnx")
    try:
        torch_export_onnx(deploy_model, tmp_raw, img_size, opset)
        m = onnx.load(str(tmp_raw))
        info = {"weights_int8": fold_weight_quantize(m), **quantize_bias(m)}
        if output_qdq:
            amax = None
            if calib_batches:
                onnx.save(m, str(tmp_raw))
                amax = conv_output_ranges(tmp_raw, calib_batches)
            info["conv_output_qdq"] = add_output_qdq(m, amax)
        onnx.checker.check_model(m, full_check=True)
        with atomic_path(path) as tmp:
            onnx.save(m, str(tmp))
    finally:
        tmp_raw.unlink(missing_ok=True)
    return info


def simplify(path: Path) -> dict:
    """Optional graph clean-up with onnxscript's optimizer (constant folding, dead code); written atomically."""
    import onnx
    import onnxscript.optimizer as opt

    m = onnx.load(str(path))
    before = len(m.graph.node)
    m2 = opt.optimize(m)
    onnx.checker.check_model(m2)
    with atomic_path(path) as tmp:
        onnx.save(m2, str(tmp))
    return {"nodes_before": before, "nodes_after": len(m2.graph.node)}
