"""Classification metrics: top-1/5, per-class precision/recall/F1, confusion matrix (+ PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgecv.data.arrays import topk_correct
from edgecv.utils import atomic_path, progress


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
    c = len(class_names)
    pred = logits.argmax(1)
    cm = np.zeros((c, c), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    tp = np.diag(cm).astype(float)
    prec = np.divide(tp, cm.sum(0), out=np.zeros(c), where=cm.sum(0) > 0)
    rec = np.divide(tp, cm.sum(1), out=np.zeros(c), where=cm.sum(1) > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros(c), where=(prec + rec) > 0)
    present = cm.sum(1) > 0
    return {
        "n": int(n),
        "top1": 100.0 * topk_correct(logits, labels, 1) / max(n, 1),
        "top5": 100.0 * topk_correct(logits, labels, 5) / max(n, 1),
        "macro_f1": 100.0 * float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            name: {"precision": round(float(prec[i]), 4), "recall": round(float(rec[i]), 4),
                   "f1": round(float(f1[i]), 4), "support": int(cm[i].sum())}
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": cm.tolist(),
    }


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
