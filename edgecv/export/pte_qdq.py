"""The QAT model as the quantize/dequantize graph ExecuTorch's XNNPACK backend lowers (what ``convert_pt2e``
would produce, but with the QAT model's own quantization rather than a PT2E quantizer's).

The deployment form of a QAT model (:func:`edgecv.quant.deploy`) is ``torch.export``-ed; each of its fake-quants
becomes the ``quantized_decomposed`` pair it simulates:

* an activation fake-quant (a conv/linear input, a trained conv-output range) ->
  ``quantize_per_tensor -> dequantize_per_tensor`` with the QAT scale (symmetric, zero point 0, [-128, 127]);
* a weight fake-quant -> an int8 constant (the QAT-quantized integers) and ``dequantize_per_channel`` with the QAT
  per-channel scales, where the conv/linear output is quantized (``gemm -> [relu | hardtanh] -> quantize``: the
  pattern XNNPACK runs as an int8 convolution/fully-connected, the activation fused as its output clamp); a
  conv/linear whose output stays float in the QAT model (the classifier's logits) keeps the fake-quantized
  weight values as an fp32 constant and runs as an fp32 kernel on the dequantized input: the same numbers.

Everything between a dequantize and the next quantize (hardswish, SE gates, residual adds, pools) stays float, as in
the QAT model; XNNPACK runs those in fp32 between its qs8<->fp32 converts, inside the delegate. A ReLU/ReLU6
between two different scales is guarded so that XNNPACK does not fold it into the conv and skip a rounding
(:func:`_guard_requantizing_acts`). Biases are already
on the int32 grid ``input_scale * weight_scale`` in the deployment form, so XNNPACK's int32 bias re-quantizes them
exactly. (PT2E *QAT* itself has a MobileNetV3 accuracy bug, pytorch#114859: this path does not use it.)
"""

from __future__ import annotations

from operator import attrgetter

import torch
from torch import nn

ATEN = torch.ops.aten
FQ_TENSOR = ATEN.fake_quantize_per_tensor_affine.default
FQ_CHANNEL = ATEN.fake_quantize_per_channel_affine.default
GEMMS = (ATEN.conv2d.default, ATEN.linear.default)
FUSED_ACTS = (ATEN.relu.default, ATEN.relu_.default, ATEN.hardtanh.default, ATEN.hardtanh_.default)
W_QMIN, W_QMAX = -127, 127  # the weight range XNNPACK's symmetric quantization uses (QAT's lie within it)


def _qd():
    import torch.ao.quantization.fx._decomposed  # noqa: F401 - registers torch.ops.quantized_decomposed

    return torch.ops.quantized_decomposed


def _const(gm: torch.fx.GraphModule, node: torch.fx.Node) -> torch.Tensor:
    if node.op != "get_attr":
        raise ValueError(f"pte-int8: expected a constant (weight/scale) at {node.name}, got {node.op}")
    return attrgetter(node.target)(gm)


def _activation_qdq(gm: torch.fx.GraphModule) -> int:
    """Every per-tensor fake-quant -> quantize_per_tensor -> dequantize_per_tensor (same scale, zero point, range)."""
    qd, g, n = _qd(), gm.graph, 0
    for node in list(g.nodes):
        if node.op != "call_function" or node.target != FQ_TENSOR:
            continue
        x, scale, zp, qmin, qmax = node.args
        if not isinstance(scale, float | int) or not isinstance(zp, int):
            raise ValueError(f"pte-int8: activation fake-quant {node.name} has a non-constant scale ({scale!r})")
        args = (float(scale), int(zp), int(qmin), int(qmax), torch.int8)
        with g.inserting_before(node):
            q = g.call_function(qd.quantize_per_tensor.default, (x, *args))
            dq = g.call_function(qd.dequantize_per_tensor.default, (q, *args))
        node.replace_all_uses_with(dq)
        g.erase_node(node)
        n += 1
    return n


def output_quantized(gemm: torch.fx.Node) -> bool:
    """``gemm -> quantize`` or ``gemm -> relu/hardtanh -> quantize``, each the only reader: XNNPACK's int8 pattern."""
    qd = _qd()
    users = list(gemm.users)
    if len(users) != 1:
        return False
    out = users[0]
    if out.op == "call_function" and out.target in FUSED_ACTS:
        if len(out.users) != 1:
            return False
        out = next(iter(out.users))
    return out.op == "call_function" and out.target == qd.quantize_per_tensor.default


def _weight_qdq(gm: torch.fx.GraphModule) -> tuple[int, int]:
    """Every conv/linear weight fake-quant -> int8 constant + dequantize_per_channel (int8 gemm), or the
    fake-quantized fp32 constant where the gemm's output is float. Returns (int8 gemms, fp32 gemms)."""
    qd, g = _qd(), gm.graph
    n_int8 = n_fp32 = 0
    for gemm in list(g.nodes):
        if gemm.op != "call_function" or gemm.target not in GEMMS:
            continue
        fq = gemm.args[1]
        if not (isinstance(fq, torch.fx.Node) and fq.target == FQ_CHANNEL):
            continue  # a float layer (the stem): fp32 weight, as in the QAT model
        w_node, s_node, zp_node, axis, qmin, qmax = fq.args
        w, scale, zp = _const(gm, w_node), _const(gm, s_node).float(), _const(gm, zp_node)
        wq = torch.fake_quantize_per_channel_affine(w.detach().float(), scale, zp.int(), axis, qmin, qmax)
        idx = n_int8 + n_fp32
        with g.inserting_before(gemm):
            if output_quantized(gemm):
                shape = [-1 if d == axis else 1 for d in range(w.dim())]
                ints = torch.round(wq / scale.reshape(shape)).clamp(W_QMIN, W_QMAX).to(torch.int8)
                gm.register_buffer(f"_qat_weight_int8_{idx}", ints)
                gm.register_buffer(f"_qat_weight_scale_{idx}", scale.clone())
                gm.register_buffer(f"_qat_weight_zp_{idx}", torch.zeros(w.shape[axis], dtype=torch.int64))
                new = g.call_function(qd.dequantize_per_channel.default, (
                    g.get_attr(f"_qat_weight_int8_{idx}"), g.get_attr(f"_qat_weight_scale_{idx}"),
                    g.get_attr(f"_qat_weight_zp_{idx}"), axis, W_QMIN, W_QMAX, torch.int8))
                n_int8 += 1
            else:
                gm.register_parameter(f"_qat_weight_fp32_{idx}", nn.Parameter(wq, requires_grad=False))
                new = g.get_attr(f"_qat_weight_fp32_{idx}")
                n_fp32 += 1
        gemm.replace_input_with(fq, new)
        if not fq.users:
            g.erase_node(fq)
    return n_int8, n_fp32


def _drop_unused_constants(gm: torch.fx.GraphModule) -> None:
    """Delete the parameters/buffers no node reads any more (the float weights and scales the q/dq replaced), so
    the exported program does not carry them into the .pte."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in list(gm.named_parameters()) + list(gm.named_buffers()):
        if name not in used:
            owner, _, attr = name.rpartition(".")
            mod = gm.get_submodule(owner) if owner else gm
            mod._parameters.pop(attr, None)
            mod._buffers.pop(attr, None)


def _guard_requantizing_acts(gm: torch.fx.GraphModule) -> int:
    """``dequantize(s) -> relu/hardtanh -> quantize(s')`` with ``s != s'`` (a conv's trained output range, ReLU6, the
    next layer's input: EfficientNet-Lite) becomes ``dequantize -> maximum(., -FLT_MAX) -> act -> quantize``.
    Unguarded, XNNPACK fuses the clamp into the conv and requantizes the conv's output to ``s'`` once, skipping the
    rounding to ``s`` the QAT model does (measured: 15 % of the outputs 1 LSB off); the identity ``maximum`` runs
    in fp32 between its int8<->fp32 converts, so both roundings happen, as in the QAT model."""
    qd, g, n = _qd(), gm.graph, 0
    for act in list(g.nodes):
        if act.op != "call_function" or act.target not in FUSED_ACTS or len(act.users) != 1:
            continue
        dq, q = act.args[0], next(iter(act.users))
        if not (isinstance(dq, torch.fx.Node) and dq.target == qd.dequantize_per_tensor.default
                and q.target == qd.quantize_per_tensor.default and float(dq.args[1]) != float(q.args[1])):
            continue
        if n == 0:
            gm.register_buffer("_fp32_lowest", torch.tensor(torch.finfo(torch.float32).min))
        with g.inserting_before(act):
            guard = g.call_function(ATEN.maximum.default, (dq, g.get_attr("_fp32_lowest")))
        act.replace_input_with(dq, guard)
        n += 1
    return n


def qat_qdq_graph(deploy_model: nn.Module, img_size: int) -> torch.fx.GraphModule:
    """The deployment form ``deploy_model`` (weights as parameters) as a batch-1 graph of aten ops with the QAT
    model's quantization written as quantized_decomposed q/dq nodes (module docstring). ``.edgecv_qdq`` counts
    what was written."""
    dummy = (torch.zeros(1, 3, img_size, img_size),)
    with torch.no_grad():
        gm = torch.export.export(deploy_model.eval(), dummy).module()
    n_act = _activation_qdq(gm)
    n_int8, n_fp32 = _weight_qdq(gm)
    n_guard = _guard_requantizing_acts(gm)
    left = [n.name for n in gm.graph.nodes if n.op == "call_function" and n.target in (FQ_TENSOR, FQ_CHANNEL)]
    if left:
        raise ValueError(f"pte-int8: fake-quant nodes not written as q/dq: {', '.join(left[:5])}")
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    _drop_unused_constants(gm)
    gm.edgecv_qdq = {"activation_qdq": n_act, "int8_gemms": n_int8, "fp32_gemms_on_quantized_input": n_fp32,
                     "requantizing_act_guards": n_guard}
    return gm
