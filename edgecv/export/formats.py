"""The writers of the export formats: one function per format, registered in :data:`WRITERS` under the keys of
the format table :data:`edgecv.contracts.formats.FORMATS` (which holds every other fact of a format).

A writer ``write(ex, entry)`` writes ``ex.out / entry.file`` from the models and intermediates of the exporter
``ex`` (:class:`edgecv.export.bundle.Exporter`: ``float_model()``, ``qat_model()``,
``onnx_file(precision)``, ``data``, ``opts``, ``size``) and records format details in ``entry.extra``; it may
mark the entry ``skipped`` (with ``entry.error``) when the toolchain is missing here. The exporter then hashes
every file of the artifact (:func:`finish`) and validates it through its runtime.

Adding a format: its rows in :mod:`edgecv.contracts.formats`, a writer here and its :data:`WRITERS` line
(docs/architecture.md lists every file).
"""

from __future__ import annotations

import py_compile
import shutil
from collections.abc import Callable
from pathlib import Path

from edgecv.contracts import formats as F
from edgecv.contracts.formats import FORMATS
from edgecv.contracts.manifest import ArtifactEntry
from edgecv.utils import sha256_file

TRT_DIR = FORMATS[(F.TENSORRT, "int8")].subdir
TRT_PROFILE = (1, 1, 8)


def write_onnx(ex, entry: ArtifactEntry) -> None:
    prec, extra = entry.precision, entry.extra
    path = ex.onnx_file(prec)
    extra["opset"] = ex.opts.opset
    extra["dynamic_batch"] = True
    entry.input_shape = ["batch", 3, ex.size, ex.size]
    if prec == "int8":
        from edgecv.runtimes.introspect import ort_int8_kernels

        extra["qdq_passes"] = ex.notes.get("onnx_int8_passes")
        extra["int8_kernels"] = ort_int8_kernels(path, ex.opts.threads)
    if prec == "fp16":
        extra["io_dtype"] = "float32 (Cast to/from float16 inside the graph)"


def write_openvino(ex, entry: ArtifactEntry) -> None:
    from edgecv.export import openvino as OV

    prec, extra, path = entry.precision, entry.extra, ex.out / entry.file
    _xml, binf = OV.convert(ex.onnx_file(prec), path, extra)
    add_companions(ex.out, entry, [binf])
    extra["from_onnx"] = FORMATS[(F.ONNX, prec)].file
    extra["compress_to_fp16"] = False
    entry.input_shape = ["batch", 3, ex.size, ex.size]
    if prec == "int8":
        extra["int8_kernels"] = OV.ov_int8_kernels(path, "CPU", ex.opts.threads)


def write_ptl(ex, entry: ArtifactEntry) -> None:
    from edgecv.export.ptl import export_ptl

    entry.extra.update(export_ptl(ex.float_model(), ex.out / entry.file, ex.size))


def write_pte_fp32(ex, entry: ArtifactEntry) -> None:
    from edgecv.export import pte as PTE

    entry.extra.update(PTE.export_fp32(ex.float_model(), ex.out / entry.file, ex.size))


def write_pte_int8(ex, entry: ArtifactEntry) -> None:
    from edgecv.export import pte as PTE
    from edgecv.quant import deploy

    extra = entry.extra
    extra.update(PTE.export_int8(deploy(ex.qat_model()), ex.out / entry.file, ex.size))
    outside = extra.get("ops_outside_delegate", {})
    quant_outside = {k: v for k, v in outside.items() if "quant" in k}
    extra["int8_kernels"] = {
        "xnnpack_partitions": extra.get("xnnpack_partitions", 0),
        "int8_gemms": extra["qdq_nodes"].get("int8_gemms", 0),
        "quantized_ops_outside_delegate": quant_outside,
        "int8_kernels": extra.get("xnnpack_partitions", 0) > 0 and extra["qdq_nodes"].get("int8_gemms", 0) > 0
        and not quant_outside and not any("conv" in k or "linear" in k or "addmm" in k for k in outside),
    }


def trt_onnx(ex, prec: str) -> Path:
    """The ONNX a TensorRT engine of ``prec`` is built from (fp16 engines from the fp16 ONNX when it is exported)."""
    return ex.onnx_file("int8" if prec == "int8" else ("fp16" if (F.ONNX, "fp16") in ex.wanted else "fp32"))


def write_tensorrt(ex, entry: ArtifactEntry) -> None:
    from edgecv.export import tensorrt as TRT

    onnx = trt_onnx(ex, entry.precision)
    entry.extra["from_onnx"] = onnx.name
    entry.extra["profile"] = dict(zip(("min", "opt", "max"), TRT_PROFILE, strict=True))
    entry.extra["build_script"] = f"{TRT_DIR}/{TRT.SCRIPT}"
    reason = toolchain_missing(F.TENSORRT)
    if reason:
        entry.status, entry.error = "skipped", reason
        return
    entry.extra.update(TRT.build_engine(onnx, ex.out / entry.file, entry.precision, ex.size, profile=TRT_PROFILE))


def write_tensorrt_scripts(ex) -> ArtifactEntry:
    """The TensorRT build scripts (and the ONNX files they read) for every TensorRT precision of the target."""
    from edgecv.export import tensorrt as TRT

    precs = [p for f, p in ex.wanted if f == F.TENSORRT]
    onnx_files = {}
    for p in precs:
        src = trt_onnx(ex, p)
        if src.is_relative_to(ex.out / ".tmp"):  # the ONNX the script needs must ship in the bundle
            dst = ex.out / src.name
            shutil.copy2(src, dst)
            src = dst
        onnx_files[p] = "../" + str(src.relative_to(ex.out))
    paths = TRT.write_scripts(ex.out / TRT_DIR, onnx_files, ex.size, profile=TRT_PROFILE)
    e = ArtifactEntry(file=str(paths[0].relative_to(ex.out)), format=F.TENSORRT_SCRIPT, precision="+".join(precs),
                      runtime=None, input_shape=["batch", 3, ex.size, ex.size], exported_with=ex.versions)
    add_companions(ex.out, e, paths[1:])
    e.extra[F.ONNX] = onnx_files
    e.extra["profile"] = dict(zip(("min", "opt", "max"), TRT_PROFILE, strict=True))
    py_compile.compile(str(paths[0]), cfile=str(ex.out / ".tmp" / "build_engine.pyc"), doraise=True)
    e.extra["py_compile"] = "ok"
    finish(ex.out, e)
    return e


def add_companions(out: Path, entry: ArtifactEntry, files: list[Path]) -> None:
    """Record the files an artifact needs next to its main file (the manifest lists and hashes every one)."""
    rels = [str(f.relative_to(out)) for f in files]
    entry.extra["companions"] = rels
    entry.extra["companion_sha256"] = {r: sha256_file(out / r) for r in rels}


def finish(out: Path, entry: ArtifactEntry) -> None:
    """Size (all files) and sha256 (main file) of a written artifact."""
    entry.size_bytes = sum((out / f).stat().st_size for f in entry.files())
    entry.sha256 = sha256_file(out / entry.file)


def write_torchscript(ex, entry: ArtifactEntry) -> None:
    from edgecv.export.ptl import export_torchscript

    entry.extra.update(export_torchscript(ex.float_model(), ex.out / entry.file, ex.size, entry.precision))


def toolchain_missing(fmt: str) -> str | None:
    """Why ``fmt`` cannot be written here (its writer marks it skipped), or None."""
    if fmt == F.TENSORRT:
        from edgecv.export import tensorrt as TRT

        return TRT.tensorrt_available()
    return None


# (format, precision) of contracts.formats.FORMATS -> its writer ``write(exporter, entry)``
WRITERS: dict[tuple[str, str], Callable[..., None]] = {
    (F.ONNX, "fp32"): write_onnx,
    (F.ONNX, "fp16"): write_onnx,
    (F.ONNX, "int8"): write_onnx,
    (F.OPENVINO, "fp32"): write_openvino,
    (F.OPENVINO, "int8"): write_openvino,
    (F.PTL, "fp32"): write_ptl,
    (F.PTE, "fp32"): write_pte_fp32,
    (F.PTE, "int8"): write_pte_int8,
    (F.TENSORRT, "fp16"): write_tensorrt,
    (F.TENSORRT, "int8"): write_tensorrt,
    (F.TORCH, "fp16"): write_torchscript,
}
