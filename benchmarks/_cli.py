"""Shared by the benchmark scripts: run one ``edgecv`` command of this checkout and return its ``--json`` output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def edgecv(*args: str, cwd: Path = REPO, json_args: tuple[str, ...] = ("--json",)) -> dict:
    """``cwd``: the checkout whose ``edgecv`` package runs (``python -m`` imports it from there first);
    ``json_args``: how the command is asked for JSON on stdout (``edgecv bench``: ``("--json", "-")``)."""
    cmd = [sys.executable, "-m", "edgecv", *args, *json_args, "--quiet"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=str(cwd))
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return json.loads(p.stdout)
