"""ExecuTorch .pte with the XNNPACK delegate, fp32 and INT8.

fp32: ``torch.export.export -> to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()]) ->
to_executorch()``.

INT8: the QAT model's own quantization, not a re-quantization. Its deployment form (BN folded, constant
fake-quants: :func:`edgecv.quant.deploy`) is written as the quantize/dequantize graph ``convert_pt2e`` would
produce (:mod:`edgecv.export.pte_qdq`: per-channel int8 weights with the QAT scales, per-tensor activations with
the QAT-trained scales, biases already on the int32 grid), then lowered the same way: XNNPACK runs every
``dequantize -> conv/linear -> [relu|relu6] -> quantize`` as an int8 kernel and the float ops between the QAT
model's quantizers (hardswish, SE gates, residual adds, pools) in fp32 between its int8<->fp32 converts. So the
.pte computes what the QAT model computes and is validated against it, like the ONNX and OpenVINO INT8
artifacts. (It used to be re-quantized by ``XNNPACKQuantizer`` PTQ, because PT2E *QAT* has a MobileNetV3
bug, pytorch#114859: 92.6 % top-1 agreement with the QAT model on the benchmark work, see docs/int8.md.)
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from pathlib import Path

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


def _weights_as_parameters(model: nn.Module) -> nn.Module:
    """A copy whose deploy-form weight/bias buffers are (frozen) parameters: the XNNPACK partitioner delegates a
    conv/linear only when its weight and bias are static parameters of the exported program."""
    m = copy.deepcopy(model)
    for mod in m.modules():
        for k in ("weight", "bias"):
            t = mod._buffers.get(k)
            if t is not None and t.is_floating_point():
                del mod._buffers[k]
                mod.register_parameter(k, nn.Parameter(t, requires_grad=False))
    return m


def lower_int8(qdq: nn.Module, path: Path, img_size: int, float_modules: list[str] | None = None) -> dict:
    """Lower the q/dq graph :func:`edgecv.export.pte_qdq.qat_qdq_graph` wrote to an XNNPACK .pte at ``path``."""
    dummy = (torch.zeros(1, 3, img_size, img_size),)
    with torch.no_grad():
        ep = torch.export.export(qdq, dummy)
    info = _lower_and_save(ep, path)
    info.update({"quantization": "the QAT model's own (q/dq written from its deploy form: per-channel int8 "
                                 "weights, trained activation scales)",
                 "qdq_nodes": dict(getattr(qdq, "edgecv_qdq", {})), "float_modules": list(float_modules or [])})
    return info


def int8_qdq_graph(qat_deploy: nn.Module, img_size: int) -> torch.fx.GraphModule:
    """The q/dq graph ``pte-int8`` lowers (:func:`edgecv.export.pte_qdq.qat_qdq_graph` of ``qat_deploy``)."""
    from edgecv.export.pte_qdq import qat_qdq_graph

    return qat_qdq_graph(_weights_as_parameters(qat_deploy), img_size)


def export_int8(qat_deploy: nn.Module, path: Path, img_size: int) -> dict:
    """The INT8 .pte of a QAT model's deployment form (:func:`edgecv.quant.deploy`): its fake-quants written as
    quantize/dequantize nodes (:func:`edgecv.export.pte_qdq.qat_qdq_graph`), lowered to XNNPACK. It computes
    what the QAT model computes, so it is validated against the QAT model like every INT8 artifact."""
    return lower_int8(int8_qdq_graph(qat_deploy, img_size), path, img_size, float_module_names(qat_deploy))
