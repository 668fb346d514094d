"""What :func:`edgecv.training.loop.fit` says after each epoch: the log line and the optional TensorBoard scalars."""

from __future__ import annotations

from collections.abc import Callable

from edgecv import distributed as D
from edgecv.errors import UserError
from edgecv.training.config import TrainConfig

SCALARS = ("train_loss", "train_top1", "val_loss", "val_top1", "val_balanced_acc", "val_macro_f1", "lr")


def tensorboard_writer(cfg: TrainConfig):
    """A SummaryWriter on rank 0 when ``cfg.tensorboard`` names a folder, else None."""
    if not cfg.tensorboard:
        return None
    try:  # checked on every rank so that a missing package stops all of them, not only rank 0
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise UserError("--tensorboard needs the 'tensorboard' package: pip install tensorboard") from e
    return SummaryWriter(cfg.tensorboard) if D.is_main() else None


def report_epoch(log: Callable[[str], None], best: float, cfg: TrainConfig, rec: dict, epoch: int, writer) -> None:
    """Rank 0: an epoch's log line and its TensorBoard scalars."""
    log(f"{cfg.desc} epoch {epoch + 1}/{cfg.epochs}: train loss {rec['train_loss']:.4f} "
        f"val top-1 {rec['val_top1']:.2f}% (best {best:.2f}%) balanced {rec['val_balanced_acc']:.2f}% "
        f"macro-F1 {rec['val_macro_f1']:.2f}% {rec['epoch_s']:.1f}s")
    if writer is not None:
        for k in SCALARS:
            writer.add_scalar(f"{cfg.desc}/{k}", rec[k], epoch + 1)
