"""RUN_DIR/run.json: the contract between ``edgecv compress`` (writer) and ``edgecv export`` (reader).

Schema ``edgecv.run/1``: ``{"schema", "config", "stages": {name: {"status", "checkpoint", ...}}, "completed"}``;
the stages run in ``STAGES`` order, each from the checkpoint of ``STAGE_INPUT[name]``. Every mutation is written
atomically, by rank 0 only under torchrun.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgecv import distributed as D
from edgecv.errors import UserError
from edgecv.utils import write_json_atomic

SCHEMA = "edgecv.run/1"
STAGES = ("distill", "prune", "quantize")
STAGE_INPUT = {"distill": None, "prune": "distill", "quantize": "prune"}


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
