"""Latency of candidate models on a target's runtime: export FP32 and INT8 (PTQ, as ``edgecv export`` does for a
float source) at the deployment size through the writers of ``edgecv export``
(:func:`edgecv.export.bundle.export_models`), then time every artifact interleaved
(:mod:`edgecv.runtimes.latency`). Every figure carries ``measured_on`` and ``host_proxy``; the deploy precision of
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

AUTO_TARGETS = ("x86", "android", "jetson")
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
        """Time every ``{key: {precision: path}}`` artifact, all interleaved. Returns per key and precision a
        latency dict or ``{"error": reason}``, plus ``measured_on``/``host_proxy``/``deploy_precision``."""
        from edgecv.runtimes.base import RuntimeUnavailable, close_all, load_runner
        from edgecv.runtimes.introspect import measured_on
        from edgecv.runtimes.latency import measure_interleaved
        from edgecv.targets.budget import on_target_hardware
        from edgecv.targets.policy import deploy_precision

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
                    host, device = measured_on(runners[(key, prec)], self.threads)
                    proxy = not on_target_hardware(self.profile, device)
                    res[key][prec] = {"p50_ms": st.p50_ms, "p90_ms": st.p90_ms, "fps": st.fps, "n": st.n,
                                      "cpu_p50_ms": st.cpu_p50_ms, "round_p50_spread": st.round_p50_spread,
                                      "runtime": self.runtime, "threads": self.threads,
                                      "measured_on": host + (" (host proxy)" if proxy else ""),
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


def resolve_budget(target: str | None, budget_ms: float | None, budget_fps: float | None):
    from edgecv.targets import get_target
    from edgecv.targets.budget import budget_from

    return budget_from(get_target(target) if target else None, budget_ms, budget_fps)
