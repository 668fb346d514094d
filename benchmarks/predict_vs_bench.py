#!/usr/bin/env python
"""`edgecv predict` on an ImageFolder split reproduces, per artifact, the top-1 `edgecv bench --data` reported.

    .venv/bin/python benchmarks/predict_vs_bench.py BUNDLE BENCH_JSON VAL_DIR

For every artifact bench measured with accuracy, runs ``edgecv predict BUNDLE VAL_DIR --artifact NAME --json``
(the files, found recursively; the true class is the image's class folder) and prints predict's top-1 next to
bench's. Exit 1 when any pair differs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def main() -> int:
    bundle, bench_json, val = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]).resolve()
    bench = json.loads(bench_json.read_text())
    rc = 0
    print("| artifact | bench top-1 % (n) | predict top-1 % (n) | same |\n|---|---|---|---|")
    for a in bench["artifacts"]:
        if not a.get("accuracy"):
            continue
        p = subprocess.run([sys.executable, "-m", "edgecv", "predict", bundle, str(val), "--artifact", a["name"],
                            "--json", "--quiet", "--topk", "1"], capture_output=True, text=True)
        if p.returncode != 0:
            print(f"| {a['name']} | {a['accuracy']['top1']:.2f} | predict exit {p.returncode}: "
                  f"{p.stderr.strip()[-200:]} | no |")
            rc = 1
            continue
        rows = json.loads(p.stdout)["predictions"]
        correct = sum(Path(r["file"]).resolve().parent.name == r["label"] for r in rows)
        top1 = 100.0 * correct / len(rows)
        same = abs(top1 - a["accuracy"]["top1"]) < 1e-9 and len(rows) == a["accuracy"]["n"]
        rc |= 0 if same else 1
        print(f"| {a['name']} | {a['accuracy']['top1']:.2f} ({a['accuracy']['n']}) | {top1:.2f} ({len(rows)}) | "
              f"{'yes' if same else 'NO'} |")
    return rc


if __name__ == "__main__":
    sys.exit(main())
