#!/usr/bin/env python
"""Does a pruned student fit its recovery source on the images it is trained on? Top-1 of a compress run's
distilled (unpruned) and pruned checkpoints on the training and the val images (both at the evaluation
transform: no augmentation), and how often the two agree (issue 24: what limits the prune stage).

    .venv/bin/python benchmarks/fit_check.py --data ~/.cache/edgecv/cifar10-mini \
        --runs ~/.cache/edgecv/runs/c10s17/compress-s0-skd15/run,~/.cache/edgecv/runs/c10s20/light-s0
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from _logits import checkpoint_logits, top1  # benchmarks/_logits.py (the script's folder is on sys.path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="an ImageFolder root with train/ and val/")
    ap.add_argument("--runs", required=True,
                    help="comma-separated compress run folders (distill.pt, prune.pt)")
    a = ap.parse_args()
    data = os.path.expanduser(a.data)
    for run in a.runs.split(","):
        run = os.path.expanduser(run)
        for split in ("train", "val"):
            (d, y), (p, y2) = (checkpoint_logits(f"{run}/{name}.pt", f"{data}/{split}", 200)
                               for name in ("distill", "prune"))
            assert np.array_equal(y, y2)
            agree = 100 * np.mean(d.argmax(1) == p.argmax(1))
            print(f"{run} {split} ({len(y)} images): distilled {top1(d, y):.2f} %, pruned {top1(p, y):.2f} %, "
                  f"agreement {agree:.2f} %", flush=True)


if __name__ == "__main__":
    main()
