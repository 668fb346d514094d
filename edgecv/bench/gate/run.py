"""``run_gate``: resolve both sides, match their artifacts, refuse different tasks, gate each pair, assemble."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecv import __version__
from edgecv.bench.artifacts import Resolved, Source, resolve_source
from edgecv.bench.gate.compat import check_same_task
from edgecv.bench.gate.config import SCHEMA, GateConfig
from edgecv.bench.gate.measure import SessionPairs, paired_rounds, session_plan, stored_rounds
from edgecv.contracts.bench import BenchReport, BenchRow, load_bench
from edgecv.errors import UserError
from edgecv.runtimes.base import RuntimeUnavailable, host_description

Log = Callable[[str], None]


def match_pairs(base: Source, cand: Source) -> tuple[list[tuple[Resolved, Resolved]], list[dict], list[str]]:
    """Pairs matched by format+precision; also rows for baseline artifacts missing in the candidate, and notes."""
    notes: list[str] = []
    missing: list[dict] = []
    if not base.is_bundle and not cand.is_bundle:
        return [(base.artifacts[0], cand.artifacts[0])], missing, notes
    if not base.is_bundle or not cand.is_bundle:
        single, bundle = (base, cand) if not base.is_bundle else (cand, base)
        one = single.artifacts[0]
        same = [a for a in bundle.artifacts if a.name == one.name] or \
               [a for a in bundle.artifacts if a.entry.format == one.entry.format]
        if len(same) != 1:
            raise UserError(f"cannot match {one.path.name} ({one.name}) to one artifact of {bundle.path} "
                            f"(has: {', '.join(a.name for a in bundle.artifacts) or 'none'})")
        return ([(one, same[0])] if single is base else [(same[0], one)]), missing, notes
    cmap = {a.name: a for a in cand.artifacts}
    pairs = []
    for a in base.artifacts:
        if a.name in cmap:
            pairs.append((a, cmap[a.name]))
        else:
            missing.append({"name": a.name, "status": "missing",
                            "reason": "in the baseline bundle but not exported (ok) in the candidate"})
    extra = sorted(set(cmap) - {a.name for a in base.artifacts})
    if extra:
        notes.append(f"new in the candidate (no baseline, not gated): {', '.join(extra)}")
    return pairs, missing, notes


@dataclass
class _Plan:
    """What the gate compares: the candidate, the baseline (a source, or a stored bench JSON) and the pairs."""

    bpath: Path
    cand: Source
    base_src: Source | None
    stored: BenchReport | None
    pairs: list[tuple[Resolved | None, Resolved]]
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    smap: dict[str, BenchRow] = field(default_factory=dict)  # stored baseline: its ok artifacts by name


def _verified(arg: str) -> Source:
    """The resolved source; a modified or missing artifact is bad input (exit 2), before anything is measured."""
    src = resolve_source(arg)
    bad = [a for a in src.artifacts if a.integrity_error]
    if bad:
        raise UserError(bad[0].integrity_error)
    return src


def _stored_plan(bpath: Path, cand: Source, stored: BenchReport, cfg: GateConfig, notes: list[str]) -> _Plan:
    notes = [*notes, "baseline is a stored bench JSON: measured at another time (maybe on another machine), "
             f"so noise does not cancel; limit widened by x{cfg.stored_noise:g}. Less reliable than a "
             "same-job bundle-vs-bundle gate."]
    if stored.host != host_description():
        notes.append(f"stored baseline was measured on '{stored.host}', this is '{host_description()}'")
    smap = {a.name: a for a in stored.artifacts if a.status == "ok"}
    return _Plan(bpath, cand, None, stored, [(None, c) for c in cand.artifacts], notes=notes, smap=smap)


def _plan(baseline: str, candidate: str, cfg: GateConfig) -> _Plan:
    bpath = Path(baseline)
    stored, notes = None, []
    if bpath.is_file() and bpath.suffix.lower() == ".json" and bpath.name != "manifest.json":
        stored, notes = load_bench(bpath, "--baseline")
    cand = _verified(candidate)
    if stored is not None:
        return _stored_plan(bpath, cand, stored, cfg, notes)
    base_src = _verified(baseline)
    pairs, missing, notes = match_pairs(base_src, cand)
    check_same_task(base_src, cand, pairs)
    rows = [{**m, "baseline": None, "candidate": None, "latency": None, "accuracy": None, "verdict": "regression"}
            for m in missing]
    return _Plan(bpath, cand, base_src, None, pairs, rows, notes)


def _eval_set(plan: _Plan, cfg: GateConfig, log: Log):
    """The evaluation arrays both sides are scored on (same task: one set), or None with a note."""
    if not cfg.data:
        plan.notes.append("accuracy not checked: no --data given")
        return None
    cman = plan.cand.manifest
    if cman is None or (plan.stored is None and plan.base_src.manifest is None):
        plan.notes.append("accuracy skipped: a single artifact has no manifest (class names, preprocessing)")
        return None
    from edgecv.bench.accuracy import load_eval_arrays

    log(f"loading evaluation images from {cfg.data} ...")
    # both sides are scored on the same images: duplicates of training images cannot favour one of them
    return load_eval_arrays(cfg.data, cman.class_names, cman.preprocess, limit=cfg.max_images, allow_duplicates=True,
                            skip_bad=cfg.skip_bad, log=log)


def _stored_ms(stored_row: BenchRow, cfg: GateConfig) -> float | None:
    lat = [x for x in stored_row.latency if x["batch"] == 1]
    pick = next((x for x in lat if x["threads"] == cfg.threads), lat[0] if lat else None)
    return None if pick is None else pick["p90_ms" if cfg.metric == "p90" else "p50_ms"]


def _gate_latency(row: dict, sessions: SessionPairs, plan: _Plan, cfg: GateConfig, log: Log) -> bool:
    """The latency decision into ``row``; False when the row was skipped (no stored batch-1 figure)."""
    limit = 1.0 + cfg.max_latency_regression
    paired = sessions.base_art is not None
    log(f"{row['name']}: measuring {'baseline and candidate interleaved' if paired else 'candidate'} "
        f"({cfg.rounds}-{cfg.max_rounds} rounds"
        f"{f' over {session_plan(cfg)[0]}+ session pairs' if paired else ''}, threads={cfg.threads}, "
        f"metric={cfg.metric})")
    if paired:
        d, det = paired_rounds(sessions.open, cfg, limit, log)
    else:
        base_ms = _stored_ms(plan.smap[row["name"]], cfg)
        if base_ms is None:
            row.update(status="skipped", reason="stored baseline has no batch-1 latency", verdict="skipped")
            return False
        d, det = stored_rounds(sessions.open(0)[1], base_ms, cfg, limit * cfg.stored_noise, log)
    row["latency"] = {"metric": cfg.metric, **det, **d.to_dict()}
    if d.verdict == "regression":
        row["verdict"] = "regression"
    return True


def _stored_labels(plan: _Plan, ev):
    """The stored baseline's labels when its predictions are of the images measured now (same labels, same
    order), else None (the comparison is then unpaired)."""
    from edgecv.targets.stats import unpack

    s = plan.stored.accuracy_set if plan.stored else None
    if not s:
        return None
    labels = unpack(s["labels"])
    return labels if labels.shape == ev.y.shape and (labels == ev.y).all() else None


def _gate_accuracy(row: dict, sessions: SessionPairs, plan: _Plan, cfg: GateConfig, ev) -> None:
    """The candidate's top-1 against the baseline's on the same images (the bench rule,
    :func:`edgecv.targets.policy.call_against`: paired, non-inferiority within ``max_accuracy_drop``) into ``row``."""
    from edgecv.bench.accuracy import evaluate_runner

    name = row["name"]
    cand = evaluate_runner(sessions.cand, ev, desc=f"{name} candidate accuracy")
    labels = ev.y
    if sessions.base is not None:
        base = evaluate_runner(sessions.base, ev, desc=f"{name} baseline accuracy")
        basis = "same images, same runtime, same job (paired)"
    else:
        base = plan.smap[name].accuracy
        if not base:
            row["accuracy"] = {"skipped": "the stored baseline has no accuracy"}
            return
        labels = _stored_labels(plan, ev)
        basis = f"stored baseline accuracy on {base.get('data')}" + (" (paired)" if labels is not None else "")
        if labels is None and base.get("predictions"):
            plan.notes.append(f"{name}: the stored predictions are of other images than --data's: accuracy "
                              "compared unpaired")
        if str(base.get("data")) != str(cfg.data):
            plan.notes.append(f"{name}: stored accuracy was measured on {base.get('data')}, not {cfg.data}")
    row["accuracy"] = accuracy_check(base, cand, labels, cfg.max_accuracy_drop, basis)
    row["accuracy"]["candidate_learned"] = cand.get("learned")  # False: no better than the commonest class
    if row["accuracy"]["verdict"] == "regression":
        row["verdict"] = "regression"


def accuracy_check(base: dict, cand: dict, labels, max_drop: float, basis: str) -> dict:
    """The gate's accuracy block: the candidate's accuracy (``evaluate_runner``'s dict) against the baseline's,
    paired on ``labels``' images where both carry predictions (:func:`edgecv.targets.policy.call_against`)."""
    from edgecv.targets.policy import call_against

    call = call_against(BenchRow("the baseline", accuracy=base), BenchRow("candidate", accuracy=cand), max_drop, labels)
    return {"baseline_top1": base["top1"], "candidate_top1": cand["top1"],
            "baseline_top1_ci": base.get("top1_ci"), "candidate_top1_ci": cand.get("top1_ci"),
            "drop": base["top1"] - cand["top1"], "max_drop": max_drop,
            "verdict": "pass" if call.keeps else "regression", "n": cand["n"], "basis": basis,
            "label": call.clause, "call": call.to_dict()}


def _gate_pair(plan: _Plan, base_art: Resolved | None, cand_art: Resolved, cfg: GateConfig, ev,
               rng: np.random.Generator, log: Log) -> dict:
    name = cand_art.name
    row = {"name": name, "status": "ok", "reason": None,
           "baseline": str(base_art.path) if base_art else str(plan.bpath),
           "candidate": str(cand_art.path), "latency": None, "accuracy": None, "verdict": "pass"}
    if plan.stored is not None and name not in plan.smap:
        row.update(status="skipped", reason="not in the stored baseline", verdict="skipped")
        return row
    sessions = SessionPairs(base_art, cand_art, cfg, rng)
    try:
        try:
            sessions.open(0)
        except RuntimeUnavailable as ex:
            row.update(status="skipped", reason=str(ex), verdict="skipped")
            log(f"{name}: skipped: {ex}")
            return row
        if _gate_latency(row, sessions, plan, cfg, log) and ev is not None:
            _gate_accuracy(row, sessions, plan, cfg, ev)
    except Exception as ex:  # noqa: BLE001 - a broken artifact is a failed gate, with the reason
        row.update(status="error", reason=f"{type(ex).__name__}: {ex}", verdict="regression")
        log(f"{name}: error: {ex}")
    finally:
        sessions.close()
    return row


def _result(baseline: str, candidate: str, plan: _Plan, cfg: GateConfig) -> dict:
    rows = plan.rows
    measured = [r for r in rows if r["status"] == "ok"]
    if not measured and not any(r["status"] in ("missing", "error") for r in rows):
        reasons = "; ".join(f"{r['name']}: {r['reason']}" for r in rows) or "no artifacts"
        raise UserError(f"nothing to gate: {reasons}")
    regress = [r for r in rows if r["verdict"] == "regression"]
    stored = plan.stored is not None
    return {
        "schema": SCHEMA,
        "edgecv_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "baseline": str(Path(baseline).resolve()),
        "candidate": str(Path(candidate).resolve()),
        "baseline_kind": "stored_json" if stored else ("bundle" if plan.base_src.is_bundle else "artifact"),
        "reliability": "low" if stored else "high",
        "host": host_description(),
        "settings": cfg.to_dict(),
        "artifacts": rows,
        "passed": not regress,
        "regressions": [r["name"] for r in regress],
        "notes": plan.notes,
    }


def run_gate(baseline: str, candidate: str, cfg: GateConfig, log: Log = lambda m: None) -> dict:
    """The gate result (schema ``edgecv.gate/1``); :class:`UserError` for bad input, before measuring."""
    cfg.validate()
    plan = _plan(baseline, candidate, cfg)
    ev = _eval_set(plan, cfg, log)
    rng = np.random.default_rng(cfg.seed)
    for base_art, cand_art in plan.pairs:
        plan.rows.append(_gate_pair(plan, base_art, cand_art, cfg, ev, rng, log))
    return _result(baseline, candidate, plan, cfg)
