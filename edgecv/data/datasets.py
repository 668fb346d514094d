"""Datasets: ImageFolder roots (with or without a train/val split) and built-in datasets.

``--data`` accepts

* an ImageFolder root holding ``train/`` and ``val/`` (class folders inside each), or only class folders —
  then a seeded, stratified, deterministic validation split is made;
* a built-in name: ``digits`` (scikit-learn's 1,797 real 8x8 handwritten digits, upscaled, 3 channels).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from edgecv.data.decode import decode_image
from edgecv.data.preprocess import Preprocess
from edgecv.errors import UserError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
BUILTIN = ("digits",)
DEFAULT_VAL_FRACTION = 0.2


class ImageSamples:
    """A map-style dataset over ``(source, label)`` pairs; a source is a path or an in-memory PIL image."""

    def __init__(self, samples: Sequence[tuple[object, int]], transform=None):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [y for _, y in self.samples]

    def load_image(self, i: int) -> Image.Image:
        return decode_image(self.samples[i][0])

    def __getitem__(self, i: int):
        img = self.load_image(i)
        x = self.transform(img) if self.transform is not None else img
        return x, self.samples[i][1]

    def with_transform(self, transform) -> ImageSamples:
        return ImageSamples(self.samples, transform)

    def subset(self, indices: Sequence[int]) -> ImageSamples:
        return ImageSamples([self.samples[i] for i in indices], self.transform)


@dataclass
class DataBundle:
    train: ImageSamples
    val: ImageSamples
    class_names: list[str]
    preprocess: Preprocess
    source: str
    bad_images: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ----------------------------------------------------------------------------------------------------------
# scanning


def _list_images(folder: Path) -> list[Path]:
    out = []
    for root, _dirs, files in os.walk(folder, followlinks=True):
        for f in files:
            if f.lower().endswith(IMG_EXTENSIONS) and not f.startswith("."):
                out.append(Path(root) / f)
    return sorted(out)


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_bad(path: Path) -> str | None:
    try:
        with Image.open(path) as im:
            im.verify()
        return None
    except Exception as e:  # PIL raises many types for corrupt data
        return f"{type(e).__name__}: {e}"


def _scan_split(root: Path, class_names: list[str] | None, what: str) -> tuple[list[tuple[Path, int]], list[str], list[str]]:
    """Return samples, class names and bad image descriptions of one ImageFolder directory."""
    dirs = _class_dirs(root)
    if not dirs:
        raise UserError(f"{what}: no class folders in {root}")
    names = [d.name for d in dirs]
    if class_names is None:
        class_names = names
    samples: list[tuple[Path, int]] = []
    bad: list[str] = []
    for d in dirs:
        if d.name not in class_names:
            raise UserError(f"{what}: class folder '{d.name}' in {root} is not one of the known classes")
        files = _list_images(d)
        if not files:
            raise UserError(f"{what}: class folder {d} holds no images")
        label = class_names.index(d.name)
        for f in files:
            reason = _is_bad(f)
            if reason:
                bad.append(f"{f} ({reason})")
            else:
                samples.append((f, label))
    return samples, class_names, bad


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


def _check_bad(bad: list[str], skip_bad: bool) -> None:
    if bad and not skip_bad:
        shown = "; ".join(bad[:5]) + (f"; ... ({len(bad) - 5} more)" if len(bad) > 5 else "")
        raise UserError(f"{len(bad)} unreadable image(s): {shown} — fix them or pass --skip-bad")


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
        train=ImageSamples([samples[i] for i in tr]),
        val=ImageSamples([samples[i] for i in va]),
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
) -> DataBundle:
    """Load a training/validation pair from ``--data``. Transforms are not attached; see :func:`attach`."""
    kind, root = resolve_data(data)
    if kind == "builtin":
        b = _load_builtin(data, img_size, seed)
        if preprocess is not None:
            b.preprocess = preprocess
        return b
    assert root is not None
    if (root / "train").is_dir():
        train, names, bad = _scan_split(root / "train", None, "train")
        if (root / "val").is_dir():
            val, _, bad_v = _scan_split(root / "val", names, "val")
            bad += bad_v
        else:
            tr, va = _stratified_split([y for _, y in train], val_fraction, seed)
            train, val = [train[i] for i in tr], [train[i] for i in va]
    else:
        samples, names, bad = _scan_split(root, None, "data")
        tr, va = _stratified_split([y for _, y in samples], val_fraction, seed)
        train, val = [samples[i] for i in tr], [samples[i] for i in va]
    _check_bad(bad, skip_bad)
    if len(names) < 2:
        raise UserError(f"--data: {root} has a single class ('{names[0]}'); a classifier needs at least two")
    if not val:
        raise UserError(f"--data: {root} has too few images for a validation split")
    pre = preprocess or Preprocess(input_size=img_size or 224)
    return DataBundle(ImageSamples(train), ImageSamples(val), names, pre, str(root), bad)


def load_eval_dataset(data: str, class_names: list[str], seed: int = 0, skip_bad: bool = False) -> ImageSamples:
    """Evaluation images: ``D/val`` when it exists, else every image under ``D``; built-ins use their val split.

    Folders are matched to ``class_names`` by name; a folder the model does not know is an error.
    """
    kind, root = resolve_data(data)
    if kind == "builtin":
        b = _load_builtin(data, None, seed)
        if b.class_names != list(class_names):
            raise UserError(f"--data {data}: its classes {b.class_names} are not the model's {list(class_names)}")
        return b.val
    assert root is not None
    folder = root / "val" if (root / "val").is_dir() else root
    dirs = _class_dirs(folder)
    if folder is root and (root / "train").is_dir() and len(dirs) == 1:
        raise UserError(f"--data: {root} has train/ but no val/ folder to evaluate on")
    unknown = [d.name for d in dirs if d.name not in class_names]
    if unknown:
        raise UserError(
            f"--data: class folder(s) {', '.join(unknown[:5])} in {folder} are unknown to the model "
            f"(its classes: {', '.join(class_names[:10])}{', ...' if len(class_names) > 10 else ''})"
        )
    samples, _, bad = _scan_split(folder, list(class_names), "data")
    _check_bad(bad, skip_bad)
    return ImageSamples(samples)


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
