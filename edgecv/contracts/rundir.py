"""RUN_DIR/run.json: the contract between ``edgecv compress`` (writer) and ``edgecv export`` (reader).

Schema ``edgecv.run/1``: ``{"schema", "config", "stages": {name: {"status", "checkpoint", ...}}, "completed"}``;
the stages run in ``STAGES`` order, each from the checkpoint of ``STAGE_INPUT[name]``. Every mutation is written
atomically, by rank 0 only under torchrun. The stage names and their epoch bookkeeping live here: everything else
reads ``DISTILL``/``PRUNE``/``QUANTIZE``, ``STAGES``, :func:`epoch_base` and :func:`float_inputs`.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgecv import distributed as D
from edgecv.errors import UserError
from edgecv.utils import write_json_atomic

SCHEMA = "edgecv.run/1"
DISTILL, PRUNE, QUANTIZE = "distill", "prune", "quantize"
STAGES = (DISTILL, PRUNE, QUANTIZE)
STAGE_INPUT = {DISTILL: None, PRUNE: DISTILL, QUANTIZE: PRUNE}
QUANTIZED = (QUANTIZE,)  # the stages whose checkpoint is a QAT model (export also wants a float one)


def epoch_base(stage: str, epochs: dict[str, int]) -> int:
    """The first epoch of ``stage`` in the whole run: the epochs of every stage before it (``epochs``: each
    stage's count), so each stage draws new shuffles, augmentations and stored views (TrainConfig.epoch_base)."""
    return sum(epochs[s] for s in STAGES[:STAGES.index(stage)])


def float_inputs(stage: str) -> list[str]:
    """The float stages a quantized ``stage`` was built from, nearest first (none for a float stage)."""
    out, s = [], STAGE_INPUT[stage] if stage in QUANTIZED else None
    while s is not None:
        out.append(s)
        s = STAGE_INPUT[s]
    return out


class Run:
    """RUN_DIR and its run.json; every mutation is written atomically (rank 0 only)."""

    def __init__(self, out: Path, data: dict):
        self.out = out
        self.data = data

    @property
    def path(self) -> Path:
        return self.out / "run.json"

    @classmethod
    def load(cls, out: Path) -> Run | None:
        p = out / "run.json"
        if not p.is_file():
            return None
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{p}: unreadable run.json ({e})") from None
        if d.get("schema") != SCHEMA:
            raise UserError(f"{p}: not an edgecv run (schema {d.get('schema')!r}, expected {SCHEMA})")
        return cls(out, d)

    def save(self) -> None:
        if D.is_main():
            write_json_atomic(self.path, self.data)

    def stage(self, name: str) -> dict:
        return self.data["stages"].setdefault(name, {"status": "pending"})

    def set_stage(self, name: str, **kw) -> None:
        self.stage(name).update(kw)
        done = [s for s in STAGES if self.data["stages"].get(s, {}).get("status") == "done"]
        self.data["completed"] = done
        self.save()

    def reset_stage(self, name: str) -> None:
        self.data["stages"][name] = {"status": "pending"}
        self.set_stage(name)

    def done(self, name: str) -> bool:
        st = self.data["stages"].get(name, {})
        return st.get("status") == "done" and (self.out / st.get("checkpoint", "")).is_file()
