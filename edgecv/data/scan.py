"""Scanning an ImageFolder tree: split folders, class folders, image files, links and unreadable images.

Rules (each checked here, once):

* Split names: ``train/``; ``val/``, ``valid/`` or ``validation/`` (the validation split, at most one of them);
  ``test/``. A root holding ``train/`` may hold nothing else but those (hidden folders are ignored).
* Links: a link to a file is an ordinary sample. A link to a directory is followed only when it leads out of
  the data tree; one that leads back into it (``cat/loop -> ..``) or to a directory already scanned is an
  error naming the link, never a second copy of the tree.
* A file (by identity: device and inode, so symbolic and hard links alike) belongs to one class of one split: the same file twice in one class folder counts
  once; in two classes or two splits it is an error naming both paths.
* An image is bad when loading it would fail: the scan decodes every file (JPEGs at 1/8 scale, which still reads
  the whole stream, so a truncated file is found) through :func:`edgecv.data.decode.image_problem`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from edgecv.data.decode import image_problem
from edgecv.errors import UserError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
VAL_SPLITS = ("val", "valid", "validation")
TEST_SPLITS = ("test",)
TRAIN_SPLIT = "train"
KNOWN_SPLITS = (TRAIN_SPLIT, *VAL_SPLITS, *TEST_SPLITS)

Samples = list[tuple[Path, int]]


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def split_folders(root: Path) -> dict[str, Path]:
    """``{"train"|"val"|"test": folder}`` of a split layout; ``{}`` when ``root`` holds class folders only.

    A layout is a split layout when ``root`` holds ``train/`` or any validation/test split name; then every
    folder must be one of those (one line listing what was found and what is expected otherwise).
    """
    dirs = _subdirs(root)
    names = [d.name for d in dirs]
    if not any(n in KNOWN_SPLITS for n in names):
        return {}
    vals = [n for n in names if n in VAL_SPLITS]
    unknown = [n for n in names if n not in KNOWN_SPLITS]
    expected = "train/, one of val/ valid/ validation/, and optionally test/"
    if unknown:
        raise UserError(f"--data {root}: found folders {', '.join(names)}; a split layout holds only {expected} "
                        f"(unknown: {', '.join(unknown)})")
    if len(vals) > 1:
        raise UserError(f"--data {root}: found {' and '.join(f'{v}/' for v in vals)}; keep one validation split "
                        f"(expected: {expected})")
    out = {"train": root / TRAIN_SPLIT} if TRAIN_SPLIT in names else {}
    if vals:
        out["val"] = root / vals[0]
    if "test" in names:
        out["test"] = root / "test"
    return out


class Tree:
    """One data tree being scanned: remembers every directory reached, to stop links re-entering it."""

    def __init__(self, root: Path):
        self.root = root
        self.real = root.resolve()
        self.seen: dict[Path, Path] = {}  # resolved directory -> the path it was first reached by

    def _enter(self, d: Path) -> None:
        """Record ``d`` as walked; raises for a directory link back into the tree or a loop."""
        real = d.resolve()
        if d.is_symlink() and (real == self.real or self.real in real.parents or real in self.real.parents):
            raise UserError(f"--data: directory link {d} -> {os.readlink(d)} leads back into the data tree "
                            f"{self.root}; remove it (only links leading out of the tree are followed)")
        if real in self.seen:
            raise UserError(f"--data: directory {d} is the same directory as {self.seen[real]} "
                            "(a link loop or a second link to it); remove one")
        self.seen[real] = d

    def images(self, folder: Path) -> list[Path]:
        """Every image file under ``folder`` (sorted), following directory links only out of the tree."""
        out: list[Path] = []
        stack = [folder]
        while stack:
            d = stack.pop()
            self._enter(d)
            try:
                entries = list(os.scandir(d))
            except OSError as e:
                raise UserError(f"--data: cannot list {d}: {e.strerror or e}") from None
            for e in entries:
                if e.name.startswith("."):
                    continue
                p = Path(e.path)
                if e.is_dir():  # follows links; _enter decides
                    stack.append(p)
                elif e.name.lower().endswith(IMG_EXTENSIONS):  # a dangling link is kept: the scan reports it
                    out.append(p)
        return sorted(out)


def scan_split(tree: Tree, folder: Path, class_names: list[str] | None, what: str,
               check_images: bool = True) -> tuple[Samples, list[str], list[str]]:
    """Samples, class names and bad-image descriptions of one ImageFolder directory (class folders inside)."""
    dirs = _subdirs(folder)
    if not dirs:
        raise UserError(f"{what}: no class folders in {folder}")
    if class_names is None:
        class_names = [d.name for d in dirs]
    samples: Samples = []
    bad: list[str] = []
    for d in dirs:
        if d.name not in class_names:
            raise UserError(f"{what}: class folder '{d.name}' in {folder} is not one of the known classes")
        files = _unique(tree.images(d))
        if not files:
            raise UserError(f"{what}: class folder {d} holds no images")
        label = class_names.index(d.name)
        for f in files:
            reason = image_problem(f) if check_images else None
            if reason:
                bad.append(f"{f} ({reason})")
            else:
                samples.append((f, label))
    return samples, class_names, bad


def _unique(files: list[Path]) -> list[Path]:
    """``files`` with later paths to an already listed file dropped."""
    seen: set[object] = set()
    out = []
    for f in files:
        k = _file_key(f)
        if k not in seen:
            seen.add(k)
            out.append(f)
    return out


def _file_key(path: Path) -> object:
    """What makes two paths the same file: device and inode (symbolic and hard links alike), else the resolved
    path (a dangling link)."""
    try:
        st = os.stat(path)
        return (st.st_dev, st.st_ino)
    except OSError:
        return Path(path).resolve()


def check_disjoint(splits: dict[str, Iterable[tuple[Path, int]]], class_names: list[str] | None = None) -> None:
    """Raise when one file (the same device and inode) is in two splits or two classes; one line naming both paths."""
    owner: dict[object, tuple[str, int, Path]] = {}
    for split, samples in splits.items():
        for path, label in samples:
            k = _file_key(path)
            prev = owner.get(k)
            if prev is None:
                owner[k] = (split, label, Path(path))
                continue
            p_split, p_label, p_path = prev
            if p_split == split and p_label == label:
                continue
            if p_split != split:
                where = f"in both the {p_split} and the {split} split"
            else:
                where = f"in both class '{_class(class_names, p_label)}' and class '{_class(class_names, label)}'"
            raise UserError(f"--data: {Path(path).resolve()} is {where} ({p_path} and {path}); a file may belong "
                            "to one class of one split")


def _class(names: list[str] | None, i: int) -> str:
    return names[i] if names and 0 <= i < len(names) else str(i)
