"""Classification metrics: top-1/5, balanced accuracy, macro-F1, per-class precision/recall/F1, confusion matrix
(+ PNG); the validation pass of the training loop (a confusion matrix all-reduced under DDP). The formulas live in
:mod:`edgecv.data.metrics`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgecv import distributed as D
from edgecv.data.arrays import topk_correct
from edgecv.data.metrics import baseline_check, confusion_matrix, per_class, summary
from edgecv.utils import atomic_path, progress


class Shard(torch.utils.data.Dataset):
    """Every ``world``-th sample starting at ``rank``: exact (unpadded) sharding for validation."""

    def __init__(self, ds, rank: int, world: int):
        self.ds, self.idx = ds, list(range(rank, len(ds), world))

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i):
        return self.ds[self.idx[i]]


@torch.no_grad()
def evaluate_classifier(model: nn.Module, val_ds, batch_size: int, device: torch.device, workers: int = 0,
                        amp: bool = False, desc: str = "val") -> dict:
    """``{"top1", "balanced_acc", "macro_f1", "loss", "n", "confusion"}`` of ``model`` over ``val_ds`` (metrics in
    percent, mean CE loss, the confusion matrix as int64 counts). Under DDP every rank scores every ``world``-th
    sample and the confusion matrix and loss sum are all-reduced, so every rank returns the same figures."""
    from torch.utils.data import DataLoader

    model.eval()
    ds = Shard(val_ds, D.rank(), D.world_size()) if D.is_distributed() else val_ds
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)
    loss_sum = torch.zeros(1, dtype=torch.float64, device=device)
    num_classes = _num_outputs(model, val_ds, device)
    cm = torch.zeros(num_classes * num_classes, dtype=torch.float64, device=device)
    for x, y in progress(loader, desc=desc):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        cm += torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes * num_classes).double()
    D.all_reduce_sum(cm)
    D.all_reduce_sum(loss_sum)
    cm_np = cm.reshape(num_classes, num_classes).cpu().numpy().round().astype(np.int64)
    n = int(cm_np.sum())
    return {**summary(cm_np), "loss": loss_sum.item() / max(n, 1), "n": n, "confusion": cm_np}


def _num_outputs(model: nn.Module, val_ds, device: torch.device) -> int:
    """The class count: the model's output width on the first validation sample (the same on every rank)."""
    x = val_ds[0][0]
    return int(model(x.unsqueeze(0).to(device)).shape[1])


@torch.no_grad()
def predict_logits(model: nn.Module, ds, batch_size: int = 256, device: torch.device | str = "cpu",
                   workers: int = 0, desc: str = "eval") -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of ``model`` over ``ds`` (a dataset yielding ``(tensor, label)``)."""
    from torch.utils.data import DataLoader

    model.eval()
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)
    outs, labels = [], []
    for x, y in progress(loader, desc=desc):
        outs.append(model(x.to(device)).float().cpu())
        labels.append(y)
    return torch.cat(outs).numpy(), torch.cat(labels).numpy()


def classification_report(logits: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    n = len(labels)
    cm = confusion_matrix(labels, logits.argmax(1), len(class_names))
    prec, rec, f1 = per_class(cm)
    s = summary(cm)
    return {
        "n": int(n),
        "top1": 100.0 * topk_correct(logits, labels, 1) / max(n, 1),
        "top5": 100.0 * topk_correct(logits, labels, 5) / max(n, 1),
        "balanced_acc": s["balanced_acc"],
        "macro_f1": s["macro_f1"],
        "per_class": {
            name: {"precision": round(float(prec[i]), 4), "recall": round(float(rec[i]), 4),
                   "f1": round(float(f1[i]), 4), "support": int(cm[i].sum())}
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": cm.tolist(),
        **learned_record(cm, class_names),
    }


def learned_record(cm: np.ndarray | None, class_names: list[str]) -> dict:
    """``{"learned", "baseline"}`` of a confusion matrix (:func:`~edgecv.data.metrics.baseline_check`; None when
    there is none or it cannot judge): the fields every report of a trained model carries."""
    check = baseline_check(cm, class_names) if cm is not None else None
    return {"learned": check["learned"] if check else None, "baseline": check}


def recall_by_class(cm: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """Recall (percent, 2 decimals) per class name."""
    _, rec, _ = per_class(cm)
    return {name: round(100.0 * float(rec[i]), 2) for i, name in enumerate(class_names)}


def save_confusion_png(cm: list[list[int]] | np.ndarray, class_names: list[str], path: str | Path,
                       title: str = "Confusion matrix") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    n = len(class_names)
    size = max(4.0, min(0.45 * n + 2, 30))
    fig, ax = plt.subplots(figsize=(size, size))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=90 if n > 10 else 0, fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
