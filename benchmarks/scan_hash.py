"""What the content hash (duplicate check, issue 25) costs in the data scan of a real folder dataset.

The scan reads every file once; the same bytes are hashed (SHA-256) and decoded (JPEGs at 1/8 scale). This
times ``load_train_val`` end to end (list + read + hash + decode + checks) and reports the hashing share,
measured inside the scan (``ScanReport.hash_s``), plus a read-only pass over the same files for scale.

    python benchmarks/scan_hash.py ~/.cache/edgecv/cifar10-mini ~/.cache/edgecv/hymenoptera --repeat 3
    python benchmarks/scan_hash.py ~/.cache/edgecv/hymenoptera --compare-hashes   # hashlib digests, in memory
"""

from __future__ import annotations

import argparse
import hashlib
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


def compare_hashes(root: str, repeat: int) -> dict:
    """Best-of-``repeat`` time of each hashlib digest over every file's bytes (already in memory)."""
    blobs = [p.read_bytes() for p in sorted(Path(root).expanduser().rglob("*")) if p.is_file()]
    out = {"data": root, "files": len(blobs), "mb": round(sum(map(len, blobs)) / 1e6, 1)}
    for name in ("sha256", "sha1", "md5", "blake2b"):
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            for b in blobs:
                hashlib.new(name, b).digest()
            best = min(best, time.perf_counter() - t0)
        out[f"{name}_ms"] = round(1e3 * best, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roots", nargs="+")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--compare-hashes", action="store_true", help="Time hashlib digests instead of the scan.")
    a = ap.parse_args()
    for r in a.roots:
        print(json.dumps(compare_hashes(r, a.repeat) if a.compare_hashes else measure(r, a.repeat)))


if __name__ == "__main__":
    main()
