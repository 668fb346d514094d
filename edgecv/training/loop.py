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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgecv import distributed as D
from edgecv.errors import TrainingError, UserError
from edgecv.utils import atomic_path, progress, resolve_device, seed_everything

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, targets, images)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64  # per process
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.1
    grad_clip: float = 5.0
    workers: int | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # CUDA only
    channels_last: bool = True  # CUDA only
    tensorboard: str | None = None
    desc: str = "train"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FitResult:
    best_top1: float
    best_epoch: int
    last_top1: float
    history: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    effective_batch: int = 0  # batch_size x world size: the batch one optimizer step sees
    world_size: int = 1


def default_workers() -> int:
    n = os.cpu_count() or 1
    # cores are shared by the processes of *this node* (not the global world size)
    return 0 if n <= 2 else max(0, min(8, n // max(1, D.local_world_size() if D.is_distributed() else 1) - 1))


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of (epoch, rank): augmentation differs per rank and per epoch, and a resumed run replays exactly."""
    return (seed * 1_000_003 + epoch * 100_003 + rank) % (2**63)


def make_loader(ds: Dataset, batch_size: int, shuffle: bool, workers: int, seed: int, drop_last: bool = False,
                pin: bool = False):
    """Training loader. Under DDP: a DistributedSampler (same permutation on every rank, disjoint shards, equal
    batch counts so no rank waits in an all-reduce the others never join); its generator, which seeds the
    worker processes' augmentation RNG, differs per rank. Reseed ``loader.generator`` per epoch
    (:func:`epoch_seed`) for replayable epochs."""
    sampler = None
    n = len(ds)
    if D.is_distributed() and shuffle:
        from torch.utils.data.distributed import DistributedSampler

        if len(ds) < D.world_size():
            raise UserError(f"{len(ds)} training samples cannot be split over {D.world_size()} processes")
        sampler = DistributedSampler(ds, shuffle=True, seed=seed, drop_last=drop_last)
        n = len(sampler)
    g = torch.Generator()
    g.manual_seed(epoch_seed(seed, 0, D.rank()))
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=workers, drop_last=drop_last and n > batch_size, generator=g,
                      # not persistent: workers are re-forked each epoch and seeded from the per-epoch generator,
                      # so every epoch's augmentation is replayable (persistent workers keep their first seed)
                      pin_memory=pin, persistent_workers=False)


class _Shard(Dataset):
    """Every ``world``-th sample starting at ``rank``: exact (unpadded) sharding for validation."""

    def __init__(self, ds: Dataset, rank: int, world: int):
        self.ds, self.idx = ds, list(range(rank, len(ds), world))

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i):
        return self.ds[self.idx[i]]


@torch.no_grad()
def evaluate_top1(model: nn.Module, val_ds: Dataset, batch_size: int, device: torch.device, workers: int = 0,
                  amp: bool = False, desc: str = "val") -> tuple[float, float]:
    """(top-1 %, mean CE loss) over ``val_ds``; sharded and all-reduced under DDP."""
    model.eval()
    ds = _Shard(val_ds, D.rank(), D.world_size()) if D.is_distributed() else val_ds
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)
    stats = torch.zeros(3, dtype=torch.float64, device=device)  # correct, loss_sum, n
    for x, y in progress(loader, desc=desc):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
            logits = model(x)
        stats[0] += (logits.argmax(1) == y).sum()
        stats[1] += F.cross_entropy(logits.float(), y, reduction="sum")
        stats[2] += y.numel()
    D.all_reduce_sum(stats)
    n = max(stats[2].item(), 1.0)
    return 100.0 * stats[0].item() / n, stats[1].item() / n


def _lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


class _Trainer:
    """The state of one :func:`fit`: device, loader, optimizer, schedule, AMP scaler and the best weights."""

    def __init__(self, model: nn.Module, train_ds: Dataset, cfg: TrainConfig, params: list[nn.Parameter] | None,
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
        if self.cuda and cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.workers = default_workers() if cfg.workers is None else cfg.workers
        self.loader = make_loader(train_ds, cfg.batch_size, True, self.workers, cfg.seed, drop_last=True, pin=self.cuda)
        steps_per_epoch = max(1, len(self.loader))
        total_steps = steps_per_epoch * max(1, cfg.epochs)
        warmup = int(round(cfg.warmup_epochs * steps_per_epoch)) if cfg.epochs > 1 else 0
        self.trainable = params if params is not None else [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in self.trainable if p.ndim > 1]
        no_decay = [p for p in self.trainable if p.ndim <= 1]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: _lr_factor(s, total_steps, warmup, cfg.min_lr_ratio))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.start_epoch, self.best, self.best_epoch = 0, -1.0, -1
        self.best_state: dict | None = None
        self.history: list[dict] = []
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
        self.best_state = st.get("best_state")
        self.history = list(st.get("history", []))
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
        cfg, device = self.cfg, self.device
        # per-(epoch, rank) seeds: different augmentation on every rank, identical replay after --resume
        seed_everything(epoch_seed(cfg.seed, epoch, D.rank()))
        self.loader.generator.manual_seed(epoch_seed(cfg.seed, epoch, D.rank()))
        if isinstance(getattr(self.loader, "sampler", None), torch.utils.data.distributed.DistributedSampler):
            self.loader.sampler.set_epoch(epoch)
        self.ddp_model.train()
        tl, tn, tc = 0.0, 0, 0
        bar = progress(self.loader, desc=f"{cfg.desc} {epoch + 1}/{cfg.epochs}")
        for step, (x, y) in enumerate(bar):
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if self.cuda and cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.float16, enabled=self.amp):
                logits = self.ddp_model(x)
                loss = loss_fn(logits, y, x) if loss_fn is not None else crit(logits, y)
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

    def validate(self, epoch: int, train_stats: torch.Tensor, val_ds: Dataset, t_epoch: float) -> dict:
        """Validation of epoch ``epoch``; its history record (a non-finite val loss stops training)."""
        cfg = self.cfg
        D.broadcast_buffers(self.model)  # identical BN statistics on every rank before validation / best_state
        top1, vloss = evaluate_top1(self.model, val_ds, max(cfg.batch_size, 64), self.device, self.workers, self.amp,
                                    desc=f"{cfg.desc} val")
        if not math.isfinite(vloss):  # all-reduced: the same on every rank, so all stop together
            raise TrainingError(f"{cfg.desc}: validation loss became {vloss} at epoch {epoch + 1}; "
                                f"lower --lr (now {cfg.lr:g}) or check the data")
        n = max(train_stats[2].item(), 1)
        rec = {"epoch": epoch + 1, "train_loss": train_stats[0].item() / n,
               "train_top1": 100.0 * train_stats[1].item() / n,
               "val_loss": vloss, "val_top1": top1, "lr": self.sched.get_last_lr()[0],
               "epoch_s": time.perf_counter() - t_epoch}
        self.history.append(rec)
        return rec

    def save_state(self, state_path: str | Path, epoch: int) -> None:
        with atomic_path(state_path) as tmp:
            torch.save({"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                        "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
                        "epoch": epoch, "best": self.best, "best_epoch": self.best_epoch,
                        "best_state": self.best_state, "history": self.history}, tmp)

    def finish(self, t0: float) -> FitResult:
        """Load the best weights, back to the CPU."""
        last = self.history[-1]["val_top1"] if self.history else float("nan")
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.model.to("cpu")
        if self.cuda and self.cfg.channels_last:
            self.model.to(memory_format=torch.contiguous_format)
        return FitResult(best_top1=self.best, best_epoch=self.best_epoch + 1, last_top1=last, history=self.history,
                         wall_s=time.perf_counter() - t0, effective_batch=self.cfg.batch_size * D.world_size(),
                         world_size=D.world_size())


def _tensorboard(cfg: TrainConfig):
    if not cfg.tensorboard:
        return None
    try:  # checked on every rank so that a missing package stops all of them, not only rank 0
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise UserError("--tensorboard needs the 'tensorboard' package: pip install tensorboard") from e
    return SummaryWriter(cfg.tensorboard) if D.is_main() else None


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
    params: list[nn.Parameter] | None = None,
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """Train ``model`` in place; on return it holds the best-on-val weights.

    ``loss_fn(logits, targets, images)`` replaces the default label-smoothed cross-entropy (KD uses it).
    ``state_path`` is written after every epoch (rank 0) so that ``resume=True`` continues where it stopped.
    ``on_best`` is called on rank 0 whenever val top-1 improves (write the checkpoint there).
    ``on_epoch_start(epoch, model)`` runs before each epoch (QAT freezes observers/BN from it).
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
    writer = _tensorboard(cfg)
    t0 = time.perf_counter()
    crit = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    for epoch in range(tr.start_epoch, cfg.epochs):
        if on_epoch_start is not None:
            on_epoch_start(epoch, model)
        te = time.perf_counter()
        rec = tr.validate(epoch, tr.train_epoch(epoch, loss_fn, crit), val_ds, te)
        top1 = rec["val_top1"]
        improved = top1 > tr.best
        if improved:
            tr.best, tr.best_epoch = top1, epoch
            tr.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if D.is_main():
            tr.log(f"{cfg.desc} epoch {epoch + 1}/{cfg.epochs}: train loss {rec['train_loss']:.4f} "
                   f"val top-1 {top1:.2f}% (best {tr.best:.2f}%) {rec['epoch_s']:.1f}s")
            if writer is not None:
                for k in ("train_loss", "train_top1", "val_loss", "val_top1", "lr"):
                    writer.add_scalar(f"{cfg.desc}/{k}", rec[k], epoch + 1)
            if improved and on_best is not None:
                on_best(model, {"val_top1": top1, "epoch": epoch + 1})
            if state_path:
                tr.save_state(state_path, epoch)
        D.barrier()
    if writer is not None:
        writer.close()
    return tr.finish(t0)
