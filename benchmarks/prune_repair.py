#!/usr/bin/env python
"""What repairs a structured cut before any fine-tune (issue 24): one distilled student cut to a MAC fraction by
edgecv's ``prune_to_macs`` (as a prune round cuts, widths relative to the unpruned student), then val top-1 with
nothing done, with BatchNorm re-estimated (``--prune-reconstruct 0``), and refitted by least squares
(``edgecv.compress.prune.reconstruct``) on N training batches at a ridge R.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prune_repair.py --run RUN --fraction 0.77 \\
        --variants 8@0.01,4@0.01,2@0.01,8@0.001,8@0.1

``--run`` is an ``edgecv compress`` run folder with a finished distill stage (its config.yaml names the data).
A variant ``N@R``: N batches of 64 training images (augmented, seeded), ridge R x the inputs' mean energy.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from prune_criteria import distilled_run  # run as a script: benchmarks/ is on sys.path

from edgecv.compress.prune import prune_to_macs, recalibrate_bn, reconstruct, seeded_batches, widths
from edgecv.nn.graph import count_macs
from edgecv.training.loop import evaluate_top1


def batches(ds, n: int, bs: int, seed: int):
    return (b[0] for b in seeded_batches(ds, n, bs, seed))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--fraction", type=float, default=0.77)
    ap.add_argument("--variants", default="4@0.01")
    ap.add_argument("--bn-batches", type=int, default=32)
    a = ap.parse_args()
    cfg, ck, b, train, val = distilled_run(a.run)
    size, cpu = cfg["img_size"], torch.device("cpu")
    base = ck.build().eval()
    base_macs = count_macs(base, size)
    m, kept = copy.deepcopy(base), {}
    macs = prune_to_macs(m, size, len(b.class_names), int(a.fraction * base_macs), kept=kept, start=widths(base))
    cut, _ = evaluate_top1(m, val, 128, cpu, desc="cut")
    m_bn = copy.deepcopy(m)
    recalibrate_bn(m_bn, batches(train, a.bn_batches, 64, 0))
    bn, _ = evaluate_top1(m_bn, val, 128, cpu, desc="bn")
    print(f"cut to {macs:,} MACs ({macs / base_macs:.3f}): val top-1 {cut:.2f} % raw, {bn:.2f} % with BatchNorm "
          f"re-estimated ({len(val)} val images)")
    print("| batches | ridge | refitted layers | refit s | val top-1 % |\n|---|---|---|---|---|")
    cal = list(batches(train, max(int(v.split("@")[0]) for v in a.variants.split(",")), 64, 1))
    for v in a.variants.split(","):
        nb, ridge = v.split("@")
        mm = copy.deepcopy(m)
        t0 = time.time()
        done = reconstruct(base, mm, kept, cal[:int(nb)], ridge=float(ridge))
        dt = time.time() - t0
        top1, _ = evaluate_top1(mm, val, 128, cpu, desc="refit")
        print(f"| {nb} | {ridge} | {len(done)} | {dt:.0f} | {top1:.2f} |", flush=True)


if __name__ == "__main__":
    main()
