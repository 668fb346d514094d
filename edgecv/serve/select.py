"""``--artifact auto``: the artifact this host should run, by the rule ``edgecv bench`` recommends with.

The decision is :func:`edgecv.targets.policy.deploy_report` (the one deploy rule): the fastest validated artifact
whose export-validation top-1 is within ``tolerance`` points of the best, INT8 only where it beats its FP32 twin
by the noise margin, ties within noise going to the more accurate, then the smaller one. Speed comes either from
a bench JSON (``--bench-json``: its ``recommended`` entry is taken as-is) or from a quick interleaved measurement
here (:func:`edgecv.runtimes.latency.measure_interleaved`, the method bench uses, with a shorter budget).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgecv.contracts.manifest import ArtifactEntry
from edgecv.errors import UserError
from edgecv.runtimes.base import RuntimeUnavailable, close_all, runner_for_entry
from edgecv.runtimes.latency import measure_interleaved
from edgecv.targets.policy import deploy_report


def _from_bench_json(path: Path, runnable: list[ArtifactEntry]) -> ArtifactEntry:
    try:
        rec = json.loads(Path(path).read_text()).get("recommended") or {}
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"--bench-json {path}: cannot read ({e})") from None
    picks = [v["name"] for v in rec.values() if v]
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


def _rows(by_name: dict[str, ArtifactEntry], stats: dict) -> list[dict]:
    """Bench-style rows (the shape :mod:`edgecv.targets.policy` judges) from this host's quick measurement; the
    accuracy is the export validation's (same images for every artifact of the bundle)."""
    rows = []
    for n, st in stats.items():
        e = by_name[n]
        acc = _accuracy(e)
        rows.append({"name": n, "format": e.format, "precision": e.precision, "runtime": e.runtime, "status": "ok",
                     "primary": st.to_dict(), "notes": [], "profile": None, "verdict": None, "host_proxy": False,
                     "accuracy": {"top1": acc} if acc is not None else None, "size_bytes": e.size_bytes})
    return rows


def choose(bundle: Path, runnable: list[ArtifactEntry], input_size: int, threads=1, device="cpu", bench_json=None,
           tolerance: float = 1.0, log=lambda m: None):
    """-> ``(entry, loaded runner or None, selection info)``."""
    if not runnable:
        raise UserError(f"{bundle}: no runnable artifact in the manifest")
    if bench_json:
        e = _from_bench_json(Path(bench_json), runnable)
        return e, None, {"how": "bench-json", "from": str(bench_json)}
    validated = [e for e in runnable if _accuracy(e) is not None] or runnable
    runners, skipped = {}, {}
    for e in validated:
        try:
            runners[e.name] = runner_for_entry(bundle, e, threads=threads, device=device)
        except RuntimeUnavailable as ex:
            skipped[e.name] = str(ex)
    if not runners:
        raise UserError(f"{bundle}: no artifact can run here ({'; '.join(f'{k}: {v}' for k, v in skipped.items())})")
    by_name = {e.name: e for e in validated}
    if len(runners) == 1:
        name = next(iter(runners))
        return by_name[name], runners[name], {"how": "auto", "only_candidate": name, "skipped": skipped}
    x = np.zeros((1, 3, input_size, input_size), np.float32)
    inputs = {n: x if not r.batch_size else np.zeros((r.batch_size, *x.shape[1:]), np.float32)
              for n, r in runners.items()}
    meas = measure_interleaved({n: (lambda r=r, a=inputs[n]: r.predict(a)) for n, r in runners.items()},
                               warmup=3, min_runs=50, min_time_s=0.5, rounds=5)
    stats = {n: m.stats() for n, m in meas.items()}
    p50 = {n: st.p50_ms for n, st in stats.items()}
    name = deploy_report(_rows(by_name, stats), None, tolerance)["recommended"]["host"]["name"]
    close_all(r for n, r in runners.items() if n != name)
    log(f"auto: {name} (p50 {', '.join(f'{k} {v:.3f} ms' for k, v in sorted(p50.items(), key=lambda kv: kv[1]))})")
    return by_name[name], runners[name], {"how": "auto", "p50_ms": {k: round(v, 4) for k, v in p50.items()},
                                          "skipped": skipped}
