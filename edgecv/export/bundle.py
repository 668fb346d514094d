"""``edgecv export``: every artifact of a target, each validated through its real runtime, one manifest.

Flow: resolve the source (run or checkpoint) -> load validation + calibration images with the source's
preprocessing -> build the float model and the INT8 (QAT or PTQ) model -> write each requested
(format, precision) atomically -> validate it through ``edgecv.runtimes`` against the PyTorch model it came
from -> write ``manifest.json`` last (atomically). A failed format is recorded with its error; the command
fails (exit 1) when any requested artifact failed.
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
import torch
from torch import nn

from edgecv.contracts.manifest import FORMAT_RUNTIME, ArtifactEntry, Manifest, load_manifest, verify_artifact
from edgecv.errors import UserError
from edgecv.utils import progress, sha256_file

PRECISIONS = ("fp32", "fp16", "int8")
THRESHOLDS = {"fp32": 99.5, "fp16": 99.5, "int8": 97.0}  # min top-1 agreement (%) with the torch reference
FILES = {
    ("onnx", "fp32"): "model-fp32.onnx",
    ("onnx", "fp16"): "model-fp16.onnx",
    ("onnx", "int8"): "model-int8.onnx",
    ("openvino", "fp32"): "openvino/model-fp32.xml",
    ("openvino", "int8"): "openvino/model-int8.xml",
    ("ptl", "fp32"): "model-fp32.ptl",
    ("pte", "fp32"): "model-fp32.pte",
    ("pte", "int8"): "model-int8.pte",
    ("tensorrt", "fp16"): "tensorrt/model-fp16.engine",
    ("tensorrt", "int8"): "tensorrt/model-int8.engine",
}
TRT_DIR = "tensorrt"
TRT_PROFILE = (1, 1, 8)


@dataclass
class ExportOptions:
    target: str = "x86"
    precisions: tuple[str, ...] | None = None
    img_size: int | None = None
    opset: int = 17
    data: str | None = None
    num_val: int = 256
    num_calib: int = 512
    stage: str | None = None
    trust_pickle: bool = False
    threads: int = 1
    simplify: bool = False
    seed: int = 0
    validate: bool = True


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


def parse_precisions(s: str | None) -> tuple[str, ...] | None:
    if not s:
        return None
    out = tuple(p.strip().lower() for p in s.split(",") if p.strip())
    bad = [p for p in out if p not in PRECISIONS]
    if bad or not out:
        raise UserError(f"--precision: unknown precision(s) {', '.join(bad) or s!r} (choose from fp32, fp16, int8)")
    return out


def versions() -> dict:
    import importlib.metadata as md

    v = {"python": platform.python_version()}
    for pkg in ("edgecv", "torch", "onnx", "onnxruntime", "openvino", "executorch", "torchao", "tensorrt"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return v


# ---------------------------------------------------------------------------------------------- data
@dataclass
class EvalData:
    x: np.ndarray  # N x 3 x S x S float32 (Preprocess.to_array)
    y: np.ndarray
    calib: list[np.ndarray]
    source: str


def load_eval_data(data: str, class_names: list[str], preprocess, num_val: int, num_calib: int, seed: int = 0) -> EvalData:
    from edgecv.data.arrays import to_arrays
    from edgecv.data.datasets import load_train_val, sample_calibration

    b = load_train_val(data, img_size=preprocess.input_size, seed=seed, preprocess=preprocess)
    if list(b.class_names) != list(class_names):
        raise UserError(f"--data {data}: its classes {b.class_names[:10]} are not the model's {list(class_names)[:10]}")
    val = sample_calibration(b.val, num_val, seed)
    cal = sample_calibration(b.train, num_calib, seed + 1)

    x, y = to_arrays(val, preprocess, "val images")
    cx, _ = to_arrays(cal, preprocess, "calibration images")
    calib = [cx[i : i + 32] for i in range(0, len(cx), 32)]
    return EvalData(x, y, calib, b.source)


@torch.no_grad()
def torch_logits(model: nn.Module, x: np.ndarray, bs: int = 64) -> np.ndarray:
    model.eval()
    return np.concatenate([model(torch.from_numpy(x[i : i + bs])).float().numpy() for i in range(0, len(x), bs)])


# ---------------------------------------------------------------------------------------------- validation
REF_QAT = "torch QAT model (fake-quant)"
REF_PT2E = "torch PT2E model the .pte was lowered from (XNNPACKQuantizer q/dq, fake-quant)"


def validate_runner(runner, x: np.ndarray, y: np.ndarray, ref: np.ndarray, precision: str, bs: int = 32,
                    reference: str | None = None, qat_ref: np.ndarray | None = None) -> dict:
    """Top-1 agreement / max |logit diff| against the torch reference, plus accuracy of both on labels.

    ``qat_ref``: when the reference is not the QAT model itself (ExecuTorch INT8 is its own PT2E quantization),
    the QAT model's logits, reported as ``qat_reference_accuracy`` and ``qat_top1_agreement`` (information)."""
    outs = []
    t0 = time.perf_counter()
    for i in range(0, len(x), bs):
        outs.append(runner.predict(x[i : i + bs]))
    logits = np.concatenate(outs)
    wall = time.perf_counter() - t0
    pa, pr = logits.argmax(1), ref.argmax(1)
    agree = 100.0 * float((pa == pr).mean())
    thr = THRESHOLDS[precision]
    extra = {}
    if qat_ref is not None:
        pq = qat_ref.argmax(1)
        extra = {"qat_reference_accuracy": round(100.0 * float((pq == y).mean()), 3),
                 "qat_top1_agreement": round(100.0 * float((pa == pq).mean()), 3)}
    return {
        "n": int(len(x)),
        "reference": reference or (REF_QAT if precision == "int8" else "torch fp32 model"),
        "top1_agreement": round(agree, 3),
        "max_abs_logit_diff": float(np.abs(logits - ref).max()),
        "accuracy": round(100.0 * float((pa == y).mean()), 3),
        "reference_accuracy": round(100.0 * float((pr == y).mean()), 3),
        "threshold_agreement": thr,
        "passed": agree >= thr,
        "wall_s": round(wall, 3),
        **extra,
    }


# ---------------------------------------------------------------------------------------------- driver
class _Exporter:
    def __init__(self, source, out: Path, opts: ExportOptions, log):
        from edgecv.export.source import resolve_source
        from edgecv.targets import get_target

        self.log = log
        self.opts = opts
        self.target = get_target(opts.target)
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
        self._models: dict[str, nn.Module] = {}
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
            from edgecv.quant.qat import QuantConfig, calibrate, prepare_qat

            if self.src.is_qat:
                m = self.src.build()
                self.notes["int8_source"] = "qat"
            else:
                m = prepare_qat(copy.deepcopy(self.src.build()), QuantConfig(trace_size=self.size))
                loader = [(torch.from_numpy(b), None) for b in self.data.calib]
                n = calibrate(m, loader)
                self.notes["int8_source"] = "ptq"
                self.notes["ptq_calibration_images"] = n
            self._models["qat"] = m.eval()
        return self._models["qat"]

    def qat_float_model(self) -> nn.Module:
        """QAT-trained weights, BN folded, fake-quant off (start point of the ExecuTorch PT2E quantizer)."""
        if "qat_float" not in self._models:
            from edgecv.quant.qat import set_fake_quant, to_deploy

            m = copy.deepcopy(self.qat_model())
            set_fake_quant(m, False)
            self._models["qat_float"] = to_deploy(m).eval()
        return self._models["qat_float"]

    def reference(self, precision: str) -> np.ndarray:
        key = f"ref_{precision == 'int8'}"
        if key not in self._models:
            m = self.qat_model() if precision == "int8" else self.float_model()
            self._models[key] = torch_logits(m, self.data.x)
        return self._models[key]

    # -- ONNX intermediates (OpenVINO and TensorRT are built from them) -----------------------------------------
    def onnx_file(self, precision: str) -> Path:
        if precision in self._onnx:
            return self._onnx[precision]
        from edgecv.export import onnx as E

        rel = FILES[("onnx", precision)]
        in_bundle = ("onnx", precision) in self.wanted
        path = self.out / rel if in_bundle else self.out / ".tmp" / rel
        if precision == "fp32":
            E.export_fp32(self.float_model(), path, self.size, self.opts.opset)
        elif precision == "fp16":
            E.export_fp16(self.float_model(), path, self.size, self.opts.opset)
        else:
            from edgecv.quant.qat import to_deploy

            info = E.export_int8_qdq(to_deploy(self.qat_model()), path, self.size, self.opts.opset,
                                     calib_batches=self.data.calib)
            self.notes["onnx_int8_passes"] = info
        if self.opts.simplify:
            self.notes[f"onnx_{precision}_simplify"] = simplify_onnx(path)
        self._onnx[precision] = path
        return path

    # -- one artifact ---------------------------------------------------------------------------------------
    def export_one(self, fmt: str, prec: str) -> ArtifactEntry:
        rel = FILES[(fmt, prec)]
        path = self.out / rel
        entry = ArtifactEntry(file=rel, format=fmt, precision=prec, runtime=FORMAT_RUNTIME[fmt],
                              input_shape=[1, 3, self.size, self.size], exported_with=self.versions)
        extra = entry.extra
        if fmt == "onnx":
            self.onnx_file(prec)
            extra["opset"] = self.opts.opset
            extra["dynamic_batch"] = True
            entry.input_shape = ["batch", 3, self.size, self.size]
            if prec == "int8":
                from edgecv.runtimes.introspect import ort_int8_kernels

                extra["qdq_passes"] = self.notes.get("onnx_int8_passes")
                extra["int8_kernels"] = ort_int8_kernels(path, self.opts.threads)
            if prec == "fp16":
                extra["io_dtype"] = "float32 (Cast to/from float16 inside the graph)"
        elif fmt == "openvino":
            from edgecv.export import openvino as OV

            src = self.onnx_file(prec)
            xml, binf = OV.convert(src, path, extra)
            comp = str(binf.relative_to(self.out))
            extra["companions"] = [comp]
            extra["companion_sha256"] = {comp: sha256_file(binf)}
            extra["from_onnx"] = FILES[("onnx", prec)]
            extra["compress_to_fp16"] = False
            entry.input_shape = ["batch", 3, self.size, self.size]
            if prec == "int8":
                extra["int8_kernels"] = OV.ov_int8_kernels(path, "CPU", self.opts.threads)
        elif fmt == "ptl":
            from edgecv.export.ptl import export_ptl

            extra.update(export_ptl(self.float_model(), path, self.size))
        elif fmt == "pte":
            from edgecv.export import pte as PTE

            if prec == "fp32":
                extra.update(PTE.export_fp32(self.float_model(), path, self.size))
            else:
                info, converted = PTE.export_int8(self.qat_float_model(), path, self.size, self.data.calib)
                extra.update(info)
                self._models["pte_int8_pt2e"] = converted  # what the .pte computes: its validation reference
                outside = extra.get("ops_outside_delegate", {})
                extra["int8_kernels"] = {
                    "xnnpack_partitions": extra.get("xnnpack_partitions", 0),
                    "quantized_ops_outside_delegate": {k: v for k, v in outside.items() if "quant" in k},
                    "int8_kernels": extra.get("xnnpack_partitions", 0) > 0
                    and not any("conv" in k or "linear" in k or "addmm" in k for k in outside),
                }
        elif fmt == "tensorrt":
            return self.export_tensorrt(entry, prec)
        else:  # pragma: no cover - targets only list known formats
            raise UserError(f"unknown format {fmt}")
        self.finish(entry)
        return entry

    def export_tensorrt(self, entry: ArtifactEntry, prec: str) -> ArtifactEntry:
        from edgecv.export import tensorrt as TRT

        onnx = self.onnx_file("int8" if prec == "int8" else ("fp16" if ("onnx", "fp16") in self.wanted else "fp32"))
        entry.extra["from_onnx"] = onnx.name
        entry.extra["profile"] = dict(zip(("min", "opt", "max"), TRT_PROFILE, strict=True))
        entry.extra["build_script"] = f"{TRT_DIR}/{TRT.SCRIPT}"
        reason = TRT.tensorrt_available()
        if reason:
            entry.status, entry.error = "skipped", reason
            entry.runtime = "tensorrt"
            return entry
        entry.extra.update(TRT.build_engine(onnx, self.out / entry.file, prec, self.size, profile=TRT_PROFILE))
        self.finish(entry)
        return entry

    def tensorrt_scripts(self) -> ArtifactEntry:
        from edgecv.export import tensorrt as TRT

        precs = [p for f, p in self.wanted if f == "tensorrt"]
        onnx_files = {}
        for p in precs:
            src = self.onnx_file("int8" if p == "int8" else ("fp16" if ("onnx", "fp16") in self.wanted else "fp32"))
            if src.is_relative_to(self.out / ".tmp"):  # the ONNX the script needs must ship in the bundle
                dst = self.out / src.name
                shutil.copy2(src, dst)
                src = dst
            onnx_files[p] = "../" + str(src.relative_to(self.out))
        paths = TRT.write_scripts(self.out / TRT_DIR, onnx_files, self.size, profile=TRT_PROFILE)
        rels = [str(p.relative_to(self.out)) for p in paths]
        e = ArtifactEntry(file=rels[0], format="tensorrt_script", precision="+".join(precs), runtime=None,
                          input_shape=["batch", 3, self.size, self.size], exported_with=self.versions)
        e.extra["companions"] = rels[1:]
        e.extra["companion_sha256"] = {r: sha256_file(self.out / r) for r in rels[1:]}
        e.extra["onnx"] = onnx_files
        e.extra["profile"] = dict(zip(("min", "opt", "max"), TRT_PROFILE, strict=True))
        import py_compile

        py_compile.compile(str(paths[0]), cfile=str(self.out / ".tmp" / "build_engine.pyc"), doraise=True)
        e.extra["py_compile"] = "ok"
        self.finish(e)
        return e

    def finish(self, entry: ArtifactEntry) -> None:
        f = self.out / entry.file
        entry.size_bytes = f.stat().st_size + sum((self.out / c).stat().st_size for c in entry.extra.get("companions", []))
        entry.sha256 = sha256_file(f)

    def validate(self, entry: ArtifactEntry) -> None:
        from edgecv.runtimes.base import RuntimeUnavailable, runner_for_entry

        try:
            runner = runner_for_entry(self.out, entry, threads=self.opts.threads)
        except RuntimeUnavailable as e:
            entry.validation = {"status": "skipped", "reason": str(e)}
            return
        ref, ref_name, qat_ref = self.reference(entry.precision), None, None
        if entry.format == "pte" and entry.precision == "int8":
            # the .pte is lowered from its own PT2E quantization (not the QAT graph): compare with that model,
            # and report the QAT model's accuracy next to it
            from edgecv.export.pte import pt2e_logits

            ref, ref_name, qat_ref = pt2e_logits(self._models["pte_int8_pt2e"], self.data.x), REF_PT2E, ref
        try:
            v = validate_runner(runner, self.data.x, self.data.y, ref, entry.precision, reference=ref_name,
                                qat_ref=qat_ref)
            v["runner"] = {k: val for k, val in runner.describe().items() if k != "host"}
        finally:
            runner.close()
        k = entry.extra.get("int8_kernels")
        if entry.precision == "int8" and isinstance(k, dict):
            v["int8_kernels"] = bool(k.get("int8_kernels"))
            if not v["int8_kernels"]:
                v["passed"] = False
                v["reason"] = "the runtime does not execute int8 kernels for the convolutions (silent float fallback)"
        v["status"] = "passed" if v["passed"] else "failed"
        entry.validation = v
        if not v["passed"]:
            entry.status = "failed"
            entry.error = v.get("reason") or (f"validation failed: top-1 agreement {v['top1_agreement']}% < "
                                              f"{v['threshold_agreement']}% vs {v['reference']}")

    def run(self) -> ExportResult:
        t0 = time.perf_counter()
        opts = self.opts
        data = opts.data or self.src.data
        if not data:
            raise UserError("no validation data: pass --data (the source does not record its data set)")
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / ".tmp").mkdir(exist_ok=True)
        self.log(f"export {self.src.path} ({self.src.kind}{', stage ' + self.src.stage if self.src.stage else ''}) "
                 f"-> {self.out} target {self.target.name} at {self.size}px")
        self.data = load_eval_data(data, self.class_names, self.pre, opts.num_val, opts.num_calib, opts.seed)
        entries: list[ArtifactEntry] = []
        try:
            for fmt, prec in progress(self.wanted, desc="export"):
                t1 = time.perf_counter()
                try:
                    e = self.export_one(fmt, prec)
                except Exception as ex:  # recorded per artifact; the others still run
                    e = ArtifactEntry(file=FILES[(fmt, prec)], format=fmt, precision=prec, runtime=FORMAT_RUNTIME[fmt],
                                      status="failed", error=f"{type(ex).__name__}: {str(ex)[:500]}",
                                      exported_with=self.versions)
                    e.extra["traceback"] = traceback.format_exc(limit=4)[-2000:]
                if e.status == "ok" and opts.validate and e.runtime:
                    try:
                        self.validate(e)
                    except Exception as ex:
                        e.status, e.error = "failed", f"validation error: {type(ex).__name__}: {str(ex)[:500]}"
                e.extra["export_s"] = round(time.perf_counter() - t1, 2)
                self.log(_entry_line(e))
                entries.append(e)
            if any(f == "tensorrt" for f, _ in self.wanted):
                try:
                    entries.append(self.tensorrt_scripts())
                except Exception as ex:
                    entries.append(ArtifactEntry(file=f"{TRT_DIR}/build_engine.py", format="tensorrt_script",
                                                 precision="-", runtime=None, status="failed",
                                                 error=f"{type(ex).__name__}: {ex}"))
                self.log(_entry_line(entries[-1]))
        finally:
            shutil.rmtree(self.out / ".tmp", ignore_errors=True)
        src = self.src.describe()
        src.update({k: v for k, v in self.notes.items() if k in ("fp32_source", "int8_source", "ptq_calibration_images")})
        src["validation_data"] = self.data.source
        man = Manifest(
            target=self.target.name, source=src, preprocess=self.pre.to_dict(), class_names=self.class_names,
            input={"name": "input", "shape": [1, 3, self.size, self.size], "dtype": "float32", "layout": "NCHW"},
            output={"name": "logits", "shape": [1, len(self.class_names)]}, artifacts=entries)
        man.write(self.out)
        failed = [e.name for e in entries if e.status == "failed"]
        return ExportResult(self.out, man, time.perf_counter() - t0, failed)


def _entry_line(e: ArtifactEntry) -> str:
    v = e.validation or {}
    if e.status != "ok":
        return f"  {e.name:16s} {e.status.upper()}: {e.error}"
    s = f"  {e.name:16s} ok  {e.file} ({(e.size_bytes or 0) / 1e6:.2f} MB)"
    if v.get("status") == "passed" or v.get("status") == "failed":
        s += (f"  agreement {v['top1_agreement']:.1f}%  max|dlogit| {v['max_abs_logit_diff']:.3g}  "
              f"acc {v['accuracy']:.1f}% (torch {v['reference_accuracy']:.1f}%)")
        if "qat_reference_accuracy" in v:
            s += f" [QAT model {v['qat_reference_accuracy']:.1f}%, agreement with it {v['qat_top1_agreement']:.1f}%]"
        if "int8_kernels" in v:
            s += f"  int8 kernels: {'yes' if v['int8_kernels'] else 'NO'}"
    elif v.get("status") == "skipped":
        s += f"  (not validated: {v['reason']})"
    return s


def simplify_onnx(path: Path) -> dict:
    """Optional graph clean-up with onnxscript's optimizer (constant folding, dead code); written atomically."""
    import onnx
    import onnxscript.optimizer as opt

    from edgecv.utils import atomic_path

    m = onnx.load(str(path))
    before = len(m.graph.node)
    m2 = opt.optimize(m)
    onnx.checker.check_model(m2)
    with atomic_path(path) as tmp:
        onnx.save(m2, str(tmp))
    return {"nodes_before": before, "nodes_after": len(m2.graph.node)}


def export_bundle(source: str | Path, out: str | Path, opts: ExportOptions, log=lambda s: None) -> ExportResult:
    return _Exporter(source, Path(out), opts, log).run()


def verify_bundle(bundle: str | Path) -> dict:
    """Re-hash every artifact (and companion) of a bundle against its manifest."""
    man = load_manifest(bundle)
    rows, bad = [], []
    for e in man.artifacts:
        if e.status != "ok":
            rows.append({"artifact": e.name, "status": e.status})
            continue
        try:
            verify_artifact(bundle, e)
            rows.append({"artifact": e.name, "file": e.file, "status": "ok"})
        except UserError as ex:
            rows.append({"artifact": e.name, "file": e.file, "status": "mismatch", "error": str(ex)})
            bad.append(e.name)
    return {"bundle": str(bundle), "artifacts": rows, "ok": not bad, "mismatched": bad}
