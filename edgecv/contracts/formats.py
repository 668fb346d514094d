"""The export format table: every fact about a format, written once and read by every layer.

One frozen :class:`Format` row per (format, precision): its file in the bundle (sub-folder, ``model-<precision>``
and extension), the runtime that runs it (a name in :data:`edgecv.runtimes.base.RUNTIME_MODULES`), how Triton
serves it, and which targets' exports write it. :data:`TARGET_RUNTIMES` is each target's runtime order (bench's
profile, and the runtime ``--student auto`` measures on: the first one whose format has FP32 and INT8 rows and
whose toolchain is present). The writer of each row lives in :data:`edgecv.export.formats.WRITERS`, keyed by
:attr:`Format.key`; ``tests/test_formats_table.py`` fails when a row has no writer or a writer no row, and when a
format name, extension or runtime name is written anywhere else in the package.

Read from it: the manifest's runtime per format, the extensions ``bench`` / ``gate`` accept for a single file,
the bundle sub-folders an interrupted export cleans, Triton's backends, the target profiles' artifact and runtime
lists, and the export validation hint for CPU INT8 kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

# format names (ArtifactEntry.format)
ONNX, OPENVINO, PTL, PTE, TENSORRT, TORCH = "onnx", "openvino", "ptl", "pte", "tensorrt", "torch"
TENSORRT_SCRIPT = "tensorrt_script"  # the engine build scripts a bundle ships: a file, not a runnable model
# runtime names (ArtifactEntry.runtime, keys of edgecv.runtimes.base.RUNTIME_MODULES)
ONNXRUNTIME, EXECUTORCH, TORCH_CUDA = "onnxruntime", "executorch", "torch_cuda"


@dataclass(frozen=True)
class Triton:
    """How Triton Inference Server serves a format: ``config.pbtxt`` key (platform / backend) and value, the model
    file name in the version folder, and the instance kind."""

    key: str
    value: str
    model_file: str
    kind: str = "KIND_CPU"


@dataclass(frozen=True)
class Format:
    """One (format, precision) an export can write."""

    format: str
    precision: str
    ext: str  # of the main file; the file is ``[subdir/]model-<precision><ext>``
    runtime: str | None
    subdir: str = ""
    triton: Triton | None = None
    targets: tuple[str, ...] = ()  # targets whose export writes it (in the table's order)
    other_exts: tuple[str, ...] = ()  # further extensions a single artifact file of this format may have
    cpu_int8_saturates: bool = False  # CPU int8 kernels saturate 8-bit weights without VNNI/AMX (docs/int8.md)

    @property
    def key(self) -> tuple[str, str]:
        return (self.format, self.precision)

    @property
    def name(self) -> str:
        return f"{self.format}-{self.precision}"

    @property
    def file(self) -> str:
        """Relative to the bundle."""
        return f"{self.subdir + '/' if self.subdir else ''}model-{self.precision}{self.ext}"


_ONNX_TRITON = Triton("platform", "onnxruntime_onnx", "model.onnx")
_OV_TRITON = Triton("backend", OPENVINO, "model.xml")
_TRT_TRITON = Triton("platform", "tensorrt_plan", "model.plan", kind="KIND_GPU")
_X86, _JETSON, _ANDROID = ("x86",), ("jetson",), ("android",)

ROWS: tuple[Format, ...] = (
    Format(ONNX, "fp32", ".onnx", ONNXRUNTIME, triton=_ONNX_TRITON, targets=_X86),
    Format(ONNX, "fp16", ".onnx", ONNXRUNTIME, triton=_ONNX_TRITON, targets=_JETSON),
    Format(ONNX, "int8", ".onnx", ONNXRUNTIME, triton=_ONNX_TRITON, targets=("jetson", "x86"),
           cpu_int8_saturates=True),
    Format(OPENVINO, "fp32", ".xml", OPENVINO, subdir=OPENVINO, triton=_OV_TRITON, targets=_X86),
    Format(OPENVINO, "int8", ".xml", OPENVINO, subdir=OPENVINO, triton=_OV_TRITON, targets=_X86,
           cpu_int8_saturates=True),
    Format(PTE, "fp32", ".pte", EXECUTORCH, targets=_ANDROID),
    Format(PTE, "int8", ".pte", EXECUTORCH, targets=_ANDROID),
    Format(PTL, "fp32", ".ptl", PTL, targets=_ANDROID),
    Format(TENSORRT, "fp16", ".engine", TENSORRT, subdir=TENSORRT, triton=_TRT_TRITON, targets=_JETSON,
           other_exts=(".plan",)),
    Format(TENSORRT, "int8", ".engine", TENSORRT, subdir=TENSORRT, triton=_TRT_TRITON, targets=_JETSON,
           other_exts=(".plan",)),
    # the eager-PyTorch GPU baseline next to TensorRT: a TorchScript module run by torch on CUDA (fp16,
    # channels_last, CUDA graphs); no target writes it
    Format(TORCH, "fp16", ".torchscript", TORCH_CUDA, subdir=TORCH),
)
FORMATS: dict[tuple[str, str], Format] = {r.key: r for r in ROWS}

# each target's runtimes, preferred first: bench's profile; --student auto measures on the first it can use
TARGET_RUNTIMES: dict[str, tuple[str, ...]] = {
    "android": (EXECUTORCH, PTL),
    "jetson": (TENSORRT, ONNXRUNTIME),
    "x86": (OPENVINO, ONNXRUNTIME),
}
# each target's deploy preference, "format-precision" (TargetProfile.recommended)
RECOMMENDED: dict[str, tuple[str, ...]] = {
    "android": ("pte-int8", "pte-fp32", "ptl-fp32"),
    "jetson": ("tensorrt-int8", "tensorrt-fp16", "onnx-fp16"),
    "x86": ("openvino-int8", "openvino-fp32", "onnx-int8", "onnx-fp32"),
}


def format_runtime(fmt: str) -> str | None:
    """The runtime of a format (None: not a runnable model, e.g. the TensorRT build scripts)."""
    return next((r.runtime for r in FORMATS.values() if r.format == fmt), None)


def ext_formats() -> dict[str, str]:
    """Extension (lower case, with the dot) -> format, for a single artifact file given without a manifest."""
    return {e: r.format for r in FORMATS.values() for e in (r.ext, *r.other_exts)}


def subdirs() -> tuple[str, ...]:
    """The bundle's folders that hold artifacts ("" = the bundle itself)."""
    return tuple(dict.fromkeys(("", *(r.subdir for r in FORMATS.values()))))


def target_artifacts(target: str) -> tuple[tuple[str, str], ...]:
    """The (format, precision) keys ``target``'s export writes, in table order."""
    return tuple(r.key for r in FORMATS.values() if target in r.targets)


def target_rows(target: str, runtime: str) -> list[Format]:
    """The rows ``target`` deploys on ``runtime``."""
    return [r for r in FORMATS.values() if target in r.targets and r.runtime == runtime]
