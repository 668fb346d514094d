"""``edgecv bench``: every artifact of a bundle through its real runtime.

Every selected artifact's sha256 is checked against the manifest first: a modified or missing artifact is bad
input (:class:`~edgecv.errors.UserError`, exit 2) and nothing is measured. For each artifact: load it with :func:`edgecv.runtimes.base.load_runner`
(a runtime that cannot run here -> ``skipped: <reason>``), measure latency per (threads, batch) with the
interleaved method of :mod:`edgecv.runtimes.latency`, top-1/top-5 through the same runtime on ``--data``, and the
budget verdict of :mod:`edgecv.targets.budget`. The result is a dict following the ``edgecv.bench/2`` JSON
Schema (``edgecv/bench/schemas/bench.schema.json``); the recommendation, precision lines, accuracy calls and exit
code come from :mod:`edgecv.targets.policy`. Every artifact's per-image top-1 predictions on the accuracy set are
kept (packed) beside the set's labels, so its accuracy is compared with the others' on the same images (paired).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edgecv import __version__
from edgecv.bench.accuracy import accuracy_set
from edgecv.bench.artifacts import Resolved, Source, input_shape, resolve_source
from edgecv.errors import UserError
from edgecv.runtimes.base import RuntimeUnavailable, close_all, host_description, load_runner
from edgecv.runtimes.introspect import measured_on
from edgecv.runtimes.latency import LatencyStats, measure_interleaved
from edgecv.targets import TargetProfile, get_target
from edgecv.targets import budget as B
from edgecv.targets.policy import ACCURACY_TOLERANCE, deploy_report

SCHEMA = "edgecv.bench/2"
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
    accuracy_tolerance: float = ACCURACY_TOLERANCE  # top-1 points an artifact may be shown to lose vs the best
    device: str = "cpu"
    adb: str | None = None
    adb_runner: str | None = None
    seed: int = 0
    include_failed: bool = False  # also run artifacts whose export validation failed (labelled, never recommended)
    allow_duplicates: bool = False  # score --data even with byte-identical images in two splits or classes
    skip_bad: bool = False  # unreadable images / unlistable folders of --data: listed, not fatal

    def settings(self) -> dict:
        return {"threads": self.threads, "batches": list(self.batches), "min_time_s": self.min_time_s,
                "min_runs": self.min_runs, "warmup": self.warmup, "rounds": self.rounds, "data": self.data,
                "accuracy": bool(self.accuracy and self.data), "max_images": self.max_images,
                "accuracy_tolerance": self.accuracy_tolerance,
                "device": self.device, "adb": self.adb, "allow_duplicates": self.allow_duplicates,
                "skip_bad": self.skip_bad}


def _skip_row(res: Resolved, status: str, reason: str) -> dict:
    e = res.entry
    return {"name": res.name, "file": e.file, "format": e.format, "precision": e.precision, "runtime": e.runtime,
            "size_bytes": e.size_bytes, "sha256": e.sha256, "status": status, "reason": reason,
            "measured_on": None, "device": None, "host_proxy": None, "profile": None, "latency": [],
            "primary": None, "throughput": None, "accuracy": None, "accuracy_decision": None, "verdict": None,
            "notes": []}


Log = Callable[[str], None]


def _threads_batches(cfg: BenchConfig, profile: TargetProfile | None, notes: list[str]) -> tuple[list[int], list[int]]:
    threads = list(cfg.threads or (profile.threads if profile else (1,)))
    ncpu = os.cpu_count() or 1
    if any(t > ncpu for t in threads):
        capped = sorted({min(t, ncpu) for t in threads})
        notes.append(f"threads {threads} capped to {capped}: this host has {ncpu} logical cores")
        threads = capped
    batches = sorted(set(int(b) for b in cfg.batches))
    if any(b < 1 for b in batches) or any(t < 1 for t in threads):
        raise UserError("--batch and --threads values must be >= 1")
    return threads, batches


def _eval_set(cfg: BenchConfig, man, notes: list[str], log: Log):
    if cfg.accuracy and cfg.data:
        if man is None:
            notes.append("accuracy skipped: a single artifact has no manifest (class names, preprocessing); "
                         "bench its bundle instead")
            return None
        from edgecv.bench.accuracy import load_eval_arrays

        log(f"loading evaluation images from {cfg.data} ...")
        return load_eval_arrays(cfg.data, man.class_names, man.preprocess, limit=cfg.max_images,
                                allow_duplicates=cfg.allow_duplicates, skip_bad=cfg.skip_bad, log=log)
    if cfg.accuracy:
        notes.append("accuracy not measured: no --data given")
    return None


def _refuse_invalid(src: Source) -> None:
    """A modified or missing artifact is bad input: one line naming every such file, exit 2, nothing measured."""
    bad = [r.integrity_error for r in src.artifacts if r.integrity_error]
    if bad:
        raise UserError("; ".join(bad) + " (re-export the bundle, or leave the artifact out with --artifacts)")


def _initial_rows(src: Source) -> tuple[dict[str, dict], list[str], list[Resolved]]:
    """Rows for every manifest entry (in order) and the artifacts to measure."""
    man = src.manifest
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
    for res in src.artifacts:
        order.append(res.name)
        rows[res.name] = _skip_row(res, "ok", None)
        if res.failed_validation:
            rows[res.name]["notes"].append(f"export validation failed (benched because of --include-failed; never "
                                           f"recommended): {res.failed_validation}")
    return rows, order, list(src.artifacts)


def _bench_on_device(cfg: BenchConfig, live: list[Resolved], rows: dict[str, dict], threads: list[int],
                     log: Log) -> None:
    """Android device path: ExecuTorch executor_runner over adb for the .pte artifacts."""
    from edgecv.contracts.formats import PTE
    from edgecv.targets.android import adb as ADB

    for res in [r for r in live if r.entry.format == PTE]:
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


def _load_runners(cfg: BenchConfig, live: list[Resolved], rows: dict[str, dict], t: int, log: Log) -> dict:
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
    return runners


class _Inputs:
    """One seeded random input per shape, shared by every artifact of that shape."""

    def __init__(self, seed: int):
        self.rng, self.cache = np.random.default_rng(seed), {}

    def __call__(self, res: Resolved, b: int) -> np.ndarray:
        shp = input_shape(res, b)
        if shp not in self.cache:
            self.cache[shp] = self.rng.standard_normal(shp).astype(np.float32)
        return self.cache[shp]


def _batch_calls(runners: dict, by_name: dict[str, Resolved], rows: dict[str, dict], b: int, inputs: _Inputs) -> dict:
    """The timed call of every runner that accepts batch ``b`` (a runner whose predict fails is dropped)."""
    fns = {}
    for name, runner in list(runners.items()):
        row = rows[name]
        fixed = getattr(runner, "batch_size", None)
        if fixed and fixed != b:
            row["notes"].append(f"batch {b} not measured: the artifact has a fixed batch size of {fixed}")
            continue
        x = inputs(by_name[name], b)
        try:
            runner.predict(x)  # validates the input before timing
        except Exception as ex:  # noqa: BLE001
            row.update(status="error", reason=f"predict failed at batch {b}: {type(ex).__name__}: {ex}")
            runners.pop(name)
            continue
        fns[name] = (lambda r=runner, x=x: r.predict(x))
    return fns


def _time_batch(cfg: BenchConfig, fns: dict, rows: dict[str, dict], t: int, b: int, primary: bool, log: Log) -> None:
    log(f"timing {len(fns)} artifact(s), threads={t}, batch={b} "
        f"(>= {cfg.min_runs} runs and >= {cfg.min_time_s:g}s each, {cfg.rounds} interleaved rounds)")
    ms = measure_interleaved(fns, batch=b, warmup=cfg.warmup, min_runs=cfg.min_runs, min_time_s=cfg.min_time_s,
                             rounds=cfg.rounds, cpu_time=(t == 1 and cfg.device == "cpu"))
    for name, m in ms.items():
        st = m.stats()
        rows[name]["latency"].append({"threads": t, **st.to_dict()})
        c = st.contention
        if c is not None and c > CONTENDED and primary:
            rows[name]["notes"].append(
                f"host was contended while timing: p50 wall {st.p50_ms:.3f} ms vs CPU {st.cpu_p50_ms:.3f} ms "
                f"({c:.2f}x); wall-clock figures are inflated by other load")


def _accuracy(row: dict, runner, ev, name: str) -> None:
    from edgecv.bench.accuracy import evaluate_runner

    try:
        row["accuracy"] = evaluate_runner(runner, ev, desc=f"{name} accuracy")
    except Exception as ex:  # noqa: BLE001
        row["notes"].append(f"accuracy failed: {type(ex).__name__}: {ex}")


def _bench_host(cfg: BenchConfig, live: list[Resolved], rows: dict[str, dict], threads: list[int],
                batches: list[int], ev, log: Log) -> None:
    """One runner per (artifact, threads); batches interleaved across artifacts; accuracy once per artifact."""
    inputs = _Inputs(cfg.seed)
    by_name = {r.name: r for r in live}
    for t in threads:
        runners = _load_runners(cfg, live, rows, t, log)
        try:
            for b in batches:
                fns = _batch_calls(runners, by_name, rows, b, inputs)
                if fns:
                    _time_batch(cfg, fns, rows, t, b, (t, b) == (threads[0], batches[0]), log)
            for name, runner in runners.items():
                row = rows[name]
                if row["measured_on"] is None:
                    row["measured_on"], row["device"] = measured_on(runner, t)
                if ev is not None and row["accuracy"] is None and row["status"] == "ok":
                    _accuracy(row, runner, ev, name)
        finally:
            close_all(runners.values())


def _device_accuracy(live: list[Resolved], rows: dict[str, dict], threads: list[int], ev) -> None:
    """Accuracy for artifacts timed on the device: through the host runtime when it exists here."""
    from edgecv.bench.accuracy import evaluate_runner

    for res in live:
        row = rows[res.name]
        if row.get("on_device") and row["accuracy"] is None:
            try:
                with load_runner(res.entry.runtime, res.path, threads=threads[0]) as r:
                    row["accuracy"] = evaluate_runner(r, ev, desc=f"{res.name} accuracy")
                    row["notes"].append("accuracy computed with the host ExecuTorch runtime (same program)")
            except Exception as ex:  # noqa: BLE001 - RuntimeUnavailable included
                row["notes"].append(f"accuracy not measured: {ex}")


def _summarize(row: dict, cfg: BenchConfig, profile: TargetProfile | None, primary: tuple[int, int]) -> None:
    """Primary figures, throughput, profile and budget verdict of one measured row."""
    lat = row["latency"]
    prim = next((x for x in lat if (x["threads"], x["batch"]) == primary), lat[0])
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


def _proxy_notes(rows: list[dict], profile: TargetProfile | None) -> list[str]:
    """One note per target hardware whose budget was judged on host-proxy figures."""
    by_hw: dict[str, list[dict]] = {}
    for r in rows:
        if r["status"] == "ok" and r["host_proxy"]:
            p = B.profile_for_artifact(r["format"], r["precision"], r["runtime"], profile)
            if p:
                by_hw.setdefault(p.hardware, []).append(r)
    return [f"host proxy: {', '.join(r['name'] for r in rs)} measured on "
            f"{'; '.join(sorted({r['measured_on'] for r in rs}))}, not on the {hw} the budget "
            "refers to; the verdict is labelled (host proxy)" for hw, rs in sorted(by_hw.items())]


def run_bench(bundle: str, cfg: BenchConfig, log: Log = lambda m: None) -> dict:
    """Benchmark every artifact of ``bundle`` (a bundle folder or one artifact file): the bench result
    (``SCHEMA``). Bad input (a modified artifact, both budgets, unreadable data) is a UserError before measuring."""
    if cfg.budget_ms is not None and cfg.budget_fps is not None:
        raise UserError("give --budget-ms or --budget-fps, not both")
    src = resolve_source(bundle, cfg.artifacts, include_failed=cfg.include_failed)
    _refuse_invalid(src)
    man = src.manifest
    target_name = cfg.target or (man.target if man else None)
    profile: TargetProfile | None = get_target(target_name) if target_name else None
    notes: list[str] = []
    threads, batches = _threads_batches(cfg, profile, notes)
    ev = _eval_set(cfg, man, notes, log)
    rows, order, live = _initial_rows(src)
    if cfg.adb:
        _bench_on_device(cfg, live, rows, threads, log)
    _bench_host(cfg, live, rows, threads, batches, ev, log)
    if cfg.adb and ev is not None:
        _device_accuracy(live, rows, threads, ev)
    for name in order:
        row = rows[name]
        row.pop("on_device", None)
        if row["status"] == "ok" and not row["latency"]:
            row.update(status="error", reason=row["reason"] or "nothing measured")
        if row["status"] == "ok":
            _summarize(row, cfg, profile, (threads[0], batches[0]))
    arts = [rows[n] for n in order]
    deploy = deploy_report(arts, profile, cfg.accuracy_tolerance, labels=ev.y if ev is not None else None)
    for r in arts:
        r["accuracy_decision"] = deploy["accuracy"].get(r["name"])
    budget = B.budget_from(profile, cfg.budget_ms, cfg.budget_fps)
    return {
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
        "budget": budget.to_dict() if budget else None,
        "accuracy_set": accuracy_set(ev) if ev is not None else None,
        "artifacts": arts,
        "recommended": deploy["recommended"],
        "precision_comparison": deploy["precision_comparison"],
        "int8_vs_onnx_fp32": deploy["int8_vs_onnx_fp32"],
        "notes": notes + _proxy_notes(arts, profile) + deploy["notes"],
    }
