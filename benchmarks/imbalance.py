#!/usr/bin/env python
"""Class imbalance (issue 13): ``--balance none | sampler | weights`` and ``--loss focal`` on a 10:1 skewed set.

    flock /tmp/edgecv-heavy.lock .venv/bin/python benchmarks/imbalance.py \
        [--source ~/.cache/edgecv/cifar10-mini] [--out /tmp/edgecv-imbalance] [--major 500] [--minor 50] \
        [--arch resnet18] [--size 32] [--epochs 4] [--seed 0]

1. builds the skewed data set OUTSIDE the repository (``--out``/data): of cifar10-mini's ten classes, the first
   five keep ``--major`` training images and the last five ``--minor`` (a seeded choice per class; files copied,
   not linked); ``val/`` is copied whole, so it stays balanced;
2. trains with the real CLI (``python -m edgecv train ... --json``), same arch, size, epochs, seed and
   augmentation for every variant: ``--balance none``, ``sampler``, ``weights``, and ``--loss focal``;
3. scores each best checkpoint with ``edgecv eval --json`` on the balanced ``val/``.

Prints one markdown table: top-1, balanced accuracy (mean per-class recall), macro-F1, minority-class mean
recall, training wall time.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import sys
import time
from pathlib import Path

from _cli import REPO, edgecv  # benchmarks/_cli.py (the script's folder is on sys.path)

VARIANTS = [("none", ["--balance", "none"]), ("sampler", ["--balance", "sampler"]),
            ("weights", ["--balance", "weights"]), ("focal", ["--balance", "none", "--loss", "focal"])]


def build_skewed(source: Path, dest: Path, major: int, minor: int, seed: int) -> dict[str, int]:
    """Copy a skewed train/ and the whole val/ of ``source`` into ``dest`` (rebuilt from scratch)."""
    if not (source / "train").is_dir() or not (source / "val").is_dir():
        raise SystemExit(f"{source}: expected train/ and val/ (cifar10-mini)")
    if dest.exists():
        shutil.rmtree(dest)
    classes = sorted(d.name for d in (source / "train").iterdir() if d.is_dir())
    rng = random.Random(seed)
    kept = {}
    for i, c in enumerate(classes):
        files = sorted(p for p in (source / "train" / c).iterdir() if p.is_file())
        n = major if i < len(classes) // 2 else minor
        (dest / "train" / c).mkdir(parents=True)
        for f in rng.sample(files, min(n, len(files))):
            shutil.copy2(f, dest / "train" / c / f.name)
        kept[c] = min(n, len(files))
    shutil.copytree(source / "val", dest / "val")
    return kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default=str(Path.home() / ".cache" / "edgecv" / "cifar10-mini"))
    ap.add_argument("--out", default="/tmp/edgecv-imbalance")
    ap.add_argument("--major", type=int, default=500)
    ap.add_argument("--minor", type=int, default=50)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--augment", default="light")
    a = ap.parse_args()
    out = Path(a.out).expanduser()
    if REPO in out.resolve().parents or out.resolve() == REPO:
        raise SystemExit(f"--out {out} is inside the repository; pick a folder outside it")
    data = out / "data"
    kept = build_skewed(Path(a.source).expanduser(), data, a.major, a.minor, a.seed)
    minority = [c for c, n in kept.items() if n == min(kept.values())]
    print(f"data: {data} (train per class: {kept}; val: balanced, copied whole)", file=sys.stderr)
    rows = []
    for name, flags in VARIANTS:
        ck = out / f"{name}.pt"
        t0 = time.perf_counter()
        tr = edgecv("train", "--data", str(data), "--arch", a.arch, "--img-size", str(a.size), "--epochs",
                    str(a.epochs), "--seed", str(a.seed), "--augment", a.augment, *flags, "--out", str(ck))
        wall = time.perf_counter() - t0
        ev = edgecv("eval", str(ck), "--data", str(data), "--no-per-class")
        recall = {c: ev["per_class"][c]["recall"] for c in ev["per_class"]}
        rows.append({"variant": name, "flags": " ".join(flags), "top1": ev["top1"], "balanced": ev["balanced_acc"],
                     "macro_f1": ev["macro_f1"], "minor_recall": 100 * sum(recall[c] for c in minority) / len(minority),
                     "best_epoch": tr["best_epoch"], "train_wall_s": tr["wall_s"], "wall_s": wall,
                     "split": ev["data_split"], "n": ev["n"]})
        print(f"{name}: top-1 {ev['top1']:.2f} balanced {ev['balanced_acc']:.2f} macro-F1 {ev['macro_f1']:.2f} "
              f"({wall:.0f}s)", file=sys.stderr)
    print(f"\n{a.arch} at {a.size}px, {a.epochs} epochs, --augment {a.augment}, seed {a.seed}; train "
          f"{a.major} images x 5 classes + {a.minor} x 5 (minority: {', '.join(minority)}); eval on "
          f"{rows[0]['split']} ({rows[0]['n']} images, balanced); host {platform.processor() or platform.machine()}\n")
    print("| variant | flags | val top-1 % | balanced acc % | macro-F1 % | minority recall % | best epoch | train wall s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | `{r['flags']}` | {r['top1']:.2f} | {r['balanced']:.2f} | {r['macro_f1']:.2f} | "
              f"{r['minor_recall']:.2f} | {r['best_epoch']} | {r['train_wall_s']:.0f} |")
    (out / "imbalance.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
