"""The INT8 scheme's ONNX graph rules: int8 weight folding, int32 bias, Conv-output Q/DQ placement.

See :mod:`edgecv.export.onnx` for how these passes turn the QAT model's deployment form into the QDQ graph that
ONNX Runtime's int8 node-group selectors fuse; :func:`conv_output_plan` is also what QAT uses to place its
trained output fake-quants (:func:`edgecv.quant.placement.output_fq_placement`), so training and export agree.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgecv.contracts.manifest import INPUT_NAME, OUTPUT_NAME
from edgecv.errors import UserError


def onnx_model_in_memory(model: nn.Module, img_size: int, opset: int = 17):
    """The raw ``torch.onnx.export`` graph of ``model`` (batch 1) as an ``onnx.ModelProto``, no file written."""
    import io

    import onnx

    buf = io.BytesIO()
    dummy = torch.zeros(1, 3, img_size, img_size, dtype=torch.float32)
    with torch.no_grad():
        torch.onnx.export(model.eval(), (dummy,), buf, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue())


def _init_map(g) -> dict:
    return {i.name: i for i in g.initializer}


def _const_value(name: str, inits: dict, producers: dict) -> np.ndarray | None:
    from onnx import numpy_helper

    if name in inits:
        return numpy_helper.to_array(inits[name])
    p = producers.get(name)
    if p is not None and p.op_type == "Identity":
        return _const_value(p.input[0], inits, producers)
    if p is not None and p.op_type == "Constant":
        for a in p.attribute:
            if a.name == "value":
                return numpy_helper.to_array(a.t)
    return None


def graph_maps(g):
    """(producer node of each value name, consumer nodes of each value name) of an ONNX graph."""
    producers = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    return producers, consumers


def add_initializer(g, name: str, arr: np.ndarray) -> str:
    from onnx import numpy_helper

    g.initializer.append(numpy_helper.from_array(arr, name))
    return name


def _axis(node, default: int = 1) -> int:
    for a in node.attribute:
        if a.name == "axis":
            return a.i
    return default


def fold_weight_quantize(model) -> int:
    """``QuantizeLinear(W_float const) -> DQ`` becomes ``DQ(W_int8 initializer)``. Returns the count."""
    from onnx import helper

    g = model.graph
    inits = _init_map(g)
    producers, consumers = graph_maps(g)
    n_done = 0
    remove = []
    for q in list(g.node):
        if q.op_type != "QuantizeLinear":
            continue
        w = _const_value(q.input[0], inits, producers)
        if w is None:
            continue
        scale = _const_value(q.input[1], inits, producers)
        zp = _const_value(q.input[2], inits, producers) if len(q.input) > 2 else np.zeros((), np.uint8)
        if scale is None or zp is None:
            continue
        axis = _axis(q)
        shape = [1] * w.ndim
        if scale.ndim == 1 and scale.size > 1:
            shape[axis] = -1
        s = scale.reshape(shape) if scale.ndim else scale
        z = zp.reshape(shape).astype(np.int32) if zp.ndim else zp.astype(np.int32)
        info = np.iinfo(zp.dtype)
        qw = np.clip(np.round(w / s) + z, info.min, info.max).astype(zp.dtype)
        qname = add_initializer(g, q.output[0] + "_int", qw)
        for c in consumers[q.output[0]]:
            for k, inp in enumerate(c.input):
                if inp == q.output[0]:
                    c.input[k] = qname
        remove.append(q)
        n_done += 1
    for q in remove:
        g.node.remove(q)
    _drop_unused(g)
    del helper
    return n_done


def _dq_params(dq, inits, producers):
    scale = _const_value(dq.input[1], inits, producers)
    zp = _const_value(dq.input[2], inits, producers) if len(dq.input) > 2 else None
    return scale, zp


def quantize_bias(model) -> dict:
    """Float bias of ``DQ(x), DQ(W) -> Conv/Gemm`` -> int32 initializer + DQ(scale = sx*sw, axis 0)."""
    from onnx import helper

    g = model.graph
    inits = _init_map(g)
    producers, _ = graph_maps(g)
    n_done = 0
    stats_over = [0]
    for node in list(g.node):
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or not node.input[2]:
            continue
        px, pw = producers.get(node.input[0]), producers.get(node.input[1])
        if not (px is not None and pw is not None and px.op_type == "DequantizeLinear"
                and pw.op_type == "DequantizeLinear"):
            continue
        b = _const_value(node.input[2], inits, producers)
        if b is None or b.dtype != np.float32:
            continue
        sx, _ = _dq_params(px, inits, producers)
        sw, _ = _dq_params(pw, inits, producers)
        if sx is None or sw is None or sx.size != 1:
            continue
        if node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            if not trans_b and sw.size > 1:  # per-channel axis would not be the output axis
                continue
        bscale = (float(sx.reshape(())) * sw.astype(np.float64).reshape(-1)).astype(np.float32)
        if bscale.size == 1 and b.size > 1:
            bscale = np.full(b.shape, bscale.item(), np.float32)
        # channels whose weight scale is tiny (dead/pruned channels: all weights ~0) would overflow int32; raise
        # their weight scale (their int8 weights are rescaled, ~0 either way) so that |bias| fits
        need = np.abs(b.astype(np.float64)) / (2**31 - 1024)
        over = bscale.astype(np.float64) < need
        if np.any(over):
            if not _rescale_weight_channels(g, pw, over, need / float(sx.reshape(())), inits, producers):
                continue
            sw, _ = _dq_params(pw, _init_map(g), producers)
            bscale = (float(sx.reshape(())) * sw.astype(np.float64).reshape(-1)).astype(np.float32)
            stats_over[0] += int(over.sum())
        qb = np.clip(np.round(b.astype(np.float64) / bscale), -(2**31), 2**31 - 1).astype(np.int32)
        base = node.name or node.output[0]
        qn = add_initializer(g, f"{base}.bias_int32", qb)
        sn = add_initializer(g, f"{base}.bias_scale", bscale)
        zn = add_initializer(g, f"{base}.bias_zp", np.zeros(qb.shape, np.int32))
        out = f"{base}.bias_dq"
        dq = helper.make_node("DequantizeLinear", [qn, sn, zn], [out], name=f"{base}.bias_DQ", axis=0)
        idx = list(g.node).index(node)
        g.node.insert(idx, dq)
        node.input[2] = out
        n_done += 1
    _drop_unused(g)
    return {"bias_int32": n_done, "weight_channels_rescaled_for_bias": stats_over[0]}


def _rescale_weight_channels(g, dq_w, mask: np.ndarray, min_scale: np.ndarray, inits, producers) -> bool:
    """Raise the per-channel weight scale of ``dq_w`` to ``min_scale`` where ``mask``; requantize the int8 weights."""
    from onnx import numpy_helper

    if dq_w.input[0] not in inits or dq_w.input[1] not in inits:
        return False
    wq = numpy_helper.to_array(inits[dq_w.input[0]]).astype(np.float64)
    sw = numpy_helper.to_array(inits[dq_w.input[1]]).astype(np.float64)
    if sw.ndim != 1 or sw.size != wq.shape[0]:
        return False
    new_s = np.where(mask, np.maximum(sw, min_scale), sw)
    shape = (-1,) + (1,) * (wq.ndim - 1)
    new_w = np.clip(np.round(wq * (sw / new_s).reshape(shape)), -127, 127).astype(np.int8)
    # fresh initializers (the old ones may be shared with other nodes)
    wn, sn = dq_w.input[0] + "_rs", dq_w.input[1] + "_rs"
    g.initializer.append(numpy_helper.from_array(new_w, wn))
    g.initializer.append(numpy_helper.from_array(new_s.astype(np.float32), sn))
    dq_w.input[0], dq_w.input[1] = wn, sn
    return True


def _drop_unused(g) -> None:
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [i for i in g.initializer if i.name in used]
    if len(keep) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(keep)
    # Constant nodes whose outputs nobody reads
    changed = True
    while changed:
        changed = False
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        for n in list(g.node):
            if n.op_type == "Constant" and n.output[0] not in used:
                g.node.remove(n)
                changed = True


# Element-wise, monotone ops with constant parameters between a Conv and its reader's QuantizeLinear: quantizing the
# Conv output with that Q's own scale changes nothing, ``Q(op(DQ(Q(x)))) == Q(op(x))`` for ReLU and for any Clip
# with constant bounds (ReLU6: rounding and clamping are monotone and the Q rounds the bound itself), so the Conv
# keeps its reader's fine grid instead of a range of its own (EfficientNet-Lite's ReLU6 behind a BN-folded conv
# whose raw output reaches +-90: a grid of its own left 8 levels for [0, 6]).
_PASSTHROUGH = ("Relu", "Clip")


def _passes_through(node, inits, producers) -> bool:
    if node.op_type == "Clip":  # bounds as inputs (opset >= 11) must be constants, else the op is not element-wise
        return all(_const_value(b, inits, producers) is not None for b in node.input[1:] if b)
    return node.op_type in _PASSTHROUGH


def _downstream_q_scale(out_name: str, consumers, inits, producers) -> float | None:
    """The scale of the QuantizeLinear that (through ReLU / constant Clip only) is the sole reader of ``out_name``."""
    name = out_name
    for _ in range(3):
        cs = consumers.get(name, [])
        if len(cs) != 1:
            return None
        c = cs[0]
        if c.op_type == "QuantizeLinear":
            s = _const_value(c.input[1], inits, producers)
            zp = _const_value(c.input[2], inits, producers) if len(c.input) > 2 else None
            if s is None or s.size != 1 or (zp is not None and np.any(zp != 0)) or (zp is not None and zp.dtype != np.int8):
                return None
            return float(s.reshape(()))
        if not _passes_through(c, inits, producers):
            return None
        name = c.output[0]
    return None


def _q_feeds_float_op(out: str, consumers) -> bool:
    """``Conv -> Q -> DQ -> X`` where X is not a quantized layer's input (a trained output fake-quant)."""
    (q,) = consumers[out]
    for dq in consumers.get(q.output[0], []):
        if dq.op_type != "DequantizeLinear":
            return True
        for c in consumers.get(dq.output[0], []):
            if c.op_type not in ("Conv", "Gemm", "MatMul") or c.input[0] != dq.output[0]:
                return True
    return False


def conv_output_plan(model) -> list[dict]:
    """How :func:`add_output_qdq` would treat each Conv of ``model`` (graph order), without modifying it.

    One dict per Conv node: ``node``, ``output`` and ``how``, one of ``float_input`` (input not from a
    DequantizeLinear: not a quantized conv), ``has_q`` (its sole reader already is a QuantizeLinear),
    ``mixed_consumers`` (a QuantizeLinear next to float readers: left float), ``exact`` (``scale`` is the
    consumer Q's scale, through ReLU / Clip only) or ``needs_range`` (a scale must come from an observed range).
    :func:`edgecv.quant.placement.prepare_qat` uses it to put a trained output fake-quant exactly where
    the deployment graph would otherwise get a calibrated one.
    """
    g = model.graph
    inits = _init_map(g)
    producers, consumers = graph_maps(g)
    plan = []
    for node in g.node:
        if node.op_type != "Conv":
            continue
        out = node.output[0]
        row = {"node": node.name, "output": out, "how": "", "scale": None}
        plan.append(row)
        px = producers.get(node.input[0])
        if px is None or px.op_type != "DequantizeLinear":
            row["how"] = "float_input"
            continue
        cs = consumers.get(out, [])
        if len(cs) == 1 and cs[0].op_type == "QuantizeLinear":
            row["how"] = "has_q"  # already DQ... -> Conv -> Q
            continue
        # a consumer Q next to float readers (projection conv -> next conv and residual Add). Measured on ORT
        # 1.32: routing the Add through a DQ of that Q (or a shared DQ) makes ORT keep BOTH neighbouring convs
        # float, so this conv stays float and its consumers keep their int8 kernels.
        if any(c.op_type == "QuantizeLinear" for c in cs):
            row["how"] = "mixed_consumers"
            continue
        scale = _downstream_q_scale(out, consumers, inits, producers)
        row["how"], row["scale"] = ("exact", scale) if scale is not None else ("needs_range", None)
    return plan


def add_output_qdq(model, calib_amax: dict[str, float] | None = None, min_scale: float = 1e-8) -> dict:
    """Insert ``Q -> DQ`` (int8, symmetric) after each quantized Conv's output. Returns counts by how the scale
    was chosen: ``exact`` (consumer Q's scale, possibly through ReLU / Clip), ``calibrated`` (observed range) and
    ``skipped`` (no scale known: the Conv output stays float); ``mixed_consumers`` are left float on purpose.
    Convs whose output already goes to a ``Q`` (e.g. a QAT-trained output fake-quant) are left as they are
    and counted as ``trained`` when that Q is not also the next layer's input Q."""
    from onnx import helper

    g = model.graph
    convs = {n.output[0]: n for n in g.node if n.op_type == "Conv"}
    _, consumers = graph_maps(g)
    stats = Counter()
    for row in conv_output_plan(model):
        how, out = row["how"], row["output"]
        if how == "float_input":
            continue
        if how == "has_q":
            if _q_feeds_float_op(out, consumers):
                stats["trained"] += 1
            continue
        if how == "mixed_consumers":
            stats["mixed_consumers"] += 1
            continue
        scale = row["scale"]
        if how == "needs_range" and calib_amax and out in calib_amax:
            scale = max(calib_amax[out] / 127.0, min_scale)
            how = "calibrated"
        if scale is None:
            stats["skipped"] += 1
            continue
        node = convs[out]
        for o in g.output:
            if o.name == out:  # keep the graph output name: rename through an Identity
                raise UserError("INT8 export: a Conv output is a graph output (the model ends in a conv); not supported")
        base = node.name or out
        sn = add_initializer(g, f"{base}.out_scale", np.array(scale, np.float32))
        zn = add_initializer(g, f"{base}.out_zp", np.array(0, np.int8))
        new_out = f"{out}_fq"
        q = helper.make_node("QuantizeLinear", [out, sn, zn], [f"{out}_q"], name=f"{base}.out_Q")
        dq = helper.make_node("DequantizeLinear", [f"{out}_q", sn, zn], [new_out], name=f"{base}.out_DQ")
        for c in consumers.get(out, []):
            for k, inp in enumerate(c.input):
                if inp == out:
                    c.input[k] = new_out
        idx = list(g.node).index(node)
        g.node.insert(idx + 1, dq)
        g.node.insert(idx + 1, q)
        stats[how] += 1
    return dict(stats)


def conv_output_ranges(path: Path, batches: list[np.ndarray]) -> dict[str, float]:
    """max |x| of every Conv output of the ONNX model at ``path`` over calibration ``batches`` (via ORT)."""
    import onnx
    import onnxruntime as ort

    m = onnx.load(str(path))
    names = [n.output[0] for n in m.graph.node if n.op_type == "Conv"]
    existing = {o.name for o in m.graph.output}
    for n in names:
        if n not in existing:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    amax = dict.fromkeys(names, 0.0)
    for b in batches:
        outs = sess.run(names, {INPUT_NAME: b.astype(np.float32)})
        for n, o in zip(names, outs, strict=True):
            amax[n] = max(amax[n], float(np.abs(o).max()))
    return amax


