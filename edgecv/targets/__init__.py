"""Target profiles: which artifacts a target gets, which runtimes run them (both read from the format table
:mod:`edgecv.contracts.formats`), threads and budgets.

``--target all`` is the union of the others. Budgets are checked by ``edgecv bench``; when the target
hardware is absent the latency is measured on the host and labelled as a host proxy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgecv.contracts.formats import RECOMMENDED, TARGET_RUNTIMES, target_artifacts
from edgecv.errors import UserError


@dataclass(frozen=True)
class TargetProfile:
    """A target; what it deploys is read from the format table when asked (``all``: the union of the others)."""

    name: str
    description: str
    hardware: str  # what the budget refers to, e.g. "arm64 Android phone CPU"
    threads: tuple[int, ...] = (1,)
    budget_p90_ms: float | None = None
    budget_fps: float | None = None

    def _union(self, attr: str) -> tuple:
        return tuple(dict.fromkeys(a for t in TARGETS.values() for a in getattr(t, attr)))

    @property
    def artifacts(self) -> tuple[tuple[str, str], ...]:
        """(format, precision) pairs that export writes, in the format table's order."""
        return self._union("artifacts") if self.name == "all" else target_artifacts(self.name)

    @property
    def runtimes(self) -> tuple[str, ...]:
        """Runtimes bench uses for this target, preferred first."""
        return self._union("runtimes") if self.name == "all" else TARGET_RUNTIMES.get(self.name, ())

    @property
    def recommended(self) -> tuple[str, ...]:
        """Preference order, "format-precision"."""
        return RECOMMENDED.get(self.name, ())

    def to_dict(self) -> dict:
        return {**asdict(self), "artifacts": self.artifacts, "runtimes": self.runtimes,
                "recommended": self.recommended}


TARGETS: dict[str, TargetProfile] = {
    "android": TargetProfile(
        name="android",
        description="Android phone, CPU via ExecuTorch (XNNPACK) or the PyTorch lite interpreter",
        hardware="arm64 Android CPU",
        threads=(4,),
        budget_p90_ms=85.0,
    ),
    "jetson": TargetProfile(
        name="jetson",
        description="NVIDIA Jetson GPU via TensorRT (engine built on the device from the ONNX files)",
        hardware="NVIDIA Jetson GPU",
        threads=(1,),
        budget_fps=120.0,
    ),
    "x86": TargetProfile(
        name="x86",
        description="x86-64 CPU server or PC via OpenVINO or ONNX Runtime",
        hardware="x86-64 CPU",
        threads=(1,),
        budget_p90_ms=None,  # configurable: --budget-ms / --budget-fps
    ),
}
TARGET_NAMES = (*TARGETS, "all")
# the host's own kind of machine: what export writes unless told otherwise, listed first where targets are chosen
DEFAULT_TARGET = "x86"
# the deploy policy's default (targets.policy): top-1 points an artifact shown to lose this much against the best
# is refused (bench --accuracy-tolerance)
ACCURACY_TOLERANCE = 1.0
PROFILES = tuple(sorted(TARGETS, key=lambda t: t != DEFAULT_TARGET))  # the profiles, the default first


def get_target(name: str) -> TargetProfile:
    """A named profile; ``all`` merges every profile's artifacts and runtimes (no budget of its own)."""
    if name == "all":
        return TargetProfile("all", "every format", "host", (1,))
    try:
        return TARGETS[name]
    except KeyError:
        raise UserError(f"unknown target '{name}' (choose from: {', '.join(TARGET_NAMES)})") from None
