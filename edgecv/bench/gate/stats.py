"""The latency decision's statistics: trimmed mean of log ratios, two-stage bootstrap interval, verdict."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


def trimmed_mean(a: np.ndarray, prop: float = 0.2, axis: int = -1) -> np.ndarray:
    """Mean after cutting ``prop`` of the values at each end (along ``axis``)."""
    a = np.sort(np.asarray(a, dtype=np.float64), axis=axis)
    n = a.shape[axis]
    k = int(math.floor(prop * n))
    if n - 2 * k <= 0:
        k = max(0, (n - 1) // 2)
    sl = [slice(None)] * a.ndim
    sl[axis] = slice(k, n - k)
    return a[tuple(sl)].mean(axis=axis)


def ratio_ci(ratios, confidence: float = 0.95, n_boot: int = 4000, seed: int = 0) -> tuple[float, float, float]:
    """(point, lo, hi) of the per-round ratios: exp(20 % trimmed mean of the log ratios), percentile bootstrap.

    ``ratios`` is 1-D (rounds, resampled as independent) or 2-D ``(sessions, rounds per session)``: rounds measured
    on one pair of runtime sessions share that pair's memory layout, whose effect on a small model can exceed the
    round-to-round noise by far. The 2-D bootstrap is two-stage (session pairs with replacement, then rounds within
    each drawn pair), so a pair that was consistently unlucky widens the interval instead of hiding in it.
    """
    lr = np.log(np.asarray(ratios, dtype=np.float64))
    if lr.size == 0:
        raise ValueError("no rounds")
    point = float(np.exp(trimmed_mean(lr.ravel())))
    if lr.size == 1:
        return point, point, point
    rng = np.random.default_rng(seed)
    if lr.ndim == 2 and lr.shape[0] > 1:
        g, m = lr.shape
        gi = rng.integers(0, g, size=(n_boot, g, 1))
        ri = rng.integers(0, m, size=(n_boot, g, m))
        samples = lr[gi, ri].reshape(n_boot, g * m)
    else:
        flat = lr.ravel()
        samples = flat[rng.integers(0, flat.size, size=(n_boot, flat.size))]
    boots = trimmed_mean(samples, axis=1)
    a = (1 - confidence) / 2
    lo, hi = np.quantile(boots, [a, 1 - a])
    return point, float(np.exp(lo)), float(np.exp(hi))


@dataclass(frozen=True)
class LatencyDecision:
    verdict: str  # "pass" | "regression"
    inconclusive: bool
    ratio: float
    ci_low: float
    ci_high: float
    limit: float
    rounds: int
    label: str

    def to_dict(self) -> dict:
        return asdict(self)


def classify(lo: float, hi: float, limit: float) -> str:
    """``pass`` if the whole interval is <= limit, ``regression`` if it is all above, else ``inconclusive``."""
    if hi <= limit:
        return "pass"
    if lo > limit:
        return "regression"
    return "inconclusive"


# still inconclusive at the cap: decide on the point estimate, or call it a regression / a pass
ON_INCONCLUSIVE = ("point", "fail", "pass")


def decide(ratios, limit: float, confidence: float = 0.95, on_inconclusive: str = "point", final: bool = True,
           n_boot: int = 4000, seed: int = 0) -> LatencyDecision | None:
    """The latency decision on per-round ratios. Returns ``None`` when inconclusive and not ``final`` (the
    caller should run more rounds)."""
    point, lo, hi = ratio_ci(ratios, confidence, n_boot, seed)
    c = classify(lo, hi, limit)
    ci = f"{point:.3f}x [{lo:.3f}, {hi:.3f}] vs limit {limit:.3f}"
    n = int(np.size(ratios))
    if c != "inconclusive":
        return LatencyDecision(c, False, point, lo, hi, limit, n, f"{c}: {ci}")
    if not final:
        return None
    if on_inconclusive == "fail":
        v = "regression"
    elif on_inconclusive == "pass":
        v = "pass"
    else:
        v = "regression" if point > limit else "pass"
    return LatencyDecision(v, True, point, lo, hi, limit, n,
                           f"{v} (inconclusive, decided by {on_inconclusive}): {ci}")
