"""INT8 vs float through the real runtimes, from an export bundle: accuracy on the validation images (as
recorded by `edgecv export`), the INT8-kernel check, and single-image latency (1 thread).

    python -m edgecv export SOURCE --target all --data DATA --num-val 2000 --out benchmarks/_work/bundle
    python benchmarks/export_int8.py benchmarks/_work/bundle [--iters 200] [--json]

Prints one row per artifact: accuracy (artifact / its torch reference), top-1 agreement, int8 kernels, p50
latency. Latency is measured here, on this host, batch 1; use `edgecv bench` for the full report.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

from edgecv.contracts.manifest import load_manifest
from edgecv.runtimes.base import RuntimeUnavailable, host_description, runner_for_entry


def latency_ms(runner, shape, iters: int) -> float:
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    runner.warmup(x, 10)
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        runner.predict(x)
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    man = load_manifest(a.bundle)
    size = man.input["shape"][-1]
    rows = []
    for e in man.artifacts:
        if not e.runtime or e.status != "ok":
            continue
        v = e.validation or {}
        row = {"artifact": e.name, "runtime": e.runtime, "n": v.get("n"), "accuracy": v.get("accuracy"),
               "torch_accuracy": v.get("reference_accuracy"), "agreement": v.get("top1_agreement"),
               "int8_kernels": v.get("int8_kernels"), "size_mb": round((e.size_bytes or 0) / 1e6, 3),
               "reference": v.get("reference")}
        try:
            r = runner_for_entry(a.bundle, e, threads=a.threads)
            row["p50_ms"] = round(latency_ms(r, (1, 3, size, size), a.iters), 3)
            r.close()
        except RuntimeUnavailable as ex:
            row["p50_ms"] = f"n/a ({ex})"
        rows.append(row)
    meta = {"bundle": a.bundle, "host": host_description(), "threads": a.threads, "iters": a.iters,
            "loadavg_1m": os.getloadavg()[0], "source": man.source.get("path"), "arch": man.source.get("arch"),
            "img_size": size}
    if a.json:
        print(json.dumps({"meta": meta, "rows": rows}, indent=2))
        return
    print(json.dumps(meta))
    print(f"{'artifact':16s} {'acc%':>7s} {'torch%':>7s} {'agree%':>7s} {'int8':>5s} {'MB':>7s} {'p50 ms':>8s}")
    for r in rows:
        print(f"{r['artifact']:16s} {r['accuracy']!s:>7s} {r['torch_accuracy']!s:>7s} {r['agreement']!s:>7s} "
              f"{str(r['int8_kernels'] if r['int8_kernels'] is not None else '-'):>5s} {r['size_mb']:>7.3f} "
              f"{r['p50_ms']!s:>8s}")


if __name__ == "__main__":
    main()
