"""``edgecv export``: every artifact of a target, each validated through its real runtime, one manifest.

Flow: resolve the source (run or checkpoint) -> check ``--out`` (:mod:`edgecv.export.outdir`) -> load validation
+ calibration images with the source's preprocessing (:mod:`edgecv.export.data`) -> build the float model and
the INT8 (QAT, or :func:`edgecv.quant.ptq`) model and check their logits are finite -> write each requested
(format, precision) atomically through the format table (:mod:`edgecv.export.formats`) -> validate it through
``edgecv.runtimes`` against the PyTorch model it came from (:mod:`edgecv.export.validate`) -> write
``manifest.json`` last (atomically). A failed format is recorded with its error; the command fails (exit 1)
when any requested artifact failed.
"""

from __future__ import annotations

import copy
import platform
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from edgecv.contracts import formats as F
from edgecv.contracts.formats import FORMATS
from edgecv.contracts.manifest import ArtifactEntry, Manifest
from edgecv.errors import UserError
from edgecv.export.config import ExportOptions
from edgecv.export.data import EvalData, load_eval_data
from edgecv.export.formats import TRT_DIR, WRITERS, finish, write_tensorrt_scripts
from edgecv.export.outdir import TMP, check_out_dir, prepare_out_dir, remove_stale
from edgecv.export.validate import check_reference, entry_line, torch_logits, validate_entry
from edgecv.utils import check_writable, progress


@dataclass
class ExportResult:
    bundle: Path
    manifest: Manifest
    wall_s: float
    failed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = self.manifest.to_dict()
        d["bundle"] = str(self.bundle)
        d["wall_s"] = round(self.wall_s, 2)
        d["failed"] = self.failed
        return d


def versions() -> dict:
    import importlib.metadata as md

    v = {"python": platform.python_version()}
    for pkg in ("edgecv", "torch", "onnx", "onnxruntime", "openvino", "executorch", "torchao", "tensorrt"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return v


class Exporter:
    """The models and intermediates of one export (built once, on first use) and the driver."""

    def __init__(self, source, out: Path, opts: ExportOptions, log):
        from edgecv.export.source import resolve_source
        from edgecv.targets import get_target

        self.log = log
        opts.check()  # a bad value, an unknown target, then an unwritable out: before any work
        self.opts = opts
        self.target = get_target(opts.target)
        check_writable(out, directory=True)
        self.src = resolve_source(source, opts.stage, opts.trust_pickle)
        self.out = Path(out)
        ck = self.src.checkpoint
        self.pre = ck.preprocess.with_size(opts.img_size) if opts.img_size else ck.preprocess
        self.size = self.pre.input_size
        self.class_names = list(ck.class_names)
        self.wanted = [a for a in self.target.artifacts if opts.precisions is None or a[1] in opts.precisions]
        if not self.wanted:
            raise UserError(f"--precision {','.join(opts.precisions or ())}: target '{self.target.name}' has no such "
                            f"artifacts (it has {', '.join(f'{f}-{p}' for f, p in self.target.artifacts)})")
        if opts.opset < 13 and any(p == "int8" for _, p in self.wanted):
            raise UserError(f"--opset {opts.opset}: INT8 QDQ with per-channel weights needs opset >= 13")
        self._models: dict[str, nn.Module] = {}
        self._refs: dict[bool, np.ndarray] = {}
        self._onnx: dict[str, Path] = {}
        self.notes: dict = {}
        self.versions = versions()

    # -- models -------------------------------------------------------------------------------------------
    def float_model(self) -> nn.Module:
        if "fp32" not in self._models:
            m, origin = self.src.float_model()
            self._models["fp32"] = m
            self.notes["fp32_source"] = origin
        return self._models["fp32"]

    def qat_model(self) -> nn.Module:
        """The fake-quant model INT8 artifacts reproduce (QAT checkpoint, else PTQ of the float model)."""
        if "qat" not in self._models:
            from edgecv.quant import QuantConfig, auto_weight_bits, ptq

            if self.src.is_qat:
                m = self.src.build()
                self.notes["int8_source"] = "qat"
            else:  # weights 7-bit where this CPU's int8 kernels would saturate 8-bit ones (as compress decides)
                bits, _ = auto_weight_bits()
                m, n = ptq(self.src.build(), self.data.calib, self.size,
                           QuantConfig(trace_size=self.size, weight_bits=bits))
                self.notes["int8_source"] = "ptq"
                self.notes["ptq_calibration_images"] = n
            self.notes["int8_weight_bits"] = int(getattr(m, "edgecv_quant", {}).get("weight_bits", 8))
            self._models["qat"] = m.eval()
        return self._models["qat"]

    def reference(self, precision: str) -> np.ndarray:
        """Logits of the torch model an artifact of ``precision`` is compared with (QAT model for int8)."""
        key = precision == "int8"
        if key not in self._refs:
            self._refs[key] = torch_logits(self.qat_model() if key else self.float_model(), self.data.x)
        return self._refs[key]

    def check_models(self) -> None:
        """Before anything is written: the models the artifacts come from give finite logits."""
        if any(p != "int8" for _, p in self.wanted):
            check_reference(self.reference("fp32"), "the fp32 model")
        if any(p == "int8" for _, p in self.wanted):
            check_reference(self.reference("int8"), "the INT8 (fake-quant) model")

    # -- ONNX intermediates (OpenVINO and TensorRT are built from them) -----------------------------------------
    def onnx_file(self, precision: str) -> Path:
        if precision in self._onnx:
            return self._onnx[precision]
        from edgecv.export import onnx as E

        rel = FORMATS[(F.ONNX, precision)].file
        path = self.out / rel if (F.ONNX, precision) in self.wanted else self.out / TMP / rel
        if precision == "fp32":
            E.export_fp32(self.float_model(), path, self.size, self.opts.opset)
        elif precision == "fp16":
            E.export_fp16(self.float_model(), path, self.size, self.opts.opset)
        else:
            from edgecv.quant import deploy

            self.notes["onnx_int8_passes"] = E.export_int8_qdq(deploy(self.qat_model()), path, self.size,
                                                               self.opts.opset, calib_batches=self.data.calib)
        if self.opts.simplify:
            self.notes[f"onnx_{precision}_simplify"] = E.simplify(path)
        self._onnx[precision] = path
        return path

    # -- artifacts ------------------------------------------------------------------------------------------
    def export_one(self, fmt: str, prec: str) -> ArtifactEntry:
        f = FORMATS[(fmt, prec)]
        entry = ArtifactEntry(file=f.file, format=fmt, precision=prec, runtime=f.runtime,
                              input_shape=[1, 3, self.size, self.size], exported_with=self.versions)
        WRITERS[f.key](self, entry)
        if entry.status == "ok":
            finish(self.out, entry)
        return entry

    def export_and_validate(self, fmt: str, prec: str) -> ArtifactEntry:
        t1 = time.perf_counter()
        try:
            e = self.export_one(fmt, prec)
        except Exception as ex:  # recorded per artifact; the others still run
            e = ArtifactEntry(file=FORMATS[(fmt, prec)].file, format=fmt, precision=prec,
                              runtime=FORMATS[(fmt, prec)].runtime, status="failed",
                              error=f"{type(ex).__name__}: {str(ex)[:500]}", exported_with=self.versions)
            e.extra["traceback"] = traceback.format_exc(limit=4)[-2000:]
        if e.status == "ok" and self.opts.validate and e.runtime:
            try:
                validate_entry(self, e)
            except Exception as ex:
                e.status, e.error = "failed", f"validation error: {type(ex).__name__}: {str(ex)[:500]}"
        e.extra["export_s"] = round(time.perf_counter() - t1, 2)
        self.log(entry_line(e))
        return e

    def export_all(self) -> list[ArtifactEntry]:
        entries = [self.export_and_validate(fmt, prec) for fmt, prec in progress(self.wanted, desc="export")]
        if any(f == F.TENSORRT for f, _ in self.wanted):
            try:
                entries.append(write_tensorrt_scripts(self))
            except Exception as ex:
                entries.append(ArtifactEntry(file=f"{TRT_DIR}/build_engine.py", format=F.TENSORRT_SCRIPT,
                                             precision="-", runtime=None, status="failed",
                                             error=f"{type(ex).__name__}: {ex}"))
            self.log(entry_line(entries[-1]))
        return entries

    def manifest(self, entries: list[ArtifactEntry]) -> Manifest:
        src = self.src.describe()
        src.update({k: v for k, v in self.notes.items() if k in ("fp32_source", "int8_source", "ptq_calibration_images")})
        src["validation_data"] = self.data.source
        return Manifest(
            target=self.target.name, source=src, preprocess=self.pre.to_dict(), class_names=self.class_names,
            input={"name": "input", "shape": [1, 3, self.size, self.size], "dtype": "float32", "layout": "NCHW"},
            output={"name": "logits", "shape": [1, len(self.class_names)]}, artifacts=entries)

    def run(self) -> ExportResult:
        t0 = time.perf_counter()
        opts = self.opts
        data = opts.data or self.src.data
        if not data:
            raise UserError("no validation data: pass --data (the source does not record its data set)")
        check_out_dir(self.out, self.src, opts.force)
        self.log(f"export {self.src.path} ({self.src.kind}{', stage ' + self.src.stage if self.src.stage else ''}) "
                 f"-> {self.out} target {self.target.name} at {self.size}px")
        self.data = load_eval_data(data, self.class_names, self.pre, opts.num_val, opts.num_calib, opts.seed)
        self.check_models()
        replaced = prepare_out_dir(self.out, self.src, opts.force)
        try:
            entries = self.export_all()
        finally:
            shutil.rmtree(self.out / TMP, ignore_errors=True)
        man = self.manifest(entries)
        man.write(self.out)
        remove_stale(self.out, replaced, man)
        failed = [e.name for e in entries if e.status == "failed"]
        return ExportResult(self.out, man, time.perf_counter() - t0, failed)


@dataclass
class _ModelSource:
    """An in-memory float model standing in for a resolved source (:class:`ModelExporter`)."""

    model: nn.Module
    is_qat: bool = False

    def build(self) -> nn.Module:
        return copy.deepcopy(self.model).cpu().eval()

    def float_model(self) -> tuple[nn.Module, str]:
        return self.build(), "in-memory model"


class ModelExporter(Exporter):
    """The exporter of an in-memory float model (``--student auto`` candidates): the writers, ONNX intermediates
    and INT8 (PTQ on ``calib``) of ``edgecv export``, without a source file, labels or validation."""

    def __init__(self, model: nn.Module, out: Path, size: int, calib: list[np.ndarray], keys, threads: int = 1):
        self.log, self.out, self.size = (lambda s: None), Path(out), size
        self.opts = ExportOptions(threads=threads, validate=False)
        self.src, self.wanted = _ModelSource(model), list(keys)
        self.data = EvalData(np.zeros((0, 3, size, size), np.float32), np.zeros(0, np.int64), calib, "calibration")
        self._models, self._refs, self._onnx, self.notes, self.versions = {}, {}, {}, {}, versions()


def export_models(model: nn.Module, out: str | Path, size: int, calib: list[np.ndarray], keys,
                  threads: int = 1) -> list[ArtifactEntry]:
    """Write the (format, precision) ``keys`` of the float ``model`` into ``out`` through the writers ``edgecv
    export`` uses (not validated). A failed or skipped key is an entry with its status and error."""
    ex = ModelExporter(model, Path(out), size, calib, keys, threads)
    (ex.out / TMP).mkdir(parents=True, exist_ok=True)
    try:
        return [ex.export_and_validate(fmt, prec) for fmt, prec in ex.wanted]
    finally:
        shutil.rmtree(ex.out / TMP, ignore_errors=True)


def export_bundle(source: str | Path, out: str | Path, opts: ExportOptions, log=lambda s: None) -> ExportResult:
    """Export ``source`` (a compress run directory or a checkpoint) into the bundle folder ``out``. A bad option
    (:meth:`ExportOptions.check`: an unknown target included) or an unwritable ``out`` is a UserError before any
    work; a failed artifact is listed in ``failed``."""
    return Exporter(source, Path(out), opts, log).run()
