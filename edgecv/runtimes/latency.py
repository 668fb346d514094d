"""Latency measurement that holds up on a small, shared, noisy machine.

Method (used by ``edgecv gate``'s paired rounds, and through the one measuring loop
:func:`edgecv.runtimes.measure.measure` by ``edgecv bench``, ``--student auto`` and ``edgecv serve --artifact auto``):

* every call is timed on its own with :func:`time.perf_counter_ns` (no averaging of a loop, so the
  percentiles are real per-call percentiles);
* the garbage collector is disabled while timing (a gen-2 collection in the middle of a 2 ms call is a
  30 % outlier);
* the runner pins its own thread count (``threads`` is passed to the runtime: ORT intra-op threads,
  OpenVINO inference threads, ExecuTorch/XNNPACK threadpool...);
* warm-up calls first (allocators, lazy kernel selection, caches), then at least ``min_runs`` calls AND at
  least ``min_time_s`` seconds;
* several artifacts measured together are **interleaved**: the measurement is split into rounds and every
  round runs a short block of each artifact (order rotated every round), so a burst of load from another
  process lands on all artifacts instead of on whichever happened to be running; per-round medians are kept
  as a noise indicator (and are what the CI gate compares).
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency statistics of one (artifact, threads, batch) configuration."""

    batch: int
    n: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    fps: float  # images per second = batch * 1000 / mean_ms
    round_p50_spread: float | None = None  # (max - min) / median of the per-round medians; None: one round
    cpu_p50_ms: float | None = None  # median process CPU time per call (all threads of this process)

    @property
    def contention(self) -> float | None:
        """Wall / CPU time at the median, for single-threaded runs: ~1.0 on a quiet host; > 1 means the process
        waited for a CPU (other load) and the wall-clock figures are inflated."""
        return self.p50_ms / self.cpu_p50_ms if self.cpu_p50_ms else None

    @classmethod
    def from_samples_ns(cls, samples_ns: Sequence[int] | np.ndarray, batch: int = 1,
                        round_medians_ns: Sequence[float] | None = None,
                        cpu_ns: Sequence[int] | None = None) -> LatencyStats:
        a = np.asarray(samples_ns, dtype=np.float64) / 1e6
        if a.size == 0:
            raise ValueError("no latency samples")
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        mean = float(a.mean())
        spread = None
        if round_medians_ns is not None and len(round_medians_ns) > 1:
            r = np.asarray(round_medians_ns, dtype=np.float64)
            spread = float((r.max() - r.min()) / np.median(r))
        return cls(batch=int(batch), n=int(a.size), p50_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99),
                   mean_ms=mean, std_ms=float(a.std(ddof=1)) if a.size > 1 else 0.0, min_ms=float(a.min()),
                   max_ms=float(a.max()), fps=float(batch * 1000.0 / mean) if mean > 0 else 0.0,
                   round_p50_spread=spread,
                   cpu_p50_ms=float(np.median(cpu_ns)) / 1e6 if cpu_ns is not None and len(cpu_ns) else None)

    def to_dict(self) -> dict:
        return asdict(self)


@contextmanager
def gc_paused():
    """Disable the cyclic garbage collector for the duration of a timing block."""
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def time_block(fn: Callable[[], object], min_runs: int, min_time_s: float, cpu: list[int] | None = None) -> list[int]:
    """Call ``fn`` at least ``min_runs`` times and for at least ``min_time_s``; per-call wall durations in ns.

    With ``cpu`` (a list), the process CPU time of every call is appended to it as well.
    """
    out: list[int] = []
    clock = time.perf_counter_ns
    deadline = clock() + int(min_time_s * 1e9)
    if cpu is None:
        while len(out) < min_runs or clock() < deadline:
            t0 = clock()
            fn()
            out.append(clock() - t0)
        return out
    pclock = time.process_time_ns
    while len(out) < min_runs or clock() < deadline:
        c0 = pclock()
        t0 = clock()
        fn()
        t1 = clock()
        cpu.append(pclock() - c0)
        out.append(t1 - t0)
    return out


@dataclass
class Measurement:
    """Raw samples of one configuration: all calls, plus the per-round split."""

    samples_ns: list[int]
    rounds_ns: list[list[int]]
    batch: int
    cpu_ns: list[int] | None = None

    @property
    def round_medians_ns(self) -> list[float]:
        return [float(np.median(r)) for r in self.rounds_ns if r]

    def stats(self) -> LatencyStats:
        return LatencyStats.from_samples_ns(self.samples_ns, self.batch, self.round_medians_ns, self.cpu_ns)


def measure_interleaved(fns: dict[str, Callable[[], object]], *, batch: int = 1, warmup: int = 10,
                        min_runs: int = 50, min_time_s: float = 2.0, rounds: int = 5, cpu_time: bool = False,
                        on_round: Callable[[int], None] | None = None) -> dict[str, Measurement]:
    """Time every callable in ``fns`` in interleaved rounds.

    Each callable gets ``warmup`` untimed calls, then ``rounds`` blocks of at least
    ``ceil(min_runs / rounds)`` calls and ``min_time_s / rounds`` seconds; the order of the callables is
    rotated every round. Every callable thus ends with >= ``min_runs`` calls over >= ``min_time_s`` seconds.
    ``cpu_time``: also record process CPU time per call (meaningful for single-threaded runtimes).
    """
    keys = list(fns)
    rounds = max(1, int(rounds))
    for k in keys:
        for _ in range(max(0, warmup)):
            fns[k]()
    block_runs = max(1, math.ceil(min_runs / rounds))
    block_time = max(0.0, min_time_s) / rounds
    res = {k: Measurement([], [], batch, [] if cpu_time else None) for k in keys}
    with gc_paused():
        for r in range(rounds):
            order = keys[r % len(keys):] + keys[:r % len(keys)] if keys else []
            for k in order:
                s = time_block(fns[k], block_runs, block_time, res[k].cpu_ns)
                res[k].rounds_ns.append(s)
                res[k].samples_ns.extend(s)
            if on_round:
                on_round(r)
    return res


def parse_duration(text: str | float | int) -> float:
    """``"5s"``, ``"500ms"``, ``"1.5"`` (seconds), ``"2m"`` -> seconds."""
    if isinstance(text, (int, float)):
        v = float(text)
    else:
        t = str(text).strip().lower()
        mult = 1.0
        for suffix, m in (("ms", 1e-3), ("s", 1.0), ("m", 60.0)):
            if t.endswith(suffix):
                t, mult = t[: -len(suffix)], m
                break
        try:
            v = float(t) * mult
        except ValueError:
            raise ValueError(f"not a duration: {text!r} (use e.g. 5s, 500ms)") from None
    if v < 0 or not math.isfinite(v):
        raise ValueError(f"not a duration: {text!r}")
    return v
