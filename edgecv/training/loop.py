"""The one training loop, shared by teacher training, KD, pruning fine-tune and QAT.

AdamW + cosine schedule with linear warm-up (per step), label smoothing, gradient clipping, AMP and
channels_last on CUDA, seeded, best-on-val checkpointing, resume from its own state file, NaN/inf stop,
progress bars, optional TensorBoard scalars, and DistributedDataParallel under torchrun.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgecv import distributed as D
from edgecv.errors import TrainingError, UserError
from edgecv.nn.depthwise import fast_depthwise_backward
from edgecv.training.balance import BalancedSampler, check_balance, class_weights, labels_of
from edgecv.training.config import TrainConfig
from edgecv.training.epochlog import report_epoch, tensorboard_writer
from edgecv.training.losses import ClassificationLoss, mix_batch
from edgecv.training.metrics import evaluate_classifier
from edgecv.utils import atomic_path, progress, resolve_device, seed_everything

# (logits, targets, images[, extra]): ``extra`` (a dict of tensors) only when the dataset yields a third field
LossFn = Callable[..., torch.Tensor]


@dataclass
class FitResult:
    best_top1: float
    best_epoch: int
    last_top1: float
    history: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    effective_batch: int = 0  # batch_size x world size: the batch one optimizer step sees
    world_size: int = 1
    best_confusion: list | None = None  # the best epoch's val confusion matrix (rows: true classes)
    start: dict | None = None  # ``fit(keep_start=True)``: the starting weights' val record ("epoch" 0)

    @property
    def best_metrics(self) -> dict:
        """Balanced accuracy and macro-F1 (percent) of the best epoch (None without a training epoch)."""
        recs = self.history + ([self.start] if self.start else [])
        rec = next((r for r in recs if r.get("epoch") == self.best_epoch), {})
        return {k: rec.get(k) for k in ("val_balanced_acc", "val_macro_f1")}

    @property
    def kept_start(self) -> bool:  # fit(keep_start=True) and no epoch beat the starting weights
        return self.start is not None and self.best_epoch == 0


def default_workers() -> int:
    n = os.cpu_count() or 1
    # cores are shared by the processes of *this node* (not the global world size)
    return 0 if n <= 2 else max(0, min(8, n // max(1, D.local_world_size() if D.is_distributed() else 1) - 1))


DEFAULT_BATCH = 64
MIN_STEPS = 10  # optimizer steps per epoch below which the default batch is halved (auto_batch_size)


def auto_batch_size(n_train: int, world: int = 1, default: int = DEFAULT_BATCH, floor: int = 8) -> int:
    """The default per-process batch: ``default``, halved while an epoch would have fewer than MIN_STEPS
    optimizer steps (down to ``floor``). Measured: hymenoptera's 245 images at 224 px are 3 steps an epoch at 64,
    and the student stayed at the majority class through every compress stage; at 16 (15 steps) it learned
    (benchmarks/RESULTS.md). Datasets of >= 640 images per process keep 64."""
    b = default
    while b > floor and n_train // (b * max(1, world)) < MIN_STEPS:
        b //= 2
    return b


def resolve_batch_size(batch_size: int | None, n_train: int, log: Callable[[str], None] | None = None) -> int:
    """``batch_size`` as given, or (None) :func:`auto_batch_size` of this run's training set, logged."""
    if batch_size is not None:
        return batch_size
    b = auto_batch_size(n_train, D.world_size())
    if log:
        log(f"batch size {b} per process (auto: {n_train} training images)")
    return b


def fused_ok(params: list) -> bool:
    """AdamW's fused kernel, for floating CPU/CUDA parameters (its domain): 19.3 -> 3.6 ms a step for
    mobilenet_v3_small, 68.8 -> 13.5 ms for resnet18 on this 2-core CPU (benchmarks/step_parts.py)."""
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of (epoch, rank): augmentation differs per rank and per epoch, and a resumed run replays exactly."""
    return (seed * 1_000_003 + epoch * 100_003 + rank) % (2**63)


def make_loader(ds: Dataset, batch_size: int, shuffle: bool, workers: int, seed: int, drop_last: bool = False,
                pin: bool = False, balance: bool = False):
    """Training loader. Under DDP: a DistributedSampler (same permutation on every rank, disjoint shards, equal
    batch counts so no rank waits in an all-reduce the others never join); its generator, which seeds the
    worker processes' augmentation RNG, differs per rank. Reseed ``loader.generator`` per epoch
    (:func:`epoch_seed`) for replayable epochs. ``balance``: a class-balanced :class:`BalancedSampler` instead
    (the same draw on every rank, each taking its own slice)."""
    sampler, n = None, len(ds)
    if balance:
        sampler = BalancedSampler(labels_of(ds), seed, D.rank(), D.world_size())
        n = len(sampler)
    elif D.is_distributed() and shuffle:
        from torch.utils.data.distributed import DistributedSampler

        if len(ds) < D.world_size():
            raise UserError(f"{len(ds)} training samples cannot be split over {D.world_size()} processes")
        sampler = DistributedSampler(ds, shuffle=True, seed=seed, drop_last=drop_last)
        n = len(sampler)
    g = torch.Generator().manual_seed(epoch_seed(seed, 0, D.rank()))
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=workers, drop_last=drop_last and n > batch_size, generator=g,
                      # not persistent: workers are re-forked each epoch and seeded from the per-epoch generator,
                      # so every epoch's augmentation is replayable (persistent workers keep their first seed)
                      pin_memory=pin, persistent_workers=False)


def evaluate_top1(model: nn.Module, val_ds: Dataset, batch_size: int, device: torch.device, workers: int = 0,
                  amp: bool = False, desc: str = "val") -> tuple[float, float]:
    """(top-1 %, mean CE loss) over ``val_ds``, sharded under DDP (:func:`evaluate_classifier` has the rest)."""
    m = evaluate_classifier(model, val_ds, batch_size, device, workers, amp, desc)
    return m["top1"], m["loss"]


def _lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


class _Trainer:
    """The state of one :func:`fit`: device, loader, optimizer, schedule, AMP scaler and the best weights."""

    def __init__(self, model: nn.Module, train_ds: Dataset, cfg: TrainConfig, params: list | None,
                 log: Callable[[str], None]):
        self.model, self.cfg, self.log = model, cfg, log
        device = resolve_device(cfg.device)  # one line naming the devices here
        if D.is_distributed() and device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        seed_everything(cfg.seed + D.rank())
        self.cuda = device.type == "cuda"
        self.amp = cfg.amp and self.cuda
        model.to(device)
        self.channels_last = cfg.channels_last if self.cuda else cfg.channels_last_cpu
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.workers = default_workers() if cfg.workers is None else cfg.workers
        check_balance(cfg.balance)
        self.loader = make_loader(train_ds, cfg.batch_size, True, self.workers, cfg.seed, drop_last=True,
                                  pin=self.cuda, balance=cfg.balance == "sampler")
        weight = class_weights(labels_of(train_ds)) if cfg.balance == "weights" else None
        self.crit = ClassificationLoss(cfg.loss, cfg.label_smoothing, weight)
        self.mix = cfg.augment == "strong"  # MixUp/CutMix on every batch
        steps_per_epoch = max(1, len(self.loader))
        total_steps = steps_per_epoch * max(1, cfg.epochs)
        warmup = int(round(cfg.warmup_epochs * steps_per_epoch)) if cfg.epochs > 1 else 0
        if params is None:
            params = [p for p in model.parameters() if p.requires_grad]
        groups = params if params and isinstance(params[0], dict) else [{"params": params, "lr_scale": 1.0}]
        self.trainable = [p for g in groups for p in g["params"]]
        # per group (its lr = lr x lr_scale; LambdaLR scales every group's own lr by the one schedule):
        # decay for weights, none for biases / norms
        self.opt = torch.optim.AdamW(
            [{"params": [p for p in g["params"] if (p.ndim > 1) == decay], "lr": cfg.lr * g["lr_scale"],
              "weight_decay": cfg.weight_decay if decay else 0.0, "lr_scale": g["lr_scale"]}
             for g in groups for decay in (True, False)], lr=cfg.lr, fused=fused_ok(self.trainable))
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: _lr_factor(s, total_steps, warmup, cfg.min_lr_ratio))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.start_epoch, self.best, self.best_epoch = 0, -1.0, -1
        self.best_state, self.best_confusion = None, None  # the best epoch's weights and val confusion matrix
        self.history: list[dict] = []
        self.start: dict | None = None  # keep_start: the starting weights' val record
        self.ddp_model: nn.Module = model

    def resume(self, state_path: str | Path) -> None:
        """Rank 0 reads its own state file and broadcasts it, so non-zero ranks (possibly on nodes without a
        shared filesystem) never need the file and every rank resumes from exactly the same state."""
        st = None
        if D.is_main() and Path(state_path).is_file():
            st = torch.load(state_path, map_location="cpu", weights_only=True)
        st = D.broadcast_object(st)
        if st is None:
            return
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        self.scaler.load_state_dict(st["scaler"])
        self.start_epoch, self.best, self.best_epoch = int(st["epoch"]) + 1, float(st["best"]), int(st["best_epoch"])
        self.best_state, self.best_confusion = st.get("best_state"), st.get("best_cm")
        self.history = list(st.get("history", []))
        self.start = st.get("start")
        if D.is_main():
            self.log(f"{self.cfg.desc}: resumed after epoch {self.start_epoch} "
                     f"(best top-1 {self.best:.2f} at epoch {self.best_epoch + 1})")

    def wrap_ddp(self) -> None:
        """DDP broadcasts rank 0's parameters and buffers here, so every rank starts from the same weights."""
        if D.is_distributed():
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.cuda else None)

    def train_epoch(self, epoch: int, loss_fn: LossFn | None, crit: nn.Module) -> torch.Tensor:
        """One epoch over the training loader; returns the all-reduced ``[loss sum, correct, n]``."""
        cfg = self.cfg
        # per-(epoch, rank) seeds: different augmentation on every rank, identical replay after --resume
        e = cfg.epoch_base + epoch
        seed_everything(epoch_seed(cfg.seed, e, D.rank()))
        self.loader.generator.manual_seed(epoch_seed(cfg.seed, e, D.rank()))
        if hasattr(self.loader.dataset, "set_epoch"):  # datasets that replay per-epoch choices (soft labels)
            self.loader.dataset.set_epoch(e)
        if hasattr(getattr(self.loader, "sampler", None), "set_epoch"):  # DistributedSampler, BalancedSampler
            self.loader.sampler.set_epoch(e)
        self.ddp_model.train()
        # CPU: depthwise convs on a plane smaller than their kernel take the tap-sum weight gradient (nn.depthwise)
        with fast_depthwise_backward(self.model, enabled=not self.cuda):
            return self._epoch_steps(epoch, loss_fn, crit)

    def _epoch_steps(self, epoch: int, loss_fn: LossFn | None, crit: nn.Module) -> torch.Tensor:
        cfg, device = self.cfg, self.device
        tl, tn, tc = 0.0, 0, 0
        bar = progress(self.loader, desc=f"{cfg.desc} {epoch + 1}/{cfg.epochs}")
        for step, (x, y, *extra) in enumerate(bar):
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            # a third field from the dataset (e.g. stored teacher soft labels) goes to loss_fn as its 4th argument
            ex = {k: v.to(device, non_blocking=True) for k, v in extra[0].items()} if extra else None
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            mixed = None
            if self.mix:
                if ex is not None:
                    raise UserError(f"{cfg.desc}: MixUp/CutMix ('strong') cannot use per-sample stored targets")
                x, mixed = mix_batch(x, y)
            with torch.autocast(device.type, dtype=torch.float16, enabled=self.amp):
                logits = self.ddp_model(x)
                t = y if mixed is None else mixed.soft(logits.shape[1])  # soft targets of a mixed batch
                if loss_fn is None:
                    loss = crit(logits, t)
                else:
                    loss = loss_fn(logits, t, x) if ex is None else loss_fn(logits, t, x, ex)
            # collective under DDP: every rank stops together instead of the others hanging in an all-reduce
            if D.any_rank(not bool(torch.isfinite(loss.detach())), device):
                raise TrainingError(
                    f"{cfg.desc}: loss became {loss.item()}{f' (rank {D.rank()})' if D.is_distributed() else ''} "
                    f"at epoch {epoch + 1}, step {step + 1}; "
                    f"lower --lr (now {cfg.lr:g}) or check the data")
            self.step(loss)
            tl += loss.item() * y.numel()
            tn += y.numel()
            tc += (logits.argmax(1) == y).sum().item()
            if hasattr(bar, "set_postfix") and step % 10 == 0:
                bar.set_postfix(loss=f"{tl / tn:.3f}", lr=f"{self.sched.get_last_lr()[0]:.2e}")
        return D.all_reduce_sum(torch.tensor([tl, tc, tn], dtype=torch.float64, device=device))

    def step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip and self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.opt)
            nn.utils.clip_grad_norm_(self.trainable, self.cfg.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()

    def validate(self, epoch: int, train_stats: torch.Tensor, val_ds: Dataset, t_epoch: float) -> tuple:
        """Validate epoch ``epoch``: (history record, confusion matrix); a non-finite val loss stops training."""
        cfg = self.cfg
        m = self.val_metrics(val_ds, f"{cfg.desc} val")
        top1, vloss = m["top1"], m["loss"]
        if not math.isfinite(vloss):  # all-reduced: the same on every rank, so all stop together
            raise TrainingError(f"{cfg.desc}: validation loss became {vloss} at epoch {epoch + 1}; "
                                f"lower --lr (now {cfg.lr:g}) or check the data")
        n = max(train_stats[2].item(), 1)
        rec = {"epoch": epoch + 1, "train_loss": train_stats[0].item() / n,
               "train_top1": 100.0 * train_stats[1].item() / n,
               "val_loss": vloss, "val_top1": top1, "val_balanced_acc": m["balanced_acc"],
               "val_macro_f1": m["macro_f1"], "lr": self.sched.get_last_lr()[0],
               "epoch_s": time.perf_counter() - t_epoch}
        self.history.append(rec)
        return rec, m["confusion"].tolist()

    def val_metrics(self, val_ds: Dataset, desc: str) -> dict:
        D.broadcast_buffers(self.model)  # identical BN statistics on every rank before validation / best_state
        return evaluate_classifier(self.model, val_ds, max(self.cfg.batch_size, 64), self.device, self.workers,
                                   self.amp, desc=desc)

    def take_best(self, top1: float, epoch: int, cm: list) -> None:
        """The model now is the best so far (``epoch`` -1: the starting weights)."""
        self.best, self.best_epoch, self.best_confusion = top1, epoch, cm
        self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def validate_start(self, val_ds: Dataset) -> None:
        """``keep_start`` on a fresh fit: the starting weights are the candidate to beat ("epoch" 0)."""
        if self.start_epoch > 0 or self.cfg.epochs == 0:
            return
        m = self.val_metrics(val_ds, f"{self.cfg.desc} val (start)")
        self.start = {"epoch": 0, "val_top1": m["top1"], "val_balanced_acc": m["balanced_acc"],
                      "val_macro_f1": m["macro_f1"]}
        self.take_best(m["top1"], -1, m["confusion"].tolist())

    def save_state(self, state_path: str | Path, epoch: int) -> None:
        with atomic_path(state_path) as tmp:
            torch.save({"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                        "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
                        "epoch": epoch, "best": self.best, "best_epoch": self.best_epoch, "best_cm": self.best_confusion,
                        "best_state": self.best_state, "history": self.history, "start": self.start}, tmp)

    def finish(self, t0: float) -> FitResult:
        """Load the best weights, back to the CPU."""
        last = self.history[-1]["val_top1"] if self.history else float("nan")
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.model.to("cpu")
        if self.channels_last:
            self.model.to(memory_format=torch.contiguous_format)
        res = FitResult(best_top1=self.best, best_epoch=self.best_epoch + 1, last_top1=last, history=self.history,
                        wall_s=time.perf_counter() - t0, effective_batch=self.cfg.batch_size * D.world_size(),
                        world_size=D.world_size(), best_confusion=self.best_confusion, start=self.start)
        if res.kept_start and D.is_main():
            self.log(f"{self.cfg.desc}: no epoch beat the starting weights ({self.best:.2f}% on val): kept them")
        return res


def fit(
    model: nn.Module,
    train_ds: Dataset,
    val_ds: Dataset,
    cfg: TrainConfig,
    loss_fn: LossFn | None = None,
    state_path: str | Path | None = None,
    resume: bool = False,
    on_best: Callable[[nn.Module, dict], None] | None = None,
    on_epoch_start: Callable[[int, nn.Module], None] | None = None,
    params: list[nn.Parameter] | list[dict] | None = None,
    log: Callable[[str], None] | None = None,
    keep_start: bool = False,
) -> FitResult:
    """Train ``model`` in place; on return it holds the best-on-val weights.

    ``loss_fn(logits, targets, images)`` replaces the default label-smoothed cross-entropy (KD uses it); when the
    training set yields ``(x, y, extra)`` (``extra`` a dict of tensors) it is called ``loss_fn(logits, targets, images,
    extra)``, and a dataset with ``set_epoch(epoch)`` is told each epoch before its batches are drawn.
    ``state_path`` is written after every epoch (rank 0) so that ``resume=True`` continues where it stopped.
    ``on_best`` is called on rank 0 whenever val top-1 improves (write the checkpoint there).
    ``on_epoch_start(epoch, model)`` runs before each epoch (QAT freezes observers/BN from it).
    ``params``: the parameters to train (default: those with ``requires_grad``), or param-group dicts
    ``{"params": [...], "lr_scale": s}`` trained at ``lr x s`` (fine-tuning: a lower rate for a pretrained backbone).
    ``keep_start``: the starting weights are "epoch" 0 of the best-on-val choice; kept if no epoch beats them
    (``FitResult.kept_start``; compress's prune fine-tunes and QAT: docs/compress.md).
    A non-finite training or validation loss raises :class:`~edgecv.errors.TrainingError`.
    """
    if cfg.epochs < 0:
        raise UserError(f"epochs must be >= 0, got {cfg.epochs}")
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise UserError("empty training or validation set")
    tr = _Trainer(model, train_ds, cfg, params, log or (lambda s: None))
    if state_path and resume:
        tr.resume(state_path)
    tr.wrap_ddp()
    if keep_start:
        tr.validate_start(val_ds)
    writer = tensorboard_writer(cfg)
    t0 = time.perf_counter()
    for epoch in range(tr.start_epoch, cfg.epochs):
        if on_epoch_start is not None:
            on_epoch_start(epoch, model)
        te = time.perf_counter()
        rec, cm = tr.validate(epoch, tr.train_epoch(epoch, loss_fn, tr.crit), val_ds, te)
        top1 = rec["val_top1"]
        improved = top1 > tr.best
        if improved:
            tr.take_best(top1, epoch, cm)
        if D.is_main():
            report_epoch(tr.log, tr.best, cfg, rec, epoch, writer)
            if improved and on_best is not None:
                on_best(model, {"val_top1": top1, "epoch": epoch + 1})
            if state_path:
                tr.save_state(state_path, epoch)
        D.barrier()
    if writer is not None:
        writer.close()
    return tr.finish(t0)
