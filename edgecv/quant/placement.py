"""Where the QAT modules go: Conv+BN pairs, the float stem and the output fake-quants, decided by tracing the
model (and, for output fake-quants, by the ONNX graph rules on its deploy form); :func:`prepare_qat` applies them."""

from __future__ import annotations

import copy

import torch
from torch import nn

from edgecv.errors import UserError
from edgecv.quant.deploy_form import DeployBase, DeployQConv, to_deploy
from edgecv.quant.modules import BnTail, QConvBn2d, QLinear, set_module
from edgecv.quant.scheme import ActFakeQuant, QuantConfig


def find_conv_bn_pairs(model: nn.Module, size: int = 64) -> list[tuple[str, str]]:
    """(conv name, bn name) where the BN's input is that conv's output tensor, found by tracing one forward.

    Works on any architecture built from modules (torchvision Sequential blocks, timm's named conv/bn
    attributes, BatchNormAct2d) without relying on module naming or FX traceability.
    """
    produced: dict[int, str] = {}
    pairs: list[tuple[str, str]] = []
    names = {m: n for n, m in model.named_modules()}

    def conv_hook(m, inp, out):
        produced[id(out)] = names[m]

    def bn_hook(m, inp, out):
        src = produced.get(id(inp[0]))
        if src is not None:
            pairs.append((src, names[m]))

    from edgecv.nn.graph import traced_forward

    hooks = [(m, conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [(m, bn_hook) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    traced_forward(model, hooks, size, batch=2)
    return pairs


def prepare_qat(model: nn.Module, qcfg: QuantConfig | dict | None = None) -> nn.Module:
    """Replace Conv(+BN) with :class:`QConvBn2d` and Linear with :class:`QLinear`, in place, and give the convs
    of ``qcfg.output_fq`` (decided by :func:`output_fq_placement` when None) an output fake-quant. Returns the
    model; ``model.edgecv_quant`` is the resolved config to store in the checkpoint's ``meta["quant"]``."""
    qcfg = copy.deepcopy(qcfg) if isinstance(qcfg, QuantConfig) else QuantConfig.from_dict(qcfg)
    if qcfg.float_convs is None:  # traced on the float model: a forward after the swap would seed the observers
        qcfg.float_convs = float_conv_placement(model, qcfg.trace_size) if qcfg.float_stem else []
    pairs = find_conv_bn_pairs(model, qcfg.trace_size)
    paired_bn = {b: c for c, b in pairs}
    conv_to_bn = {c: b for c, b in pairs}
    mods = dict(model.named_modules())
    for name, m in list(mods.items()):
        if isinstance(m, nn.Conv2d):
            bn_name = conv_to_bn.get(name)
            bn = mods[bn_name] if bn_name else None
            set_module(model, name, QConvBn2d(m, bn, qcfg.ema, qcfg.weight_qmax))
        elif isinstance(m, nn.Linear) and qcfg.quantize_linear:
            set_module(model, name, QLinear(m, qcfg.ema, qcfg.weight_qmax))
    for bn_name in paired_bn:
        bn = mods[bn_name]
        set_module(model, bn_name, BnTail(bn) if hasattr(bn, "act") else nn.Identity())
    mods = dict(model.named_modules())
    for name in qcfg.float_convs:
        if not isinstance(mods.get(name), QConvBn2d):
            raise UserError(f"checkpoint quant config: float conv '{name}': not a conv of this model")
        mods[name].float_layer = True
    if qcfg.output_fq is None:
        qcfg.output_fq = output_fq_placement(model, qcfg.trace_size)
    for name in qcfg.output_fq:
        q = mods.get(name)
        if not isinstance(q, QConvBn2d):
            raise UserError(f"checkpoint quant config: output fake-quant on '{name}': not a quantized conv of this model")
        q.out_fq = ActFakeQuant(qcfg.ema).to(q.act_fq.amax.device)
    model.edgecv_quant = qcfg.to_dict()  # marker + the config that rebuilds this model
    return model


def float_conv_placement(model: nn.Module, size: int) -> list[str]:
    """The ``nn.Conv2d`` modules of a float model that read the network input itself (the image stem)."""
    from edgecv.nn.graph import traced_forward

    names = {m: n for n, m in model.named_modules()}
    found: list[str] = []
    inp: list[torch.Tensor] = []

    def first(m, args):
        inp.append(args[0])

    def hook(m, args, out):
        if inp and args[0] is inp[0] and names[m] not in found:
            found.append(names[m])

    h = model.register_forward_pre_hook(first)
    try:
        traced_forward(model, [(m, hook) for m in model.modules() if isinstance(m, nn.Conv2d)], size, batch=2)
    finally:
        h.remove()
    return found


def output_fq_placement(model: nn.Module, size: int) -> list[str]:
    """Names of the :class:`QConvBn2d` modules whose output the deployed INT8 ONNX graph quantizes with a scale
    of its own (``needs_range`` in :func:`edgecv.quant.onnx_rules.conv_output_plan`).

    The deploy form (every fake-quant enabled, placeholder scales) is exported once to an in-memory ONNX;
    its Conv nodes (graph order) are matched to the modules by the order of their forward calls.
    """
    from edgecv.quant.onnx_rules import conv_output_plan, onnx_model_in_memory

    d = to_deploy(model).cpu()
    for m in d.modules():
        if isinstance(m, DeployBase) and not getattr(m, "float_layer", False):
            m.act_enabled, m.act_scale, m.w_enabled = True, 1.0, True
            if isinstance(m, DeployQConv):
                m.out_enabled = False
    from edgecv.nn.graph import traced_forward

    names = {m: n for n, m in d.named_modules()}
    order: list[str] = []
    traced_forward(d, [(m, lambda mod, i, o: order.append(names[mod])) for m in d.modules()
                       if isinstance(m, DeployQConv)], size)
    plan = conv_output_plan(onnx_model_in_memory(d, size))
    float_convs = {n for n, m in model.named_modules() if isinstance(m, QConvBn2d) and m.float_layer}
    unexpected = [r for r, n in zip(plan, order, strict=False) if (r["how"] == "float_input") != (n in float_convs)]
    if len(plan) != len(order) or unexpected:
        raise UserError(
            f"output fake-quant placement: the deploy graph has {len(plan)} Conv nodes "
            f"({sum(r['how'] == 'float_input' for r in plan)} without a quantized input) but the model ran "
            f"{len(order)} convs ({len(float_convs)} float); cannot match them (architecture not supported by "
            f"prepare_qat)")
    decision: dict[str, bool] = {}
    for name, row in zip(order, plan, strict=True):
        if name in float_convs:
            continue
        need = row["how"] == "needs_range"
        if decision.setdefault(name, need) != need:
            raise UserError(f"output fake-quant placement: '{name}' runs more than once with different needs")
    return [n for n, need in decision.items() if need]
