#!/usr/bin/env python
"""Would a teacher + student ensemble be a better recovery source than the distilled student alone? Val top-1 of
each checkpoint and of the average of the teacher's and each student's probabilities at temperature T (the KD
target such a source would give); no training (issue 24: the recovery source of the prune fine-tunes).

    .venv/bin/python benchmarks/ensemble_source.py --data ~/.cache/edgecv/cifar10-mini \
        --teacher ~/.cache/edgecv/runs/c10pol/teacher-none-lr1-s1.pt \
        --students ~/.cache/edgecv/runs/c10s16/compress-s0/run/distill.pt,~/.cache/edgecv/runs/c10s16/compress-s1/run/distill.pt
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F
from _logits import checkpoint_logits  # benchmarks/_logits.py (the script's folder is on sys.path)
from _logits import top1 as np_top1


def val_logits(path: str, data: str) -> tuple[torch.Tensor, np.ndarray]:
    logits, labels = checkpoint_logits(path, data)
    return torch.from_numpy(logits), labels


def top1(p: torch.Tensor, y: np.ndarray) -> float:
    return np_top1(p.numpy(), y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--students", required=True, help="comma-separated distilled checkpoints")
    ap.add_argument("--temperatures", default="1,4")
    a = ap.parse_args()
    data = os.path.expanduser(a.data)
    t, y = val_logits(a.teacher, data)
    print(f"teacher: {top1(t, y):.2f} %")
    for path in a.students.split(","):
        s, ys = val_logits(path, data)
        if not np.array_equal(y, ys):
            raise SystemExit(f"{path}: another val set or class order than the teacher's")
        ens = {T: top1(F.softmax(t / T, 1) + F.softmax(s / T, 1), y) for T in map(float, a.temperatures.split(","))}
        print(f"{path}: student {top1(s, y):.2f} %; ensemble "
              + ", ".join(f"T={T:g} {v:.2f} %" for T, v in ens.items()))


if __name__ == "__main__":
    main()
