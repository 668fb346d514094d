"""Target-aware student choice (``edgecv compress --student auto``) and latency-aware pruning amounts.

Selection, for the target's runtime (x86: OpenVINO CPU, jetson: ONNX Runtime (host proxy), android: ExecuTorch):

1. every candidate student is built with the data's classes, exported FP32 and INT8 (quick PTQ of the untrained
   weights: :func:`~edgecv.quant.qat.prepare_qat` + calibration on a few training images +
   :func:`~edgecv.quant.qat.to_deploy`) at the deployment size, through the same exporters as
   ``edgecv export``, and timed through the real runtime with the interleaved method of
   :mod:`edgecv.bench.latency` (all candidates' artifacts interleaved, so a burst of load from another process
   lands on all of them). Every figure carries ``measured_on`` and ``host_proxy``;
2. the deploy precision of a candidate follows the measurement: INT8 only when it is faster than FP32 on that
   runtime (the bench rule, p50 at least 5 % lower). Candidates whose deploy-precision latency misses the budget
   (p90 ms or fps, as in ``edgecv bench``) are dropped;
3. the rest are ranked by a short KD probe (a few epochs on a class-balanced subset of the user's training data,
   same seed for all); the best probe top-1 wins (ties: the faster one).

:func:`search_prune_fraction` is ``--target-macs auto``: prune a copy of the model in small steps, measuring the
pruned model on the runtime after each, until it meets the budget (never below a MAC floor).
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgecv.errors import CheckFailed, UserError

DEFAULT_CANDIDATES = ("mobilenet_v3_small", "mobilenet_v3_large", "tf_mobilenetv3_small_minimal_100",
                      "tf_mobilenetv3_large_minimal_100", "efficientnet_lite0", "efficientnet_lite1")
AUTO_TARGETS = ("x86", "android", "jetson")
TARGET_RUNTIME = {"x86": "openvino", "jetson": "onnxruntime", "android": "executorch"}
PRUNE_FLOOR = 0.25  # --target-macs auto never prunes below this fraction of the unpruned MACs
PRUNE_CHUNK = 0.075  # ... and measures after every chunk of this fraction of the unpruned MACs


class SelectionFailed(CheckFailed):
    """No candidate meets the budget (exit 1); ``selection`` holds the measured table."""

    def __init__(self, msg: str, selection: dict):
        super().__init__(msg)
        self.selection = selection


def parse_candidates(value: str | list | tuple | None) -> list[str]:
    from edgecv.models.registry import STUDENTS

    if value is None or value == "":
        return list(DEFAULT_CANDIDATES)
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    items = [v for v in items if v]
    bad = [v for v in items if v not in STUDENTS]
    if bad or not items:
        raise UserError(f"--candidates: unknown student(s) {', '.join(bad) or repr(value)} "
                        f"(students: {', '.join(STUDENTS)})")
    return list(dict.fromkeys(items))


# ---------------------------------------------------------------------------------------------- measurement
@dataclass
class Measurer:
    """Exports models at ``size`` for ``target``'s runtime and times FP32 and INT8 through it."""

    target: str
    size: int
    calib: list[np.ndarray]  # deploy-size calibration batches (PTQ ranges, ONNX conv-output ranges)
    threads: int | None = None
    min_time_s: float = 1.0
    rounds: int = 3
    warmup: int = 5
    min_runs: int = 20
    log: Callable[[str], None] = lambda m: None

    def __post_init__(self):
        import os

        from edgecv.targets import get_target

        if self.target not in AUTO_TARGETS:
            raise UserError(f"--target must be one of {', '.join(AUTO_TARGETS)} here, got '{self.target}'")
        self.profile = get_target(self.target)
        self.runtime = TARGET_RUNTIME[self.target]
        if self.threads is None:
            self.threads = min(self.profile.threads[0], os.cpu_count() or 1)
        self._tmp = tempfile.TemporaryDirectory(prefix="edgecv-auto-")
        self.work = Path(self._tmp.name)
        self._n = 0

    def close(self) -> None:
        self._tmp.cleanup()

    def describe(self) -> dict:
        return {"target": self.target, "runtime": self.runtime, "device": "cpu", "threads": self.threads,
                "deploy_size": self.size, "min_time_s": self.min_time_s, "rounds": self.rounds}

    # -- export -------------------------------------------------------------------------------------------
    def _int8_model(self, model: nn.Module) -> nn.Module:
        from edgecv.quant.qat import QuantConfig, calibrate, is_qat, prepare_qat

        if is_qat(model):
            return copy.deepcopy(model).eval()
        q = prepare_qat(copy.deepcopy(model).eval(), QuantConfig(trace_size=self.size))
        calibrate(q, [(torch.from_numpy(b), None) for b in self.calib])
        return q.eval()

    def export(self, model: nn.Module) -> dict[str, Path | str]:
        """FP32 and INT8 artifacts for the runtime: ``{precision: path}`` or ``{precision: "error: ..."}``."""
        from edgecv.export import onnx as E
        from edgecv.quant.qat import set_fake_quant, to_deploy

        self._n += 1
        d = self.work / f"m{self._n}"
        out: dict[str, Path | str] = {}
        model = copy.deepcopy(model).cpu().eval()
        for prec in ("fp32", "int8"):
            try:
                if self.runtime == "executorch":
                    from edgecv.export import pte as PTE

                    p = d / f"model-{prec}.pte"
                    if prec == "fp32":
                        PTE.export_fp32(model, p, self.size)
                    else:
                        q = self._int8_model(model)
                        set_fake_quant(q, False)
                        PTE.export_int8(to_deploy(q), p, self.size, self.calib)
                else:
                    p = d / f"model-{prec}.onnx"
                    if prec == "fp32":
                        E.export_fp32(model, p, self.size)
                    else:
                        E.export_int8_qdq(to_deploy(self._int8_model(model)), p, self.size, calib_batches=self.calib)
                    if self.runtime == "openvino":
                        from edgecv.export import openvino as OV

                        xml = d / "openvino" / f"model-{prec}.xml"
                        OV.convert(p, xml)
                        p = xml
                out[prec] = p
            except ImportError as e:
                out[prec] = f"unavailable: {e}"
            except Exception as e:  # noqa: BLE001 - recorded per candidate; the others still run
                out[prec] = f"export failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        return out

    # -- timing -------------------------------------------------------------------------------------------
    def measure(self, artifacts: dict[str, dict[str, Path | str]]) -> dict[str, dict]:
        """Time every ``{key: {precision: path}}`` artifact, all interleaved. Returns per key and precision a
        latency dict or ``{"error": reason}``, plus ``measured_on``/``host_proxy``/``deploy_precision``."""
        from edgecv.bench.latency import measure_interleaved
        from edgecv.bench.policy import deploy_precision
        from edgecv.runtimes.base import RuntimeUnavailable, close_all, load_runner
        from edgecv.runtimes.introspect import measured_on
        from edgecv.targets.budget import on_target_hardware

        res: dict[str, dict] = {k: {} for k in artifacts}
        runners, fns = {}, {}
        x = np.random.default_rng(0).standard_normal((1, 3, self.size, self.size)).astype(np.float32)
        try:
            for key, precs in artifacts.items():
                for prec, p in precs.items():
                    if isinstance(p, str):
                        res[key][prec] = {"error": p}
                        continue
                    try:
                        r = load_runner(self.runtime, p, threads=self.threads, device="cpu")
                        r.predict(x)
                    except RuntimeUnavailable as e:
                        res[key][prec] = {"error": f"unavailable: {e}"}
                        continue
                    except Exception as e:  # noqa: BLE001
                        res[key][prec] = {"error": f"load/run failed: {type(e).__name__}: {str(e)[:200]}"}
                        continue
                    runners[(key, prec)] = r
                    fns[(key, prec)] = (lambda r=r: r.predict(x))
            if fns:
                ms = measure_interleaved(fns, batch=1, warmup=self.warmup, min_runs=self.min_runs,
                                         min_time_s=self.min_time_s, rounds=self.rounds,
                                         cpu_time=self.threads == 1)
                for (key, prec), m in ms.items():
                    st = m.stats()
                    measured_on, device = measured_on(runners[(key, prec)], self.threads)
                    proxy = not on_target_hardware(self.profile, device)
                    res[key][prec] = {"p50_ms": st.p50_ms, "p90_ms": st.p90_ms, "fps": st.fps, "n": st.n,
                                      "cpu_p50_ms": st.cpu_p50_ms, "round_p50_spread": st.round_p50_spread,
                                      "runtime": self.runtime, "threads": self.threads,
                                      "measured_on": measured_on + (" (host proxy)" if proxy else ""),
                                      "host_proxy": proxy}
        finally:
            close_all(runners.values())
        for d in res.values():
            f, i = d.get("fp32", {}), d.get("int8", {})
            if "p50_ms" in f and "p50_ms" in i:
                faster = deploy_precision(f["p50_ms"], i["p50_ms"])
                why = (f"INT8 p50 {i['p50_ms']:.3f} ms vs FP32 {f['p50_ms']:.3f} ms on {self.runtime}: "
                       + ("INT8 is faster" if faster == "int8" else "INT8 is not faster, deploy FP32"))
            elif "p50_ms" in f or "p50_ms" in i:
                faster = "fp32" if "p50_ms" in f else "int8"
                why = f"only {faster.upper()} could be measured"
            else:
                faster, why = None, "nothing could be measured: " + "; ".join(
                    f"{p}: {v.get('error')}" for p, v in d.items())
            d["deploy_precision"] = faster
            d["deploy_reason"] = why
        return res

    def measure_model(self, model: nn.Module) -> dict:
        return self.measure({"m": self.export(model)})["m"]


def deploy_figures(m: dict) -> dict | None:
    """The latency dict of the deploy precision (the faster one), or None."""
    p = m.get("deploy_precision")
    return m.get(p) if p else None


def meets(budget, fig: dict | None) -> bool | None:
    """Budget check of a latency dict (None: no budget)."""
    if budget is None:
        return None
    if fig is None:
        return False
    return bool(budget.check(fig["p90_ms"], fig["fps"])[0])


def budget_text(budget) -> str:
    if budget is None:
        return "no budget"
    return (f"p90 <= {budget.limit:g} ms" if budget.metric == "p90_ms" else f">= {budget.limit:g} fps") + \
        f" ({budget.hardware})"


def resolve_budget(target: str | None, budget_ms: float | None, budget_fps: float | None):
    from edgecv.targets import get_target
    from edgecv.targets.budget import budget_from

    return budget_from(get_target(target) if target else None, budget_ms, budget_fps)


# ---------------------------------------------------------------------------------------------- selection
@dataclass
class ProbeSpec:
    """What a KD probe runs on: the training run's data, teacher and hyper-parameters."""

    bundle: object  # DataBundle (preprocess at the training size)
    teacher: object  # pipeline.Teacher
    kd: object  # KDConfig
    train_cfg: Callable[[int, str], object]  # (epochs, desc) -> TrainConfig
    device: torch.device
    epochs: int
    images: int
    val_images: int
    seed: int = 0


PROBE_BATCH = 16


def probe_accuracy(arch: str, spec: ProbeSpec, log: Callable[[str], None]) -> dict:
    """Short KD of a fresh ``arch`` on a class-balanced training subset; best val top-1 on a val subset."""
    from edgecv.compress.distill import KDLoss
    from edgecv.data.datasets import sample_calibration
    from edgecv.models.registry import create_model
    from edgecv.training.loop import fit
    from edgecv.utils import seed_everything

    b = spec.bundle
    pre = b.preprocess
    train = sample_calibration(b.train, spec.images, spec.seed).with_transform(pre.train_transform())
    val = sample_calibration(b.val, spec.val_images, spec.seed).with_transform(pre.eval_transform())
    seed_everything(spec.seed)
    model = create_model(arch, b.num_classes)
    kd = KDLoss(spec.teacher.model, spec.kd, pre, spec.teacher.preprocess, student=model, device=spec.device)
    t0 = time.perf_counter()
    # a probe is short: small batches give it enough optimizer steps to move off chance (1 000 images at batch 64
    # are 16 steps an epoch, and MobileNetV3 students stay at 10 % on cifar10-mini after that)
    cfg = dataclasses.replace(spec.train_cfg(spec.epochs, f"probe {arch}"), batch_size=PROBE_BATCH)
    res = fit(model, train, val, cfg, loss_fn=kd,
              params=[p for p in model.parameters() if p.requires_grad] + kd.extra_params(), log=log)
    kd.close()
    return {"top1": res.best_top1, "epochs": spec.epochs, "train_images": len(train), "val_images": len(val),
            "wall_s": round(time.perf_counter() - t0, 2)}


def select_student(candidates: list[str], num_classes: int, measurer: Measurer, budget, probe: ProbeSpec | None,
                   log: Callable[[str], None] = lambda m: None) -> dict:
    """Measure, filter by budget, probe and rank ``candidates``. Returns the ``student_selection`` record.

    Raises :class:`SelectionFailed` (exit 1) when no candidate meets the budget. ``probe=None`` ranks the
    in-budget candidates by deploy latency only (used when there is nothing to probe with).
    """
    from edgecv.models.registry import arch_info, create_model
    from edgecv.nn.graph import count_macs, count_params

    t0 = time.perf_counter()
    rows: list[dict] = []
    arts: dict[str, dict] = {}
    for arch in candidates:
        torch.manual_seed(0)
        m = create_model(arch, num_classes).eval()
        rows.append({"arch": arch, "source": arch_info(arch).source, "int8_friendly": arch_info(arch).int8_friendly,
                     "params": count_params(m), "macs_deploy": count_macs(m, measurer.size)})
        log(f"auto: exporting {arch} FP32 + INT8 at {measurer.size}px for {measurer.runtime}")
        arts[arch] = measurer.export(m)
    log(f"auto: timing {len(candidates)} candidate(s) x FP32/INT8 on {measurer.runtime}, "
        f"{measurer.threads} thread(s), interleaved")
    meas = measurer.measure(arts)
    for row in rows:
        m = meas[row["arch"]]
        row["fp32"], row["int8"] = m.get("fp32"), m.get("int8")
        row["deploy_precision"], row["deploy_reason"] = m["deploy_precision"], m["deploy_reason"]
        fig = deploy_figures(m)
        row["deploy_p50_ms"] = fig["p50_ms"] if fig else None
        row["deploy_p90_ms"] = fig["p90_ms"] if fig else None
        row["measured_on"] = fig["measured_on"] if fig else None
        row["host_proxy"] = fig["host_proxy"] if fig else None
        ok = meets(budget, fig)
        row["within_budget"] = ok
        row["probe_top1"] = None
        if fig is None:
            row["status"], row["reason"] = "dropped: not measurable", m["deploy_reason"]
        elif ok is False:
            v = f"p90 {fig['p90_ms']:.3f} ms" if budget.metric == "p90_ms" else f"{fig['fps']:.1f} fps"
            row["status"] = "dropped: over budget"
            row["reason"] = f"{row['deploy_precision'].upper()} {v} misses the budget {budget_text(budget)}"
    live = [r for r in rows if "status" not in r]
    sel = {"candidates": rows, "budget": budget.to_dict() if budget else None, "measurement": measurer.describe(),
           "probe": None, "chosen": None, "reason": None}
    if not live:
        sel["wall_s"] = round(time.perf_counter() - t0, 2)
        measured = [r for r in rows if r["deploy_p50_ms"] is not None]
        if not measured:
            raise SelectionFailed(f"--student auto: no candidate could be measured on {measurer.runtime} "
                                  f"({rows[0]['reason'] if rows else 'no candidates'})", sel)
        best = min(measured, key=lambda r: r["deploy_p90_ms"])
        raise SelectionFailed(f"--student auto: no candidate meets the budget {budget_text(budget)} on "
                              f"{measurer.runtime} at {measurer.size}px; the fastest is {best['arch']} "
                              f"({best['deploy_precision'].upper()} p50 {best['deploy_p50_ms']:.3f} ms, "
                              f"p90 {best['deploy_p90_ms']:.3f} ms)", sel)
    if probe is not None and len(live) > 1:
        sel["probe"] = {"epochs": probe.epochs, "images": probe.images, "val_images": probe.val_images,
                        "img_size": probe.bundle.preprocess.input_size, "seed": probe.seed}
        for r in live:
            log(f"auto: KD probe of {r['arch']} ({probe.epochs} epoch(s), {probe.images} images)")
            p = probe_accuracy(r["arch"], probe, log)
            r["probe_top1"], r["probe_wall_s"] = p["top1"], p["wall_s"]
            sel["probe"].update(images=p["train_images"], val_images=p["val_images"])
        ranked = sorted(live, key=lambda r: (-r["probe_top1"], r["deploy_p50_ms"]))
        key = "probe top-1"
    else:
        ranked = sorted(live, key=lambda r: r["deploy_p50_ms"])
        key = "deploy latency"
    win = ranked[0]
    within = "within the budget" if budget else "measured (no budget given)"
    tied = probe is not None and len(ranked) > 1 and ranked[1]["probe_top1"] == win["probe_top1"]
    for i, r in enumerate(ranked):
        r["rank"] = i + 1
        lat = f"{r['deploy_precision'].upper()} p50 {r['deploy_p50_ms']:.3f} ms"
        acc = f"probe top-1 {r['probe_top1']:.2f}%" if r["probe_top1"] is not None else None
        if r is win and len(live) == 1:
            r["status"] = "chosen"
            r["reason"] = f"the only candidate {within}: " + ", ".join(x for x in (acc, lat) if x)
        elif r is win:
            r["status"] = "chosen"
            r["reason"] = f"best {key} among {len(live)} candidates {within}: " + ", ".join(x for x in (acc, lat) if x) \
                + ("; tied on probe top-1, the faster wins" if tied else "")
        else:
            r["status"] = "ranked lower"
            wa = f"probe top-1 {win['probe_top1']:.2f}%" if win["probe_top1"] is not None else \
                f"p50 {win['deploy_p50_ms']:.3f} ms"
            r["reason"] = f"rank {i + 1} by {key}: " + ", ".join(x for x in (acc, lat) if x) + \
                f" (winner {win['arch']}: {wa})"
    sel["chosen"], sel["reason"] = win["arch"], win["reason"]
    sel["wall_s"] = round(time.perf_counter() - t0, 2)
    return sel


# ---------------------------------------------------------------------------------------------- --target-macs auto
def search_prune_fraction(model: nn.Module, train_size: int, num_classes: int, measurer: Measurer, budget,
                          importance: str = "magnitude", round_to: int = 8, min_channels: int = 16,
                          grad_fn=None, floor: float = PRUNE_FLOOR, chunk: float = PRUNE_CHUNK,
                          log: Callable[[str], None] = lambda m: None) -> dict:
    """Prune a copy of ``model`` in chunks of ``chunk`` x its MACs, measuring it on the runtime after each, until
    the deploy-precision latency meets ``budget`` or the MACs reach ``floor``. Returns the MAC fraction to prune
    to and every measured step."""
    from edgecv.compress.prune import prune_to_macs
    from edgecv.nn.graph import count_macs

    if budget is None:
        raise UserError("--target-macs auto needs a latency budget (--budget-ms / --budget-fps or a target's)")
    m = copy.deepcopy(model).eval()
    base = count_macs(m, train_size)
    steps: list[dict] = []
    frac = 1.0
    while True:
        t0 = time.perf_counter()
        meas = measurer.measure_model(m)
        fig = deploy_figures(meas)
        ok = bool(meets(budget, fig))
        macs = count_macs(m, train_size)
        steps.append({"macs": macs, "macs_fraction": round(macs / base, 4), "target_fraction": round(frac, 4),
                      "fp32": meas.get("fp32"), "int8": meas.get("int8"), "deploy_precision": meas["deploy_precision"],
                      "deploy_p50_ms": fig["p50_ms"] if fig else None, "deploy_p90_ms": fig["p90_ms"] if fig else None,
                      "meets_budget": ok, "measure_s": round(time.perf_counter() - t0, 2)})
        desc = (f"{meas['deploy_precision'].upper()} p50 {fig['p50_ms']:.3f} ms, p90 {fig['p90_ms']:.3f} ms"
                if fig else "not measurable")
        log(f"prune auto: {100 * macs / base:.1f}% of MACs -> {desc} on {measurer.runtime} "
            f"({'meets' if ok else 'misses'} {budget_text(budget)})")
        if fig is None:
            raise CheckFailed(f"--target-macs auto: the model cannot be measured on {measurer.runtime}: "
                              f"{meas['deploy_reason']}")
        if ok or frac <= floor + 1e-9:
            break
        frac = max(floor, frac - chunk)
        prune_to_macs(m, train_size, num_classes, int(frac * base), importance, round_to=round_to,
                      min_channels=min_channels, grad_fn=grad_fn)
    met = steps[-1]["meets_budget"]
    return {"fraction": max(floor, min(1.0, steps[-1]["macs_fraction"])), "met": met, "floor": floor,
            "chunk": chunk, "budget": budget.to_dict(), "measurement": measurer.describe(), "steps": steps,
            "note": None if met else f"the budget is not met even at the {floor:.0%} MAC floor; pruned to the floor"}


# ---------------------------------------------------------------------------------------------- table
def print_selection(sel: dict, console=None) -> None:
    from rich.markup import escape
    from rich.table import Table

    from edgecv.utils import stderr_console

    con = console or stderr_console(200)
    ms = sel["measurement"]
    b = sel.get("budget")
    btxt = "no budget" if not b else (f"p90 <= {b['limit']:g} ms" if b["metric"] == "p90_ms" else f">= {b['limit']:g} fps")
    t = Table(title=f"edgecv compress --student auto: target {ms['target']} ({ms['runtime']}, {ms['threads']} thread(s), "
                    f"{ms['deploy_size']}px), budget {btxt}", title_justify="left")
    for col in ("candidate", "FP32 p50", "FP32 p90", "INT8 p50", "INT8 p90", "deploy", "probe top-1", "status", "reason"):
        t.add_column(col, justify="right" if ("p50" in col or "p90" in col or "top-1" in col) else "left",
                     overflow="fold")

    def f(d, k):
        return f"{d[k]:.3f}" if isinstance(d, dict) and d.get(k) is not None else ("err" if d else "-")

    for r in sel["candidates"]:
        t.add_row(escape(r["arch"]), f(r["fp32"], "p50_ms"), f(r["fp32"], "p90_ms"), f(r["int8"], "p50_ms"),
                  f(r["int8"], "p90_ms"), (r["deploy_precision"] or "-").upper(),
                  f"{r['probe_top1']:.2f}" if r.get("probe_top1") is not None else "-",
                  escape(r.get("status") or "-"), escape(r.get("reason") or ""))
    con.print(t)
    hosts = sorted({r["measured_on"] for r in sel["candidates"] if r.get("measured_on")})
    for h in hosts:
        con.print(f"latency in ms, batch 1, measured on: {escape(h)}")
    for r in sel["candidates"]:
        for p in ("fp32", "int8"):
            if isinstance(r.get(p), dict) and r[p].get("error"):
                con.print(f"{escape(r['arch'])} {p}: {escape(r[p]['error'])}")
    if sel.get("probe"):
        p = sel["probe"]
        con.print(f"probe: {p['epochs']} KD epoch(s) on {p['images']} training images at {p['img_size']}px, "
                  f"top-1 on {p['val_images']} val images")
    if sel.get("chosen"):
        con.print(f"chosen: [bold]{escape(sel['chosen'])}[/]")
