"""What ``edgecv bench`` / ``edgecv gate`` run: the artifacts of a bundle, or one artifact file.

A bundle is a folder with ``manifest.json`` (:mod:`edgecv.contracts.manifest`). A single artifact is a model file
whose format is known from its extension; it has no manifest, hence no class names or preprocessing (no
accuracy), and its precision is read from the file where the format allows it (ONNX: QuantizeLinear nodes ->
int8, float16 input -> fp16).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgecv.contracts import formats as F
from edgecv.contracts.manifest import (
    MANIFEST,
    ArtifactEntry,
    Manifest,
    load_manifest,
    verify_artifact,
)
from edgecv.errors import UserError


@dataclass
class Resolved:
    """One artifact ready to load: its manifest entry, absolute path and (for bundles) the manifest."""

    entry: ArtifactEntry
    path: Path
    manifest: Manifest | None
    integrity_error: str | None = None  # sha256 / missing-file problem found by verify_artifact
    label: str | None = None  # set when two entries share format-precision: "onnx-fp32 (file.onnx)"
    failed_validation: str | None = None  # export validation failed, benched anyway (--include-failed)

    @property
    def name(self) -> str:
        return self.label or self.entry.name


@dataclass
class Source:
    """A resolved BUNDLE or artifact argument."""

    path: Path
    manifest: Manifest | None
    artifacts: list[Resolved]
    not_ok: list[ArtifactEntry]  # manifest entries with status failed/skipped (reported, not run)

    @property
    def is_bundle(self) -> bool:
        return self.manifest is not None


def _onnx_precision(path: Path) -> str:
    try:
        import onnx

        m = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - unreadable: the runtime will report the real error
        return "fp32"
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger") for n in m.graph.node):
        return "int8"
    if m.graph.input and m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16:
        return "fp16"
    return "fp32"


def _name_precision(path: Path) -> str:
    stem = path.stem.lower()
    for p in ("int8", "fp16", "fp32"):
        if p in stem:
            return p
    return "fp32"


def single_artifact(path: Path) -> Resolved:
    exts = F.ext_formats()
    fmt = exts.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{path}: not a bundle (no {MANIFEST}) and not a known artifact type "
                        f"({', '.join(sorted(exts))})")
    precision = _onnx_precision(path) if fmt == F.ONNX else _name_precision(path)
    entry = ArtifactEntry(file=path.name, format=fmt, precision=precision, runtime=F.format_runtime(fmt),
                          size_bytes=path.stat().st_size)
    return Resolved(entry, path.resolve(), None)


def resolve_source(arg: str | Path, only: list[str] | None = None, include_failed: bool = False) -> Source:
    """Resolve a BUNDLE directory / manifest.json / single artifact file; ``only`` filters by ``format-precision``.

    ``include_failed``: also run artifacts whose export *validation* failed (the file was written and hashed);
    they carry ``failed_validation`` so reports label them and never recommend them. Every artifact is verified
    against the manifest (sha256, file present): a problem is recorded in ``integrity_error`` for the caller to
    refuse."""
    p = Path(arg)
    if not p.exists():
        raise UserError(f"{arg}: no such file or directory")
    if p.is_dir() or p.name == MANIFEST:
        bundle = p if p.is_dir() else p.parent
        man = load_manifest(bundle)
        resolved, not_ok = [], []
        for e in man.artifacts:
            failed_validation = None
            if include_failed and e.status == "failed" and e.runtime and e.sha256 and (bundle / e.file).is_file():
                failed_validation = e.error or "export validation failed"
            elif e.status != "ok" or not e.runtime:
                not_ok.append(e)
                continue
            err = None
            try:
                verify_artifact(bundle, e)
            except UserError as ex:
                err = str(ex)
            resolved.append(Resolved(e, (bundle / e.file).resolve(), man, err, failed_validation=failed_validation))
        names = [r.entry.name for r in resolved]
        for r in resolved:
            if names.count(r.entry.name) > 1:
                r.label = f"{r.entry.name} ({r.entry.file})"
        src = Source(bundle.resolve(), man, resolved, not_ok)
    else:
        src = Source(p.resolve(), None, [single_artifact(p)], [])
    if only:
        names = {a.name for a in src.artifacts} | {a.entry.name for a in src.artifacts} | {e.name for e in src.not_ok}
        unknown = [o for o in only if o not in names]
        if unknown:
            raise UserError(f"--artifacts: {', '.join(unknown)} not in {arg} (has: {', '.join(sorted(names)) or 'none'})")
        src.artifacts = [a for a in src.artifacts if a.name in only or a.entry.name in only]
        src.not_ok = [e for e in src.not_ok if e.name in only]
    return src


def declared_shape(res: Resolved) -> list | None:
    """The NCHW input shape the manifest records for the artifact (None: a single file, or not recorded)."""
    return res.entry.input_shape or (res.manifest.input.get("shape") if res.manifest else None)


def _shape_from_runner(res: Resolved) -> tuple[int | None, ...] | None:
    """The input shape the artifact declares, as its runtime reads it (None: runtime missing, or not recorded).
    Only for a check made before any runner is open (the gate's same-task check); bench's measuring loop reads
    it from the runner it has open (:meth:`edgecv.runtimes.measure.Candidate.shape`)."""
    from edgecv.runtimes.base import load_runner

    try:
        runner = load_runner(res.entry.runtime, res.path)
    except Exception:  # noqa: BLE001 - unavailable or unreadable: the caller says "shape unknown"
        return None
    try:
        return runner.input_shape
    finally:
        runner.close()


def input_shape(res: Resolved, batch: int) -> tuple[int, ...]:
    """The NCHW input shape for ``batch`` from the manifest entry / manifest / the artifact's runner."""
    shape = declared_shape(res) or _shape_from_runner(res)
    if not shape or None in shape[1:]:
        raise UserError(f"{res.path}: input shape unknown (no manifest); bench a bundle instead")
    return (int(batch), *[int(s) for s in shape[1:]])
