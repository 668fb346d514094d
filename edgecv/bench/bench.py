"""``edgecv bench``: every artifact of a bundle through its real runtime.

Every selected artifact's sha256 is checked against the manifest first: a modified or missing artifact is bad
input (:class:`~edgecv.errors.UserError`, exit 2) and nothing is measured. The artifacts go through the one
measuring loop (:func:`edgecv.runtimes.measure.measure`: a runtime that cannot run here -> ``skipped: <reason>``,
latency per (threads, batch) timed interleaved, what it ran on, host proxies labelled by the target rule of
:mod:`edgecv.targets.budget`); top-1/top-5 through the same runtime on ``--data``, and the budget verdict. The
result is a typed :class:`~edgecv.contracts.bench.BenchReport` (``edgecv.bench/2``, the contract
``gate`` and ``serve --bench-json`` read back); the recommendation, precision lines, accuracy calls and exit
code come from :mod:`edgecv.targets.policy`. Every artifact's per-image top-1 predictions on the accuracy set are
kept (packed) beside the set's labels, so its accuracy is compared with the others' on the same images (paired).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from collections.abc import Callable
from dataclasses import replace

from edgecv import __version__
from edgecv.bench.accuracy import accuracy_set
from edgecv.bench.artifacts import Resolved, Source, declared_shape, resolve_source
from edgecv.bench.config import BenchConfig
from edgecv.contracts.bench import FAILED_VALIDATION, SCHEMA, BenchReport, BenchRow
from edgecv.errors import UserError
from edgecv.runtimes.base import host_description, load_runner
from edgecv.runtimes.latency import LatencyStats
from edgecv.runtimes.measure import Candidate, Measured, Plan, measure
from edgecv.targets import TargetProfile, get_target
from edgecv.targets import budget as B
from edgecv.targets.policy import deploy_report


def _skip_row(res: Resolved, status: str, reason: str | None) -> BenchRow:
    e = res.entry
    return BenchRow(name=res.name, file=e.file, format=e.format, precision=e.precision, runtime=e.runtime,
                    size_bytes=e.size_bytes, sha256=e.sha256, status=status, reason=reason)


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


def _initial_rows(src: Source) -> tuple[dict[str, BenchRow], list[str], list[Resolved]]:
    """Rows for every manifest entry (in order) and the artifacts to measure."""
    man = src.manifest
    rows: dict[str, BenchRow] = {}
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
            rows[res.name] = rows[res.name].with_notes(
                f"{FAILED_VALIDATION} (benched because of --include-failed; never recommended): {res.failed_validation}")
    return rows, order, list(src.artifacts)


OnTarget = Callable[..., bool]


def _on_target(live: list[Resolved], profile: TargetProfile | None) -> OnTarget:
    """``on_target(name, device, on_device=False)``: whether a figure measured on ``device`` is one of the hardware
    the artifact's target profile budgets for (:func:`edgecv.targets.budget.on_target_hardware`); else a host proxy."""
    entries = {r.name: r.entry for r in live}

    def on_target(name: str, device: str, on_device: bool = False) -> bool:
        e = entries[name]
        return B.on_target_hardware(B.profile_for_artifact(e.format, e.precision, e.runtime, profile), device,
                                    on_device=on_device)

    return on_target


def _bench_on_device(cfg: BenchConfig, live: list[Resolved], threads: list[int], on_target: OnTarget,
                     log: Log) -> dict[str, Measured]:
    """Android device path: ExecuTorch executor_runner over adb for the .pte artifacts."""
    from edgecv.contracts.formats import PTE
    from edgecv.targets.android import adb as ADB

    out: dict[str, Measured] = {}
    for res in [r for r in live if r.entry.format == PTE]:
        try:
            run = ADB.bench_pte(cfg.adb, res.path, runner=cfg.adb_runner, threads=threads[0],
                                warmup=cfg.warmup, iterations=max(cfg.min_runs, 10), log=log)
        except ADB.AdbError as ex:
            out[res.name] = Measured(status="skipped", reason=f"adb: {ex}")
            continue
        st = LatencyStats.from_samples_ns([int(ms * 1e6) for ms in run.iterations_ms], batch=1)
        device = f"adb:{cfg.adb}"
        out[res.name] = Measured(
            latency=[{"threads": threads[0], **st.to_dict()}], device=device,
            measured_on=f"Android device {cfg.adb} ({run.device_model}), {threads[0]} thread(s), ExecuTorch "
                        "executor_runner", host_proxy=not on_target(res.name, device, on_device=True),
            notes=[f"measured on device over adb; model load {run.load_ms:.1f} ms" if run.load_ms is not None
                   else "measured on device over adb"])
    return out


def _manifest_shape(r: Resolved):
    """The artifact's input at a batch size as its manifest records it; None for a single file: the measuring
    loop reads the shape from the runner it has open."""
    shape = declared_shape(r)
    return None if not shape else (lambda b: (int(b), *(int(d) for d in shape[1:])))


def _bench_host(cfg: BenchConfig, live: list[Resolved], threads: list[int], batches: list[int], ev,
                on_target: OnTarget, log: Log) -> tuple[dict[str, Measured], dict[str, dict]]:
    """Every artifact through the one measuring loop (:func:`edgecv.runtimes.measure.measure`); accuracy once per
    artifact, while its runner is open. Returns the measurements and the accuracies by name."""
    from edgecv.bench.accuracy import evaluate_runner

    acc: dict[str, dict] = {}

    def score(name: str, runner, m: Measured) -> None:
        if ev is not None and name not in acc:
            try:
                acc[name] = evaluate_runner(runner, ev, desc=f"{name} accuracy")
            except Exception as ex:  # noqa: BLE001
                m.notes.append(f"accuracy failed: {type(ex).__name__}: {ex}")

    cands = [Candidate(r.name, r.entry.runtime, r.path, _manifest_shape(r)) for r in live]
    plan = Plan(tuple(threads), tuple(batches), cfg.device, cfg.warmup, cfg.min_runs, cfg.min_time_s, cfg.rounds,
                cfg.seed)
    return measure(cands, plan, on_target=on_target, visit=score, log=log), acc


def _device_accuracy(live: list[Resolved], meas: dict[str, Measured], acc: dict[str, dict], threads: list[int],
                     ev) -> None:
    """Accuracy for artifacts timed on the device: through the host runtime when it exists here."""
    from edgecv.bench.accuracy import evaluate_runner

    for res in live:
        m = meas.get(res.name)
        if m is not None and (m.device or "").startswith("adb:") and m.status == "ok" and res.name not in acc:
            try:
                with load_runner(res.entry.runtime, res.path, threads=threads[0]) as r:
                    acc[res.name] = evaluate_runner(r, ev, desc=f"{res.name} accuracy")
                    m.notes.append("accuracy computed with the host ExecuTorch runtime (same program)")
            except Exception as ex:  # noqa: BLE001 - RuntimeUnavailable included
                m.notes.append(f"accuracy not measured: {ex}")


def _merge(row: BenchRow, m: Measured | None, acc: dict | None) -> BenchRow:
    """The row with what the measurement found; measured but no latency at all is an error."""
    if m is None:
        return row
    status, reason = m.status, m.reason
    if status == "ok" and not m.latency:
        status, reason = "error", reason or "nothing measured"
    return replace(row, status=status, reason=reason, latency=tuple(m.latency), measured_on=m.measured_on,
                   device=m.device, host_proxy=m.host_proxy if status == "ok" else None, accuracy=acc,
                   notes=(*row.notes, *m.notes))


def _summarize(row: BenchRow, cfg: BenchConfig, profile: TargetProfile | None, primary: tuple[int, int]) -> BenchRow:
    """Primary figures, throughput, profile and budget verdict of one measured row."""
    lat = row.latency
    prim = next((x for x in lat if (x["threads"], x["batch"]) == primary), lat[0])
    big = max(lat, key=lambda x: (x["batch"], x["fps"]))
    prof = B.profile_for_artifact(row.format, row.precision, row.runtime, profile)
    bud = B.budget_from(prof, cfg.budget_ms, cfg.budget_fps)
    notes = []
    if row.host_proxy and prof is not None:
        notes.append(f"latency is a host proxy: measured on {row.measured_on}, "
                     f"not on the {prof.hardware} the budget refers to")
    return replace(row, primary={k: prim[k] for k in ("threads", "batch", "p50_ms", "p90_ms", "fps")},
                   throughput={k: big[k] for k in ("threads", "batch", "fps")} if big["batch"] > prim["batch"] else None,
                   profile=prof.name if prof else None,
                   verdict=B.verdict(bud, prim["p90_ms"], prim["fps"], row.host_proxy).to_dict()).with_notes(*notes)


def _proxy_notes(rows: list[BenchRow], profile: TargetProfile | None) -> list[str]:
    """One note per target hardware whose budget was judged on host-proxy figures."""
    by_hw: dict[str, list[BenchRow]] = {}
    for r in rows:
        if r.status == "ok" and r.host_proxy:
            p = B.profile_for_artifact(r.format, r.precision, r.runtime, profile)
            if p:
                by_hw.setdefault(p.hardware, []).append(r)
    return [f"host proxy: {', '.join(r.name for r in rs)} measured on "
            f"{'; '.join(sorted({r.measured_on for r in rs}))}, not on the {hw} the budget "
            "refers to; the verdict is labelled (host proxy)" for hw, rs in sorted(by_hw.items())]


def _measure_rows(cfg: BenchConfig, src: Source, profile: TargetProfile | None, threads: list[int],
                  batches: list[int], ev, log: Log) -> list[BenchRow]:
    """Every row of the bundle, measured (on the device over adb, then on this host) and summarized."""
    rows, order, live = _initial_rows(src)
    on_target = _on_target(live, profile)
    meas = _bench_on_device(cfg, live, threads, on_target, log) if cfg.adb else {}
    host, acc = _bench_host(cfg, [r for r in live if r.name not in meas], threads, batches, ev, on_target, log)
    meas.update(host)
    if cfg.adb and ev is not None:
        _device_accuracy(live, meas, acc, threads, ev)
    out = []
    for name in order:
        row = _merge(rows[name], meas.get(name), acc.get(name))
        out.append(_summarize(row, cfg, profile, (threads[0], batches[0])) if row.status == "ok" else row)
    return out


def bench_report(bundle: str, cfg: BenchConfig, log: Log = lambda m: None) -> BenchReport:
    """Benchmark every artifact of ``bundle`` (a bundle folder or one artifact file): the typed bench result
    (``edgecv.bench/2``). Bad input (a setting out of its range, a modified artifact, both budgets, unreadable
    data) is a UserError before measuring."""
    cfg.validate()
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
    arts = _measure_rows(cfg, src, profile, threads, batches, ev, log)
    deploy = deploy_report(arts, profile, cfg.accuracy_tolerance, labels=ev.y if ev is not None else None)
    arts = [replace(r, accuracy_decision=deploy["accuracy"].get(r.name)).with_notes(*deploy["row_notes"].get(r.name, ()))
            for r in arts]
    budget = B.budget_from(profile, cfg.budget_ms, cfg.budget_fps)
    return BenchReport(
        schema=SCHEMA, edgecv_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), bundle=str(src.path),
        bundle_target=man.target if man else None, source=man.source if man else None,
        target=profile.name if profile else None, target_hardware=profile.hardware if profile else None,
        host=host_description(), machine=platform.machine(),
        settings={**cfg.settings(), "threads": threads, "batches": batches},
        budget=budget.to_dict() if budget else None, accuracy_set=accuracy_set(ev) if ev is not None else None,
        artifacts=tuple(arts), recommended=deploy["recommended"], precision_comparison=deploy["precision_comparison"],
        int8_vs_onnx_fp32=deploy["int8_vs_onnx_fp32"], notes=(*notes, *_proxy_notes(arts, profile), *deploy["notes"]))


def run_bench(bundle: str, cfg: BenchConfig, log: Log = lambda m: None) -> dict:
    """:func:`bench_report` as its JSON form (what ``edgecv bench --json`` writes)."""
    return bench_report(bundle, cfg, log).to_dict()
