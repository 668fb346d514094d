"""ExecuTorch .pte with the XNNPACK delegate, fp32 and INT8.

fp32: ``torch.export.export -> to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()]) ->
to_executorch()``.

INT8: PT2E with ExecuTorch's ``XNNPACKQuantizer`` (``get_symmetric_quantization_config(is_per_channel=True)``:
symmetric per-channel int8 weights, int8 activations), ``prepare_pt2e``, calibration on the calibration
images, ``convert_pt2e``, then the same lowering. The float model it starts from is the QAT model's
deployment form with fake-quant switched off: the QAT-trained weights with BatchNorm folded. (PT2E *QAT* has a
MobileNetV3 accuracy bug, so the QAT ranges are not carried over; XNNPACK's own PTQ observers set them.)
So the .pte's faithful reference is the ``convert_pt2e`` module it is lowered from (:func:`pt2e_int8`,
:func:`pt2e_logits`), not the QAT model: ``edgecv export`` validates against it, and against the QAT model it
was derived from (both within the INT8 threshold).
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from operator import attrgetter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgecv.utils import atomic_path

# torchao (imported by executorch) registers an Enum with torch's pytree, which torch 2.14 logs as deprecated
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


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
            w_scale = attrgetter(w.args[1].target)(gm) if isinstance(w.args[1], torch.fx.Node) else w.args[1]
        elif w.target == qd.dequantize_per_tensor.default:
            w_scale = torch.tensor([float(w.args[1])])
        else:
            continue
        bias = attrgetter(b.target)(gm)
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


def _exact_qmean(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """Global average pool of a dequantized int8 tensor ``x`` (``(q - zero_point) * scale``), returned so that the
    following ``quantize_per_tensor(scale, zero_point)`` yields ``round_half_even(mean(q))`` of the int8 values
    ``q`` themselves (zero point included: with an odd zero point the ties go the other way than on
    ``mean(q - zero_point)``), exactly: what XNNPACK's qs8 mean computes (measured on the .pte, every
    element). The fp32 mean of ``x`` lands a hair off the .5 ties, which are frequent (1 in 16 on a 4x4 map), so
    the float reference rounded them at random: 2-6 % of the pooled values 1 LSB off, which the squeeze-excite
    convs then amplify."""
    q = torch.round(x.double() / scale)  # q - zero_point, exactly (|error| ~1e-6)
    n = x.shape[-1] * x.shape[-2]
    m = torch.round(q.sum(dim=(-2, -1), keepdim=True) / n + zero_point) - zero_point  # exact rational; half-even
    return (m * scale).to(x.dtype)


def _reference_module(converted: nn.Module) -> nn.Module:
    """A copy of the ``convert_pt2e`` module whose int8 global average pools (``dq -> adaptive_avg_pool2d(1) ->
    q`` with the input's q-params, XNNPACKQuantizer shares them) compute the exact integer mean, as XNNPACK does
    (:func:`_exact_qmean`). Everything else is unchanged; the .pte is still lowered from ``converted``."""
    qd = torch.ops.quantized_decomposed
    gm = copy.deepcopy(converted)
    n_rewritten = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in (torch.ops.aten.adaptive_avg_pool2d.default,
                                                              torch.ops.aten.mean.dim):
            continue
        src = node.args[0]
        if node.target == torch.ops.aten.adaptive_avg_pool2d.default:
            if list(node.args[1]) != [1, 1]:
                continue
        elif sorted(int(d) % 4 for d in node.args[1]) != [2, 3] or not (len(node.args) > 2 and node.args[2]):
            continue
        users = list(node.users)
        if not (isinstance(src, torch.fx.Node) and src.target == qd.dequantize_per_tensor.default and users
                and all(u.target == qd.quantize_per_tensor.default for u in users)):
            continue
        scale, zp = float(src.args[1]), int(src.args[2])
        if not all(float(u.args[1]) == scale and int(u.args[2]) == zp for u in users):
            continue
        with gm.graph.inserting_after(node):
            exact = gm.graph.call_function(_exact_qmean, (src, scale, zp))
        node.replace_all_uses_with(exact)
        gm.graph.erase_node(node)
        n_rewritten += 1
    if n_rewritten:
        gm.recompile()
    return gm


@torch.no_grad()
def pt2e_logits(converted: nn.Module, x: np.ndarray) -> np.ndarray:
    """Logits of the PT2E-converted (fake-quant) module, one image at a time (it was exported with batch 1), with
    its int8 global average pools computed exactly as XNNPACK computes them (:func:`_reference_module`)."""
    ref = _reference_module(converted)
    return np.concatenate([ref(torch.from_numpy(np.ascontiguousarray(x[i : i + 1]))).float().numpy()
                           for i in range(len(x))])


def export_int8(float_model: nn.Module, path: Path, img_size: int, calib: list[np.ndarray]) -> tuple[dict, nn.Module]:
    """PT2E-quantize ``float_model`` (its float layers stay float) and lower it to ``path``. Returns the export
    info and the ``convert_pt2e`` module, what the .pte computes (:func:`pt2e_logits` is its reference)."""
    converted, n = pt2e_int8(float_model, img_size, calib)
    return lower_int8(converted, path, img_size, n, float_module_names(float_model)), converted
