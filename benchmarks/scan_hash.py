"""What the content hash (duplicate check, issue 25) costs in the data scan of a real folder dataset.

The scan reads every file once; the same bytes are hashed (SHA-256) and decoded (JPEGs at 1/8 scale). This
times ``load_train_val`` end to end (list + read + hash + decode + checks) and reports the hashing share,
measured inside the scan (``ScanReport.hash_s``), plus a read-only pass over the same files for scale.

    python benchmarks/scan_hash.py ~/.cache/edgecv/cifar10-mini ~/.cache/edgecv/hymenoptera --repeat 3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from edgecv.data.datasets import load_train_val


def measure(root: str, repeat: int) -> dict:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        b = load_train_val(root)
        wall = time.perf_counter() - t0
        runs.append((wall, b.scan.hash_s, b.scan.hashed))
    files = [p for p, _ in b.train.samples + b.val.samples]
    t0 = time.perf_counter()
    nbytes = sum(len(Path(p).read_bytes()) for p in files)
    read_s = time.perf_counter() - t0
    wall, hash_s, hashed = min(runs)  # the least disturbed run (shared host)
    return {"data": root, "files": hashed, "mb": round(nbytes / 1e6, 1), "scan_s": round(wall, 3),
            "hash_s": round(hash_s, 4), "hash_share_pct": round(100 * hash_s / wall, 2),
            "hash_us_per_file": round(1e6 * hash_s / max(hashed, 1), 2), "read_only_s": round(read_s, 3),
            "all_scan_s": [round(r[0], 3) for r in runs], "skipped_types": b.scan.skipped_types}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roots", nargs="+")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    for r in a.roots:
        print(json.dumps(measure(r, a.repeat)))


if __name__ == "__main__":
    main()
