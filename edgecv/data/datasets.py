"""Datasets: ImageFolder roots (with or without a train/val split) and built-in datasets.

``--data`` accepts

* an ImageFolder root holding ``train/``, a validation split (``val/``, ``valid/`` or ``validation/``) and
  optionally ``test/`` (class folders inside each; nested folders inside a class are fine), or ``train/``
  alone, or only class folders — without a validation folder a seeded, stratified, deterministic validation
  split is made. Training never sees ``test/``; evaluation (``eval``, ``bench``) uses ``test/`` when there is
  one, else the validation split (:mod:`edgecv.data.scan` holds the rules, links and duplicates included);
* a built-in name: ``digits`` (scikit-learn's 1,797 real 8x8 handwritten digits, upscaled, 3 channels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from edgecv.data.decode import decode_image
from edgecv.data.preprocess import Preprocess
from edgecv.data.scan import (
    IMG_EXTENSIONS,
    ScanReport,
    Tree,
    check_disjoint,
    scan_split,
    split_folders,
    subdirs,
)
from edgecv.errors import UserError

__all__ = ["IMG_EXTENSIONS", "DataBundle", "ImageSamples", "load_eval_dataset", "load_train_val", "resolve_data",
           "sample_calibration"]

BUILTIN = ("digits",)
DEFAULT_VAL_FRACTION = 0.2


class ImageSamples:
    """A map-style dataset over ``(source, label)`` pairs; a source is a path or an in-memory PIL image.

    ``split``: which split of the data set this is (``train``/``val``/``test``; ``""`` for every image of a
    folder without splits); ``folder``: where it was read from (``""`` for built-ins). ``cache``: a
    :class:`~edgecv.data.cache.DecodeCache` of these samples (``rows[i]``: sample ``i``'s row in it); then
    :meth:`load_image` returns the cached base image (decode + shorter-side resize) instead of the file.
    """

    def __init__(self, samples: Sequence[tuple[object, int]], transform=None, split: str = "", folder: str = "",
                 cache=None, rows: Sequence[int] | None = None):
        self.samples = list(samples)
        self.transform = transform
        self.split = split
        self.folder = folder
        self.cache = cache
        self.rows = list(range(len(self.samples))) if rows is None else list(rows)
        self.scan: ScanReport | None = None  # set by load_eval_dataset

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [y for _, y in self.samples]

    def load_image(self, i: int) -> Image.Image:
        if self.cache is not None:
            return self.cache.image(self.rows[i], self.samples[i][0])
        return decode_image(self.samples[i][0])

    def __getitem__(self, i: int):
        img = self.load_image(i)
        x = self.transform(img) if self.transform is not None else img
        return x, self.samples[i][1]

    def with_transform(self, transform) -> ImageSamples:
        return ImageSamples(self.samples, transform, self.split, self.folder, self.cache, self.rows)

    def with_cache(self, cache) -> ImageSamples:
        """The same samples read from ``cache`` (built for exactly these samples, in this order)."""
        return ImageSamples(self.samples, self.transform, self.split, self.folder, cache)

    def subset(self, indices: Sequence[int]) -> ImageSamples:
        return ImageSamples([self.samples[i] for i in indices], self.transform, self.split, self.folder,
                            self.cache, [self.rows[i] for i in indices])


@dataclass
class DataBundle:
    train: ImageSamples
    val: ImageSamples
    class_names: list[str]
    preprocess: Preprocess
    source: str
    scan: ScanReport = field(default_factory=ScanReport)  # what the scan skipped, kept or found (folders)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def bad_images(self) -> list[str]:
        return self.scan.bad


def _stratified_split(labels: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = max(1, int(round(len(idx) * val_fraction))) if len(idx) > 1 else 0
        val_idx.extend(idx[:n_val].tolist())
        train_idx.extend(idx[n_val:].tolist())
    return sorted(train_idx), sorted(val_idx)


# ----------------------------------------------------------------------------------------------------------
# built-in datasets


def _digits_samples() -> tuple[list[tuple[Image.Image, int]], list[str]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = (d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    samples = [(Image.fromarray(im, mode="L").convert("RGB"), int(y)) for im, y in zip(imgs, d.target, strict=True)]
    return samples, [str(i) for i in range(10)]


def builtin_preprocess(name: str, img_size: int | None) -> Preprocess:
    if name == "digits":
        return Preprocess(input_size=img_size or 32, hflip=False, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    raise UserError(f"unknown built-in dataset '{name}'")


def _load_builtin(name: str, img_size: int | None, seed: int) -> DataBundle:
    samples, names = _digits_samples()
    tr, va = _stratified_split([y for _, y in samples], DEFAULT_VAL_FRACTION, seed)
    pre = builtin_preprocess(name, img_size)
    return DataBundle(
        train=ImageSamples([samples[i] for i in tr], split="train"),
        val=ImageSamples([samples[i] for i in va], split="val"),
        class_names=names,
        preprocess=pre,
        source=f"builtin:{name}",
    )


# ----------------------------------------------------------------------------------------------------------
# public API


def resolve_data(data: str) -> tuple[str, Path | None]:
    """Classify ``--data``: ('builtin', None) or ('folder', path). Raises UserError for bad paths."""
    if data in BUILTIN:
        return "builtin", None
    p = Path(data).expanduser()
    if not p.exists():
        raise UserError(f"--data: no such directory or built-in dataset: {data} (built-ins: {', '.join(BUILTIN)})")
    if not p.is_dir():
        raise UserError(f"--data: not a directory: {data}")
    return "folder", p


def load_train_val(
    data: str,
    img_size: int | None = None,
    seed: int = 0,
    skip_bad: bool = False,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    preprocess: Preprocess | None = None,
    allow_duplicates: bool = False,
) -> DataBundle:
    """Load a training/validation pair from ``--data``. Transforms are not attached; see :func:`attach`.

    ``train/`` + a validation split folder are used as they are; ``train/`` alone or class folders alone get a
    seeded stratified validation split; a ``test/`` split is kept out of both (and checked to share no file,
    by identity and by content). ``skip_bad`` / ``allow_duplicates``: :class:`~edgecv.data.scan.ScanReport`.
    """
    kind, root = resolve_data(data)
    if kind == "builtin":
        b = _load_builtin(data, img_size, seed)
        if preprocess is not None:
            b.preprocess = preprocess
        return b
    assert root is not None
    tree = Tree(root)
    layout = split_folders(root)
    if layout and "train" not in layout:
        raise UserError(f"--data {root}: found {', '.join(f'{p.name}/' for p in layout.values())} but no train/ "
                        "folder to train on")
    folder = layout.get("train", root)
    first = "train" if layout else ""
    samples, names, bad = scan_split(tree, folder, None, "train" if layout else "data", split=first)
    scanned = {"train": samples}
    if "val" in layout:
        scanned["val"], _, bad_v = scan_split(tree, layout["val"], names, layout["val"].name, split="val")
        bad += bad_v
    if "test" in layout:  # read and hashed (duplicates), not decoded
        scanned["test"], _, _ = scan_split(tree, layout["test"], names, "test", check_images=False, split="test")
    check_disjoint(scanned, names)
    tree.report.bad = bad
    tree.report.check(skip_bad)
    if "val" in layout:
        train, val = samples, scanned["val"]
    else:
        tr, va = _stratified_split([y for _, y in samples], val_fraction, seed)
        train, val = [samples[i] for i in tr], [samples[i] for i in va]
        tree.resplit(first, {p for p, _ in val})
    tree.check_duplicates(names, allow_duplicates)
    if len(names) < 2:
        raise UserError(f"--data: {root} has a single class ('{names[0]}'); a classifier needs at least two")
    if not val:
        raise UserError(f"--data: {root} has too few images for a validation split")
    pre = preprocess or Preprocess(input_size=img_size or 224)
    val_folder = str(layout["val"]) if "val" in layout else str(folder)
    return DataBundle(ImageSamples(train, split="train", folder=str(folder)),
                      ImageSamples(val, split="val", folder=val_folder), names, pre, str(root), tree.report)


def load_eval_dataset(data: str, class_names: list[str], seed: int = 0, skip_bad: bool = False,
                      allow_duplicates: bool = False) -> ImageSamples:
    """Evaluation images: ``D/test`` when it exists, else the validation split (``D/val``, ``D/valid`` or
    ``D/validation``), else every image under ``D``; built-ins use their val split. ``.split``, ``.folder`` and
    ``.scan`` (the :class:`~edgecv.data.scan.ScanReport`) of the result say which was used and what was skipped.

    Folders are matched to ``class_names`` by name; a folder the model does not know is an error, and so is a
    file that is also in another split (the same file, or the same bytes unless ``allow_duplicates``).
    """
    kind, root = resolve_data(data)
    if kind == "builtin":
        b = _load_builtin(data, None, seed)
        if b.class_names != list(class_names):
            raise UserError(f"--data {data}: its classes {b.class_names} are not the model's {list(class_names)}")
        return b.val
    assert root is not None
    layout = split_folders(root)
    split = "test" if "test" in layout else "val" if "val" in layout else ""
    if layout and not split:
        raise UserError(f"--data: {root} has train/ but no val/ (valid/, validation/) or test/ folder to evaluate on")
    folder = layout.get(split, root)
    unknown = [d.name for d in subdirs(folder) if d.name not in class_names]
    if unknown:
        raise UserError(
            f"--data: class folder(s) {', '.join(sorted(unknown)[:5])} in {folder} are unknown to the model "
            f"(its classes: {', '.join(class_names[:10])}{', ...' if len(class_names) > 10 else ''})"
        )
    tree = Tree(root)
    samples, _, bad = scan_split(tree, folder, list(class_names), "data", split=split)
    others = {s: tree.images(f) for s, f in layout.items() if s != split}  # read and hashed, not decoded
    for s, files in others.items():
        for p in files:
            tree.read(p, s, -1)
    check_disjoint({split or "data": samples, **{s: [(p, -1) for p in fs] for s, fs in others.items()}},
                   list(class_names))
    tree.report.bad = bad
    tree.report.check(skip_bad)
    tree.check_duplicates(list(class_names), allow_duplicates)
    ds = ImageSamples(samples, split=split, folder=str(folder))
    ds.scan = tree.report
    return ds


def sample_calibration(ds: ImageSamples, n: int, seed: int = 0) -> ImageSamples:
    """A class-stratified random subset of ``n`` samples (all of them if fewer), for PTQ calibration."""
    n = min(n, len(ds))
    labels = np.asarray(ds.targets)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per = [rng.permutation(np.flatnonzero(labels == c)).tolist() for c in classes]
    picked: list[int] = []
    k = 0
    while len(picked) < n:
        for lst in per:
            if k < len(lst) and len(picked) < n:
                picked.append(lst[k])
        k += 1
    return ds.subset(sorted(picked))
