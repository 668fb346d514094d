"""Measuring a pair: the session plan, interleaved A/B rounds over fresh session pairs, stored-baseline rounds."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from edgecv.bench.artifacts import Resolved, input_shape
from edgecv.bench.gate.config import GateConfig
from edgecv.bench.gate.stats import LatencyDecision, decide, trimmed_mean
from edgecv.runtimes.base import close_all, load_runner
from edgecv.runtimes.latency import gc_paused, time_block

METRICS = {"p50": 50, "p90": 90}  # the per-round latency statistic: the block's percentile


def _stat(block_ns: list[int], metric: str) -> float:
    return float(np.percentile(block_ns, METRICS[metric]))


def session_plan(cfg: GateConfig) -> tuple[int, int, int, int]:
    """(initial session pairs, rounds per pair, pairs added per inconclusive step, max pairs) for ``cfg``."""
    pairs = max(1, min(cfg.sessions, cfg.rounds // 2))
    per = math.ceil(cfg.rounds / pairs)
    return pairs, per, max(1, pairs // 2), max(pairs, cfg.max_rounds // per)


Pair = tuple[Callable[[], object] | None, Callable[[], object]]  # (baseline call or None: stored, candidate call)


def paired_rounds(open_pair: Callable[[int], Pair], cfg: GateConfig, limit: float,
                  log: Callable[[str], None] = lambda m: None) -> tuple[LatencyDecision, dict]:
    """Interleaved A/B rounds until the decision is conclusive or ``max_rounds``; returns (decision, details).

    ``open_pair(k)`` loads a fresh pair of sessions (baseline, candidate) and returns their predict calls; the
    rounds are spread over several such pairs (``GateConfig.sessions``) so that the per-session memory layout
    is sampled too, and an inconclusive decision adds new pairs rather than more rounds on the old ones.
    """
    pairs0, per, step, max_pairs = session_plan(cfg)
    sa: list[float] = []
    sb: list[float] = []
    ratios: list[list[float]] = []
    target = pairs0
    while True:
        while len(ratios) < target:
            fa, fb = open_pair(len(ratios))
            for _ in range(cfg.warmup):
                fa()
                fb()
            group: list[float] = []
            with gc_paused():
                for i in range(per):
                    if i % 2 == 0:
                        a = time_block(fa, cfg.block_runs, cfg.block_time_s)
                        b = time_block(fb, cfg.block_runs, cfg.block_time_s)
                    else:
                        b = time_block(fb, cfg.block_runs, cfg.block_time_s)
                        a = time_block(fa, cfg.block_runs, cfg.block_time_s)
                    sa.append(_stat(a, cfg.metric))
                    sb.append(_stat(b, cfg.metric))
                    group.append(sb[-1] / sa[-1])
            ratios.append(group)
        final = len(ratios) >= max_pairs
        d = decide(ratios, limit, cfg.confidence, cfg.on_inconclusive, final=final, n_boot=cfg.n_boot, seed=cfg.seed)
        if d is not None:
            break
        log(f"  inconclusive after {len(ratios)} session pairs x {per} rounds, adding session pairs")
        target = min(max_pairs, len(ratios) + step)
    det = {"baseline_ms": float(np.median(sa)) / 1e6, "candidate_ms": float(np.median(sb)) / 1e6,
           "round_ratios": [round(r, 4) for g in ratios for r in g], "sessions": len(ratios),
           "session_ratios": [round(float(np.exp(trimmed_mean(np.log(g)))), 4) for g in ratios]}
    return d, det


def stored_rounds(fb: Callable[[], object], base_ms: float, cfg: GateConfig, limit: float,
                  log: Callable[[str], None] = lambda m: None) -> tuple[LatencyDecision, dict]:
    """Candidate-only rounds compared with a stored baseline figure (low reliability, see module doc)."""
    for _ in range(cfg.warmup):
        fb()
    sb: list[float] = []
    with gc_paused():
        for _ in range(cfg.rounds):
            sb.append(_stat(time_block(fb, cfg.block_runs, cfg.block_time_s), cfg.metric))
    ratios = [s / 1e6 / base_ms for s in sb]
    d = decide(ratios, limit, cfg.confidence, cfg.on_inconclusive, final=True, n_boot=cfg.n_boot, seed=cfg.seed)
    d = LatencyDecision(d.verdict, d.inconclusive, d.ratio, d.ci_low, d.ci_high, d.limit, d.rounds,
                        d.label + " (stored baseline, low reliability)")
    return d, {"baseline_ms": base_ms, "candidate_ms": float(np.median(sb)) / 1e6,
               "round_ratios": [round(r, 4) for r in ratios]}


class SessionPairs:
    """Runtime sessions for one (baseline, candidate) artifact pair, opened afresh for every session pair ``k``.

    A new pair closes the previous one, loads both models (load order alternating with ``k``) and draws a new
    input, shared by baseline and candidate (their input shapes match: :mod:`edgecv.bench.gate.compat`).
    ``open(k)`` for the pair that is already open returns it unchanged. ``base_art`` is None for a stored
    baseline (candidate only).
    """

    def __init__(self, base_art: Resolved | None, cand_art: Resolved, cfg: GateConfig, rng: np.random.Generator):
        self.base_art, self.cand_art, self.cfg, self.rng = base_art, cand_art, cfg, rng
        self.shape = input_shape(cand_art, 1)
        self.k: int | None = None
        self.base = self.cand = None
        self._calls: Pair | None = None

    def open(self, k: int) -> Pair:
        if k == self.k and self._calls is not None:
            return self._calls
        self.close()
        sides = [("cand", self.cand_art), ("base", self.base_art)]
        for side, art in sides if k % 2 == 0 else sides[::-1]:
            if art is not None:
                setattr(self, side, load_runner(art.entry.runtime, art.path, threads=self.cfg.threads,
                                                device=self.cfg.device))
        x = self.rng.standard_normal(self.shape).astype(np.float32)
        ra, rb = self.base, self.cand
        self.k, self._calls = k, ((lambda: ra.predict(x)) if ra is not None else None, lambda: rb.predict(x))
        return self._calls

    def close(self) -> None:
        close_all([r for r in (self.base, self.cand) if r is not None])
        self.base = self.cand = None
        self.k, self._calls = None, None
