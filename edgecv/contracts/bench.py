"""The bench contract: the result ``edgecv bench`` writes and ``gate`` / ``serve --bench-json`` read.

Schema ``edgecv.bench/2`` (JSON Schema: ``contracts/schemas/bench.schema.json``): a :class:`BenchReport` with one
:class:`BenchRow` per artifact of the bundle. Both are frozen records whose ``to_dict()`` is the JSON shape, key
for key and in order, and whose ``from_dict()`` reads it back unchanged (keys a newer writer added are kept in
``extra``). The nested blocks (``latency``, ``primary``, ``accuracy``, ``verdict``...) stay the plain JSON objects
the schema describes.

:func:`load_bench` is the one reader: a missing or unreadable file, bad JSON, another schema, or a file that does
not follow its schema is a :class:`~edgecv.errors.UserError` (one line, exit 2). ``edgecv.bench/1`` files (before
per-image predictions) still load, with a note that their accuracy decisions were unpaired. :func:`write_bench` is
the one writer (schema-checked first).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from functools import cache
from pathlib import Path
from typing import Any

from edgecv.errors import UserError

SCHEMA = "edgecv.bench/2"
OLD_SCHEMAS = ("edgecv.bench/1",)  # still load, with a note
SCHEMAS = (SCHEMA, *OLD_SCHEMAS)  # current first
SCHEMA_DIR = Path(__file__).parent / "schemas"
FAILED_VALIDATION = "export validation failed"  # the note that marks an --include-failed row (never recommended)


@cache
def load_schema(name: str = "bench") -> dict:
    """A JSON Schema of :data:`SCHEMA_DIR` (``bench``, ``gate``)."""
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())


def validate(result: dict, name: str = "bench") -> None:
    """Raise ``jsonschema.ValidationError`` when ``result`` does not follow its schema. ``jsonschema`` is a
    dev/test dependency; without it only the required keys are checked (:func:`missing_keys`)."""
    try:
        import jsonschema
    except ImportError:
        missing = missing_keys(result) if name == "bench" else []
        if missing:
            raise ValueError(f"missing {', '.join(missing)}") from None
        return
    jsonschema.validate(result, load_schema(name))


def missing_keys(d: dict) -> list[str]:
    """The keys ``edgecv.bench/2`` requires that ``d`` (or one of its artifact rows) lacks."""
    s = load_schema("bench")
    out = [k for k in s["required"] if k not in d]
    for i, row in enumerate(d.get("artifacts") or []):
        if not isinstance(row, dict):
            out.append(f"artifacts[{i}] (not an object)")
            continue
        out += [f"artifacts[{i}].{k}" for k in s["$defs"]["artifact"]["required"] if k not in row]
    return out


def _known(cls, d: dict) -> tuple[dict, dict]:
    names = [f.name for f in fields(cls) if f.name != "extra"]
    return {k: d[k] for k in names if k in d}, {k: v for k, v in d.items() if k not in names}


def _out(rec, convert: dict) -> dict:
    d = {f.name: getattr(rec, f.name) for f in fields(rec) if f.name != "extra"}
    for k, fn in convert.items():
        d[k] = fn(d[k])
    return {**d, **rec.extra}


@dataclass(frozen=True)
class BenchRow:
    """One artifact of a bench: what it is, whether it ran (``status``, ``reason``), where (``measured_on``,
    ``device``, ``host_proxy``), its latency per (threads, batch) and primary figures, accuracy and verdicts."""

    name: str
    file: str | None = None
    format: str = ""
    precision: str = ""
    runtime: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    status: str = "ok"  # ok | skipped | error | invalid | not_exported
    reason: str | None = None
    measured_on: str | None = None
    device: str | None = None
    host_proxy: bool | None = None
    profile: str | None = None  # the target profile the row is judged against
    latency: tuple[dict, ...] = ()  # per (threads, batch): LatencyStats.to_dict() + threads
    primary: dict | None = None  # threads, batch, p50_ms, p90_ms, fps at the first threads and batch
    throughput: dict | None = None
    accuracy: dict | None = None  # bench.accuracy.evaluate_runner's dict
    accuracy_decision: dict | None = None
    verdict: dict | None = None  # targets.budget.Verdict.to_dict()
    notes: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict, compare=False)  # keys this version does not know, kept as read

    @property
    def measured(self) -> bool:
        """Timed here: status ok with primary figures."""
        return self.status == "ok" and bool(self.primary)

    @property
    def failed_validation(self) -> bool:
        """Benched with --include-failed although its export validation failed (never recommended)."""
        return any(n.startswith(FAILED_VALIDATION) for n in self.notes)

    @property
    def top1(self) -> float | None:
        return self.accuracy["top1"] if self.accuracy else None

    def with_notes(self, *notes: str) -> BenchRow:
        return replace(self, notes=(*self.notes, *notes)) if notes else self

    def to_dict(self) -> dict:
        return _out(self, {"latency": list, "notes": list})

    @classmethod
    def from_dict(cls, d: dict) -> BenchRow:
        known, extra = _known(cls, d)
        known["latency"] = tuple(known.get("latency") or ())
        known["notes"] = tuple(known.get("notes") or ())
        return cls(**known, extra=extra)


@dataclass(frozen=True)
class BenchReport:
    """The bench result: settings, host, target and budget, the rows, and the deploy decision made on them."""

    artifacts: tuple[BenchRow, ...]
    schema: str = SCHEMA
    edgecv_version: str | None = None
    created: str | None = None
    bundle: str | None = None
    bundle_target: str | None = None
    source: dict | None = None
    target: str | None = None
    target_hardware: str | None = None
    host: str | None = None
    machine: str | None = None
    settings: dict = field(default_factory=dict)
    budget: dict | None = None
    accuracy_set: dict | None = None
    recommended: dict = field(default_factory=dict)  # {target: {"name", "reason"} | None}
    precision_comparison: list = field(default_factory=list)
    int8_vs_onnx_fp32: dict | None = None
    notes: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict, compare=False)

    _ORDER = ("schema", "edgecv_version", "created", "bundle", "bundle_target", "source", "target", "target_hardware",
              "host", "machine", "settings", "budget", "accuracy_set", "artifacts", "recommended",
              "precision_comparison", "int8_vs_onnx_fp32", "notes")  # the JSON's key order

    def row(self, name: str) -> BenchRow | None:
        return next((r for r in self.artifacts if r.name == name), None)

    def to_dict(self) -> dict:
        d = _out(self, {"artifacts": lambda rs: [r.to_dict() for r in rs], "notes": list})
        return {**{k: d[k] for k in self._ORDER}, **self.extra}

    @classmethod
    def from_dict(cls, d: dict) -> BenchReport:
        known, extra = _known(cls, d)
        known["artifacts"] = tuple(BenchRow.from_dict(r) for r in known.get("artifacts") or ())
        known["notes"] = tuple(known.get("notes") or ())
        return cls(**known, extra=extra)


def load_bench(path: str | Path, what: str = "bench JSON") -> tuple[BenchReport, list[str]]:
    """The bench result in ``path`` (any schema of :data:`SCHEMAS`) and its notes (one line for a file that
    predates paired accuracy decisions). Bad input is a :class:`~edgecv.errors.UserError` (exit 2)."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{what} {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{what} {path}: not readable JSON ({e})") from None
    found = d.get("schema") if isinstance(d, dict) else None
    if found not in SCHEMAS:
        raise UserError(f"{what} {path}: not an edgecv bench JSON (schema {found!r}; expected "
                        f"{' or '.join(SCHEMAS)}, as edgecv bench --json writes)")
    if found == SCHEMA:
        _check(d, path, what)
    rows = d.get("artifacts", [])
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("name"), str) for r in rows):
        raise UserError(f"{what} {path}: artifacts is not a list of named rows")
    notes = []
    if found in OLD_SCHEMAS:
        notes.append(f"{path.name} is an {found} file: its accuracy decisions were unpaired (top-1 percentages "
                     "against a fixed margin, no per-image predictions); re-run edgecv bench for paired ones")
    return BenchReport.from_dict(d), notes


def _check(d: dict, path: Path, what: str) -> None:
    try:
        validate(d)
    except Exception as e:  # noqa: BLE001 - jsonschema.ValidationError, or the required-keys check
        where = "/".join(str(p) for p in getattr(e, "absolute_path", ()))
        msg = str(getattr(e, "message", e)).splitlines()[0][:200]
        raise UserError(f"{what} {path}: does not follow {SCHEMA}: {msg}" + (f" (at {where})" if where else "")) from None


def write_bench(report: BenchReport | dict[str, Any], path: str) -> None:
    """Write ``report`` as JSON to ``path`` ('-' = stdout), atomically, after checking it against its schema."""
    from edgecv.utils import dumps_json, write_text_atomic

    d = report.to_dict() if isinstance(report, BenchReport) else report
    validate(d)
    if path == "-":
        print(dumps_json(d), flush=True)
    else:
        write_text_atomic(path, dumps_json(d) + "\n")
