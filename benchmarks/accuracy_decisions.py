#!/usr/bin/env python
"""How often "keeps accuracy" refuses an artifact, by the true top-1 drop and the number of images (issue 27).

Simulates a reference and a candidate scored on the same ``n`` images: each image falls in one of the four cells
(both right, reference only, candidate only, neither) with the probabilities of a reference at ``--top1`` % whose
candidate disagrees with it on ``--disagree`` % of the images and is ``drop`` points worse on average. For each
(n, drop) it reports the share of ``--trials`` simulated evaluations in which

* the old rule (top-1 more than the tolerance below the best, two percentages) refuses the candidate, and
* the paired rule (:func:`edgecv.targets.stats.compare`: exact McNemar shows it worse and the interval of the drop
  reaches past the tolerance) refuses it.

Seeded (``--seed``): the figures are reproducible.

    PYTHONPATH=$PWD python benchmarks/accuracy_decisions.py --trials 2000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgecv.targets.stats import compare  # noqa: E402


def cells(top1: float, disagree: float, drop: float) -> list[float]:
    """(both, ref_only, cand_only, neither) probabilities: reference at ``top1``, the two disagreeing on
    ``disagree`` of the images, the candidate ``drop`` lower (fractions)."""
    ref_only, cand_only = (disagree + drop) / 2, (disagree - drop) / 2
    both = top1 - ref_only
    return [both, ref_only, cand_only, 1 - both - ref_only - cand_only]


def trial(rng, n: int, probs: list[float], tol: float) -> tuple[bool, bool]:
    both, ref_only, cand_only, neither = rng.multinomial(n, probs)
    ref = np.r_[np.ones(both + ref_only, bool), np.zeros(cand_only + neither, bool)]
    cand = np.r_[np.ones(both, bool), np.zeros(ref_only, bool), np.ones(cand_only, bool), np.zeros(neither, bool)]
    old = 100.0 * (ref_only - cand_only) / n > tol
    return old, not compare(ref, cand, tol).keeps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=2000)
    ap.add_argument("--top1", type=float, default=96.0, help="reference top-1, %%")
    ap.add_argument("--disagree", type=float, default=2.0, help="images the two disagree on, %%")
    ap.add_argument("--tolerance", type=float, default=1.0, help="points")
    ap.add_argument("--sizes", default="360,2000,10000")
    ap.add_argument("--drops", default="0,0.5,1,1.5,2")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    print(f"reference top-1 {a.top1:g} %, disagreement {a.disagree:g} % of the images, tolerance {a.tolerance:g} pt, "
          f"{a.trials} trials per cell; share of trials that refuse the candidate")
    print("| images | true drop, pt | old rule (two percentages) | paired rule |")
    print("|---:|---:|---:|---:|")
    for n in (int(x) for x in a.sizes.split(",")):
        for drop in (float(x) for x in a.drops.split(",")):
            probs = cells(a.top1 / 100, max(a.disagree, drop) / 100, drop / 100)
            res = np.array([trial(rng, n, probs, a.tolerance) for _ in range(a.trials)])
            print(f"| {n} | {drop:g} | {res[:, 0].mean() * 100:.1f} % | {res[:, 1].mean() * 100:.1f} % |")


if __name__ == "__main__":
    main()
