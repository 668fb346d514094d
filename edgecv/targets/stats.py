"""The statistics of accuracy decisions: one top-1's interval, and two classifiers compared on the same images.

* :func:`top1_interval`: the Wilson score interval of one top-1 (``k`` right of ``n``).
* :func:`compare`: the paired comparison of a candidate with a reference scored on the same images. Only the
  discordant images carry information: ``ref_only`` (the reference right, the candidate wrong) and ``cand_only``.
  The test is the exact McNemar test (a two-sided binomial test of ``cand_only`` of ``ref_only + cand_only`` at
  1/2); the interval of the top-1 difference is Newcombe's square-and-add interval for paired proportions (Wilson
  intervals of both top-1s, combined with their correlation; Newcombe 1998, Stat Med 17:2635, method 10).
* :func:`images_needed`: how many images, at the observed disagreement rate, a drop the size of the tolerance
  needs to be told from noise by that test.
* :func:`most_explained`: the most events out of ``n`` that a true rate at a bar still explains (a one-sided
  exact binomial test): export validation's flips on a small validation set.

The decision (:attr:`Paired.verdict`), with ``drop`` = reference top-1 - candidate top-1 and its interval:

=======================  =====================================================================  =========
``equal``                no discordant image: right and wrong on the same images                 keeps
``not distinguishable``  exact McNemar p >= 1 - confidence                                        keeps
``better``               the test says different, the candidate is the more accurate              keeps
``within tolerance``     the test says worse, the measured drop is below the tolerance            keeps
``worse``                the test says worse, the measured drop reaches the tolerance             refused
=======================  =====================================================================  =========

So an artifact is refused only where a paired test shows it worse *and* by at least the tolerance: on few images
a large-looking gap is "not distinguishable" (with how many images would tell), on many a real drop at the
tolerance is refused with its interval. The interval says which sub-case it is: a drop whose whole interval lies
past the tolerance ("more than the tolerance"), or below it ("within the tolerance"), or one that straddles it.
As in the latency gate, a true drop right at the tolerance is a coin flip under any rule (benchmarks/RESULTS.md,
"Accuracy decisions"). Where scipy does it right it is used (``scipy.stats.binomtest`` for the exact test and the
Wilson bounds); scipy is imported on first use (about 0.8 s on a quiet host), so code paths without per-image
predictions never pay for it.

Per-image predictions travel as a compact array (:func:`pack` / :func:`unpack`: little-endian unsigned
integers, base64) in the bench JSON.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95


# ------------------------------------------------------------------------------------------------ one top-1
def top1_interval(correct: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a top-1 of ``correct`` right out of ``n``, in percent."""
    if n <= 0:
        return 0.0, 100.0
    from scipy.stats import binomtest

    ci = binomtest(int(correct), int(n)).proportion_ci(confidence, method="wilson")
    return 100.0 * float(ci.low), 100.0 * float(ci.high)


# ------------------------------------------------------------------------------------------------ two, paired
def mcnemar_exact(ref_only: int, cand_only: int) -> float:
    """Two-sided exact McNemar p-value on the discordant pairs (1.0 when there are none)."""
    m = int(ref_only) + int(cand_only)
    if m == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(int(cand_only), m, 0.5).pvalue)


def paired_interval(both: int, cand_only: int, ref_only: int, neither: int,
                    confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Newcombe's square-and-add interval of ``top1(candidate) - top1(reference)`` (fractions, not percent)."""
    n = both + cand_only + ref_only + neither
    if n == 0:
        return -1.0, 1.0
    p1, p2 = (both + cand_only) / n, (both + ref_only) / n
    (l1, u1), (l2, u2) = (np.asarray(top1_interval(k, n, confidence)) / 100.0
                          for k in (both + cand_only, both + ref_only))
    rows, cols = (both + cand_only, ref_only + neither), (both + ref_only, cand_only + neither)
    phi = 0.0
    if min(*rows, *cols) > 0:  # the correlation of the two top-1s, with Newcombe's continuity correction
        a = both * neither - cand_only * ref_only
        a = a - n / 2 if a > n / 2 else (a if a < 0 else 0.0)
        phi = a / math.sqrt(rows[0] * rows[1] * cols[0] * cols[1])
    d = p1 - p2
    lo = d - math.sqrt(max((p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2), 0.0))
    hi = d + math.sqrt(max((p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1), 0.0))
    return lo, hi


def images_needed(disagree: float, tolerance: float, confidence: float = CONFIDENCE) -> int | None:
    """The smallest image count at which a drop of ``tolerance`` points, at disagreement rate ``disagree``
    (fraction of images where the two differ; at least the drop itself), is told from noise by the exact McNemar
    test: its expected discordant counts give p < 1 - confidence. None for a zero tolerance."""
    t = tolerance / 100.0
    if t <= 0:
        return None
    psi = min(max(disagree, t), 1.0)

    def shows(n: int) -> bool:
        b, c = round(n * (psi + t) / 2), round(n * (psi - t) / 2)
        return b + c > 0 and b > c and mcnemar_exact(b, c) < 1 - confidence

    hi = 8
    while not shows(hi):
        hi *= 2
        if hi > 1 << 34:
            return None
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if shows(mid) else (mid, hi)
    return hi


def most_explained(n: int, rate: float, confidence: float = CONFIDENCE) -> int:
    """The most events (e.g. top-1 flips) out of ``n`` trials that a true rate of ``rate`` still explains: the
    largest ``k`` whose one-sided exact binomial p-value P(X >= k) is at least ``1 - confidence``. On 153 images
    at a 0.5 % rate that is 2 (one flip there reads 99.35 %: not evidence of a rate above 0.5 %); on 2,000, 15."""
    if n <= 0 or rate <= 0:
        return 0
    from scipy.stats import binom

    return int((binom.sf(np.arange(n), n, rate) >= 1 - confidence).sum())  # sf(k) = P(X >= k + 1), decreasing


def _pt(x: float) -> str:
    return f"{x:.2f}"


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _about(n: int) -> str:
    """``n`` rounded up to two significant digits."""
    step = 10 ** max(len(str(n)) - 2, 0)
    return f"{-(-n // step) * step:,}"


@dataclass(frozen=True)
class Paired:
    """A candidate against a reference on the same ``n`` images (figures in top-1 points)."""

    n: int
    ref_only: int  # images the reference gets right and the candidate wrong
    cand_only: int  # images the candidate gets right and the reference wrong
    diff: float  # top-1(candidate) - top-1(reference)
    lo: float  # confidence interval of ``diff``
    hi: float
    p: float  # exact McNemar, two-sided
    tolerance: float  # points the candidate may lose
    confidence: float = CONFIDENCE
    needed: int | None = None  # images that would tell a tolerance-sized drop from noise (when too few now)

    @property
    def verdict(self) -> str:
        if self.ref_only == self.cand_only == 0:
            return "equal"
        if self.p >= 1 - self.confidence:
            return "not distinguishable"
        if self.diff > 0:
            return "better"
        return "worse" if -self.diff >= self.tolerance else "within tolerance"

    @property
    def keeps(self) -> bool:
        """Not shown worse than the reference by at least the tolerance."""
        return self.verdict != "worse"

    def text(self, ref: str) -> str:
        """One clause saying which case it is, with the figures (``ref``: the reference's name)."""
        v, n, c = self.verdict, self.n, f"{self.confidence * 100:g} %"
        drop, dlo, dhi = -self.diff, -self.hi, -self.lo
        test = f"exact McNemar {_p(self.p)} on {self.ref_only} vs {self.cand_only} images"
        if v == "equal":
            return f"equal to {ref}: right and wrong on the same {n} images"
        if v == "better":
            return (f"better than {ref} by {_pt(self.diff)} pt on {n} images ({c} CI {_pt(self.lo)}-{_pt(self.hi)}, "
                    f"{test})")
        if v == "not distinguishable":
            out = (f"not distinguishable from {ref} on {n} images ({self.diff:+.2f} pt, {c} CI {self.lo:+.2f} to "
                   f"{self.hi:+.2f}, {test})")
            if dhi > self.tolerance and self.needed:
                out += (f"; too few images to tell a {self.tolerance:g}-pt drop from noise: about "
                        f"{_about(self.needed)} would at this disagreement rate")
            return out
        head = f"worse than {ref} by {_pt(drop)} pt on {n} images ({c} CI {_pt(dlo)}-{_pt(dhi)}, {test})"
        t = f"the {self.tolerance:g}-pt tolerance"
        if v == "within tolerance":
            return head + (f", within {t}" if dhi <= self.tolerance else
                           f": a real drop, below {t} (its interval reaches past it)")
        return head + (f", more than {t}" if dlo > self.tolerance else
                       f": a real drop {'past' if drop > self.tolerance else 'at'} {t}")

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "keeps": self.keeps, "n": self.n, "diff_pt": self.diff,
                "ci_pt": [self.lo, self.hi], "confidence": self.confidence, "mcnemar_p": self.p,
                "ref_only": self.ref_only, "cand_only": self.cand_only, "tolerance_pt": self.tolerance,
                "images_needed": self.needed}


def compare(ref_correct, cand_correct, tolerance: float, confidence: float = CONFIDENCE) -> Paired:
    """The candidate against the reference from their per-image correctness (boolean arrays, same images in the
    same order). ``tolerance``: top-1 points the candidate may lose."""
    r, c = np.asarray(ref_correct, dtype=bool), np.asarray(cand_correct, dtype=bool)
    if r.shape != c.shape or r.ndim != 1:
        raise ValueError(f"paired comparison needs two equal-length vectors, got {r.shape} and {c.shape}")
    n = int(r.size)
    both, ref_only, cand_only = int((r & c).sum()), int((r & ~c).sum()), int((~r & c).sum())
    lo, hi = paired_interval(both, cand_only, ref_only, n - both - ref_only - cand_only, confidence)
    p = mcnemar_exact(ref_only, cand_only)
    diff = 100.0 * (cand_only - ref_only) / max(n, 1)
    needed = None
    if p >= 1 - confidence and -100.0 * lo > tolerance and n:
        needed = images_needed((ref_only + cand_only) / n, tolerance, confidence)
    return Paired(n, ref_only, cand_only, diff, 100.0 * lo, 100.0 * hi, p, tolerance, confidence, needed)


# ------------------------------------------------------------------------------------------------ compact arrays
def pack(values) -> dict:
    """A compact JSON form of non-negative integers (class indices): the narrowest little-endian unsigned type,
    base64."""
    a = np.asarray(values, dtype=np.int64).ravel()
    if a.size and a.min() < 0:
        raise ValueError("pack: negative value")
    top = int(a.max()) if a.size else 0
    dt = "uint8" if top < 1 << 8 else ("uint16" if top < 1 << 16 else "uint32")
    return {"dtype": dt, "n": int(a.size), "base64": base64.b64encode(a.astype("<" + np.dtype(dt).str[1:]).tobytes()).decode()}


def unpack(d: dict) -> np.ndarray:
    """The int64 array of :func:`pack`'s output."""
    a = np.frombuffer(base64.b64decode(d["base64"]), dtype=np.dtype(d["dtype"]).newbyteorder("<"))
    if a.size != d["n"]:
        raise ValueError(f"packed array holds {a.size} values, expected {d['n']}")
    return a.astype(np.int64)
