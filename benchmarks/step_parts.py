"""Two parts of every training step, old way vs new way, interleaved in one process (1 process, torch's threads).

* normalisation of an ``input_size`` RGB image to ``CHW float32``: the per-pixel float arithmetic (what
  ``Preprocess.to_array`` did) vs the 256-level lookup table it uses now (bit-identical; checked here too);
* AdamW's step: the default (per-tensor) implementation vs ``fused=True`` (what ``training.loop`` uses on
  CPU/CUDA), on random gradients of mobilenet_v3_small and resnet18.

    flock /tmp/edgecv-heavy.lock .venv/bin/python benchmarks/step_parts.py [--sizes 64,128,224] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image

from edgecv.data.preprocess import Preprocess
from edgecv.models.registry import create_model


def arithmetic(pre: Preprocess, img: Image.Image) -> np.ndarray:
    """The previous ``_normalize_array``: per-pixel float32 arithmetic."""
    a = np.asarray(img, dtype=np.float32) / 255.0
    a = (a - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def per_call(fn, n: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="64,128,224")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, numpy {np.__version__}\n")
    print("| normalise | arithmetic us | table us | speed-up | identical |\n|---|---|---|---|---|")
    for s in (int(v) for v in a.sizes.split(",")):
        pre = Preprocess(input_size=s)
        img = Image.fromarray(rng.integers(0, 256, (s, s, 3), dtype=np.uint8))
        same = np.array_equal(arithmetic(pre, img), pre.normalize(img).numpy())
        old, new = [], []
        for _ in range(a.rounds):
            old.append(per_call(lambda p=pre, i=img: arithmetic(p, i), 300))
            new.append(per_call(lambda p=pre, i=img: p.normalize(i), 300))
        o, n = statistics.median(old) * 1e6, statistics.median(new) * 1e6
        print(f"| {s} px | {o:.0f} | {n:.0f} | {o / n:.2f}x | {same} |")
    print("\n| AdamW step | parameters | default ms | fused ms | speed-up |\n|---|---|---|---|---|")
    for arch, classes in (("mobilenet_v3_small", 10), ("resnet18", 10)):
        m = create_model(arch, classes)
        for p in m.parameters():
            p.grad = torch.randn_like(p)
        opts = {k: torch.optim.AdamW(m.parameters(), 1e-3, fused=k) for k in (False, True)}
        t = {False: [], True: []}
        for _ in range(a.rounds):
            for k, opt in opts.items():
                t[k].append(per_call(opt.step, 10))
        d, f = statistics.median(t[False]) * 1e3, statistics.median(t[True]) * 1e3
        print(f"| {arch} | {sum(p.numel() for p in m.parameters()):,} | {d:.1f} | {f:.1f} | {d / f:.2f}x |")


if __name__ == "__main__":
    main()
