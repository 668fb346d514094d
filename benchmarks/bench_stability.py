#!/usr/bin/env python
"""Repeatability of `edgecv bench` (issue 5 acceptance: p50 varies < 10 % between two back-to-back runs).

Builds one bundle of real ONNX artifacts at 64 px (10 classes, ONNX Runtime):
  mobilenet_v3_small FP32, resnet18 FP32, resnet18 INT8 (ORT static QDQ, per-channel), timm
  tf_mobilenetv3_small_minimal_100 FP32
then runs `edgecv bench BUNDLE --no-accuracy --json ...` --pairs times twice back-to-back through the CLI
(default bench settings unless --bench-args) and reports, per artifact, |p50(run 2) / p50(run 1) - 1|.

    PYTHONPATH=$PWD python benchmarks/bench_stability.py --pairs 3
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgecv.contracts.manifest import ArtifactEntry, Manifest  # noqa: E402
from edgecv.data.preprocess import Preprocess  # noqa: E402
from edgecv.runtimes.base import host_description  # noqa: E402
from edgecv.utils import sha256_file  # noqa: E402

SIZE = 64
CLASSES = [f"c{i}" for i in range(10)]


def _export(model, f: Path):
    torch.onnx.export(model.eval(), torch.randn(1, 3, SIZE, SIZE), str(f), input_names=["input"],
                      output_names=["logits"], opset_version=17, dynamo=False,
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def _quantize(src: Path, dst: Path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.it = iter([{"input": rng.standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)} for _ in range(16)])

        def get_next(self):
            return next(self.it, None)

    pre = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre))
    quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    pre.unlink()


def build(bundle: Path) -> Path:
    import timm
    import torchvision

    bundle.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    models = {"mnv3s_fp32.onnx": torchvision.models.mobilenet_v3_small(num_classes=10),
              "r18_fp32.onnx": torchvision.models.resnet18(num_classes=10),
              "tfmnv3min_fp32.onnx": timm.create_model("tf_mobilenetv3_small_minimal_100", num_classes=10)}
    for name, m in models.items():
        if not (bundle / name).is_file():
            _export(m, bundle / name)
    if not (bundle / "r18_int8.onnx").is_file():
        _quantize(bundle / "r18_fp32.onnx", bundle / "r18_int8.onnx")
    # one bundle, several ONNX artifacts (bench labels same-format-precision entries by file name)
    entries = [ArtifactEntry(file=f.name, format="onnx", precision="int8" if "int8" in f.stem else "fp32",
                             runtime="onnxruntime", size_bytes=f.stat().st_size, sha256=sha256_file(f),
                             input_shape=[1, 3, SIZE, SIZE]) for f in sorted(bundle.glob("*.onnx"))]
    Manifest(target="x86", source={"kind": "benchmark"}, preprocess=Preprocess(input_size=SIZE).to_dict(),
             class_names=CLASSES, input={"name": "input", "shape": [1, 3, SIZE, SIZE], "dtype": "float32",
                                         "layout": "NCHW"},
             output={"name": "logits", "shape": [1, 10]}, artifacts=entries).write(bundle)
    return bundle


def bench(b: Path, out: Path, extra: list[str]) -> tuple[dict, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "edgecv", "bench", str(b), "--no-accuracy", "--json", str(out), "--quiet",
                        *extra], env=env, cwd=str(REPO), capture_output=True, text=True)
    if p.returncode not in (0, 1):
        raise SystemExit(p.stderr)
    return json.loads(out.read_text()), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--bench-args", default="")
    ap.add_argument("--work", default=str(REPO / "benchmarks" / "_work" / "bench_stability"))
    a = ap.parse_args()
    work = Path(a.work)
    b = build(work / "bundle")
    extra = shlex.split(a.bench_args)
    print(f"host: {host_description()}; load avg {open('/proc/loadavg').read().split()[:3]}", flush=True)
    rows: dict[str, list[tuple[float, float]]] = {}
    cpu: dict[str, list[tuple[float, float]]] = {}
    walls = []
    for i in range(a.pairs):
        r1, w1 = bench(b, work / f"run{i}_1.json", extra)
        r2, w2 = bench(b, work / f"run{i}_2.json", extra)
        walls += [w1, w2]
        for x1, x2 in zip(r1["artifacts"], r2["artifacts"], strict=True):
            p1, p2 = x1["primary"]["p50_ms"], x2["primary"]["p50_ms"]
            c1, c2 = x1["latency"][0].get("cpu_p50_ms"), x2["latency"][0].get("cpu_p50_ms")
            rows.setdefault(x1["name"], []).append((p1, p2))
            cpu.setdefault(x1["name"], []).append((c1, c2))
            print(f"pair {i + 1} {x1['name']:36s}: p50 {p1:.3f} ms then {p2:.3f} ms -> {abs(p2 / p1 - 1) * 100:.1f} %"
                  f" (CPU-time p50 {c1:.3f} / {c2:.3f} ms)", flush=True)
        print(f"  load avg {open('/proc/loadavg').read().split()[:3]}", flush=True)
    settings = r1["settings"]
    print(f"\nbench settings: threads {settings['threads']}, batch {settings['batches']}, min_time {settings['min_time_s']}s, "
          f"min_runs {settings['min_runs']}, rounds {settings['rounds']}; wall per bench run {min(walls):.1f}-{max(walls):.1f}s")
    print("\n| artifact (64 px, ORT, 1 thread) | p50 run 1 / run 2, ms (per pair) | max abs diff p50 | "
          "CPU-time p50 1 / 2, ms | max abs diff CPU p50 |")
    print("|---|---|---:|---|---:|")
    worst = 0.0
    for name, ps in rows.items():
        d = max(abs(p2 / p1 - 1) for p1, p2 in ps)
        dc = max(abs(c2 / c1 - 1) for c1, c2 in cpu[name])
        worst = max(worst, d)
        print(f"| {name} | " + ", ".join(f"{p1:.3f} / {p2:.3f}" for p1, p2 in ps) + f" | {d * 100:.1f} % | "
              + ", ".join(f"{c1:.3f} / {c2:.3f}" for c1, c2 in cpu[name]) + f" | {dc * 100:.1f} % |")
    print(f"\nworst back-to-back p50 difference: {worst * 100:.1f} % (acceptance: < 10 %)")


if __name__ == "__main__":
    main()
