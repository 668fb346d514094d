#!/usr/bin/env python
"""Issue 24's from-scratch standard work: a ResNet-18 teacher trained 12 epochs on cifar10-mini at 64 px, then
the default ``edgecv compress --student mobilenet_v3_small --target-macs 0.5`` of two code revisions back to back
per seed (the compress wall of each and their ratio), then ``export --target all`` and ``bench --data`` of the
last revision's run (every INT8 artifact's val top-1 and its agreement with the QAT model).

    .venv/bin/python benchmarks/standard_work.py --data ~/.cache/edgecv/cifar10-mini --seeds 0,1 \\
        --revs e7753c0,HEAD --out /tmp/standard_work

- The teacher (``--teacher``, default ``$EDGECV_CACHE/bench-teachers/cifar10-mini-resnet18-64-e12.pt``) is
  trained by this checkout's ``edgecv train`` when the file is missing.
- Each revision runs from a ``git worktree`` of it under ``--out`` (``python -m edgecv`` from there, so its own
  package is imported) with this checkout's interpreter; nothing else should run on the host meanwhile.
  ``git worktree remove DIR`` (or ``git worktree prune`` after deleting ``--out``) unregisters them afterwards.
- Every run's output stays under ``--out``; ``--out/summary.json`` has the table's rows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from _cli import REPO, edgecv  # run as a script: benchmarks/ is on sys.path

from edgecv.utils import cache_dir

TEACHER = "cifar10-mini-resnet18-64-e12.pt"
SIZE = 64


def timed(code: Path, *args: str) -> tuple[dict, float]:
    t0 = time.perf_counter()
    res = edgecv(*args, cwd=code)
    return res, time.perf_counter() - t0


def worktree(rev: str, out: Path) -> Path:
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, check=True, capture_output=True,
                         text=True).stdout.strip()
    path = out / f"code-{sha}"
    if not path.exists():
        subprocess.run(["git", "worktree", "add", "--detach", "-f", str(path), sha], cwd=REPO, check=True,
                       capture_output=True)
    return path


def int8_rows(run: Path, data: str, code: Path) -> dict:
    bundle = run.parent / f"{run.name}-bundle"
    exp = edgecv("export", str(run), "--target", "all", "--data", data, "--out", str(bundle), "--force", cwd=code)
    agree = {a["file"]: (a.get("validation") or {}).get("top1_agreement") for a in exp["artifacts"]}
    failed = [a["file"] for a in exp["artifacts"] if a["status"] not in ("ok", "skipped")]
    bench = edgecv("bench", str(bundle), "--data", data, "--include-failed", cwd=code, json_args=("--json", "-"))
    (run.parent / f"{run.name}-bench.json").write_text(json.dumps(bench, indent=1))
    int8 = {a["name"]: {"top1": (a.get("accuracy") or {}).get("top1"), "agreement": agree.get(a["file"])}
            for a in bench["artifacts"] if a["precision"] == "int8" and a["status"] == "ok"}
    return {"int8": int8, "export_failed": failed, "host": bench.get("host")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--teacher", default=None)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--revs", default="e7753c0,HEAD", help="comma-separated; the first is the wall reference")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    teacher = Path(a.teacher or cache_dir() / "bench-teachers" / TEACHER).expanduser()
    if not teacher.exists():
        teacher.parent.mkdir(parents=True, exist_ok=True)
        edgecv("train", "--data", a.data, "--arch", "resnet18", "--img-size", str(SIZE), "--epochs", "12",
               "--batch-size", "64", "--seed", "0", "--out", str(teacher))
    revs = [r.strip() for r in a.revs.split(",") if r.strip()]
    codes = {r: worktree(r, out) for r in revs}
    rows = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        walls = {}
        for rev in revs:
            run = out / f"{codes[rev].name.removeprefix('code-')}-s{seed}"
            res, wall = timed(codes[rev], "compress", "--teacher", str(teacher), "--data", a.data,
                              "--img-size", str(SIZE), "--student", "mobilenet_v3_small", "--target-macs", "0.5",
                              "--seed", str(seed), "--out", str(run))
            walls[rev] = wall
            st = res["stages"]
            row = {"rev": rev, "seed": seed, "wall_s": round(wall, 1),
                   "wall_ratio": round(wall / walls[revs[0]], 2),
                   "teacher": res["teacher"].get("val_top1"),
                   **{s: st[s].get("val_top1") for s in ("distill", "prune", "quantize")},
                   "macs_fraction": st["prune"].get("macs_fraction"),
                   "soft_labels_built": res.get("teacher_cache", {}).get("built")}
            if rev == revs[-1]:
                t, q = res["teacher"].get("per_class_recall") or {}, st["quantize"].get("per_class_recall") or {}
                row["worst_class_vs_teacher"] = min(((round(q[c] - t[c], 2), c) for c in t if c in q), default=None)
                row.update(int8_rows(run, a.data, codes[rev]))
            rows.append(row)
            print(json.dumps(row), flush=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
