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
* Listing: an image is a file whose name ends in one of :data:`edgecv.data.decode.IMAGE_EXTENSIONS` (what the
  decoder reads); other files are counted per class and reported (:class:`ScanReport`). A folder that cannot be
  listed, or a folder or pattern named on the command line that yields no image, stops the command with one line
  naming it; ``--skip-bad`` lists it and goes on (a class folder with no image is always an error).
* Content: every file is read once; the same bytes are hashed (SHA-256, the fastest hashlib digest on CPUs with
  SHA instructions: benchmarks/RESULTS.md) and decoded. Byte-identical files under different names in two
  splits or two classes stop the command with one line naming the first pairs, unless ``--allow-duplicates``
  (then they are counted in the report: run.json, the checkpoint).
"""

from __future__ import annotations

import glob
import hashlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from edgecv.data.decode import IMAGE_EXTENSIONS, image_problem
from edgecv.errors import UserError

IMG_EXTENSIONS = IMAGE_EXTENSIONS  # the decoder's list, under the name the data layer always exported
VAL_SPLITS = ("val", "valid", "validation")
TEST_SPLITS = ("test",)
TRAIN_SPLIT = "train"
KNOWN_SPLITS = (TRAIN_SPLIT, *VAL_SPLITS, *TEST_SPLITS)

Samples = list[tuple[Path, int]]


def subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise UserError(f"--data: cannot list {folder}: {e.strerror or e}") from None


def split_folders(root: Path) -> dict[str, Path]:
    """``{"train"|"val"|"test": folder}`` of a split layout; ``{}`` when ``root`` holds class folders only.

    A layout is a split layout when ``root`` holds ``train/`` or any validation/test split name; then every
    folder must be one of those (one line listing what was found and what is expected otherwise).
    """
    dirs = subdirs(root)
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


def _shown(items: list[str], n: int = 3) -> str:
    return "; ".join(items[:n]) + (f"; ... ({len(items) - n} more)" if len(items) > n else "")


@dataclass
class ScanReport:
    """What a scan left out or found, for the log, ``--json``, run.json and the checkpoint.

    ``skipped_types``: per class (``split/class``, or the folder named to predict) the files not of a readable
    image type, by name ending; ``unlisted``: folders that could not be listed; ``empty``: folders or patterns
    named on the command line that held no image; ``bad``: unreadable images; ``duplicates``: byte-identical
    pairs in two splits or classes (kept only with ``--allow-duplicates``); ``hash_s``: time spent hashing.
    """

    skipped_types: dict[str, dict[str, int]] = field(default_factory=dict)
    unlisted: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    duplicates: list[list[str]] = field(default_factory=list)
    allow_duplicates: bool = False
    hashed: int = 0
    hash_s: float = 0.0

    def skip_type(self, where: str, name: str) -> None:
        ext = os.path.splitext(name)[1].lower() or "(no extension)"
        counts = self.skipped_types.setdefault(where, {})
        counts[ext] = counts.get(ext, 0) + 1

    def skipped_line(self, where: str) -> str:
        counts = self.skipped_types.get(where, {})
        return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) if counts else ""

    def check(self, skip_bad: bool) -> None:
        """Raise one line for folders that could not be listed, named folders with no image and unreadable
        images; with ``skip_bad`` they stay in the report (see :meth:`lines`) and the command goes on."""
        if skip_bad:
            return
        hint = " — fix them or pass --skip-bad to go on without them"
        if self.unlisted:
            raise UserError(f"cannot list {len(self.unlisted)} folder(s): {_shown(self.unlisted)}{hint}")
        if self.empty:
            raise UserError(f"no image in {len(self.empty)} named folder(s) or pattern(s): {_shown(self.empty)}"
                            f" (readable types: {' '.join(IMAGE_EXTENSIONS)}){hint}")
        if self.bad:
            raise UserError(f"{len(self.bad)} unreadable image(s): {_shown(self.bad, 5)}{hint}")

    def lines(self) -> list[str]:
        """Human lines: one per class with skipped files, and what ``--skip-bad`` / ``--allow-duplicates`` let by."""
        out = [f"skipped {sum(c.values())} file(s) of a type the decoder does not read in {w}: {self.skipped_line(w)}"
               for w, c in self.skipped_types.items()]
        for what, items in (("cannot list", self.unlisted), ("no image in", self.empty),
                            ("unreadable image", self.bad)):
            out += [f"skipped (--skip-bad): {what} {x}" for x in items[:10]]
            out += [f"skipped (--skip-bad): ... and {len(items) - 10} more ({what})"] if len(items) > 10 else []
        if self.duplicates:
            out.append(f"kept (--allow-duplicates): {len(self.duplicates)} byte-identical pair(s) in two splits or "
                       f"classes, e.g. {' = '.join(self.duplicates[0])}")
        return out

    def log(self, log) -> None:
        """Each of :meth:`lines` through ``log`` (a ``str -> None`` callable; None: nothing)."""
        for line in self.lines() if log else ():
            log(f"data: {line}")

    def to_dict(self) -> dict:
        return {"skipped_types": self.skipped_types, "unlisted": self.unlisted, "empty": self.empty,
                "bad": self.bad, "duplicates": len(self.duplicates), "duplicate_pairs": self.duplicates[:20],
                "allow_duplicates": self.allow_duplicates, "hashed": self.hashed, "hash_s": round(self.hash_s, 4)}


class Tree:
    """One data tree being scanned: remembers every directory reached, to stop links re-entering it; records
    what it skipped in ``report`` and every file's content hash in ``hashes``."""

    def __init__(self, root: Path, report: ScanReport | None = None):
        self.root = root
        self.real = root.resolve()
        self.seen: dict[Path, Path] = {}  # resolved directory -> the path it was first reached by
        self.report = report if report is not None else ScanReport()
        self.hashes: dict[bytes, list[tuple[str, int, Path]]] = {}  # digest -> (split, label, path) of each file

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

    def images(self, folder: Path, where: str | None = None) -> list[Path]:
        """Every image file under ``folder`` (sorted), following directory links only out of the tree. A folder
        that cannot be listed goes to ``report.unlisted``; other files to ``report.skipped_types[where]``."""
        out: list[Path] = []
        stack = [folder]
        while stack:
            d = stack.pop()
            self._enter(d)
            try:
                entries = list(os.scandir(d))
            except OSError as e:
                self.report.unlisted.append(f"{d} ({e.strerror or e})")
                continue
            for e in entries:
                if e.name.startswith("."):
                    continue
                p = Path(e.path)
                if e.is_dir():  # follows links; _enter decides
                    stack.append(p)
                elif e.name.lower().endswith(IMAGE_EXTENSIONS):  # a dangling link is kept: the scan reports it
                    out.append(p)
                elif where is not None:
                    self.report.skip_type(where, e.name)
        return sorted(out)

    def read(self, path: Path, split: str, label: int) -> tuple[bytes | None, str | None]:
        """``(the file's bytes, None)``, hashed and recorded under (split, label); ``(None, why)`` if unreadable."""
        try:
            data = path.read_bytes()
        except OSError as e:
            return None, f"cannot read: {e.strerror or e}"
        t0 = time.perf_counter()
        digest = hashlib.sha256(data).digest()
        self.report.hash_s += time.perf_counter() - t0
        self.report.hashed += 1
        self.hashes.setdefault(digest, []).append((split, label, path))
        return data, None

    def resplit(self, split: str, val: set[Path]) -> None:
        """After a seeded validation split of ``split``'s files: record each as ``train`` or ``val``."""
        for entries in self.hashes.values():
            entries[:] = [(("val" if p in val else "train") if s == split else s, lab, p) for s, lab, p in entries]

    def duplicates(self, class_names: list[str] | None) -> list[list[str]]:
        """Byte-identical files (distinct files: another device/inode) in two splits or two classes."""
        pairs = []
        for entries in self.hashes.values():
            if len(entries) < 2:
                continue
            s0, l0, p0 = entries[0]
            for s, lab, p in entries[1:]:
                if (s, lab) != (s0, l0) and _file_key(p) != _file_key(p0):
                    pairs.append([f"{p0} ({_where(s0, class_names, l0)})", f"{p} ({_where(s, class_names, lab)})"])
        return sorted(pairs)

    def check_duplicates(self, class_names: list[str] | None, allow: bool) -> None:
        pairs = self.duplicates(class_names)
        self.report.allow_duplicates = allow
        if pairs and not allow:
            raise UserError(f"--data: {len(pairs)} byte-identical image(s) under different names in two splits or "
                            f"classes: {_shown([' = '.join(p) for p in pairs], 2)} — a validation figure would score "
                            "training images; remove the copies or pass --allow-duplicates")
        self.report.duplicates = pairs


def _where(split: str, names: list[str] | None, label: int) -> str:
    cls = _class(names, label) if label >= 0 else ""
    return "/".join(x for x in (split, cls) if x) or "data"


def scan_split(tree: Tree, folder: Path, class_names: list[str] | None, what: str, check_images: bool = True,
               split: str = "") -> tuple[Samples, list[str], list[str]]:
    """Samples, class names and bad-image descriptions of one ImageFolder directory (class folders inside).

    Every file is read once: hashed into ``tree`` and, with ``check_images``, decoded from the same bytes.
    """
    dirs = subdirs(folder)
    if not dirs:
        raise UserError(f"{what}: no class folders in {folder}")
    if class_names is None:
        class_names = [d.name for d in dirs]
    samples: Samples = []
    bad: list[str] = []
    for d in dirs:
        if d.name not in class_names:
            raise UserError(f"{what}: class folder '{d.name}' in {folder} is not one of the known classes")
        where = "/".join(x for x in (split, d.name) if x)
        n_unlisted = len(tree.report.unlisted)
        files = _unique(tree.images(d, where))
        if not files:
            why = (f"cannot list {tree.report.unlisted[n_unlisted]}" if len(tree.report.unlisted) > n_unlisted else
                   f"holds no images (skipped: {tree.report.skipped_line(where)})" if tree.report.skipped_types.get(where)
                   else "holds no images")
            raise UserError(f"{what}: class folder {d} {why}; readable types: {' '.join(IMAGE_EXTENSIONS)}")
        label = class_names.index(d.name)
        for f in files:
            data, reason = tree.read(f, split, label)
            if data is not None and check_images:
                reason = image_problem(f, data=data)
            if reason:
                bad.append(f"{f} ({reason})")
            else:
                samples.append((f, label))
    return samples, class_names, bad


def list_inputs(args: list[str]) -> tuple[list[Path], ScanReport]:
    """``edgecv predict``'s PATH arguments -> (the files, de-duplicated, each folder's sorted; the report).

    A file is taken whatever its name; a folder (recursively) or a glob yields its images by the readable
    types. A path that does not exist or a pattern matching nothing raises; a named folder or pattern that
    yields no image, or a folder that cannot be listed, goes to the report (:meth:`ScanReport.check`).
    """
    report = ScanReport()
    out: list[Path] = []
    for a in args:
        p = Path(a)
        if p.exists():
            hits = [p]
        elif glob.has_magic(a):
            hits = [Path(h) for h in sorted(glob.glob(a, recursive=True))]
            if not hits:
                raise UserError(f"{a}: the pattern matches no file")
        elif p.is_symlink():
            raise UserError(f"{a}: a link to {os.readlink(p)}, which does not exist")
        else:
            raise UserError(f"{a}: no such file or directory")
        n_before, n_unlisted = len(out), len(report.unlisted)
        for h in hits:
            out += Tree(h, report).images(h, where=a) if h.is_dir() else [h]
        if len(out) == n_before and len(report.unlisted) == n_unlisted:
            skipped = report.skipped_line(a)
            report.empty.append(f"{a}" + (f" (other types: {skipped})" if skipped else ""))
    seen: set[Path] = set()
    return [q for q in out if not (q in seen or seen.add(q))], report


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
