"""``--artifact auto``: the artifact this host should run, by the rule ``edgecv bench`` recommends with.

Fastest validated artifact within ``tolerance`` points of the best export-validation top-1; an INT8 artifact
only when it beats its FP32 twin (same format) by the deploy-policy margin. Speed comes either from a bench JSON
(``--bench-json``: its ``recommended`` entry is taken as-is) or from a quick interleaved measurement here.

NOTE: ``INT8_NOT_FASTER`` mirrors ``edgecv.bench.policy`` (serve may not import bench); the lead is asked to move
that pure module below both packages so this copy goes away.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from edgecv.contracts.manifest import ArtifactEntry
from edgecv.errors import UserError
from edgecv.runtimes.base import RuntimeUnavailable, close_all, runner_for_entry

INT8_NOT_FASTER = 0.95  # = edgecv.bench.policy.INT8_NOT_FASTER (see module note)


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


def _p50s(runners: dict, shape: tuple[int, ...], rounds: int = 5, per_round: int = 10) -> dict[str, float]:
    """Interleaved timing: every round runs each runner ``per_round`` times, so drift hits all alike."""
    times: dict[str, list[float]] = {n: [] for n in runners}
    x1 = np.zeros(shape, np.float32)
    for r in runners.values():
        r.warmup(np.zeros(((r.batch_size or 1), *shape[1:]), np.float32), n=3)
    for _ in range(rounds):
        for n, r in runners.items():
            x = x1 if not r.batch_size else np.zeros((r.batch_size, *shape[1:]), np.float32)
            for _ in range(per_round):
                t = time.perf_counter()
                r.predict(x)
                times[n].append(time.perf_counter() - t)
    return {n: float(np.median(ts)) * 1e3 for n, ts in times.items()}


def choose(bundle: Path, runnable: list[ArtifactEntry], input_size: int, threads=1, device="cpu", bench_json=None,
           tolerance: float = 1.0, log=lambda m: None):
    """-> ``(entry, loaded runner or None, selection info)``."""
    if not runnable:
        raise UserError(f"{bundle}: no runnable artifact in the manifest")
    if bench_json:
        e = _from_bench_json(Path(bench_json), runnable)
        return e, None, {"how": "bench-json", "from": str(bench_json)}
    validated = [e for e in runnable if _accuracy(e) is not None] or runnable
    accs = [a for a in map(_accuracy, validated) if a is not None]
    if accs:
        validated = [e for e in validated if _accuracy(e) is None or _accuracy(e) >= max(accs) - tolerance]
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
    p50 = _p50s(runners, (1, 3, input_size, input_size))
    ok = dict(p50)
    for n in list(ok):
        e = by_name[n]
        twin = f"{e.format}-fp32"
        if e.precision == "int8" and twin in ok and not p50[n] < INT8_NOT_FASTER * p50[twin]:
            ok.pop(n)
    name = min(ok, key=ok.get)
    close_all(r for n, r in runners.items() if n != name)
    log(f"auto: {name} (p50 {', '.join(f'{k} {v:.3f} ms' for k, v in sorted(p50.items(), key=lambda kv: kv[1]))})")
    return by_name[name], runners[name], {"how": "auto", "p50_ms": {k: round(v, 4) for k, v in p50.items()},
                                          "skipped": skipped}
