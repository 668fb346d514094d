"""``edgecv train``: train a classifier (usually the teacher) with the one training loop."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from edgecv import distributed as D
from edgecv.data.augment import resolve_preset
from edgecv.data.cache import attach as attach_decode_cache
from edgecv.data.datasets import load_train_val, resolve_data
from edgecv.data.preprocess import Preprocess
from edgecv.errors import UserError
from edgecv.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from edgecv.models.pretrained import starting_model, weights_preprocess
from edgecv.models.registry import arch_info
from edgecv.nn.graph import count_macs, count_params
from edgecv.training.config import TrainConfig
from edgecv.training.finetune import apply_policy, parse_freeze
from edgecv.training.loop import FitResult, fit, resolve_batch_size
from edgecv.training.metrics import learned_record
from edgecv.utils import cache_dir, resolve_device, seed_everything, sha256_file


@dataclass
class TrainOutcome:
    checkpoint: Path
    arch: str
    fit: FitResult
    num_classes: int
    params: int
    macs: int
    data: str
    finetune: dict | None = None
    decode_cache: dict | None = None  # edgecv.data.cache.attach's record
    data_scan: dict | None = None  # edgecv.data.scan.ScanReport: skipped files, duplicates kept
    judged: dict | None = None  # {"learned", "baseline"} of the best epoch (training.metrics.learned_record)

    def to_dict(self) -> dict:
        return {
            "checkpoint": str(self.checkpoint),
            "arch": self.arch,
            "data": self.data,
            "num_classes": self.num_classes,
            "params": self.params,
            "macs": self.macs,
            "best_val_top1": round(self.fit.best_top1, 3),
            "best_epoch": self.fit.best_epoch,
            "last_val_top1": round(self.fit.last_top1, 3),
            **(self.judged or {"learned": None, "baseline": None}),
            "wall_s": round(self.fit.wall_s, 2),
            "effective_batch": self.fit.effective_batch,
            "world_size": self.fit.world_size,
            "history": self.fit.history,
            "finetune": self.finetune,
            "decode_cache": self.decode_cache,
            "data_scan": self.data_scan,
        }


@dataclass(frozen=True)
class StartWeights:
    """What training starts from (``--pretrained`` / ``--init-weights``) and the fine-tuning policy."""

    pretrained: bool = False
    init_weights: str | None = None
    trust_pickle: bool = False
    freeze: str = "auto"  # auto | none | backbone | until:LAYER (edgecv.training.finetune)
    backbone_lr_scale: float | None = None  # None: training.finetune.default_backbone_lr_scale


def train_classifier(
    data: str,
    arch: str,
    out: str | Path,
    cfg: TrainConfig,
    img_size: int | None = None,
    skip_bad: bool = False,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
    start: StartWeights | None = None,
    decode_cache: str = "auto",
    allow_duplicates: bool = False,  # with skip_bad: edgecv.data.scan.ScanReport
) -> TrainOutcome:
    """Train ``arch`` on ``data`` into the checkpoint ``out``; ``start``: pretrained / init weights and the fine-tuning
    policy (default: from scratch, everything trains); ``decode_cache``: auto | off (:mod:`edgecv.data.cache`)."""
    arch_info(arch)  # validate early: a bad arch, value or device is one line before anything is logged
    cfg.validate()
    resolve_device(cfg.device)
    start = start or StartWeights()
    parse_freeze(start.freeze)
    out = Path(out)
    state = out.with_name(out.name + ".state")
    if resume and not D.broadcast_object(state.is_file() if D.is_main() else None):
        raise UserError(f"--resume: no {state} to resume (run without --resume to start from scratch)")
    bundle = load_train_val(data, img_size=img_size, seed=cfg.seed, skip_bad=skip_bad, allow_duplicates=allow_duplicates)
    bundle.scan.log(log)
    if cfg.epochs < 1:  # after the data checks: those still report on a bad data tree
        raise UserError(f"--epochs {cfg.epochs}: no epoch to train, nothing written (give --epochs >= 1)")
    # the same seed on every rank: the same initial weights (DDP broadcasts rank 0's too); reproducible
    seed_everything(cfg.seed)
    model, source = starting_model(arch, bundle.num_classes, start.pretrained, start.init_weights,
                                   bundle.class_names, start.trust_pickle, log)
    pre = weights_preprocess(bundle.preprocess, source, img_size)
    pre = bundle.preprocess = pre.with_augment(resolve_preset(cfg.augment, pre.input_size))
    cfg = replace(cfg, augment=pre.augment)  # the loop adds MixUp/CutMix for "strong"; recorded in the meta
    cfg = replace(cfg, batch_size=resolve_batch_size(cfg.batch_size, len(bundle.train), log))
    if log:
        log(f"augmentation: {pre.augment} at {pre.input_size}px; balance {cfg.balance}; loss {cfg.loss}")
    cache_rec = attach_decode_cache(bundle, decode_cache, log)  # after the final preprocessing
    train_ds = bundle.train.with_transform(pre.train_transform())
    val_ds = bundle.val.with_transform(pre.eval_transform())
    macs = count_macs(model, pre.input_size)
    policy, params = apply_policy(model, start.freeze, len(bundle.train), source and source.to_dict(),
                                  start.backbone_lr_scale, log)
    meta = {"train_config": cfg.to_dict(), "finetune": policy.to_dict(), "data_scan": bundle.scan.to_dict()}

    def on_best(m, metrics):
        save_checkpoint(out, m, arch, bundle.class_names, pre, metrics={**metrics, "data": bundle.source}, meta=meta)

    result = fit(model, train_ds, val_ds, cfg, state_path=state, resume=resume, on_best=on_best, params=params,
                 log=log)
    judged = learned_record(result.best_confusion, bundle.class_names)  # no better than the commonest class?
    final = {"val_top1": result.best_top1, "epoch": result.best_epoch, "data": bundle.source, **judged}
    if D.is_main():  # only rank 0 writes files; the other ranks wait at the barrier
        # the final checkpoint carries the whole history; the resume state is no longer needed
        save_checkpoint(out, model, arch, bundle.class_names, pre, metrics=final, meta={**meta, "history": result.history})
        state.unlink(missing_ok=True)
    D.barrier()
    return TrainOutcome(out, arch, result, bundle.num_classes, count_params(model), macs, bundle.source,
                        policy.to_dict(), cache_rec, bundle.scan.to_dict(), judged)


# ---------------------------------------------------------------------------------------------- loading a teacher
AUTO_TEACHER_ARCH = "resnet18"


@dataclass
class Teacher:
    model: nn.Module
    preprocess: Preprocess | None
    path: str
    sha256: str
    arch: str | None
    kind: str


class _Reorder(nn.Module):
    """Teacher logits permuted into the data's class order (edgecv teachers with the same names, other order)."""

    def __init__(self, inner: nn.Module, index: list[int]):
        super().__init__()
        self.inner = inner
        self.register_buffer("index", torch.tensor(index, dtype=torch.long))

    def forward(self, x):
        return self.inner(x).index_select(1, self.index)


def load_teacher(path: str, arch: str | None, class_names: list[str], img_size: int,
                 trust_pickle: bool = False) -> Teacher:
    ck: Checkpoint = load_checkpoint(path, arch=arch, trust_pickle=trust_pickle, arch_flag="--teacher-arch")
    n = len(class_names)
    if ck.kind == "edgecv":
        if ck.class_names != list(class_names):
            if sorted(ck.class_names) != sorted(class_names):
                extra = sorted(set(ck.class_names) ^ set(class_names))[:5]
                raise UserError(f"teacher {path} was trained on classes that do not match the data "
                                f"({ck.num_classes} vs {n}; differing: {', '.join(extra)})")
    elif ck.kind == "state_dict" and ck.num_classes != n:
        raise UserError(f"teacher {path} has {ck.num_classes} outputs but the data has {n} classes")
    model = ck.build()
    if ck.kind in ("torchscript", "pickle"):
        size = ck.preprocess.input_size if ck.preprocess else img_size
        try:
            with torch.no_grad():
                out = model(torch.zeros(2, 3, size, size))
        except Exception as e:
            raise UserError(f"teacher {path} does not run on a 3x{size}x{size} input: {str(e).splitlines()[0][:200]}") from None
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] != n:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise UserError(f"teacher {path} outputs {shape}, expected (N, {n}) logits for the data's {n} classes")
    if ck.kind == "edgecv" and ck.class_names != list(class_names):
        model = _Reorder(model, [ck.class_names.index(c) for c in class_names]).eval()
    return Teacher(model, ck.preprocess, str(path), sha256_file(path), ck.arch, ck.kind)


def auto_teacher(cfg, log: Callable[[str], None]) -> str:
    """Train (or reuse from the cache) the default teacher for ``cfg.data``; returns its path."""
    kind, root = resolve_data(cfg.data)
    key_src = {"v": 1, "data": cfg.data if kind == "builtin" else str(Path(root).resolve()),
               "arch": AUTO_TEACHER_ARCH, "epochs": cfg.teacher_epochs, "img_size": cfg.img_size,
               "batch_size": cfg.batch_size if cfg.batch_size is not None else "auto", "lr": cfg.lr, "seed": cfg.seed}
    # augmentation / balance / loss: in the key only when not the default, so existing cached teachers stay valid
    key_src.update({k: getattr(cfg, k) for k, d in (("augment", "auto"), ("balance", "none"), ("loss", "ce"))
                    if getattr(cfg, k, d) != d})
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "teachers" / f"{AUTO_TEACHER_ARCH}-{key}.pt"
    if path.is_file():
        log(f"teacher: reusing cached {path}")
        return str(path)
    log(f"teacher: training {AUTO_TEACHER_ARCH} on {cfg.data} for {cfg.teacher_epochs} epochs (cached as {path})")
    if cfg.teacher_epochs < 1:
        raise UserError("--teacher-epochs must be >= 1 to train a teacher on the fly (or pass --teacher)")
    tmp = path.with_name(path.stem + ".partial.pt")
    tcfg = TrainConfig(epochs=cfg.teacher_epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
                       workers=cfg.workers, device=cfg.device, desc="teacher", augment=getattr(cfg, "augment", "auto"),
                       balance=getattr(cfg, "balance", "none"), loss=getattr(cfg, "loss", "ce"),
                       channels_last_cpu=getattr(cfg, "channels_last", True))
    train_classifier(cfg.data, AUTO_TEACHER_ARCH, tmp, tcfg, img_size=cfg.img_size, skip_bad=cfg.skip_bad,
                     allow_duplicates=getattr(cfg, "allow_duplicates", False), resume=D.broadcast_object(tmp.with_name(tmp.name + ".state").is_file() if D.is_main() else None),
                     log=log)
    if D.is_main():
        os.replace(tmp, path)
    D.barrier()
    return str(path)
