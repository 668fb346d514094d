"""Target profiles: which artifacts a target gets, which runtimes run them, threads and budgets.

``--target all`` is the union of the others. Budgets are checked by ``edgecv bench``; when the target
hardware is absent the latency is measured on the host and labelled as a host proxy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from edgecv.errors import UserError


@dataclass(frozen=True)
class TargetProfile:
    name: str
    description: str
    hardware: str  # what the budget refers to, e.g. "arm64 Android phone CPU"
    artifacts: tuple[tuple[str, str], ...]  # (format, precision) pairs that export writes
    runtimes: tuple[str, ...]  # runtimes bench uses for this target
    threads: tuple[int, ...] = (1,)
    budget_p90_ms: float | None = None
    budget_fps: float | None = None
    recommended: tuple[str, ...] = field(default_factory=tuple)  # preference order "format-precision"

    def to_dict(self) -> dict:
        return asdict(self)


TARGETS: dict[str, TargetProfile] = {
    "android": TargetProfile(
        name="android",
        description="Android phone, CPU via ExecuTorch (XNNPACK) or the PyTorch lite interpreter",
        hardware="arm64 Android CPU",
        artifacts=(("pte", "fp32"), ("pte", "int8"), ("ptl", "fp32")),
        runtimes=("executorch", "ptl"),
        threads=(4,),
        budget_p90_ms=85.0,
        recommended=("pte-int8", "pte-fp32", "ptl-fp32"),
    ),
    "jetson": TargetProfile(
        name="jetson",
        description="NVIDIA Jetson GPU via TensorRT (engine built on the device from the ONNX files)",
        hardware="NVIDIA Jetson GPU",
        artifacts=(("onnx", "fp16"), ("onnx", "int8"), ("tensorrt", "fp16"), ("tensorrt", "int8")),
        runtimes=("tensorrt", "onnxruntime"),
        threads=(1,),
        budget_fps=120.0,
        recommended=("tensorrt-int8", "tensorrt-fp16", "onnx-fp16"),
    ),
    "x86": TargetProfile(
        name="x86",
        description="x86-64 CPU server or PC via OpenVINO or ONNX Runtime",
        hardware="x86-64 CPU",
        artifacts=(("onnx", "fp32"), ("onnx", "int8"), ("openvino", "fp32"), ("openvino", "int8")),
        runtimes=("openvino", "onnxruntime"),
        threads=(1,),
        budget_p90_ms=None,  # configurable: --budget-ms / --budget-fps
        recommended=("openvino-int8", "openvino-fp32", "onnx-int8", "onnx-fp32"),
    ),
}
TARGET_NAMES = (*TARGETS, "all")


def get_target(name: str) -> TargetProfile:
    """A named profile; ``all`` merges every profile's artifacts and runtimes (no budget of its own)."""
    if name == "all":
        arts: list[tuple[str, str]] = []
        rts: list[str] = []
        for t in TARGETS.values():
            arts += [a for a in t.artifacts if a not in arts]
            rts += [r for r in t.runtimes if r not in rts]
        for a in (("onnx", "fp32"), ("ptl", "fp32")):
            if a not in arts:
                arts.append(a)
        return TargetProfile("all", "every format", "host", tuple(arts), tuple(rts), (1,))
    try:
        return TARGETS[name]
    except KeyError:
        raise UserError(f"unknown target '{name}' (choose from: {', '.join(TARGET_NAMES)})") from None
