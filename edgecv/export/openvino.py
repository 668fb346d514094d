"""OpenVINO IR (.xml + .bin) from the ONNX files: fp32 (no fp16 weight compression) and INT8 (from the QDQ
ONNX: OpenVINO turns Q/DQ into FakeQuantize and its low-precision transformations run int8 convolutions).

Before conversion :func:`guard_residual_output_fq` rewrites one QDQ construct that the OpenVINO CPU plugin does
not execute as written: ``Conv -> Q -> DQ -> Add(residual) -> Q`` (a projection conv's output fake-quant, then the
residual Add, then the next layer's input quantization). The plugin fuses all of it into the convolution and, for
exactly this post-op chain (a FakeQuantize first, a fused sum and another FakeQuantize after it), applies the first
FakeQuantize *without rounding* (``Convolution::setPostOps``: "drop rounding one special residual pattern", a
clamp only), so the Add sees the unrounded conv output. Measured on OpenVINO 2026.4 (mobilenet_v3_small QAT,
cifar10-mini 64 px): 16 % of the next layer's int8 inputs off by one LSB, top-1 agreement with the QAT model
96.9 % (ORT 99.9 %).

:func:`guard_dq_clip` rewrites a second one: ``DQ(s) -> Clip(0, c) -> Q`` (EfficientNet-Lite's ReLU6 after a conv
with a trained output range). The low-precision transformations move the dequantization past the Clamp and clamp
the int8 values themselves, at ``floor(c / s)``: where ``c`` is not on the input's grid the top of the range is
lost (ReLU6 clamped to ``floor(6 / s) * s``, e.g. 5.18 instead of 6 for ``s = 0.86``). Measured on OpenVINO
2026.4 (pretrained EfficientNet-Lite0, hymenoptera photos, 96 px, 1000 ImageNet classes): 19 % of the first
block's int8 outputs off by up to 18 LSBs, top-1 agreement with ONNX Runtime 54 %; guarded, those outputs are
equal and the agreement 84 % (the rest: 1-LSB requantization ties that this 1000-class PTQ model amplifies).

Not guardable, and not guarded: on CPUs without VNNI/AMX (AVX2) the plugin's int8 convolutions shift the int8
input to u8 and sum u8*s8 product pairs in int16 with saturation (``vpmaddubsw``), so weights beyond ±63 can
saturate; an ISA property of the kernel, caught only by validation (docs/int8.md, measured there).

:func:`ov_int8_kernels` compiles the IR for CPU and reads ``get_runtime_model()``: every executed layer carries
``layerType`` and ``runtimePrecision`` in its rt_info, so "int8 really runs" is checked, not assumed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

FLOAT32_LOWEST = float(np.finfo(np.float32).min)


def guard_residual_output_fq(model) -> int:
    """``Conv -> Q -> DQ -> Add -> Q`` becomes ``Conv -> Max(., -FLT_MAX) -> Q -> DQ -> Add -> Q`` (in place).

    ``Max`` with the lowest finite float is the identity on every finite value, so ONNX semantics are unchanged.
    The OpenVINO CPU plugin cannot fuse it into the convolution, so the output FakeQuantize, the Add and the next
    FakeQuantize become post-ops of a separate eltwise node, where the FakeQuantize rounds as ONNX
    ``QuantizeLinear`` does; the convolution itself still runs int8. Only the pattern the plugin mis-executes is
    touched: the DQ output is read by an Add whose only reader is a ``QuantizeLinear``. Returns the count.
    """
    from onnx import helper

    from edgecv.quant.onnx_rules import add_initializer, graph_maps

    g = model.graph
    producers, consumers = graph_maps(g)
    graph_outputs = {o.name for o in g.output}
    lowest = None
    done = 0
    for dq in list(g.node):
        if dq.op_type != "DequantizeLinear":
            continue
        q = producers.get(dq.input[0])
        conv = producers.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
        if conv is None or conv.op_type != "Conv" or len(consumers.get(conv.output[0], [])) != 1:
            continue
        if conv.output[0] in graph_outputs:
            continue
        adds = [c for c in consumers.get(dq.output[0], []) if c.op_type == "Add"]
        if not any(len(rs := consumers.get(a.output[0], [])) == 1 and rs[0].op_type == "QuantizeLinear"
                   and a.output[0] not in graph_outputs for a in adds):
            continue
        if lowest is None:
            lowest = add_initializer(g, "ov_guard.float32_lowest", np.array(FLOAT32_LOWEST, np.float32))
        raw = conv.output[0] + "_unguarded"
        guard = helper.make_node("Max", [raw, lowest], [conv.output[0]], name=(conv.name or conv.output[0]) + ".ov_guard")
        conv.output[0] = raw
        g.node.insert(list(g.node).index(conv) + 1, guard)
        done += 1
    return done


def _clip_max(clip, inits, producers) -> float | None:
    from edgecv.quant.onnx_rules import _const_value

    if len(clip.input) > 2 and clip.input[2]:
        v = _const_value(clip.input[2], inits, producers)
        return None if v is None else float(v.reshape(()))
    return next((a.f for a in clip.attribute if a.name == "max"), None)


def guard_dq_clip(model) -> int:
    """``DQ(s) -> Clip(lo, c)`` becomes ``DQ(s) -> Max(., -FLT_MAX) -> Clip`` (in place) where ``c`` is not a multiple of
    ``s``: the identity ``Max`` stops OpenVINO from clamping the int8 values at ``floor(c / s)`` (module docstring), so
    the Clamp runs on the dequantized floats as ONNX says; the convolutions around it still run int8. Returns the
    count."""
    from onnx import helper

    from edgecv.quant.onnx_rules import _dq_params, _init_map, add_initializer, graph_maps

    g = model.graph
    producers, _ = graph_maps(g)
    inits = _init_map(g)
    lowest, done = None, 0
    for clip in list(g.node):
        dq = producers.get(clip.input[0]) if clip.op_type == "Clip" else None
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        scale, _ = _dq_params(dq, inits, producers)
        top = _clip_max(clip, inits, producers)
        if scale is None or scale.size != 1 or top is None:
            continue
        steps = top / float(scale.reshape(()))
        if abs(steps - round(steps)) < 1e-6 * max(1.0, abs(steps)):
            continue  # the bound is on the grid: clamping the int8 values is exact
        if lowest is None:
            lowest = add_initializer(g, "ov_clip_guard.float32_lowest", np.array(FLOAT32_LOWEST, np.float32))
        guarded = clip.input[0] + "_ov_clip_guard"
        g.node.insert(list(g.node).index(clip), helper.make_node("Max", [clip.input[0], lowest], [guarded],
                                                                 name=(clip.name or clip.output[0]) + ".ov_guard"))
        clip.input[0] = guarded
        done += 1
    return done


def convert(onnx_path: Path, xml_path: Path, info: dict | None = None) -> list[Path]:
    """ONNX -> IR, written atomically (both files to a temp dir, .bin renamed before .xml). Returns [xml, bin].

    QDQ graphs go through :func:`guard_residual_output_fq` and :func:`guard_dq_clip` first;
    ``info["residual_output_fq_guards"]`` and ``info["dq_clip_guards"]`` (when a dict is passed) receive the number
    of rewrites."""
    import onnx
    import openvino as ov

    xml_path.parent.mkdir(parents=True, exist_ok=True)
    m = onnx.load(str(onnx_path))
    n_res, n_clip = guard_residual_output_fq(m), guard_dq_clip(m)
    n_guards = n_res + n_clip
    if info is not None and any(n.op_type == "QuantizeLinear" for n in m.graph.node):
        info["residual_output_fq_guards"], info["dq_clip_guards"] = n_res, n_clip
    bin_path = xml_path.with_suffix(".bin")
    tmpdir = Path(tempfile.mkdtemp(prefix=".ov.", dir=xml_path.parent))
    try:
        src = onnx_path
        if n_guards:
            src = tmpdir / "guarded.onnx"
            onnx.save(m, str(src))
        model = ov.convert_model(str(src))
        txml = tmpdir / xml_path.name
        ov.save_model(model, str(txml), compress_to_fp16=False)
        os.replace(txml.with_suffix(".bin"), bin_path)
        os.replace(txml, xml_path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return [xml_path, bin_path]


def ov_int8_kernels(xml_path: Path, device: str = "CPU", threads: int = 1) -> dict:
    """Runtime precision of the convolutions / matmuls OpenVINO really executes on ``device``."""
    import openvino as ov

    core = ov.Core()
    cfg = {"INFERENCE_NUM_THREADS": int(threads)} if device == "CPU" and threads else {}
    cfg["INFERENCE_PRECISION_HINT"] = "f32"  # as the runner: float layers in f32, not the CPU's bf16 default
    compiled = core.compile_model(core.read_model(str(xml_path)), device, cfg)
    per = Counter()
    for op in compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        lt = str(rt["layerType"].astype(str)) if "layerType" in rt else op.get_type_name()
        prec = str(rt["runtimePrecision"].astype(str)).upper() if "runtimePrecision" in rt else "?"
        per[(lt, prec)] += 1
    convs = {f"{lt}:{p}": n for (lt, p), n in per.items() if lt in ("Convolution", "GroupConvolution", "FullyConnected", "MatMul", "Deconvolution")}
    int8_convs = sum(n for (lt, p), n in per.items() if lt == "Convolution" and p in ("I8", "U8"))
    all_convs = sum(n for (lt, p), n in per.items() if lt == "Convolution")
    return {
        "runtime": "openvino " + ov.get_version(),
        "device": device,
        "layers": convs,
        "int8_convs": int8_convs,
        "convs": all_convs,
        "int8_kernels": all_convs > 0 and int8_convs >= 0.5 * all_convs,
    }
