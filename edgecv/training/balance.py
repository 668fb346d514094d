"""Class re-balancing: ``--balance none|sampler|weights``.

* ``sampler``: :class:`BalancedSampler` draws every epoch ``len(dataset)`` indices with replacement, each with
  probability proportional to ``1 / count(its class)``, so every class is expected equally often. The draw is
  seeded by ``(seed, epoch)`` only: under DDP every rank draws the same list and takes its own slice
  (``list[rank::world]``, equal lengths), so the shards are disjoint and together are exactly the one draw.
* ``weights``: :func:`class_weights`, inverse class frequencies normalised to mean 1 over the classes, for a
  class-weighted loss (:class:`edgecv.training.losses.ClassificationLoss`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Sampler

from edgecv.errors import UserError

BALANCES = ("none", "sampler", "weights")


def check_balance(balance: str) -> str:
    if balance not in BALANCES:
        raise UserError(f"--balance must be one of {', '.join(BALANCES)}, got '{balance}'")
    return balance


def labels_of(ds) -> np.ndarray:
    """The class label of every sample of ``ds`` without decoding images: ``ds.targets``, the labels of
    ``ds.samples`` (an ImageSamples or ``(source, label)`` pairs), through ``Subset``-style wrappers."""
    t = getattr(ds, "targets", None)
    if t is not None:
        return np.asarray(list(t), dtype=np.int64)
    samples = getattr(ds, "samples", None)
    if samples is not None:
        if getattr(samples, "targets", None) is not None:
            return np.asarray(samples.targets, dtype=np.int64)
        return np.asarray([y for _, y in samples], dtype=np.int64)
    inner, idx = getattr(ds, "dataset", None), getattr(ds, "indices", None)
    if inner is not None and idx is not None:
        return labels_of(inner)[np.asarray(list(idx), dtype=np.int64)]
    raise UserError(f"--balance: cannot read the labels of a {type(ds).__name__} training set")


def class_counts(labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.int64)
    return np.bincount(labels, minlength=num_classes or (int(labels.max()) + 1 if labels.size else 0))


def class_weights(labels: np.ndarray, num_classes: int | None = None) -> torch.Tensor:
    """``w_c`` proportional to ``1 / count_c``, mean 1 over the classes; a class without training samples gets 1."""
    counts = class_counts(labels, num_classes).astype(np.float64)
    present = counts > 0
    if not present.any():
        raise UserError("--balance weights: the training set has no labels")
    inv = np.ones_like(counts)
    inv[present] = 1.0 / counts[present]
    inv[present] *= present.sum() / inv[present].sum()
    return torch.tensor(inv, dtype=torch.float32)


class BalancedSampler(Sampler[int]):
    """Class-balanced sampling with replacement, identical on every rank, each rank iterating its own slice."""

    def __init__(self, labels, seed: int = 0, rank: int = 0, world: int = 1, num_samples: int | None = None):
        labels = np.asarray(labels, dtype=np.int64)
        if labels.size == 0:
            raise UserError("--balance sampler: empty training set")
        counts = class_counts(labels)
        self.weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.float64)
        self.seed, self.rank, self.world, self.epoch = int(seed), int(rank), int(world), 0
        per_rank = math.ceil((num_samples or labels.size) / self.world)
        self.total = per_rank * self.world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def draw(self) -> list[int]:
        """This epoch's whole index list (every rank's slices together)."""
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + self.epoch * 100_003 + 17) % (2**63))
        return torch.multinomial(self.weights, self.total, replacement=True, generator=g).tolist()

    def __iter__(self):
        return iter(self.draw()[self.rank::self.world])

    def __len__(self) -> int:
        return self.total // self.world
