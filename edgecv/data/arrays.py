"""Evaluation arrays: a dataset decoded and preprocessed once into ``N x 3 x S x S`` float32 + labels.

The one place images become the arrays every runtime is scored on (``edgecv bench``, ``edgecv gate``, export
validation): :meth:`Preprocess.to_array` on each decoded image, in dataset order.
"""

from __future__ import annotations

import numpy as np

from edgecv.data.preprocess import Preprocess
from edgecv.utils import progress


def to_arrays(ds, preprocess: Preprocess, desc: str = "preprocess") -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of every sample of ``ds`` (an ImageFolder-style dataset with ``load_image`` and ``samples``)."""
    n = len(ds)
    xs = np.empty((n, 3, preprocess.input_size, preprocess.input_size), dtype=np.float32)
    ys = np.empty((n,), dtype=np.int64)
    for i in progress(range(n), desc=desc, total=n):
        xs[i] = preprocess.to_array(ds.load_image(i))
        ys[i] = ds.samples[i][1]
    return xs, ys


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> int:
    """How many rows of ``logits`` have their label among the ``k`` highest (numpy only: a runtime-only bench of
    ONNX/OpenVINO artifacts never imports torch)."""
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1)[:, :k]
    return int((top == labels[:, None]).any(axis=1).sum())
