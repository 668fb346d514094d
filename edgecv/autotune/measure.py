"""Latency of candidate models on a target's runtime: export FP32 and INT8 (PTQ, as ``edgecv export`` does for a
float source) at the deployment size through the writers of ``edgecv export``
(:func:`edgecv.export.bundle.export_models`), then time every artifact interleaved through the one measuring loop
bench and ``serve --artifact auto`` use (:func:`edgecv.runtimes.measure.measure`). Every figure carries
``measured_on`` and ``host_proxy``; the deploy precision of
each model follows :func:`edgecv.targets.policy.deploy_precision`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from edgecv.errors import UserError
from edgecv.targets import PROFILES

AUTO_TARGETS = PROFILES  # every profile, the default first (as --target lists them)
PRECISIONS = ("fp32", "int8")  # the pair the deploy-precision rule compares


def auto_format(target: str) -> tuple[str, str]:
    """(runtime, format) ``--student auto`` measures ``target`` on: the first of the target's runtimes (format
    table order) whose format has an FP32 and an INT8 row and can be written here. TensorRT (jetson's first) has
    no FP32 engine, so jetson is measured on ONNX Runtime."""
    from edgecv.contracts.formats import FORMATS, TARGET_RUNTIMES
    from edgecv.export.formats import toolchain_missing

    for rt in TARGET_RUNTIMES[target]:
        for fmt in dict.fromkeys(r.format for r in FORMATS.values() if r.runtime == rt):
            if all((fmt, p) in FORMATS for p in PRECISIONS) and toolchain_missing(fmt) is None:
                return rt, fmt
    raise UserError(f"--target {target}: none of its runtimes ({', '.join(TARGET_RUNTIMES[target])}) has FP32 and "
                    "INT8 artifacts that can be written here")


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
        from edgecv.targets import get_target

        if self.target not in AUTO_TARGETS:
            raise UserError(f"--target must be one of {', '.join(AUTO_TARGETS)} here, got '{self.target}'")
        self.profile = get_target(self.target)
        self.runtime, self.format = auto_format(self.target)
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
    def export(self, model: nn.Module) -> dict[str, Path | str]:
        """FP32 and INT8 artifacts for the runtime: ``{precision: path}`` or ``{precision: "error: ..."}``."""
        from edgecv.export.bundle import export_models

        self._n += 1
        d = self.work / f"m{self._n}"
        entries = export_models(model, d, self.size, self.calib, [(self.format, p) for p in PRECISIONS],
                                threads=self.threads)
        out: dict[str, Path | str] = {}
        for e in entries:
            why = (e.error or "").splitlines()[0][:200] if e.error else ""
            out[e.precision] = d / e.file if e.status == "ok" else (
                f"unavailable: {why}" if e.status == "skipped" else f"export failed: {why}")
        return out

    # -- timing -------------------------------------------------------------------------------------------
    def measure(self, artifacts: dict[str, dict[str, Path | str]]) -> dict[str, dict]:
        """Time every ``{key: {precision: path}}`` artifact, all interleaved, through the one measuring loop
        (:func:`edgecv.runtimes.measure.measure`). Returns per key and precision a latency dict or ``{"error":
        reason}``, plus ``measured_on``/``host_proxy``/``deploy_precision``."""
        from edgecv.runtimes.measure import Candidate, Plan, measure
        from edgecv.targets.budget import on_target_hardware
        from edgecv.targets.policy import deploy_precision

        res: dict[str, dict] = {k: {} for k in artifacts}
        cands = []
        for key, precs in artifacts.items():
            for prec, p in precs.items():
                if isinstance(p, str):
                    res[key][prec] = {"error": p}
                else:
                    cands.append(Candidate((key, prec), self.runtime, Path(p),
                                           lambda b: (b, 3, self.size, self.size)))
        plan = Plan(threads=(self.threads,), warmup=self.warmup, min_runs=self.min_runs, min_time_s=self.min_time_s,
                    rounds=self.rounds)
        found = measure(cands, plan, on_target=lambda _k, device: on_target_hardware(self.profile, device))
        for (key, prec), m in found.items():
            res[key][prec] = self._figures(m)
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

    def _figures(self, m) -> dict:
        """One candidate's latency dict from its :class:`~edgecv.runtimes.measure.Measured`, or its error."""
        if m.status == "skipped":
            return {"error": f"unavailable: {m.reason}"}
        if not m.latency:
            return {"error": f"load/run failed: {(m.reason or 'nothing measured')[:200]}"}
        st = m.latency[0]
        return {**{k: st[k] for k in ("p50_ms", "p90_ms", "fps", "n", "cpu_p50_ms", "round_p50_spread")},
                "runtime": self.runtime, "threads": self.threads,
                "measured_on": m.measured_on + (" (host proxy)" if m.host_proxy else ""), "host_proxy": m.host_proxy}

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


def resolve_budget(target: str | None, budget_ms: float | None, budget_fps: float | None):
    from edgecv.targets import get_target
    from edgecv.targets.budget import budget_from

    return budget_from(get_target(target) if target else None, budget_ms, budget_fps)
