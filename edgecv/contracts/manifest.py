"""The bundle contract: ``manifest.json`` describes every artifact of an export bundle.

Written by ``edgecv export`` (last, atomically), read by ``edgecv bench`` and ``edgecv gate``; every file of an
artifact (its main file and ``extra.companions``) is listed and sha256-checked (:func:`verify_artifact`,
:func:`verify_bundle`).

Schema ``edgecv.manifest/1``::

    {
      "schema": "edgecv.manifest/1",
      "edgecv_version": "0.1.0",
      "created": "2026-11-25T12:00:00+00:00",
      "target": "x86",                       # android | jetson | x86 | all
      "source": {"path", "sha256", "kind": "run"|"checkpoint", "stage", "arch", "metrics": {...}},
      "preprocess": {...},                   # edgecv.data.preprocess.Preprocess.to_dict()
      "class_names": ["airplane", ...],
      "input": {"name": "input", "shape": [1, 3, 64, 64], "dtype": "float32", "layout": "NCHW"},
      "output": {"name": "logits", "shape": [1, 10]},
      "artifacts": [ArtifactEntry...]
    }

An :class:`ArtifactEntry` has ``file`` (relative to the bundle), ``format``, ``precision`` (fp32 | fp16 | int8)
and ``runtime`` (a row of the format table :mod:`edgecv.contracts.formats`, or ``tensorrt_script`` with no
runtime), ``status`` (ok | failed | skipped), ``error``, ``size_bytes``, ``sha256``,
``input_shape``, ``input_dtype``, ``layout``, ``exported_with`` (package versions), ``validation`` and
``extra`` (format-specific details: the OpenVINO ``.bin`` companion, the TensorRT profile...).
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgecv import __version__
from edgecv.errors import UserError
from edgecv.utils import sha256_file, write_json_atomic

SCHEMA = "edgecv.manifest/1"
INPUT_NAME, OUTPUT_NAME = "input", "logits"  # tensor names of every exported model
MANIFEST = "manifest.json"


@dataclass
class ArtifactEntry:
    file: str
    format: str
    precision: str
    runtime: str | None
    status: str = "ok"
    error: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    input_shape: list[int] | None = None
    input_dtype: str = "float32"
    layout: str = "NCHW"
    exported_with: dict = field(default_factory=dict)
    validation: dict | None = None
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.format}-{self.precision}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ArtifactEntry:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def files(self) -> list[str]:
        """The artifact file plus companions (e.g. OpenVINO's .bin), all relative to the bundle."""
        return [self.file, *self.extra.get("companions", [])]


@dataclass
class Manifest:
    target: str
    source: dict
    preprocess: dict
    class_names: list[str]
    input: dict
    output: dict
    artifacts: list[ArtifactEntry] = field(default_factory=list)
    schema: str = SCHEMA
    edgecv_version: str = __version__
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["artifacts"] = [a.to_dict() for a in self.artifacts]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        if d.get("schema") != SCHEMA:
            raise UserError(f"manifest schema is {d.get('schema')!r}, expected {SCHEMA!r}")
        kw = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "artifacts"}
        return cls(artifacts=[ArtifactEntry.from_dict(a) for a in d.get("artifacts", [])], **kw)

    def ok_artifacts(self) -> list[ArtifactEntry]:
        """The runnable artifacts that exported (and validated) ok."""
        return [a for a in self.artifacts if a.status == "ok" and a.runtime]

    def write(self, bundle_dir: str | Path) -> Path:
        p = Path(bundle_dir) / MANIFEST
        write_json_atomic(p, self.to_dict())
        return p


def load_manifest(bundle_dir: str | Path) -> Manifest:
    p = Path(bundle_dir)
    if p.is_file() and p.name == MANIFEST:
        p = p.parent
    f = p / MANIFEST
    if not f.is_file():
        raise UserError(f"{bundle_dir}: no {MANIFEST} (not an edgecv export bundle)")
    try:
        d = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{f}: invalid JSON ({e})") from None
    return Manifest.from_dict(d)


def verify_artifact(bundle_dir: str | Path, entry: ArtifactEntry) -> None:
    """Raise UserError when a file of the artifact (main file or companion, e.g. OpenVINO's .bin) is missing or
    its sha256 differs from the manifest."""
    root = Path(bundle_dir)
    digests = {entry.file: entry.sha256, **entry.extra.get("companion_sha256", {})}
    for rel in dict.fromkeys([*entry.files(), *digests]):
        f = root / rel
        if not f.is_file():
            raise UserError(f"{f}: listed in the manifest but missing")
        if digests.get(rel) and sha256_file(f) != digests[rel]:
            raise UserError(f"{f}: sha256 does not match the manifest (modified or corrupt artifact)")


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
