#!/usr/bin/env python
"""How much does one runtime *session* (its memory layout) shift latency, relative to round-to-round noise?

Two identical ONNX models (the same file copied), ONNX Runtime, 1 thread. For each of --pairs session pairs:
load both afresh, warm up, then --rounds interleaved rounds (block of A, block of B; --block-ms each); the pair's
ratio is the median of its per-round ratios median(B)/median(A). Pairs alternate between one input array shared
by A and B and a separate array for each. Also one pair kept for --pairs x --rounds rounds (the single-pair design
`edgecv gate` used before session pairs). The spread of the pair ratios, against the tight spread of rounds within
a pair, is why `edgecv gate` spreads its rounds over several session pairs (docs/ci-gate.md).

    PYTHONPATH=$PWD python benchmarks/session_layout.py [--tiny] [--stress N]
"""

from __future__ import annotations

import argparse
import gc
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgecv.runtimes.base import host_description, load_runner  # noqa: E402
from edgecv.runtimes.latency import time_block  # noqa: E402


def make_onnx(path: Path, tiny: bool, size: int) -> None:
    torch.manual_seed(0)
    if tiny:
        m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 10))
    else:
        import torchvision

        m = torchvision.models.mobilenet_v3_small(num_classes=10)
    torch.onnx.export(m.eval(), torch.randn(1, 3, size, size), str(path), input_names=["input"],
                      output_names=["logits"], opset_version=17, dynamo=False)


def pair_rounds(pa: Path, pb: Path, x_a: np.ndarray, x_b: np.ndarray, rounds: int, block_s: float,
                ra=None, rb=None) -> list[float]:
    own = ra is None
    if own:
        ra, rb = load_runner("onnxruntime", pa, threads=1), load_runner("onnxruntime", pb, threads=1)
    for _ in range(10):
        ra.predict(x_a)
        rb.predict(x_b)
    out = []
    gc.disable()
    try:
        for i in range(rounds):
            first, second = ((ra, x_a), (rb, x_b)) if i % 2 == 0 else ((rb, x_b), (ra, x_a))
            t1 = np.median(time_block(lambda r=first[0], x=first[1]: r.predict(x), 5, block_s))
            t2 = np.median(time_block(lambda r=second[0], x=second[1]: r.predict(x), 5, block_s))
            ta, tb = (t1, t2) if i % 2 == 0 else (t2, t1)
            out.append(tb / ta)
    finally:
        gc.enable()
        if own:
            ra.close()
            rb.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--block-ms", type=float, default=20.0)
    ap.add_argument("--tiny", action="store_true", help="1-conv model (~20 us) instead of MobileNetV3-Small")
    ap.add_argument("--size", type=int, default=None, help="input size (default 32 tiny, 96 MobileNetV3)")
    ap.add_argument("--stress", type=int, default=0, metavar="N", help="N busy-loop processes while measuring")
    args = ap.parse_args()
    size = args.size or (32 if args.tiny else 96)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as td:
        pa, pb = Path(td) / "a.onnx", Path(td) / "b.onnx"
        make_onnx(pa, args.tiny, size)
        shutil.copy(pa, pb)
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.stress)]
        try:
            modes = ("shared input", "separate inputs")
            res: dict[str, list] = {m: [] for m in modes}
            for i in range(args.pairs):  # the two input modes alternate, so a burst of load hits both
                for mode in modes if i % 2 == 0 else modes[::-1]:
                    xa = rng.standard_normal((1, 3, size, size)).astype(np.float32)
                    xb = xa if mode == "shared input" else rng.standard_normal(xa.shape).astype(np.float32)
                    res[mode].append(pair_rounds(pa, pb, xa, xb, args.rounds, args.block_ms / 1e3))
            ra, rb = load_runner("onnxruntime", pa, threads=1), load_runner("onnxruntime", pb, threads=1)
            xa = rng.standard_normal((1, 3, size, size)).astype(np.float32)
            xb = rng.standard_normal(xa.shape).astype(np.float32)
            kept = [pair_rounds(pa, pb, xa, xb, args.rounds, args.block_ms / 1e3, ra, rb) for _ in range(args.pairs)]
            ra.close()
            rb.close()
        finally:
            for h in hogs:
                h.kill()
    print(f"host: {host_description()}; model: {'1-conv tiny' if args.tiny else 'mobilenet_v3_small'} {size} px; "
          f"{args.pairs} pairs x {args.rounds} rounds, {args.block_ms:g} ms blocks, stress {args.stress}\n")
    print("| sessions | input | pair ratios (median of rounds), min-max | spread of pair ratios (max/min) | "
          "median within-pair spread of rounds (max/min) |")
    print("|---|---|---|---:|---:|")
    rows = [("fresh pair each", m, p) for m, p in res.items()] + [("one pair kept", "separate inputs", kept)]
    for sess, mode, pairs in rows:
        med = np.array([np.median(p) for p in pairs])
        within = np.median([max(p) / min(p) for p in pairs])
        print(f"| {sess} | {mode} | {med.min():.3f}-{med.max():.3f} | {med.max() / med.min():.3f} | {within:.3f} |")


if __name__ == "__main__":
    main()
