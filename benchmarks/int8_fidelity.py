"""INT8 fidelity of every runtime against the QAT-form model it comes from.

Two modes.

From weights (``--weights``): a model built from local weights, its QAT form a PTQ on ``--calib`` training
images; ONNX Runtime and OpenVINO (the QDQ ONNX; OpenVINO with and without the ``DQ -> Clip -> Q`` guard) and,
with ``--pte``, ExecuTorch (the QAT model written as PT2E q/dq). The model keeps the weights' own head
(``--num-classes``, 1000 for ImageNet weights: a sensitive top-1).

    python benchmarks/int8_fidelity.py --arch efficientnet_lite0 \\
        --weights ~/.cache/edgecv/weights/efficientnet_lite0_imagenet.pt --data ~/.cache/edgecv/hymenoptera \\
        --img-size 96 --num-images 96 --calib 32 [--pte] [--json]

From an exported run (``--run RUN --bundle BUNDLE``): the bundle's INT8 artifacts against the run's QAT model on
``--num-images`` validation images (the export's own loader and preprocessing), with each other, and against the
same quantized model evaluated in float64 (the q/dq graph with every conv/add/pool in double: what the fp32 QAT
reference itself computes, without its fp32 rounding); the QAT model's top-1 minus top-2 logit of every image an
artifact disagrees on. ``--cuts N``: ``pte-int8`` cut at every dequantize on N images (each one a second output
of the lowered graph, whose logits are checked to equal the bundle's .pte bit for bit), in LSBs against the q/dq
graph in torch; per quantizer, the flips whose inputs are equal in both (new there, not carried from an earlier
layer) and how far from a rounding boundary the QAT model's own value was. A difference that XNNPACK makes by
fusing across a cut (a clamp folded into the conv before it, skipping a rounding) disappears once that tensor is
observed: the cut .pte then no longer computes the bundle's numbers, and ``cut_pte_vs_bundle_pte_max_abs_dlogit``
says so (it must be 0 for the per-quantizer rows to describe the .pte).

    python benchmarks/int8_fidelity.py --run RUN --bundle BUNDLE --data ~/.cache/edgecv/cifar10-mini \\
        --num-images 2000 --cuts 64 [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from itertools import combinations
from pathlib import Path

import numpy as np
import torch


def _agree(a: np.ndarray, b: np.ndarray) -> float:
    return round(100.0 * float((a.argmax(1) == b.argmax(1)).mean()), 2)


def _margin(logits: np.ndarray) -> np.ndarray:
    s = np.sort(logits, 1)
    return s[:, -1] - s[:, -2]


def _openvino_unguarded(onnx_path: Path, xml: Path) -> None:
    """The IR as before the ``DQ -> Clip`` guard: only the residual guard applied."""
    import onnx
    import openvino as ov

    from edgecv.export.openvino import guard_residual_output_fq

    m = onnx.load(str(onnx_path))
    guard_residual_output_fq(m)
    src = xml.with_suffix(".onnx")
    onnx.save(m, str(src))
    ov.save_model(ov.convert_model(str(src)), str(xml), compress_to_fp16=False)


def _from_weights(a) -> tuple[dict, list[dict]]:
    from edgecv.data.arrays import to_arrays
    from edgecv.data.datasets import load_train_val
    from edgecv.data.preprocess import Preprocess
    from edgecv.export import onnx as E
    from edgecv.export import openvino as OV
    from edgecv.models.pretrained import init_weights_model
    from edgecv.quant import deploy, ptq
    from edgecv.runtimes.openvino import load as ov_load
    from edgecv.runtimes.ort import load as ort_load

    pre = Preprocess(input_size=a.img_size, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    b = load_train_val(os.path.expanduser(a.data), preprocess=pre)
    xt, _ = to_arrays(b.train, pre, "calibration images")
    xv, _ = to_arrays(b.val, pre, "images")
    x = np.concatenate([xv, xt])[: a.num_images]
    model, _ = init_weights_model(a.arch, a.num_classes, os.path.expanduser(a.weights))
    qat, n_cal = ptq(model.eval(), [xt[i : i + 32] for i in range(0, a.calib, 32)], a.img_size)
    with torch.no_grad():
        ref = np.concatenate([qat(torch.from_numpy(x[i : i + 32])).numpy() for i in range(0, len(x), 32)])
    out: dict[str, np.ndarray] = {}
    info: dict = {}
    with tempfile.TemporaryDirectory() as td:
        d = Path(td)
        E.export_int8_qdq(deploy(qat), d / "m.onnx", a.img_size, calib_batches=[xt[:32]])
        OV.convert(d / "m.onnx", d / "ov" / "m.xml", info)
        (d / "raw").mkdir()
        _openvino_unguarded(d / "m.onnx", d / "raw" / "m.xml")
        out["onnxruntime"] = ort_load(d / "m.onnx").predict(x)
        out["openvino (unguarded DQ->Clip)"] = ov_load(d / "raw" / "m.xml").predict(x)
        out["openvino"] = ov_load(d / "ov" / "m.xml").predict(x)
        if a.pte:
            from edgecv.export.pte import export_int8
            from edgecv.runtimes.pte import PteRunner

            export_int8(deploy(qat), d / "m.pte", a.img_size)
            out["executorch"] = PteRunner(d / "m.pte").predict(x)
    ort_out = out["onnxruntime"]
    rows = [{"runtime": k, "agreement_qat": _agree(v, ref), "agreement_ort": _agree(v, ort_out),
             "mean_abs_dlogit_ort": round(float(np.abs(v - ort_out).mean()), 4)} for k, v in out.items()]
    meta = {"arch": a.arch, "img_size": a.img_size, "images": len(x), "calibration_images": n_cal, "guards": info}
    return meta, rows


# -- the q/dq graph of pte-int8, in float64 and cut at every dequantize -------------------------------------------
def _qd():
    from edgecv.export.pte_qdq import _qd

    return _qd()


def _batchable(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Drop torch.export's batch-1 shape guard, so the graph runs on batches in torch."""
    for n in [n for n in gm.graph.nodes if n.op == "call_module" and n.target == "_guards_fn"]:
        gm.graph.erase_node(n)
    gm.recompile()
    return gm


def _f64(v):
    return v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v


class Float64(torch.fx.Interpreter):
    """The q/dq graph with every float op in double; quantize = clamp(round(x / s)), as the QAT fake-quant."""

    def call_function(self, target, args, kwargs):
        qd = _qd()
        if target == qd.quantize_per_tensor.default:
            x, s, zp, lo, hi = args[:5]
            return torch.clamp(torch.round(x / s) + zp, lo, hi)
        if target == qd.dequantize_per_tensor.default:
            return (args[0] - args[2]) * args[1]
        return target(*map(_f64, args), **kwargs)

    def get_attr(self, target, args, kwargs):
        return _f64(super().get_attr(target, args, kwargs))


def _float64_logits(gm: torch.fx.GraphModule, x: np.ndarray, bs: int = 50) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, len(x), bs):
            r = Float64(gm).run(torch.from_numpy(x[i : i + bs]).double())
            out.append((r[0] if isinstance(r, tuple | list) else r).float().numpy())
    return np.concatenate(out)


def _with_cut_outputs(gm: torch.fx.GraphModule) -> tuple[list, int]:
    """Every dequantize_per_tensor gets a twin read only by the graph's output (an XNNPACK convert of its own: the
    int8 kernels stay, but nothing fuses across that tensor any more, which :func:`cut_report` checks on the
    logits). Returns (the original dequantize nodes, how many outputs the model has)."""
    qd, g = _qd(), gm.graph
    dqs = [n for n in g.nodes if n.op == "call_function" and n.target == qd.dequantize_per_tensor.default]
    out = next(n for n in g.nodes if n.op == "output")
    orig = out.args[0] if isinstance(out.args[0], tuple | list) else (out.args[0],)
    twins = []
    for n in dqs:
        with g.inserting_after(n):
            twins.append(g.call_function(n.target, tuple(n.args)))
    out.args = ((*orig, *twins),)
    g._codegen = torch.fx.graph.CodeGen()  # a flat tuple out, no pytree spec
    gm.recompile()
    return dqs, len(orig)


class Capture(torch.fx.Interpreter):
    """Runs the graph in torch and keeps every node's value."""

    def __init__(self, gm):
        super().__init__(gm)
        self.values: dict = {}

    def run_node(self, n):
        v = super().run_node(n)
        self.values[n] = v
        return v


class Taint(torch.fx.Interpreter):
    """1 where some input of an element's receptive field differs between the two runs: the observed difference
    at each cut dequantize, carried through convs (any tap), pools/reductions (any element) and element-wise ops."""

    def __init__(self, gm, diffs: dict, real: dict):
        super().__init__(gm)
        self.diffs, self.real, self.before_q = diffs, real, {}

    def run_node(self, n):
        if n.op in ("placeholder", "get_attr"):
            return torch.zeros_like(self.real[n]) if isinstance(self.real.get(n), torch.Tensor) else None
        if n.op != "call_function":
            return super().run_node(n)
        qd, aten = _qd(), torch.ops.aten
        if n in self.diffs:
            return self.diffs[n]
        t = [self.env[a] if isinstance(a, torch.fx.Node) else a for a in n.args]
        if n.target == qd.quantize_per_tensor.default:
            self.before_q[n] = t[0] > 0
        if n.target in (qd.quantize_per_tensor.default, qd.dequantize_per_tensor.default):
            return t[0]
        if n.target == qd.dequantize_per_channel.default:
            return torch.zeros_like(self.real[n])
        if n.target == aten.conv2d.default:
            ones = torch.ones_like(self.real[n.args[1]])
            return (torch.nn.functional.conv2d(t[0], ones, None, *t[3:]) > 0).float()
        if n.target == aten.linear.default:
            return (t[0].sum(-1, keepdim=True) > 0).float().expand_as(self.real[n])
        tensors = [a for a in t if isinstance(a, torch.Tensor)]
        if self.real[n].shape == torch.broadcast_shapes(*(a.shape for a in tensors)):  # element-wise
            return (sum(a.expand_as(self.real[n]) for a in tensors) > 0).float()
        return (n.target(*t, **n.kwargs) > 0).float()  # pools, reductions, reshapes: any tainted input


def _exact(n, values: dict, stop: set, memo: dict):
    """Node ``n`` in float64 from the torch run's dequantized values (``stop``): the QAT model's value with no
    fp32 rounding after the last quantizer."""
    if n not in memo:
        if n.op != "call_function" or n in stop or n.target == _qd().dequantize_per_channel.default:
            memo[n] = _f64(values[n])
        else:
            args = [_exact(a, values, stop, memo) if isinstance(a, torch.fx.Node) else a for a in n.args]
            memo[n] = n.target(*args, **n.kwargs)
    return memo[n]


def _cut_images(gm, dqs: list, n_out: int, runner, x: np.ndarray, stats: dict) -> np.ndarray:
    """One image: pte vs torch at every cut, in LSBs; per quantizer the flips new there (inputs equal), their
    distance to a rounding boundary in the QAT model's value and which run the float64 value agrees with.
    Returns the cut .pte's logits."""
    with torch.no_grad():
        xi = torch.from_numpy(x)
        pte = [t.numpy() for t in runner.method.execute([xi])]
        cap = Capture(gm)
        ref = [t.numpy() for t in cap.run(xi)]
    lsb = {n: (np.round(pte[n_out + k] / float(n.args[1])), np.round(ref[n_out + k] / float(n.args[1])))
           for k, n in enumerate(dqs)}
    diffs = {n: torch.from_numpy((a != b).astype(np.float32)) for n, (a, b) in lsb.items()}
    taint = Taint(gm, diffs, cap.values)
    with torch.no_grad():
        taint.run(xi)
    stop = set(dqs)
    for n in dqs:
        q = n.args[0]
        s, clean, diff = float(q.args[1]), ~taint.before_q[q].numpy(), diffs[n].numpy() > 0
        new = diff & clean
        st = stats[n]
        st["flips"] += int(diff.sum())
        st["elements"] += diff.size
        st["clean"] += int(clean.sum())
        st["new"] += int(new.sum())
        if new.any():
            y = cap.values[q.args[0]].double().numpy()[new] / s  # the QAT model's value before rounding, in LSBs
            st["dist"] = max(st["dist"], float(np.abs(np.abs(y - np.floor(y)) - 0.5).max()))
            exact = np.clip(np.round(_exact(q.args[0], cap.values, stop, {}).numpy() / s), q.args[3], q.args[4])[new]
            st["pte_exact"] += int((lsb[n][0][new] == exact).sum())
            st["qat_exact"] += int((lsb[n][1][new] == exact).sum())
    return pte[0]


def cut_report(qat: torch.nn.Module, img_size: int, x: np.ndarray, bundle_pte: Path | None) -> dict:
    """``pte-int8`` cut at every dequantize on the images ``x`` (module docstring)."""
    from edgecv.export.pte import int8_qdq_graph, lower_int8
    from edgecv.quant import deploy
    from edgecv.runtimes.pte import PteRunner

    gm = _batchable(int8_qdq_graph(deploy(qat), img_size))
    dqs, n_out = _with_cut_outputs(gm)
    stats = {n: dict.fromkeys(("flips", "elements", "clean", "new", "pte_exact", "qat_exact"), 0) | {"dist": 0.0}
             for n in dqs}
    with tempfile.TemporaryDirectory() as td:
        info = lower_int8(gm, Path(td) / "cuts.pte", img_size)
        runner = PteRunner(Path(td) / "cuts.pte")
        logits = np.concatenate([_cut_images(gm, dqs, n_out, runner, x[i : i + 1], stats) for i in range(len(x))])
    same = None if bundle_pte is None else float(np.abs(logits - PteRunner(bundle_pte).predict(x)).max())
    rows = [{"quantizer": k, "node": n.name, "after": n.args[0].args[0].target.__name__,
             "scale": float(n.args[1]), "flips_pct": round(100 * st["flips"] / st["elements"], 4),
             "new_flips": st["new"], "inputs_equal_elements": st["clean"],
             "new_per_million": round(1e6 * st["new"] / max(st["clean"], 1), 2),
             "max_lsb_from_boundary": st["dist"] if st["new"] else None,
             "float64_rounds_like_pte": st["pte_exact"], "float64_rounds_like_qat": st["qat_exact"]}
            for k, (n, st) in enumerate(stats.items())]
    new = [r for r in rows if r["new_flips"]]
    return {"images": len(x), "xnnpack": {k: info[k] for k in ("xnnpack_partitions", "ops_outside_delegate")},
            "cut_pte_vs_bundle_pte_max_abs_dlogit": same, "quantizers": rows,
            "new_flips": sum(r["new_flips"] for r in rows),
            "max_lsb_from_boundary": max((r["max_lsb_from_boundary"] for r in new), default=None),
            "float64_rounds_like_pte": sum(r["float64_rounds_like_pte"] for r in rows),
            "float64_rounds_like_qat": sum(r["float64_rounds_like_qat"] for r in rows)}


# -- an exported run's INT8 artifacts -----------------------------------------------------------------------------
def _from_bundle(a) -> tuple[dict, list[dict], dict]:
    from edgecv.contracts.manifest import load_manifest
    from edgecv.export.data import load_eval_data
    from edgecv.export.pte import int8_qdq_graph
    from edgecv.export.source import resolve_source
    from edgecv.export.validate import torch_logits
    from edgecv.quant import deploy
    from edgecv.runtimes.base import predict_all, runner_for_entry

    src = resolve_source(a.run)
    ck = src.checkpoint
    data = load_eval_data(os.path.expanduser(a.data or src.data), list(ck.class_names), ck.preprocess,
                          a.num_images, 1)
    qat = src.build()
    size = ck.preprocess.input_size
    out = {"torch QAT (fp32, the reference)": torch_logits(qat, data.x)}
    pte = None
    for e in load_manifest(a.bundle).ok_artifacts():
        if e.precision == "int8":
            r = runner_for_entry(a.bundle, e)
            out[e.name] = predict_all(r, data.x, desc=e.name)
            r.close()
            pte = Path(a.bundle) / e.file if e.runtime == "executorch" else pte
    ref, exact = out["torch QAT (fp32, the reference)"], _float64_logits(_batchable(
        int8_qdq_graph(deploy(qat), size)), data.x)
    margin = _margin(ref)
    rows = []
    for k, v in out.items():
        bad = np.flatnonzero(v.argmax(1) != ref.argmax(1))
        rows.append({"model": k, "agreement_qat": _agree(v, ref), "agreement_float64": _agree(v, exact),
                     "mean_abs_dlogit_qat": round(float(np.abs(v - ref).mean()), 4),
                     "mean_abs_dlogit_float64": round(float(np.abs(v - exact).mean()), 4),
                     "accuracy": round(100.0 * float((v.argmax(1) == data.y).mean()), 2),
                     "disagreeing_qat_margins": sorted(round(float(m), 3) for m in margin[bad])})
    pairs = {f"{p} vs {q}": _agree(out[p], out[q]) for p, q in combinations(list(out)[1:], 2)}
    meta = {"run": a.run, "bundle": a.bundle, "images": len(data.x), "img_size": size,
            "qat_margin_median": round(float(np.median(margin)), 3),
            "images_with_qat_margin_below_0.1": int((margin < 0.1).sum()), "pairwise_agreement": pairs}
    cuts = cut_report(qat, size, data.x[: a.cuts], pte) if a.cuts else {}
    return meta, rows, cuts


def main() -> None:
    from edgecv.runtimes.base import host_description

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="efficientnet_lite0")
    ap.add_argument("--weights")
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--run", help="a compress run directory (with --bundle: its exported bundle)")
    ap.add_argument("--bundle")
    ap.add_argument("--data")
    ap.add_argument("--img-size", type=int, default=96)
    ap.add_argument("--num-images", type=int, default=96)
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--pte", action="store_true")
    ap.add_argument("--cuts", type=int, default=0, help="--run: cut pte-int8 at every dequantize on N images")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if bool(a.run) == bool(a.weights) or bool(a.run) != bool(a.bundle) or (a.weights and not a.data):
        ap.error("give either --weights W --data D, or --run RUN --bundle BUNDLE")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    meta, rows, cuts = _from_bundle(a) if a.run else (*_from_weights(a), {})
    meta["host"] = host_description()
    if a.json:
        print(json.dumps({"meta": meta, "rows": rows, "cuts": cuts}, indent=2))
        return
    print(json.dumps(meta))
    for r in rows:
        print(json.dumps(r))
    for r in cuts.get("quantizers", []):
        print(f"{r['quantizer']:3d} {r['after']:22s} s={r['scale']:.5f} flips {r['flips_pct']:8.4f} %  new "
              f"{r['new_flips']:3d} ({r['new_per_million']:7.2f} ppm)  max LSB from boundary "
              f"{r['max_lsb_from_boundary']}")
    if cuts:
        print(json.dumps({k: v for k, v in cuts.items() if k != "quantizers"}))


if __name__ == "__main__":
    main()
