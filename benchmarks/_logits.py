"""Shared by the benchmark scripts that score checkpoints without training: a checkpoint's logits on a folder at
its own evaluation transform, and top-1 from them."""

from __future__ import annotations

import os

import numpy as np

from edgecv.data.arrays import topk_correct
from edgecv.data.datasets import load_eval_dataset
from edgecv.models.checkpoint import load_checkpoint
from edgecv.training.metrics import predict_logits


def checkpoint_logits(path: str, data: str, batch_size: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """``(logits, labels)`` of the checkpoint at ``path`` on ``data``'s evaluation images
    (:func:`~edgecv.data.datasets.load_eval_dataset`: its val split, or every image of a split folder)."""
    path = os.path.expanduser(path)
    ck = load_checkpoint(path)
    ds = load_eval_dataset(data, ck.class_names).with_transform(ck.preprocess.eval_transform())
    return predict_logits(ck.build(), ds, batch_size=batch_size, desc=os.path.basename(path))


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return 100 * topk_correct(logits, labels, 1) / len(labels)
