#!/usr/bin/env python
"""Transfer (issue 13): a backbone trained on cifar10-mini, fine-tuned on hymenoptera, vs hymenoptera from scratch.

    flock /tmp/edgecv-heavy.lock .venv/bin/python benchmarks/transfer.py \
        [--source ~/.cache/edgecv/cifar10-mini] [--target ~/.cache/edgecv/hymenoptera] \
        [--source-size 32] [--source-epochs 4] [--size 64] [--epochs 8] [--arch resnet18] [--out runs/transfer]

Everything goes through the real CLI (``python -m edgecv train ... --json`` and ``edgecv eval ... --json``):

1. the source: ``edgecv train --data SOURCE --arch ARCH --img-size SOURCE_SIZE --epochs SOURCE_EPOCHS``;
2. on the target, at one input size and one number of epochs, the same seed: from scratch (``--freeze none``,
   lr scale 1), and ``--init-weights source.pt`` with ``--freeze none``, ``backbone`` and ``until:<last block>``
   (the arch's "last blocks", edgecv.training.finetune.LAST_BLOCKS; the backbone at lr x 0.1, the default),
   and ``--freeze none`` with the backbone at the full lr (``--backbone-lr-scale 1``);
3. ``edgecv eval`` of each best checkpoint on the target's validation split: top-1 and balanced accuracy (the
   mean of the per-class recalls).

Prints one markdown table (val top-1, balanced accuracy, best epoch, trainable params, training wall time).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from _cli import REPO, edgecv  # benchmarks/_cli.py (the script's folder is on sys.path)


def balanced_accuracy(ev: dict) -> float | None:
    if ev.get("balanced_acc") is not None:
        return float(ev["balanced_acc"])
    per = ev.get("per_class")
    if isinstance(per, dict):
        per = list(per.values())
    recalls = [c.get("recall") for c in per or [] if isinstance(c, dict) and c.get("recall") is not None]
    return 100.0 * sum(recalls) / len(recalls) if recalls else None


def mean(v: list[float]) -> float:
    return sum(v) / len(v)


def target_row(a, common: list[str], seeds: list[int], out: Path, i: int, label: str, freeze: str,
               extra: list[str]) -> dict:
    """One target configuration, trained once per seed and evaluated on the target's val split."""
    row = {"run": label, "val_top1": [], "balanced": [], "best_epoch": [], "wall_s": [], "seeds": seeds}
    for seed in seeds:
        ck = out / f"target-{i}-{freeze.replace(':', '_')}{'-init' if extra else ''}-s{seed}.pt"
        r = edgecv("train", "--data", a.target, *common, "--seed", str(seed), "--img-size", str(a.size),
                   "--epochs", str(a.epochs), "--batch-size", str(a.batch_size), "--freeze", freeze, *extra,
                   "--out", str(ck))
        ev = edgecv("eval", str(ck), "--data", a.target)
        ft = r.get("finetune") or {}
        row["val_top1"].append(ev.get("top1", r["best_val_top1"]))
        row["balanced"].append(balanced_accuracy(ev))
        row["best_epoch"].append(r["best_epoch"])
        row["wall_s"].append(r["wall_s"])
        row["trainable"], row["lr_scale"] = ft.get("trainable_params"), ft.get("backbone_lr_scale")
        print(f"{label} seed {seed}: top-1 {row['val_top1'][-1]:.2f}", file=sys.stderr)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=str(Path.home() / ".cache/edgecv/cifar10-mini"))
    ap.add_argument("--target", default=str(Path.home() / ".cache/edgecv/hymenoptera"))
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--source-size", type=int, default=32)
    ap.add_argument("--source-epochs", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seeds", default="0", help="comma-separated seeds: every target row once per seed [0]")
    ap.add_argument("--out", default=str(REPO / "runs" / "transfer"))
    ap.add_argument("--source-checkpoint", default=None,
                    help="reuse this source checkpoint (a previous run's OUT/source.pt) instead of training it")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from edgecv.models.registry import create_model
    from edgecv.training.finetune import last_blocks

    last = last_blocks(a.arch, create_model(a.arch, 2))
    common = ["--arch", a.arch, "--device", "cpu"]
    seeds = [int(v) for v in a.seeds.split(",")]
    src = Path(a.source_checkpoint) if a.source_checkpoint else out / "source.pt"
    t0 = time.perf_counter()
    if a.source_checkpoint:
        import torch

        ck = torch.load(src, map_location="cpu", weights_only=True)
        hist = ck["meta"]["history"]
        s = {"best_val_top1": ck["metrics"]["val_top1"], "wall_s": sum(h["epoch_s"] for h in hist)}
        a.source_size, a.source_epochs = ck["preprocess"]["input_size"], len(hist)
    else:
        s = edgecv("train", "--data", a.source, *common, "--seed", "0", "--img-size", str(a.source_size), "--epochs",
                   str(a.source_epochs), "--batch-size", "64", "--out", str(src))
    print(f"source: {a.arch} on {a.source} at {a.source_size} px, {a.source_epochs} epochs: val top-1 "
          f"{s['best_val_top1']:.2f}% in {s['wall_s']:.0f} s", file=sys.stderr)
    runs = [("from scratch", "none", []),
            ("--init-weights, --freeze none", "none", ["--init-weights", str(src)]),
            ("--init-weights, --freeze none", "none", ["--init-weights", str(src), "--backbone-lr-scale", "1"]),
            ("--init-weights, --freeze backbone", "backbone", ["--init-weights", str(src)]),
            (f"--init-weights, --freeze until:{last}", f"until:{last}", ["--init-weights", str(src)])]
    rows = [target_row(a, common, seeds, out, i, label, freeze, extra) for i, (label, freeze, extra) in enumerate(runs)]
    print(f"\nsource{' (reused: ' + str(src) + ')' if a.source_checkpoint else ''}: `{a.arch}` on cifar10-mini at {a.source_size} px, {a.source_epochs} epochs, val top-1 "
          f"{s['best_val_top1']:.2f}% ({s['wall_s']:.0f} s); target: hymenoptera at {a.size} px, {a.epochs} epochs "
          f"each, batch {a.batch_size}, seeds {a.seeds}; total {time.perf_counter() - t0:.0f} s on {platform.processor() or 'cpu'}"
          "\n")
    print("| start | freeze | backbone lr x | trainable params | val top-1 % (mean) | per seed | balanced acc % (mean) "
          "| best epoch | train s (mean) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (label, freeze, _), r in zip(runs, rows, strict=True):
        bal = [x for x in r["balanced"] if x is not None]
        bal_s = f"{sum(bal) / len(bal):.2f}" if bal else "-"
        print(f"| {label.split(',')[0]} | {freeze} | {r['lr_scale']:g} | {r['trainable']:,} | {mean(r['val_top1']):.2f} | "
              f"{', '.join(f'{v:.2f}' for v in r['val_top1'])} | {bal_s} | {', '.join(map(str, r['best_epoch']))} | "
              f"{mean(r['wall_s']):.1f} |")
    (out / "transfer.json").write_text(json.dumps({"args": vars(a), "source": s, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
