"""Latency statistics and the interleaved measurement loop (no timing assertions: speed goals live in benchmarks/)."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from edgecv.runtimes.latency import LatencyStats, gc_paused, measure_interleaved, parse_duration, time_block


def test_stats_on_known_samples():
    ns = [i * 1_000_000 for i in range(1, 101)]  # 1..100 ms
    s = LatencyStats.from_samples_ns(ns, batch=1)
    assert s.n == 100
    assert s.p50_ms == pytest.approx(50.5)
    assert s.p90_ms == pytest.approx(90.1)
    assert s.p99_ms == pytest.approx(99.01)
    assert s.mean_ms == pytest.approx(50.5)
    assert s.std_ms == pytest.approx(np.std(np.arange(1, 101), ddof=1))
    assert (s.min_ms, s.max_ms) == (1.0, 100.0)
    assert s.fps == pytest.approx(1000 / 50.5)


def test_fps_scales_with_batch_and_round_spread():
    s = LatencyStats.from_samples_ns([10_000_000] * 5, batch=8, round_medians_ns=[9e6, 10e6, 11e6])
    assert s.fps == pytest.approx(800.0)
    assert s.std_ms == 0.0
    assert s.round_p50_spread == pytest.approx(0.2)
    with pytest.raises(ValueError):
        LatencyStats.from_samples_ns([], 1)


@pytest.mark.parametrize("text,sec", [("5s", 5.0), ("500ms", 0.5), ("1.5", 1.5), ("2m", 120.0), (3, 3.0)])
def test_parse_duration(text, sec):
    assert parse_duration(text) == pytest.approx(sec)


@pytest.mark.parametrize("bad", ["abc", "-1s", "nan"])
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_time_block_respects_min_runs_and_gc_paused():
    states = []
    with gc_paused():
        out = time_block(lambda: states.append(gc.isenabled()), min_runs=7, min_time_s=0.0)
    assert len(out) == 7 and all(isinstance(v, int) and v >= 0 for v in out)
    assert states and not any(states)
    assert gc.isenabled()


def test_interleaved_rounds_rotate_order_and_meet_minimums():
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in ("a", "b", "c")}
    res = measure_interleaved(fns, batch=2, warmup=2, min_runs=9, min_time_s=0.0, rounds=3)
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]  # warm-up
    timed = calls[6:]
    # 3 rounds x 3 artifacts x ceil(9/3)=3 calls; round r starts with artifact r
    assert [timed[i * 9] for i in range(3)] == ["a", "b", "c"]
    for m in res.values():
        assert len(m.samples_ns) == 9 and len(m.rounds_ns) == 3
        st = m.stats()
        assert st.batch == 2 and st.n == 9 and st.round_p50_spread is not None


def test_cpu_time_and_contention():
    s = LatencyStats.from_samples_ns([4_000_000] * 3, batch=1, cpu_ns=[1_000_000] * 3)
    assert s.cpu_p50_ms == pytest.approx(1.0) and s.contention == pytest.approx(4.0)
    assert LatencyStats.from_samples_ns([1], 1).contention is None
    cpu: list[int] = []
    out = time_block(lambda: sum(range(2000)), min_runs=5, min_time_s=0.0, cpu=cpu)
    assert len(cpu) == len(out) == 5 and all(c >= 0 for c in cpu)
