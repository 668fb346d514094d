"""``--artifact auto``: the artifact this host should run, by the rule ``edgecv bench`` recommends with.

The decision is :func:`edgecv.targets.policy.deploy_report` (the one deploy rule): the fastest validated artifact
whose export-validation top-1 is within ``tolerance`` points of the best, INT8 only where it beats its FP32 twin
by the noise margin, ties within noise going to the more accurate, then the smaller one. Speed comes either from
a bench JSON (``--bench-json``, read by the bench contract :func:`edgecv.contracts.bench.load_bench`: its
``recommended`` entry is taken as-is) or from a quick measurement here through the loop bench uses
(:func:`edgecv.runtimes.measure.measure`, with a shorter budget), judged as bench rows.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from edgecv.contracts.bench import BenchRow, load_bench
from edgecv.contracts.manifest import ArtifactEntry
from edgecv.errors import UserError
from edgecv.runtimes.base import close_all, runner_for_entry
from edgecv.runtimes.measure import Candidate, Measured, Plan, measure
from edgecv.targets.policy import deploy_report

QUICK = Plan(warmup=3, min_runs=50, min_time_s=0.5, rounds=5)  # a short budget: this runs at every server start


def _from_bench_json(path: Path, runnable: list[ArtifactEntry]) -> ArtifactEntry:
    rep, _ = load_bench(path, "--bench-json")
    picks = [v["name"] for v in rep.recommended.values() if v]
    if not picks:
        raise UserError(f"--bench-json {path}: no recommended artifact in it")
    by_name = {e.name: e for e in runnable}
    for name in picks:
        if name in by_name:
            return by_name[name]
    raise UserError(f"--bench-json {path}: recommended {picks[0]} is not a runnable artifact of this bundle")


def _accuracy(e: ArtifactEntry) -> float | None:
    v = e.validation or {}
    return v.get("accuracy") if v.get("status") == "passed" else None


def _row(e: ArtifactEntry, m: Measured) -> BenchRow:
    """The bench row (what :mod:`edgecv.targets.policy` judges) of this host's quick measurement; the accuracy is
    the export validation's (same images for every artifact of the bundle). The host is the target here."""
    acc = _accuracy(e)
    fig = m.latency[0]
    return BenchRow(name=e.name, file=e.file, format=e.format, precision=e.precision, runtime=e.runtime,
                    size_bytes=e.size_bytes, sha256=e.sha256, measured_on=m.measured_on, device=m.device,
                    host_proxy=m.host_proxy, latency=tuple(m.latency),
                    primary={k: fig[k] for k in ("threads", "batch", "p50_ms", "p90_ms", "fps")},
                    accuracy={"top1": acc} if acc is not None else None)


def _measure(bundle: Path, entries: list[ArtifactEntry], input_size: int, threads, device) -> dict[str, Measured]:
    """The entries through the one measuring loop, their runners left open (sha256-verified when loaded)."""
    cands = [Candidate(e.name, e.runtime, bundle / e.file, lambda b: (b, 3, input_size, input_size),
                       load=lambda t, dev, e=e: runner_for_entry(bundle, e, threads=t, device=dev)) for e in entries]
    return measure(cands, replace(QUICK, threads=(threads,), device=device), keep=True, time_alone=False)


def choose(bundle: Path, runnable: list[ArtifactEntry], input_size: int, threads=1, device="cpu", bench_json=None,
           tolerance: float = 1.0, log=lambda m: None):
    """-> ``(entry, loaded runner or None, selection info)``."""
    if not runnable:
        raise UserError(f"{bundle}: no runnable artifact in the manifest")
    if bench_json:
        e = _from_bench_json(Path(bench_json), runnable)
        return e, None, {"how": "bench-json", "from": str(bench_json)}
    validated = [e for e in runnable if _accuracy(e) is not None] or runnable
    by_name = {e.name: e for e in validated}
    res = _measure(bundle, validated, input_size, threads, device)
    live = {n: m for n, m in res.items() if m.runner is not None}
    skipped = {n: m.reason for n, m in res.items() if m.runner is None}
    if not live:
        raise UserError(f"{bundle}: no artifact can run here ({'; '.join(f'{k}: {v}' for k, v in skipped.items())})")
    if len(live) == 1:
        name = next(iter(live))
        return by_name[name], live[name].runner, {"how": "auto", "only_candidate": name, "skipped": skipped}
    timed = {n: m for n, m in live.items() if m.latency}
    if not timed:
        close_all(m.runner for m in live.values())
        raise UserError(f"{bundle}: no artifact could be timed at batch 1 here")
    name = deploy_report([_row(by_name[n], m) for n, m in timed.items()], None, tolerance)["recommended"]["host"]["name"]
    close_all(m.runner for n, m in live.items() if n != name)
    p50 = {n: m.latency[0]["p50_ms"] for n, m in timed.items()}
    log(f"auto: {name} (p50 {', '.join(f'{k} {v:.3f} ms' for k, v in sorted(p50.items(), key=lambda kv: kv[1]))})")
    return by_name[name], live[name].runner, {"how": "auto", "p50_ms": {k: round(v, 4) for k, v in p50.items()},
                                              "skipped": skipped}
