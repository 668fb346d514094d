"""``edgecv train``: train a classifier (usually the teacher) with the one training loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgecv import distributed as D
from edgecv.compress.train import FitResult, TrainConfig, fit
from edgecv.data.datasets import load_train_val
from edgecv.models.checkpoint import save_checkpoint
from edgecv.models.registry import arch_info, count_macs, count_params, create_model
from edgecv.utils import seed_everything


@dataclass
class TrainOutcome:
    checkpoint: Path
    arch: str
    fit: FitResult
    num_classes: int
    params: int
    macs: int
    data: str

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
            "wall_s": round(self.fit.wall_s, 2),
            "effective_batch": self.fit.effective_batch,
            "world_size": self.fit.world_size,
            "history": self.fit.history,
        }


def train_classifier(
    data: str,
    arch: str,
    out: str | Path,
    cfg: TrainConfig,
    img_size: int | None = None,
    skip_bad: bool = False,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
) -> TrainOutcome:
    arch_info(arch)  # validate early
    out = Path(out)
    bundle = load_train_val(data, img_size=img_size, seed=cfg.seed, skip_bad=skip_bad)
    pre = bundle.preprocess
    train_ds = bundle.train.with_transform(pre.train_transform())
    val_ds = bundle.val.with_transform(pre.eval_transform())
    # same seed on every rank -> same initial weights (DDP also broadcasts rank 0's at construction) and a
    # single-process run is reproducible
    seed_everything(cfg.seed)
    model = create_model(arch, bundle.num_classes)
    macs = count_macs(model, pre.input_size)

    def on_best(m, metrics):
        save_checkpoint(out, m, arch, bundle.class_names, pre, metrics={**metrics, "data": bundle.source},
                        meta={"train_config": cfg.to_dict()})

    state = out.with_name(out.name + ".state")
    result = fit(model, train_ds, val_ds, cfg, state_path=state, resume=resume, on_best=on_best, log=log)
    if D.is_main():  # only rank 0 writes files; the other ranks wait at the barrier
        # the final checkpoint carries the whole history; the resume state is no longer needed
        save_checkpoint(out, model, arch, bundle.class_names, pre,
                        metrics={"val_top1": result.best_top1, "epoch": result.best_epoch, "data": bundle.source},
                        meta={"train_config": cfg.to_dict(), "history": result.history})
        state.unlink(missing_ok=True)
    D.barrier()
    return TrainOutcome(out, arch, result, bundle.num_classes, count_params(model), macs, bundle.source)
