"""``edgecv bench``: every artifact of a bundle through its real runtime.

For each artifact (after the manifest's sha256 check): load it with :func:`edgecv.runtimes.base.load_runner`
(a runtime that cannot run here -> ``skipped: <reason>``), measure latency per (threads, batch) with the
interleaved method of :mod:`edgecv.bench.latency`, top-1/top-5 through the same runtime on ``--data``, and the
budget verdict of :mod:`edgecv.targets.budget`. The result is a dict following the ``edgecv.bench/1`` JSON
Schema (``edgecv/bench/schemas/bench.schema.json``).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edgecv import __version__
from edgecv.bench.artifacts import Resolved, input_shape, resolve_source
from edgecv.bench.latency import LatencyStats, measure_interleaved
from edgecv.bench.policy import deploy_precision, int8_pays
from edgecv.errors import UserError
from edgecv.runtimes.base import RuntimeUnavailable, close_all, host_description, load_runner
from edgecv.runtimes.introspect import measured_on
from edgecv.targets import TargetProfile, get_target
from edgecv.targets import budget as B

SCHEMA = "edgecv.bench/1"
CONTENDED = 1.15  # wall / CPU time above this at 1 thread: the host was busy, say so


@dataclass
class BenchConfig:
    target: str | None = None
    data: str | None = None
    threads: list[int] | None = None
    batches: list[int] = field(default_factory=lambda: [1])
    min_time_s: float = 2.0
    min_runs: int = 50
    warmup: int = 10
    rounds: int = 5
    budget_ms: float | None = None
    budget_fps: float | None = None
    artifacts: list[str] | None = None
    accuracy: bool = True
    max_images: int | None = None
    accuracy_tolerance: float = 1.0  # points of top-1 an artifact may lose and still be recommended
    device: str = "cpu"
    adb: str | None = None
    adb_runner: str | None = None
    seed: int = 0
    include_failed: bool = False  # also run artifacts whose export validation failed (labelled, never recommended)

    def settings(self) -> dict:
        return {"threads": self.threads, "batches": list(self.batches), "min_time_s": self.min_time_s,
                "min_runs": self.min_runs, "warmup": self.warmup, "rounds": self.rounds, "data": self.data,
                "accuracy": bool(self.accuracy and self.data), "max_images": self.max_images,
                "device": self.device, "adb": self.adb}


def _skip_row(res: Resolved, status: str, reason: str) -> dict:
    e = res.entry
    return {"name": res.name, "file": e.file, "format": e.format, "precision": e.precision, "runtime": e.runtime,
            "size_bytes": e.size_bytes, "sha256": e.sha256, "status": status, "reason": reason,
            "measured_on": None, "device": None, "host_proxy": None, "profile": None, "latency": [],
            "primary": None, "throughput": None, "accuracy": None, "verdict": None, "notes": []}


def run_bench(bundle: str, cfg: BenchConfig, log: Callable[[str], None] = lambda m: None) -> dict:
    src = resolve_source(bundle, cfg.artifacts, include_failed=cfg.include_failed)
    man = src.manifest
    target_name = cfg.target or (man.target if man else None)
    profile: TargetProfile | None = get_target(target_name) if target_name else None
    notes: list[str] = []

    threads = list(cfg.threads or (profile.threads if profile else (1,)))
    ncpu = os.cpu_count() or 1
    if any(t > ncpu for t in threads):
        capped = sorted({min(t, ncpu) for t in threads})
        notes.append(f"threads {threads} capped to {capped}: this host has {ncpu} logical cores")
        threads = capped
    batches = sorted(set(int(b) for b in cfg.batches))
    if any(b < 1 for b in batches) or any(t < 1 for t in threads):
        raise UserError("--batch and --threads values must be >= 1")

    ev = None
    if cfg.accuracy and cfg.data:
        if man is None:
            notes.append("accuracy skipped: a single artifact has no manifest (class names, preprocessing); "
                         "bench its bundle instead")
        else:
            from edgecv.bench.accuracy import load_eval_arrays

            log(f"loading evaluation images from {cfg.data} ...")
            ev = load_eval_arrays(cfg.data, man.class_names, man.preprocess, limit=cfg.max_images)
    elif cfg.accuracy:
        notes.append("accuracy not measured: no --data given")

    rows: dict[str, dict] = {}
    order: list[str] = []
    for e in src.not_ok:
        if e.status == "ok":  # written fine but nothing to run (the TensorRT build script)
            r = _skip_row(Resolved(e, src.path / e.file, man), "skipped",
                          f"{e.format}: not a model; run {e.file} on the target to build it there")
        else:
            r = _skip_row(Resolved(e, src.path / e.file, man), "not_exported",
                          f"export status {e.status}: {e.error or 'no reason recorded'}")
        rows[e.name] = r
        order.append(e.name)
    live: list[Resolved] = []
    for res in src.artifacts:
        order.append(res.name)
        if res.integrity_error:
            rows[res.name] = _skip_row(res, "invalid", res.integrity_error)
            log(f"{res.name}: INVALID: {res.integrity_error}")
            continue
        rows[res.name] = _skip_row(res, "ok", None)
        if res.failed_validation:
            rows[res.name]["notes"].append(f"export validation failed (benched because of --include-failed; never "
                                           f"recommended): {res.failed_validation}")
        live.append(res)

    rng = np.random.default_rng(cfg.seed)
    inputs: dict[tuple, np.ndarray] = {}

    def batch_input(res: Resolved, b: int) -> np.ndarray:
        shp = input_shape(res, b)
        if shp not in inputs:
            inputs[shp] = rng.standard_normal(shp).astype(np.float32)
        return inputs[shp]

    # -- Android device path (ExecuTorch executor_runner over adb) ---------------------------------------------
    if cfg.adb:
        from edgecv.targets.android import adb as ADB

        for res in [r for r in live if r.entry.format == "pte"]:
            row = rows[res.name]
            try:
                out = ADB.bench_pte(cfg.adb, res.path, runner=cfg.adb_runner, threads=threads[0],
                                    warmup=cfg.warmup, iterations=max(cfg.min_runs, 10), log=log)
            except ADB.AdbError as ex:
                row.update(status="skipped", reason=f"adb: {ex}")
                continue
            st = LatencyStats.from_samples_ns([int(ms * 1e6) for ms in out.iterations_ms], batch=1)
            row["latency"].append({"threads": threads[0], **st.to_dict()})
            row.update(measured_on=f"Android device {cfg.adb} ({out.device_model}), {threads[0]} thread(s), "
                                   "ExecuTorch executor_runner", device=f"adb:{cfg.adb}", host_proxy=False,
                       on_device=True)
            row["notes"].append(f"measured on device over adb; model load {out.load_ms:.1f} ms"
                                if out.load_ms is not None else "measured on device over adb")

    # -- host path: one runner per (artifact, threads), batches interleaved across artifacts ------------------
    for t in threads:
        runners: dict[str, object] = {}
        for res in live:
            row = rows[res.name]
            if row["status"] != "ok" or row.get("on_device"):
                continue
            try:
                runners[res.name] = load_runner(res.entry.runtime, res.path, threads=t, device=cfg.device)
            except RuntimeUnavailable as ex:
                row.update(status="skipped", reason=str(ex))
                log(f"{res.name}: skipped: {ex}")
            except Exception as ex:  # noqa: BLE001 - a broken artifact must not stop the others
                row.update(status="error", reason=f"load failed: {type(ex).__name__}: {ex}")
                log(f"{res.name}: load failed: {ex}")
        try:
            by_name = {r.name: r for r in live}
            for b in batches:
                fns = {}
                for name, runner in list(runners.items()):
                    row = rows[name]
                    fixed = getattr(runner, "batch_size", None)
                    if fixed and fixed != b:
                        row["notes"].append(f"batch {b} not measured: the artifact has a fixed batch size of {fixed}")
                        continue
                    x = batch_input(by_name[name], b)
                    try:
                        runner.predict(x)  # validates the input before timing
                    except Exception as ex:  # noqa: BLE001
                        row.update(status="error", reason=f"predict failed at batch {b}: {type(ex).__name__}: {ex}")
                        runners.pop(name)
                        continue
                    fns[name] = (lambda r=runner, x=x: r.predict(x))
                if not fns:
                    continue
                log(f"timing {len(fns)} artifact(s), threads={t}, batch={b} "
                    f"(>= {cfg.min_runs} runs and >= {cfg.min_time_s:g}s each, {cfg.rounds} interleaved rounds)")
                ms = measure_interleaved(fns, batch=b, warmup=cfg.warmup, min_runs=cfg.min_runs,
                                         min_time_s=cfg.min_time_s, rounds=cfg.rounds,
                                         cpu_time=(t == 1 and cfg.device == "cpu"))
                for name, m in ms.items():
                    st = m.stats()
                    rows[name]["latency"].append({"threads": t, **st.to_dict()})
                    c = st.contention
                    if c is not None and c > CONTENDED and (t, b) == (threads[0], batches[0]):
                        rows[name]["notes"].append(
                            f"host was contended while timing: p50 wall {st.p50_ms:.3f} ms vs CPU {st.cpu_p50_ms:.3f} ms "
                            f"({c:.2f}x); wall-clock figures are inflated by other load")
            for name, runner in runners.items():
                row = rows[name]
                if row["measured_on"] is None:
                    row["measured_on"], row["device"] = measured_on(runner, t)
                if ev is not None and row["accuracy"] is None and row["status"] == "ok":
                    from edgecv.bench.accuracy import evaluate_runner

                    try:
                        row["accuracy"] = evaluate_runner(runner, ev, desc=f"{name} accuracy")
                    except Exception as ex:  # noqa: BLE001
                        row["notes"].append(f"accuracy failed: {type(ex).__name__}: {ex}")
        finally:
            close_all(runners.values())

    # accuracy for artifacts timed on the device: through the host runtime when it exists here
    if cfg.adb and ev is not None:
        for res in live:
            row = rows[res.name]
            if row.get("on_device") and row["accuracy"] is None:
                try:
                    with load_runner(res.entry.runtime, res.path, threads=threads[0]) as r:
                        from edgecv.bench.accuracy import evaluate_runner

                        row["accuracy"] = evaluate_runner(r, ev, desc=f"{res.name} accuracy")
                        row["notes"].append("accuracy computed with the host ExecuTorch runtime (same program)")
                except (RuntimeUnavailable, Exception) as ex:  # noqa: BLE001
                    row["notes"].append(f"accuracy not measured: {ex}")

    # -- summaries, budgets ---------------------------------------------------------------------------------
    primary_t, primary_b = threads[0], batches[0]
    for name in order:
        row = rows[name]
        row.pop("on_device", None)
        if row["status"] == "ok" and not row["latency"]:
            row.update(status="error", reason=row["reason"] or "nothing measured")
        if row["status"] != "ok":
            continue
        lat = row["latency"]
        prim = next((x for x in lat if x["threads"] == primary_t and x["batch"] == primary_b), lat[0])
        row["primary"] = {k: prim[k] for k in ("threads", "batch", "p50_ms", "p90_ms", "fps")}
        big = max(lat, key=lambda x: (x["batch"], x["fps"]))
        row["throughput"] = {k: big[k] for k in ("threads", "batch", "fps")} if big["batch"] > prim["batch"] else None
        prof = B.profile_for_artifact(row["format"], row["precision"], row["runtime"], profile)
        row["profile"] = prof.name if prof else None
        bud = B.budget_from(prof, cfg.budget_ms, cfg.budget_fps)
        on_target = B.on_target_hardware(prof, row["device"] or "cpu", on_device=str(row["device"]).startswith("adb:"))
        row["host_proxy"] = not on_target
        if row["host_proxy"] and prof is not None:
            row["notes"].append(f"latency is a host proxy: measured on {row['measured_on']}, "
                                f"not on the {prof.hardware} the budget refers to")
        row["verdict"] = B.verdict(bud, prim["p90_ms"], prim["fps"], row["host_proxy"]).to_dict()

    proxied = [rows[n] for n in order if rows[n]["status"] == "ok" and rows[n]["host_proxy"]]
    for hw in sorted({B.profile_for_artifact(r["format"], r["precision"], r["runtime"], profile).hardware
                      for r in proxied if B.profile_for_artifact(r["format"], r["precision"], r["runtime"], profile)}):
        names = [r["name"] for r in proxied
                 if (p := B.profile_for_artifact(r["format"], r["precision"], r["runtime"], profile)) and p.hardware == hw]
        hosts = sorted({r["measured_on"] for r in proxied if r["name"] in names})
        notes.append(f"host proxy: {', '.join(names)} measured on {'; '.join(hosts)}, not on the {hw} the budget "
                     "refers to; the verdict is labelled (host proxy)")
    notes += _int8_notes([rows[n] for n in order])
    comparison = precision_comparison([rows[n] for n in order])
    result = {
        "schema": SCHEMA,
        "edgecv_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "bundle": str(src.path),
        "bundle_target": man.target if man else None,
        "source": (man.source if man else None),
        "target": profile.name if profile else None,
        "target_hardware": profile.hardware if profile else None,
        "host": host_description(),
        "machine": platform.machine(),
        "settings": {**cfg.settings(), "threads": threads, "batches": batches},
        "budget": (b.to_dict() if (b := B.budget_from(profile, cfg.budget_ms, cfg.budget_fps)) else None),
        "artifacts": [rows[n] for n in order],
        "recommended": recommend([rows[n] for n in order], profile, cfg.accuracy_tolerance,
                                 slower={c["int8"] for c in comparison if c["faster"] == "fp32"}),
        "precision_comparison": comparison,
        "int8_vs_onnx_fp32": int8_vs_onnx_fp32([rows[n] for n in order]),
        "notes": notes,
    }
    return result


def _pairs(rows: list[dict]) -> list[tuple[dict, dict]]:
    """(int8 row, fp32 row) of the same format on the same runtime, both measured (unambiguous pairs only)."""
    ok = [r for r in rows if r["status"] == "ok" and r["primary"]]
    out = []
    for r8 in [r for r in ok if r["precision"] == "int8"]:
        same = [r for r in ok if r["precision"] == "fp32" and r["runtime"] == r8["runtime"] and r["format"] == r8["format"]]
        if len(same) == 1:
            out.append((r8, same[0]))
    return out


def precision_comparison(rows: list[dict]) -> list[dict]:
    """Per runtime holding FP32 and INT8 of the model: which is faster (p50; INT8 needs >= 5 %), and the one to
    deploy there. The deploy precision follows the measurement, not a rule of thumb."""
    out = []
    for r8, r32 in _pairs(rows):
        a, b = r8["primary"]["p50_ms"], r32["primary"]["p50_ms"]
        faster = deploy_precision(b, a)
        out.append({"runtime": r8["runtime"], "format": r8["format"], "fp32": r32["name"], "int8": r8["name"],
                    "fp32_p50_ms": b, "int8_p50_ms": a, "int8_speedup": b / a if a > 0 else None, "faster": faster,
                    "deploy": r8["name"] if faster == "int8" else r32["name"]})
    return out


def _measured_and_validated(rows: list[dict]) -> list[dict]:
    """Rows timed here whose export validation passed (--include-failed rows are timed but never chosen)."""
    return [r for r in rows if r["status"] == "ok" and r["primary"]
            and not any(n.startswith("export validation failed") for n in r["notes"])]


def int8_vs_onnx_fp32(rows: list[dict]) -> dict | None:
    """The fastest INT8 artifact (any runtime, export validation passed) against the FP32 ONNX on ONNX Runtime, at
    the primary config: the question "does INT8 pay off at all on this host", answered by one run's numbers."""
    ok = _measured_and_validated(rows)
    ref = [r for r in ok if r["format"] == "onnx" and r["precision"] == "fp32" and r["runtime"] == "onnxruntime"]
    int8 = [r for r in ok if r["precision"] == "int8"]
    if len(ref) != 1 or not int8:
        return None
    best = min(int8, key=lambda r: r["primary"]["p50_ms"])
    a, b = best["primary"]["p50_ms"], ref[0]["primary"]["p50_ms"]
    return {"int8": best["name"], "int8_runtime": best["runtime"], "int8_p50_ms": a, "onnx_fp32": ref[0]["name"],
            "onnx_fp32_p50_ms": b, "speedup": b / a if a > 0 else None, "faster": int8_pays(a, b)}


def _int8_notes(rows: list[dict]) -> list[str]:
    """A note for every runtime on which INT8 is not (meaningfully) faster than FP32."""
    out = []
    ok = [r for r in rows if r["status"] == "ok" and r["primary"]]
    for r8 in [r for r in ok if r["precision"] == "int8"]:
        same = [r for r in ok if r["precision"] == "fp32" and r["runtime"] == r8["runtime"]
                and r["format"] == r8["format"]]
        if len(same) != 1:  # none, or ambiguous (several FP32 models of that format): no pairing
            continue
        r32 = same[0]
        a, b = r8["primary"]["p50_ms"], r32["primary"]["p50_ms"]
        if not int8_pays(a, b):
            msg = (f"INT8 is not faster than FP32 on {r8['runtime']} ({r8['format']}): p50 {a:.3f} ms vs "
                   f"{b:.3f} ms; deploy {r32['name']} on this runtime (the measurement decides the precision)")
            out.append(msg)
            r8["notes"].append(msg)
    return out


def recommend(rows: list[dict], profile: TargetProfile | None, tolerance: float = 1.0,
              slower: set[str] | None = None) -> dict:
    """Per target: the fastest artifact that passes its budget and keeps accuracy.

    ``slower``: INT8 artifacts measured not faster than their FP32 twin (:func:`precision_comparison`); they are
    not recommended while that twin qualifies (the deploy precision follows the measurement).

    "Keeps accuracy" = top-1 within ``tolerance`` points of the best top-1 measured among that target's
    artifacts (when accuracy was measured). "Fastest" = lowest p90 for a p90 budget, highest fps for an fps
    budget, lowest p50 without a budget. Returns ``{target: {"name", "reason"} | None}``.
    """
    ok = _measured_and_validated(rows)
    groups: dict[str, list[dict]] = {}
    for r in ok:
        groups.setdefault(r["profile"] or (profile.name if profile else "host"), []).append(r)
    out: dict[str, dict | None] = {}
    for tname, rs in groups.items():
        accs = [r["accuracy"]["top1"] for r in rs if r["accuracy"]]
        best = max(accs) if accs else None
        keep = [r for r in rs if best is None or (r["accuracy"] and r["accuracy"]["top1"] >= best - tolerance)]
        passing = [r for r in keep if not r["verdict"] or r["verdict"]["verdict"] in ("pass", "none")]
        if slower:
            twins = {r8["name"]: r32["name"] for r8, r32 in _pairs(rs)}
            names = {r["name"] for r in passing}
            passing = [r for r in passing if not (r["name"] in slower and twins.get(r["name"]) in names)]
        if not passing:
            out[tname] = None
            continue
        bud = passing[0]["verdict"]["budget"] if passing[0]["verdict"] else None
        if bud and bud["metric"] == "fps":
            pick = max(passing, key=lambda r: r["primary"]["fps"])
        elif bud:
            pick = min(passing, key=lambda r: r["primary"]["p90_ms"])
        else:
            pick = min(passing, key=lambda r: r["primary"]["p50_ms"])
        why = [f"fastest artifact that {'passes the budget' if bud else 'was measured'}"]
        if best is not None:
            why.append(f"top-1 {pick['accuracy']['top1']:.2f}% within {tolerance:g} pt of the best ({best:.2f}%)")
        else:
            why.append("accuracy not measured")
        if pick["host_proxy"]:
            why.append("host-proxy latency: confirm on the target hardware")
        out[tname] = {"name": pick["name"], "reason": "; ".join(why)}
    return out


def exit_code(result: dict) -> int:
    """0 ok; 1 when an artifact failed its integrity check, or a budget applies and no artifact passes it."""
    arts = result["artifacts"]
    if any(a["status"] == "invalid" for a in arts):
        return 1
    judged = [a for a in arts if a["status"] == "ok" and a["verdict"] and a["verdict"]["verdict"] != "none"]
    if judged and not any(a["verdict"]["verdict"] == "pass" for a in judged):
        return 1
    return 0
