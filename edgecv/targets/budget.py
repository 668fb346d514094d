"""Latency budgets and verdicts, with honest host-proxy labelling.

A budget is either a p90 latency ceiling (``p90_ms``, e.g. Android: p90 <= 85 ms at batch 1) or a frame-rate
floor (``fps``, e.g. Jetson: >= 120 fps at batch 1, a camera stream). It comes from the target profile or from
``--budget-ms`` / ``--budget-fps`` (which override it).

The figure is only a *target* figure when it was measured on the target hardware. Otherwise it is a host
proxy and the verdict says so: ``pass (host proxy)`` / ``fail (host proxy)``. A host figure is never
presented as an ARM or Jetson figure.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass

from edgecv.targets import TARGETS, TargetProfile


@dataclass(frozen=True)
class Budget:
    metric: str  # "p90_ms" | "fps"
    limit: float
    source: str  # "target:<name>" | "cli"
    hardware: str  # what the budget refers to

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self, p90_ms: float, fps: float) -> tuple[bool, float]:
        if self.metric == "p90_ms":
            return p90_ms <= self.limit, p90_ms
        return fps >= self.limit, fps


def budget_text(budget: Budget | dict | None, source: bool = False, hardware: bool = True) -> str:
    """The one way a budget is written for people: ``p90 <= 85 ms`` / ``>= 120 fps``, then in parentheses its
    source (``source=True``: ``target:android`` or ``cli``) and the hardware it refers to (``hardware=True``).
    Accepts a :class:`Budget` or its ``to_dict()`` (as stored in bench JSON and run.json)."""
    if not budget:
        return "no budget"
    b = budget if isinstance(budget, Budget) else Budget(**budget)
    text = f"p90 <= {b.limit:g} ms" if b.metric == "p90_ms" else f">= {b.limit:g} fps"
    extra = [x for x, on in ((b.source, source), (b.hardware, hardware)) if on]
    return text + (f" ({', '.join(extra)})" if extra else "")


def budget_from(profile: TargetProfile | None, budget_ms: float | None = None,
                budget_fps: float | None = None) -> Budget | None:
    hw = profile.hardware if profile else "host"
    if budget_ms is not None:
        return Budget("p90_ms", float(budget_ms), "cli", hw)
    if budget_fps is not None:
        return Budget("fps", float(budget_fps), "cli", hw)
    if profile is None:
        return None
    if profile.budget_p90_ms is not None:
        return Budget("p90_ms", float(profile.budget_p90_ms), f"target:{profile.name}", hw)
    if profile.budget_fps is not None:
        return Budget("fps", float(profile.budget_fps), f"target:{profile.name}", hw)
    return None


def profile_for_artifact(fmt: str, precision: str, runtime: str, target: TargetProfile | None) -> TargetProfile | None:
    """The concrete profile an artifact is judged against: the target itself, or for ``all`` the first real
    profile that lists this (format, precision) and runtime."""
    if target is not None and target.name != "all":
        return target
    for p in TARGETS.values():
        if (fmt, precision) in p.artifacts and runtime in p.runtimes:
            return p
    return None


def is_jetson() -> bool:
    return os.path.exists("/etc/nv_tegra_release") and platform.machine() == "aarch64"


def on_target_hardware(profile: TargetProfile | None, device: str, on_device: bool = False) -> bool:
    """True when the measurement ran on the hardware ``profile``'s budget refers to.

    * android: only when measured on the phone over adb (``on_device``);
    * jetson: only on a Jetson (``/etc/nv_tegra_release``, aarch64) with a CUDA device;
    * x86: an x86-64 host CPU;
    * no profile (``all`` without a match, or an ad-hoc budget): the host is the target.
    """
    if profile is None:
        return True
    if profile.name == "android":
        return on_device
    if profile.name == "jetson":
        return is_jetson() and device.startswith(("cuda", "gpu", "GPU", "tensorrt"))
    if profile.name == "x86":
        return platform.machine().lower() in ("x86_64", "amd64") and not device.startswith("cuda")
    return True


@dataclass(frozen=True)
class Verdict:
    verdict: str  # "pass" | "fail" | "none"
    label: str  # human label, e.g. "pass (host proxy)"
    host_proxy: bool
    value: float | None
    budget: Budget | None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["budget"] = self.budget.to_dict() if self.budget else None
        return d

    @property
    def passed(self) -> bool | None:
        return None if self.verdict == "none" else self.verdict == "pass"


def verdict(budget: Budget | None, p90_ms: float, fps: float, host_proxy: bool) -> Verdict:
    if budget is None:
        return Verdict("none", "no budget", host_proxy, None, None)
    ok, value = budget.check(p90_ms, fps)
    v = "pass" if ok else "fail"
    return Verdict(v, f"{v} (host proxy)" if host_proxy else v, host_proxy, value, budget)
