#!/usr/bin/env python
"""Where ONNX Runtime spends the time of an FP32 vs INT8 model: per-op-type kernel time from ORT's profiler.

    PYTHONPATH=$PWD python benchmarks/ort_profile.py BUNDLE/model-fp32.onnx BUNDLE/model-int8.onnx \
        [--ort-quantize BUNDLE/model-fp32.onnx] [--runs 200] [--top 8]

For every ONNX file: 1 thread, ORT_ENABLE_ALL, ``--runs`` inferences on a random 1x3xSxS input, then the
kernel time per op type (ms per inference, node count) and the slowest nodes with their shapes.
``--ort-quantize FP32.onnx`` also builds ORT's own static QDQ quantization of that model (quant_pre_process,
per-channel, U8 activations / S8 weights and S8/S8; random calibration: latency only) and profiles those, as
the "what would ORT's own quantizer do" reference. Profiled totals include profiler overhead: compare ratios.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort


def profile(path: str, runs: int, top: int, out_dir: Path) -> None:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.enable_profiling = True
    so.profile_file_prefix = str(out_dir / "p")
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0]
    size = inp.shape[-1] if isinstance(inp.shape[-1], int) else 224
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    for _ in range(runs):
        s.run(None, {inp.name: x})
    events = json.loads(Path(s.end_profiling()).read_text())
    by_op, count, by_node, info = collections.Counter(), collections.Counter(), collections.Counter(), {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"]["op_name"]
            by_op[op] += e["dur"]
            count[op] += 1
            by_node[e["name"]] += e["dur"]
            shapes = [list(t.values())[0] for t in e["args"].get("input_type_shape", [])][:1]
            info[e["name"]] = (op, shapes)
    total = sum(by_op.values()) / runs / 1000
    print(f"\n{path}: {total:.3f} ms kernel time per inference ({size} px, 1 thread, {runs} runs)")
    for op, us in by_op.most_common():
        print(f"  {op:26s} {us / runs / 1000:7.3f} ms  {count[op] // runs:3d} nodes")
    print("  slowest nodes:")
    for name, us in by_node.most_common(top):
        op, shapes = info[name]
        print(f"    {us / runs / 1000:6.3f} ms  {op:16s} {name[:-len('_kernel_time')][:60]}  in={shapes}")


def ort_quantized(fp32: str, out_dir: Path) -> list[str]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out_dir / "pre.onnx"
    quant_pre_process(fp32, str(pre))
    inp = ort.InferenceSession(fp32, providers=["CPUExecutionProvider"]).get_inputs()[0]
    name = inp.name
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.it = iter([{name: rng.random(shape, dtype=np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.it, None)

    outs = []
    for act in (QuantType.QUInt8, QuantType.QInt8):
        o = out_dir / f"ortq_{'u8' if act == QuantType.QUInt8 else 's8'}_activations.onnx"
        quantize_static(str(pre), str(o), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=act, weight_type=QuantType.QInt8)
        outs.append(str(o))
    return outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("onnx", nargs="*")
    ap.add_argument("--ort-quantize", default=None, help="FP32 ONNX to quantize with ORT's own static quantizer")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--top", type=int, default=8)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        files = list(a.onnx) + (ort_quantized(a.ort_quantize, Path(d)) if a.ort_quantize else [])
        for f in files:
            profile(f, a.runs, a.top, Path(d))


if __name__ == "__main__":
    main()
