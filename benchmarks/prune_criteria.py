#!/usr/bin/env python
"""What a structured cut itself costs, per pruning criterion: one distilled student, cut to a MAC fraction in one
round, BatchNorm re-estimated, val top-1 before any fine-tune (issue 24: pruning a pretrained network).

    flock /tmp/edgecv-heavy.lock .venv/bin/python benchmarks/prune_criteria.py \
        --run ~/.cache/edgecv/runs/imagenet_start/compress-s0/run --fraction 0.5 [--fractions 0.875,0.75,0.5] \
        [--criteria magnitude,taylor,magnitude-hidden,taylor-hidden,...]

``--run`` is an ``edgecv compress`` run folder with a finished distill stage (its config.yaml names the data and the
teacher). Criteria: ``magnitude`` / ``taylor`` are edgecv's ``--importance`` choices as ``edgecv compress`` prunes
(every prunable channel group, the same ratio per layer); ``-hidden`` keeps the residual stream (every block's
output channels, the stem and the head) and prunes only the blocks' inner (expanded) channels; ``-global`` ranks
the groups' channels across layers instead of the same ratio per layer. The cut is edgecv's as it was when these
figures were taken (RESULTS: a new pruner per 5 % step of the current widths, rounded to 8); it keeps its own loop
rather than calling ``edgecv.compress.prune.prune_to_macs`` because the ``-hidden`` and ``-global`` scopes are not
edgecv options (``-hidden`` also keeps the stem and the head, which ``--prune-scope inner`` cuts). Taylor's
gradients are the KD loss's (teacher logits at T, alpha as the run's config) on 8 training batches, as edgecv
computes them.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from edgecv.compress.prune import IMPORTANCES, ignored_layers, recalibrate_bn
from edgecv.data.datasets import load_train_val
from edgecv.models.checkpoint import load_checkpoint
from edgecv.nn.graph import count_macs
from edgecv.training.loop import evaluate_top1


def batches(ds, n: int, bs: int, seed: int):
    loader = torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(seed))
    for i, b in enumerate(loader):
        if i >= n:
            return
        yield b


def residual_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose output channels are the residual stream, the stem or the head's features."""
    keep = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.groups == 1 and (
                name.endswith("conv_pwl") or name in ("conv_stem", "conv_head") or name == "blocks.0.0.conv_pw"):
            keep.append(m)
    return keep


def cut(model, criterion: str, fraction: float, size: int, n_cls: int, grad_fn, step: float = 0.05) -> int:
    import torch_pruning as tp

    base, _, scope = criterion.partition("-")
    assert base in IMPORTANCES, base
    target = fraction * count_macs(model, size)
    macs = count_macs(model, size)
    while macs > target:
        model.eval()
        ignored = ignored_layers(model, n_cls, min_channels=16)  # as edgecv compress: the head, the floor
        if scope == "hidden":
            ignored += residual_layers(model)
        imp = tp.importance.GroupMagnitudeImportance(p=2) if base == "magnitude" else tp.importance.GroupTaylorImportance()
        pruner = tp.pruner.BasePruner(model, torch.randn(2, 3, size, size), importance=imp, pruning_ratio=step,
                                      iterative_steps=1, global_pruning=scope == "global", ignored_layers=ignored,
                                      round_to=8)
        if base == "taylor":
            model.zero_grad(set_to_none=True)
            grad_fn(model)
        pruner.step()
        model.zero_grad(set_to_none=True)
        new = count_macs(model, size)
        if new >= macs:
            raise SystemExit(f"{criterion}: stalled at {macs:,} MACs")
        macs = new
    return macs


def distilled_run(path: str):
    """A compress run folder with a finished distill stage: (its config, distill.pt, the data bundle, train set with
    the training transform, val set with the eval transform)."""
    run = Path(path).expanduser()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    ck = load_checkpoint(run / "distill.pt")
    b = load_train_val(cfg["data"], cfg["img_size"], seed=cfg["seed"], preprocess=ck.preprocess)
    return (cfg, ck, b, b.train.with_transform(ck.preprocess.train_transform()),
            b.val.with_transform(ck.preprocess.eval_transform()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--fractions", default="0.5")
    ap.add_argument("--criteria", default="magnitude,taylor,magnitude-hidden,taylor-hidden,taylor-global")
    ap.add_argument("--bn-batches", type=int, default=32)
    a = ap.parse_args()
    cfg, ck, b, train, val = distilled_run(a.run)
    teacher = load_checkpoint(cfg["teacher"]).build().eval()
    size = cfg["img_size"]
    n_cls, T, alpha, bs = len(b.class_names), cfg["temperature"], cfg["alpha"], cfg["batch_size"]

    def grad_fn(m: nn.Module) -> None:
        m.train()
        for x, y in batches(train, 8, bs, cfg["seed"]):
            with torch.no_grad():
                t = teacher(x)
            s = m(x)
            kd = F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), log_target=True,
                          reduction="batchmean") * T * T
            (alpha * kd + (1 - alpha) * F.cross_entropy(s, y)).backward()
        m.eval()

    base = ck.build()
    base_macs = count_macs(base, size)
    top1, _ = evaluate_top1(base, val, 64, torch.device("cpu"), desc="distilled")
    print(f"distilled student: {base_macs:,} MACs, val top-1 {top1:.2f} % ({len(val)} images)")
    print("| criterion | MAC fraction | MACs | val top-1 after the cut % | after BatchNorm re-estimation % | s |")
    print("|---|---|---|---|---|---|")
    for frac in [float(f) for f in a.fractions.split(",")]:
        for crit in a.criteria.split(","):
            t0 = time.time()
            m = copy.deepcopy(base)
            torch.manual_seed(cfg["seed"])
            macs = cut(m, crit, frac, size, n_cls, grad_fn)
            raw, _ = evaluate_top1(m, val, 64, torch.device("cpu"), desc="cut")
            recalibrate_bn(m, batches(train, a.bn_batches, bs, cfg["seed"]))
            bn, _ = evaluate_top1(m, val, 64, torch.device("cpu"), desc="bn")
            print(f"| {crit} | {frac} | {macs:,} ({macs / base_macs:.3f}) | {raw:.2f} | {bn:.2f} | "
                  f"{time.time() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
