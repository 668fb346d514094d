"""``edgecv gate``: a CI regression gate on latency and accuracy that is trustworthy on a noisy machine.

Why not compare two stored numbers: on shared CI runners the same model measures anywhere from 0.7x to 1.5x of
an earlier figure. So the gate measures **baseline and candidate in the same process, interleaved**, and decides
on their **ratio** with a confidence interval.

Latency decision (per matched artifact pair)
--------------------------------------------
1. Rounds. A round is one short block of calls of each model (>= ``block_runs`` calls and >= ``block_time_s``),
   in alternating order (A B, then B A, ...) so that slow drift cancels. The round statistic is the block median
   (``--metric p50``) or block 90th percentile (``p90``); the round ratio is ``r_i = stat(candidate_i) /
   stat(baseline_i)``. Both blocks of a round ran within ~0.2 s of each other, so they saw the same machine
   load: the ratio cancels most of the noise that ruins absolute numbers.
2. Session pairs. The rounds are spread over ``sessions`` (default 4) independent pairs of runtime sessions:
   for every pair both models are loaded afresh (load order alternating), get a fresh input (one array shared by
   both when the shapes match) and are warmed up. Reason: the memory layout of a session (arena and buffer
   addresses, their cache/4K-aliasing interplay with the input) shifts the latency of a small model by a few
   per cent, and by 13 % for a 20 us model on a CI runner, **consistently for the life of the session**. Rounds
   on one pair cannot see that; a gate on one pair "proved" two identical models 13 % apart (CI 1.127-1.131).
3. Point estimate ``R`` = exp(20 % trimmed mean of all log r_i) (robust to a round or a pair hit by a burst).
   Confidence interval ``[lo, hi]``: two-stage percentile bootstrap (session pairs with replacement, then rounds
   within each drawn pair; whole rounds keep the A/B pairing), ``confidence`` = 95 %, 4000 resamples, fixed
   seed (the decision is reproducible given the samples).
4. With ``limit = 1 + max_latency_regression`` (default 1.10):

   * ``hi <= limit``  -> **pass** (the candidate is shown not to be more than 10 % slower);
   * ``lo >  limit``  -> **regression** (it is shown to be more than 10 % slower);
   * otherwise the interval straddles the limit: **inconclusive** -> more session pairs are measured (half
     the initial number at a time) up to ``max_rounds`` rounds in all; if it is still inconclusive at the cap,
     ``on_inconclusive`` decides: ``point`` (default: regression iff ``R > limit``), ``fail`` (strict: regression) or ``pass`` (lenient).
     The verdict then carries ``inconclusive: true`` and the label says so.

   Consequence: identical models (true ratio 1.0) pass whenever the interval is narrower than +-10 %, which the
   interleaving gives even on a loaded 2-core machine; a candidate >= ~15 % slower fails. A candidate exactly
   at the limit is a coin flip under any rule, by construction. See benchmarks/RESULTS.md "Gate (issue 6)".

Accuracy decision: top-1 of both artifacts through the same runtime on the same ``--data`` images (exact, no
noise): regression iff ``baseline_top1 - candidate_top1 > max_accuracy_drop`` points. Without ``--data`` the
accuracy check is skipped with a note.

Stored baseline: ``--baseline bench.json`` (from ``edgecv bench --json``) is accepted but is **less reliable**:
the baseline was measured at another time (possibly another machine) so the ratio cannot cancel machine noise.
The candidate is measured in rounds (one session) and compared with the stored number with a widened limit
``(1 + max_latency_regression) * stored_noise`` (default noise factor 1.5, the spread observed on shared
runners); the verdict is labelled ``stored baseline, low reliability``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgecv import __version__
from edgecv.bench.artifacts import Resolved, Source, input_shape, resolve_source
from edgecv.bench.latency import gc_paused, time_block
from edgecv.errors import UserError
from edgecv.runtimes.base import RuntimeUnavailable, close_all, host_description, load_runner

SCHEMA = "edgecv.gate/1"


@dataclass
class GateConfig:
    max_latency_regression: float = 0.10
    max_accuracy_drop: float = 0.5
    metric: str = "p50"
    rounds: int = 20
    max_rounds: int = 60
    sessions: int = 4
    block_time_s: float = 0.08
    block_runs: int = 5
    warmup: int = 10
    threads: int = 1
    device: str = "cpu"
    data: str | None = None
    max_images: int | None = None
    confidence: float = 0.95
    on_inconclusive: str = "point"
    stored_noise: float = 1.5
    n_boot: int = 4000
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ statistics
def trimmed_mean(a: np.ndarray, prop: float = 0.2, axis: int = -1) -> np.ndarray:
    """Mean after cutting ``prop`` of the values at each end (along ``axis``)."""
    a = np.sort(np.asarray(a, dtype=np.float64), axis=axis)
    n = a.shape[axis]
    k = int(math.floor(prop * n))
    if n - 2 * k <= 0:
        k = max(0, (n - 1) // 2)
    sl = [slice(None)] * a.ndim
    sl[axis] = slice(k, n - k)
    return a[tuple(sl)].mean(axis=axis)


def ratio_ci(ratios, confidence: float = 0.95, n_boot: int = 4000, seed: int = 0) -> tuple[float, float, float]:
    """(point, lo, hi) of the per-round ratios: exp(20 % trimmed mean of the log ratios), percentile bootstrap.

    ``ratios`` is 1-D (rounds, resampled as independent) or 2-D ``(sessions, rounds per session)``: rounds measured
    on one pair of runtime sessions share that pair's memory layout, whose effect on a small model can exceed the
    round-to-round noise by far. The 2-D bootstrap is two-stage (session pairs with replacement, then rounds within
    each drawn pair), so a pair that was consistently unlucky widens the interval instead of hiding in it.
    """
    lr = np.log(np.asarray(ratios, dtype=np.float64))
    if lr.size == 0:
        raise ValueError("no rounds")
    point = float(np.exp(trimmed_mean(lr.ravel())))
    if lr.size == 1:
        return point, point, point
    rng = np.random.default_rng(seed)
    if lr.ndim == 2 and lr.shape[0] > 1:
        g, m = lr.shape
        gi = rng.integers(0, g, size=(n_boot, g, 1))
        ri = rng.integers(0, m, size=(n_boot, g, m))
        samples = lr[gi, ri].reshape(n_boot, g * m)
    else:
        flat = lr.ravel()
        samples = flat[rng.integers(0, flat.size, size=(n_boot, flat.size))]
    boots = trimmed_mean(samples, axis=1)
    a = (1 - confidence) / 2
    lo, hi = np.quantile(boots, [a, 1 - a])
    return point, float(np.exp(lo)), float(np.exp(hi))


@dataclass(frozen=True)
class LatencyDecision:
    verdict: str  # "pass" | "regression"
    inconclusive: bool
    ratio: float
    ci_low: float
    ci_high: float
    limit: float
    rounds: int
    label: str

    def to_dict(self) -> dict:
        return asdict(self)


def classify(lo: float, hi: float, limit: float) -> str:
    """``pass`` if the whole interval is <= limit, ``regression`` if it is all above, else ``inconclusive``."""
    if hi <= limit:
        return "pass"
    if lo > limit:
        return "regression"
    return "inconclusive"


def decide(ratios, limit: float, confidence: float = 0.95, on_inconclusive: str = "point", final: bool = True,
           n_boot: int = 4000, seed: int = 0) -> LatencyDecision | None:
    """The latency decision on per-round ratios. Returns ``None`` when inconclusive and not ``final`` (the
    caller should run more rounds)."""
    point, lo, hi = ratio_ci(ratios, confidence, n_boot, seed)
    c = classify(lo, hi, limit)
    ci = f"{point:.3f}x [{lo:.3f}, {hi:.3f}] vs limit {limit:.3f}"
    n = int(np.size(ratios))
    if c != "inconclusive":
        return LatencyDecision(c, False, point, lo, hi, limit, n, f"{c}: {ci}")
    if not final:
        return None
    if on_inconclusive == "fail":
        v = "regression"
    elif on_inconclusive == "pass":
        v = "pass"
    else:
        v = "regression" if point > limit else "pass"
    return LatencyDecision(v, True, point, lo, hi, limit, n,
                           f"{v} (inconclusive, decided by {on_inconclusive}): {ci}")


# ------------------------------------------------------------------------------------------------ measuring
def _stat(block_ns: list[int], metric: str) -> float:
    return float(np.percentile(block_ns, 90 if metric == "p90" else 50))


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
    input; baseline and candidate get the same input array when their input shapes match. ``open(k)`` for the
    pair that is already open returns it unchanged. ``base`` is None for a stored baseline (candidate only).
    """

    def __init__(self, base_art: Resolved | None, cand_art: Resolved, cfg: GateConfig, rng: np.random.Generator):
        self.base_art, self.cand_art, self.cfg, self.rng = base_art, cand_art, cfg, rng
        self.shape = input_shape(cand_art, 1)
        self.base_shape = input_shape(base_art, 1) if base_art is not None else None
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
        xb = self.rng.standard_normal(self.shape).astype(np.float32)
        xa = xb if self.base_shape == self.shape else (
            self.rng.standard_normal(self.base_shape).astype(np.float32) if self.base_shape else None)
        ra, rb = self.base, self.cand
        self.k, self._calls = k, ((lambda: ra.predict(xa)) if ra is not None else None, lambda: rb.predict(xb))
        return self._calls

    def close(self) -> None:
        close_all([r for r in (self.base, self.cand) if r is not None])
        self.base = self.cand = None
        self.k, self._calls = None, None


# ------------------------------------------------------------------------------------------------ inputs
def _load_stored(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"--baseline {path}: not readable JSON ({e})") from None
    if not isinstance(d, dict) or d.get("schema") != "edgecv.bench/1":
        raise UserError(f"--baseline {path}: not an edgecv bench JSON (schema edgecv.bench/1)")
    return d


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


def _fmt_pct(x: float) -> str:
    return f"{(x - 1) * 100:+.1f}%"


# ------------------------------------------------------------------------------------------------ the gate
def run_gate(baseline: str, candidate: str, cfg: GateConfig, log: Callable[[str], None] = lambda m: None) -> dict:
    if cfg.metric not in ("p50", "p90"):
        raise UserError("--metric must be p50 or p90")
    if cfg.on_inconclusive not in ("point", "fail", "pass"):
        raise UserError("--on-inconclusive must be point, fail or pass")
    stored = None
    bpath = Path(baseline)
    if bpath.is_file() and bpath.suffix.lower() == ".json" and bpath.name != "manifest.json":
        stored = _load_stored(bpath)
    cand = resolve_source(candidate)
    bad = [a for a in cand.artifacts if a.integrity_error]
    if bad:
        raise UserError(bad[0].integrity_error)
    notes: list[str] = []
    rows: list[dict] = []
    limit = 1.0 + cfg.max_latency_regression

    if stored is not None:
        notes.append("baseline is a stored bench JSON: measured at another time (maybe on another machine), "
                     f"so noise does not cancel; limit widened by x{cfg.stored_noise:g}. Less reliable than a "
                     "same-job bundle-vs-bundle gate.")
        if stored.get("host") != host_description():
            notes.append(f"stored baseline was measured on '{stored.get('host')}', this is '{host_description()}'")
        smap = {a["name"]: a for a in stored["artifacts"] if a["status"] == "ok"}
        pairs = [(None, c) for c in cand.artifacts]
        base_src = None
    else:
        base_src = resolve_source(baseline)
        bad = [a for a in base_src.artifacts if a.integrity_error]
        if bad:
            raise UserError(bad[0].integrity_error)
        pairs, missing, n2 = match_pairs(base_src, cand)
        notes += n2
        rows += [{**m, "baseline": None, "candidate": None, "latency": None, "accuracy": None,
                  "verdict": "regression"} for m in missing]

    ev_base = ev_cand = None
    if cfg.data:
        from edgecv.bench.accuracy import load_eval_arrays

        bman = base_src.manifest if base_src else None
        cman = cand.manifest
        if cman is None or (stored is None and bman is None):
            notes.append("accuracy skipped: a single artifact has no manifest (class names, preprocessing)")
        else:
            log(f"loading evaluation images from {cfg.data} ...")
            ev_cand = load_eval_arrays(cfg.data, cman.class_names, cman.preprocess, limit=cfg.max_images)
            if bman is not None:
                same = bman.class_names == cman.class_names and bman.preprocess == cman.preprocess
                ev_base = ev_cand if same else load_eval_arrays(cfg.data, bman.class_names, bman.preprocess,
                                                                limit=cfg.max_images)
    else:
        notes.append("accuracy not checked: no --data given")

    rng = np.random.default_rng(cfg.seed)
    for base_art, cand_art in pairs:
        name = cand_art.name
        row = {"name": name, "status": "ok", "reason": None,
               "baseline": str(base_art.path) if base_art else str(bpath),
               "candidate": str(cand_art.path), "latency": None, "accuracy": None, "verdict": "pass"}
        rows.append(row)
        if stored is not None and name not in smap:
            row.update(status="skipped", reason="not in the stored baseline", verdict="skipped")
            continue
        sessions = SessionPairs(base_art, cand_art, cfg, rng)
        if sessions.base_shape is not None and sessions.base_shape != sessions.shape:
            notes.append(f"{name}: input shapes differ ({sessions.base_shape} vs {sessions.shape}); "
                         "each model gets its own")
        try:
            try:
                sessions.open(0)
            except RuntimeUnavailable as ex:
                row.update(status="skipped", reason=str(ex), verdict="skipped")
                log(f"{name}: skipped: {ex}")
                continue
            paired = base_art is not None
            log(f"{name}: measuring {'baseline and candidate interleaved' if paired else 'candidate'} "
                f"({cfg.rounds}-{cfg.max_rounds} rounds"
                f"{f' over {session_plan(cfg)[0]}+ session pairs' if paired else ''}, threads={cfg.threads}, "
                f"metric={cfg.metric})")
            if paired:
                d, det = paired_rounds(sessions.open, cfg, limit, log)
            else:
                s = smap[name]
                lat = [x for x in s["latency"] if x["batch"] == 1]
                pick = next((x for x in lat if x["threads"] == cfg.threads), lat[0] if lat else None)
                if pick is None:
                    row.update(status="skipped", reason="stored baseline has no batch-1 latency", verdict="skipped")
                    continue
                base_ms = pick["p90_ms" if cfg.metric == "p90" else "p50_ms"]
                d, det = stored_rounds(sessions.open(0)[1], base_ms, cfg, limit * cfg.stored_noise, log)
            row["latency"] = {"metric": cfg.metric, **det, **d.to_dict()}
            if d.verdict == "regression":
                row["verdict"] = "regression"
            # accuracy
            if ev_cand is not None:
                from edgecv.bench.accuracy import evaluate_runner

                ra, rb = sessions.base, sessions.cand
                acc_c = evaluate_runner(rb, ev_cand, desc=f"{name} candidate accuracy")["top1"]
                if ra is not None and ev_base is not None:
                    acc_b = evaluate_runner(ra, ev_base, desc=f"{name} baseline accuracy")["top1"]
                    src_note = "same data, same runtime, same job"
                else:
                    sacc = smap[name].get("accuracy") if stored is not None else None
                    if not sacc:
                        row["accuracy"] = {"skipped": "the stored baseline has no accuracy"}
                        continue
                    acc_b = sacc["top1"]
                    src_note = f"stored baseline accuracy on {sacc.get('data')}"
                    if str(sacc.get("data")) != str(cfg.data):
                        notes.append(f"{name}: stored accuracy was measured on {sacc.get('data')}, not {cfg.data}")
                drop = acc_b - acc_c
                av = "regression" if drop > cfg.max_accuracy_drop else "pass"
                row["accuracy"] = {"baseline_top1": acc_b, "candidate_top1": acc_c, "drop": drop,
                                   "max_drop": cfg.max_accuracy_drop, "verdict": av, "n": len(ev_cand.y),
                                   "basis": src_note}
                if av == "regression":
                    row["verdict"] = "regression"
        except Exception as ex:  # noqa: BLE001 - a broken artifact is a failed gate, with the reason
            row.update(status="error", reason=f"{type(ex).__name__}: {ex}", verdict="regression")
            log(f"{name}: error: {ex}")
        finally:
            sessions.close()

    measured = [r for r in rows if r["status"] == "ok"]
    if not measured and not any(r["status"] in ("missing", "error") for r in rows):
        reasons = "; ".join(f"{r['name']}: {r['reason']}" for r in rows) or "no artifacts"
        raise UserError(f"nothing to gate: {reasons}")
    regress = [r for r in rows if r["verdict"] == "regression"]
    return {
        "schema": SCHEMA,
        "edgecv_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "baseline": str(Path(baseline).resolve()),
        "candidate": str(Path(candidate).resolve()),
        "baseline_kind": "stored_json" if stored is not None else ("bundle" if base_src.is_bundle else "artifact"),
        "reliability": "low" if stored is not None else "high",
        "host": host_description(),
        "settings": cfg.to_dict(),
        "artifacts": rows,
        "passed": not regress,
        "regressions": [r["name"] for r in regress],
        "notes": notes,
    }


def print_gate(result: dict, console=None) -> None:
    from rich.markup import escape
    from rich.table import Table

    from edgecv.utils import stderr_console

    con = console or stderr_console(170)
    s = result["settings"]
    t = Table(title=f"edgecv gate: {s['metric']} latency ratio candidate/baseline (limit +{s['max_latency_regression'] * 100:g}%), "
                    f"top-1 drop (limit {s['max_accuracy_drop']:g} pt)", title_justify="left")
    for h in ("artifact", "baseline ms", "candidate ms", "ratio", f"{s['confidence'] * 100:g}% CI", "rounds",
              "latency", "top-1 base -> cand", "accuracy", "verdict"):
        t.add_column(h, justify="right" if h.endswith(("ms", "ratio", "rounds")) else "left")
    for r in result["artifacts"]:
        lat, acc = r.get("latency"), r.get("accuracy")
        if r["status"] != "ok":
            t.add_row(escape(r["name"]), "-", "-", "-", "-", "-", "-", "-", "-",
                      escape(f"{r['verdict']} ({r['status']}: {r['reason']})"))
            continue
        lv = "-"
        if lat:
            lv = lat["verdict"] + (" (inconclusive)" if lat["inconclusive"] else "")
        if acc and "drop" in acc:
            at = f"{acc['baseline_top1']:.2f} -> {acc['candidate_top1']:.2f}"
            av = f"{acc['verdict']} ({-acc['drop']:+.2f} pt)"
        else:
            at, av = "-", (acc or {}).get("skipped", "not checked")
        t.add_row(escape(r["name"]), f"{lat['baseline_ms']:.3f}" if lat else "-",
                  f"{lat['candidate_ms']:.3f}" if lat else "-",
                  f"{lat['ratio']:.3f} ({_fmt_pct(lat['ratio'])})" if lat else "-",
                  f"[{lat['ci_low']:.3f}, {lat['ci_high']:.3f}]" if lat else "-",
                  str(lat["rounds"]) if lat else "-", lv, at, escape(av),
                  "[red]REGRESSION[/]" if r["verdict"] == "regression" else "[green]pass[/]")
    con.print(t)
    con.print(f"measured on: {escape(result['host'])}, {s['threads']} thread(s); baseline: {result['baseline_kind']}"
              f" (reliability {result['reliability']})")
    for n in result["notes"]:
        con.print(f"note: {escape(n)}")
    con.print("[bold green]gate: PASS[/]" if result["passed"]
              else f"[bold red]gate: REGRESSION[/] in {', '.join(result['regressions'])}")
