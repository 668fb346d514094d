"""ExecuTorch .pte with the XNNPACK delegate, fp32 and INT8.

fp32: ``torch.export.export -> to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()]) ->
to_executorch()``.

INT8: PT2E with ExecuTorch's ``XNNPACKQuantizer`` (``get_symmetric_quantization_config(is_per_channel=True)``:
symmetric per-channel int8 weights, int8 activations), ``prepare_pt2e``, calibration on the calibration
images, ``convert_pt2e``, then the same lowering. The float model it starts from is the QAT model's
deployment form with fake-quant switched off: the QAT-trained weights with BatchNorm folded. (PT2E *QAT* has a
MobileNetV3 accuracy bug, so the QAT ranges are not carried over; XNNPACK's own PTQ observers set them.)
So the .pte's faithful reference is the ``convert_pt2e`` module it is lowered from (:func:`pt2e_int8`,
:func:`pt2e_logits`), not the QAT model: ``edgecv export`` validates against it and reports the QAT model's
accuracy next to it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgecv.utils import atomic_path


def _lower_and_save(ep, path: Path) -> dict:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
    gm = edge.exported_program().graph_module
    ops = Counter()
    for n in gm.graph.nodes:
        if n.op == "call_function":
            ops[getattr(n.target, "__name__", str(n.target))] += 1
    delegated = ops.get("executorch_call_delegate", 0)
    not_delegated = {k: v for k, v in ops.items() if k not in ("executorch_call_delegate", "getitem")}
    prog = edge.to_executorch()
    with atomic_path(path) as tmp:
        tmp.write_bytes(prog.buffer)
    return {"xnnpack_partitions": delegated, "ops_outside_delegate": not_delegated}


def export_fp32(model: nn.Module, path: Path, img_size: int) -> dict:
    dummy = (torch.zeros(1, 3, img_size, img_size),)
    with torch.no_grad():
        ep = torch.export.export(model.eval(), dummy)
    return _lower_and_save(ep, path)


def float_module_names(model: nn.Module) -> list[str]:
    """Modules the QAT model keeps float (``QuantConfig.float_convs``, e.g. the image stem)."""
    return [n for n, m in model.named_modules() if getattr(m, "float_layer", False)]


def _outside(names: list[str]):
    """XNNPACKQuantizer filter: annotate a node unless it comes from one of the modules ``names``."""

    def keep(node) -> bool:
        for path, _type in node.meta.get("nn_module_stack", {}).values():
            if any(path == n or path.endswith("." + n) for n in names):
                return False
        return True

    return keep


def _weights_as_parameters(model: nn.Module) -> nn.Module:
    """A copy whose deploy-form weight/bias buffers are (frozen) parameters. ``convert_pt2e`` folds the weight
    quantize of parameters into int8 constants; a *buffer* weight stayed fp32 next to its q/dq ops, so the .pte
    carried every weight in fp32 (measured: 2.68 MB int8 .pte vs 0.63 MB, for a 2.1 MB fp32 one)."""
    import copy

    m = copy.deepcopy(model)
    for mod in m.modules():
        for k in ("weight", "bias"):
            t = mod._buffers.get(k)
            if t is not None and t.is_floating_point():
                del mod._buffers[k]
                mod.register_parameter(k, nn.Parameter(t, requires_grad=False))
    return m


def pt2e_int8(float_model: nn.Module, img_size: int, calib: list[np.ndarray],
              float_modules: list[str] | None = None) -> tuple[nn.Module, int]:
    """PT2E PTQ with XNNPACKQuantizer: the ``convert_pt2e`` module (float graph with quantized_decomposed q/dq
    ops, batch 1) that the INT8 .pte is lowered from, and the number of calibration images. ``float_modules``
    (default: the model's own float layers) are left unquantized, as in the QAT model."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    dummy = (torch.zeros(1, 3, img_size, img_size),)
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    float_modules = float_module_names(float_model) if float_modules is None else float_modules
    if float_modules:
        quantizer.set_filter_function(_outside(float_modules))
    gm = torch.export.export(_weights_as_parameters(float_model).eval(), dummy).module()
    prepared = prepare_pt2e(gm, quantizer)
    n = 0
    with torch.no_grad():
        for b in calib:
            for i in range(b.shape[0]):  # exported with batch 1
                prepared(torch.from_numpy(np.ascontiguousarray(b[i : i + 1])))
                n += 1
    converted = convert_pt2e(prepared)
    _round_bias_like_xnnpack(converted)
    return converted, n


def _attr(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _round_bias_like_xnnpack(gm) -> int:
    """Put every quantized conv/linear bias of a ``convert_pt2e`` module on the int32 grid XNNPACK stores it on
    (``quantize_per_channel(bias, weight_scale * input_scale, 0, int32)``, as its serializer does), so the PT2E
    reference computes what the .pte computes (the same fix took ORT's agreement from 96.85 to 99.9 %). The .pte
    is lowered from this module: its bias re-quantizes exactly. Returns the number of biases rounded."""
    qd = torch.ops.quantized_decomposed
    n = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default):
            continue
        if len(node.args) < 3 or not all(isinstance(a, torch.fx.Node) for a in node.args[:3]):
            continue
        x, w, b = node.args[:3]
        if x.target != qd.dequantize_per_tensor.default or b.op != "get_attr":
            continue
        x_scale = float(x.args[1])
        if w.target == qd.dequantize_per_channel.default:
            w_scale = _attr(gm, w.args[1].target) if isinstance(w.args[1], torch.fx.Node) else w.args[1]
        elif w.target == qd.dequantize_per_tensor.default:
            w_scale = torch.tensor([float(w.args[1])])
        else:
            continue
        bias = _attr(gm, b.target)
        scale = w_scale * x_scale
        if scale.numel() == 1:
            scale = scale.expand(bias.shape[0]).contiguous()
        zp = torch.zeros(bias.shape[0], dtype=torch.int64)
        q = qd.quantize_per_channel.default(bias.detach(), scale, zp, 0, -(2**31), 2**31 - 1, torch.int32)
        rounded = qd.dequantize_per_channel.default(q, scale, zp, 0, -(2**31), 2**31 - 1, torch.int32)
        with torch.no_grad():
            bias.copy_(rounded.to(bias.dtype))
        n += 1
    return n


def lower_int8(converted: nn.Module, path: Path, img_size: int, calibration_images: int,
               float_modules: list[str] | None = None) -> dict:
    dummy = (torch.zeros(1, 3, img_size, img_size),)
    with torch.no_grad():
        ep = torch.export.export(converted, dummy)
    info = _lower_and_save(ep, path)
    info.update({"quantizer": "XNNPACKQuantizer symmetric per-channel (PT2E PTQ)",
                 "calibration_images": calibration_images, "float_weights": "QAT model, fake-quant off, BN folded",
                 "float_modules": list(float_modules or [])})
    return info


@torch.no_grad()
def pt2e_logits(converted: nn.Module, x: np.ndarray) -> np.ndarray:
    """Logits of the PT2E-converted (fake-quant) module, one image at a time (it was exported with batch 1)."""
    return np.concatenate([converted(torch.from_numpy(np.ascontiguousarray(x[i : i + 1]))).float().numpy()
                           for i in range(len(x))])


def export_int8(float_model: nn.Module, path: Path, img_size: int, calib: list[np.ndarray]) -> dict:
    converted, n = pt2e_int8(float_model, img_size, calib)
    return lower_int8(converted, path, img_size, n, float_module_names(float_model))
