"""The decode cache: every image of a folder split decoded once, after the deterministic base step.

Training decodes and resizes the same 300-800 px JPEGs every epoch; on 2 cores that costs more than a small
model at 64-128 px. The cache stores, per sample, :meth:`Preprocess.train_base` of the decoded file (decode +
shorter side resized to ``resize_size``; the exact function the uncached path runs, so cached and uncached
inputs are bit-identical) as ``uint8`` HxWx3 in one flat file, memory-mapped, with an index of
``(offset, height, width)`` per sample (aspect ratio kept). Random augmentation and the eval centre crop run on
top of it, unchanged.

Key: sha256 over the resize policy (``resize_size``, ``interpolation``, the decoder: Pillow and its libjpeg
versions) and every file's absolute path, size and ``mtime_ns``: a changed file, another size or another policy
is another key, so a stale cache is never read (it is rebuilt; the stale one of the same split is removed).

Layout: ``cache_dir()/decode/<key>/{data.u8, index.npy, meta.json}`` (``EDGECV_CACHE`` moves it). A build
writes into a temporary folder renamed into place at the end (an exception or a kill leaves no partial cache),
under an exclusive file lock (two processes never build the same cache; the second waits, then reads it).
Under torchrun rank 0 builds and the other ranks wait for its answer, then map the same files. Each process
maps the data once (a forked DataLoader worker inherits the mapping, a spawned one maps it again). Above
``EDGECV_DECODE_CACHE_MAX_GB`` (default 8) or the free disk, training decodes live, with one log line saying so.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, features

from edgecv import distributed as D
from edgecv.data.decode import BASE_INFO
from edgecv.errors import UserError
from edgecv.utils import cache_dir, progress

FORMAT = 1
MODES = ("auto", "off")
MAX_GB_ENV = "EDGECV_DECODE_CACHE_MAX_GB"
DEFAULT_MAX_GB = 8.0

Log = Callable[[str], None]


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise UserError(f"--decode-cache must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def policy(pre) -> dict:
    """Everything besides the files that decides the cached pixels (``pre``: a Preprocess)."""
    return {"format": FORMAT, "resize_size": int(pre.resize_size), "interpolation": pre.interpolation,
            "decode": "pillow", "pillow": Image.__version__, "libjpeg": features.version("jpg")}


def _stat_line(p: str) -> str:
    try:
        st = os.stat(p)
    except OSError as e:
        raise UserError(f"cannot read image {p}: {e.strerror or e}") from None
    return f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n"


def cache_key(paths: Sequence[str], pol: dict) -> str:
    h = hashlib.sha256(json.dumps(pol, sort_keys=True).encode())
    for p in paths:
        h.update(_stat_line(p).encode())
    return h.hexdigest()[:32]


def group_key(folder: str, split: str, pol: dict) -> str:
    """The same split under the same policy: caches of it with another key are stale."""
    return hashlib.sha256(json.dumps([os.path.abspath(folder or "."), split, pol], sort_keys=True).encode()
                          ).hexdigest()[:16]


def max_bytes() -> int:
    raw = os.environ.get(MAX_GB_ENV, "")
    try:
        gb = float(raw) if raw else DEFAULT_MAX_GB
    except ValueError:
        raise UserError(f"{MAX_GB_ENV}={raw!r}: expected a number of GB") from None
    return int(gb * 1e9)


def estimate_bytes(paths: Sequence[str], resize_size: int) -> int:
    """Size of the cache from the headers alone (the shorter-side resize does not depend on orientation)."""
    from edgecv.data.decode import probe_image

    total = 0
    for p in paths:
        info = probe_image(p)
        short, long_ = sorted((info.width, info.height))
        total += resize_size * max(1, round(long_ * resize_size / short)) * 3
    return total


class DecodeCache:
    """A built cache, read-only: :meth:`image` is sample ``i``'s base image. Picklable (workers reopen it)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.meta = json.loads((self.path / "meta.json").read_text())
        self.index = np.load(self.path / "index.npy")
        self.policy = (int(self.meta["policy"]["resize_size"]), str(self.meta["policy"]["interpolation"]))
        # mapped now: a forked DataLoader worker inherits the mapping, which stays valid even if a newer build
        # removes this (stale) folder meanwhile; a spawned worker gets the object without it and maps it again
        self._mm: np.memmap | None = self._map()

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self):
        return {**self.__dict__, "_mm": None}

    def _map(self) -> np.memmap:
        return np.memmap(self.path / "data.u8", dtype=np.uint8, mode="r")

    def _data(self) -> np.memmap:
        if self._mm is None:
            self._mm = self._map()
        return self._mm

    def image(self, i: int, source: str | os.PathLike) -> Image.Image:
        """Row ``i``, tagged with the policy and ``source`` (its file: what another policy decodes instead)."""
        off, h, w = (int(v) for v in self.index[i])
        im = Image.fromarray(np.asarray(self._data()[off:off + h * w * 3]).reshape(h, w, 3))
        im.info[BASE_INFO] = (*self.policy, os.fspath(source))
        return im

    @property
    def nbytes(self) -> int:
        return int(self.meta["bytes"])


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write(tmp: Path, samples, base_fn, pol: dict, group: str, desc: str) -> None:
    tmp.mkdir(parents=True)
    index = np.zeros((len(samples), 3), np.int64)
    off = 0
    with open(tmp / "data.u8", "wb") as f:
        for i in progress(range(len(samples)), desc=desc, total=len(samples)):
            a = np.asarray(base_fn(i), dtype=np.uint8)
            if a.ndim != 3 or a.shape[2] != 3:
                raise ValueError(f"base image {i} has shape {a.shape}, expected HxWx3")
            f.write(np.ascontiguousarray(a).tobytes())
            index[i] = (off, a.shape[0], a.shape[1])
            off += a.size
    np.save(tmp / "index.npy", index)
    (tmp / "meta.json").write_text(json.dumps({"policy": pol, "group": group, "images": len(samples),
                                               "bytes": off}, indent=1))


def _drop_stale(root: Path, group: str, keep: str) -> None:
    for d in root.iterdir():
        if d.name == keep or not d.is_dir() or d.name.startswith("."):
            continue
        try:
            if json.loads((d / "meta.json").read_text()).get("group") == group:
                shutil.rmtree(d, ignore_errors=True)
        except (OSError, ValueError):
            continue


def open_or_build(paths: Sequence[str], base_fn: Callable[[int], Image.Image], pre, *, folder: str = "",
                  split: str = "", log: Log | None = None) -> tuple[DecodeCache | None, dict]:
    """The cache of ``paths`` (``base_fn(i)``: sample ``i``'s base image), built here if missing.

    Returns ``(cache or None, record)``; None (with the reason in the record and one log line) when the cache
    would exceed the size cap or the free disk. This process only: see :func:`shared` for torchrun.
    """
    pol = policy(pre)
    key = cache_key(paths, pol)
    root = cache_dir() / "decode"
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    rec = {"images": len(paths), "key": key, "path": str(final), "built": False, "build_s": 0.0}
    if not (final / "meta.json").is_file():
        with _locked(root / f".{key}.lock"):
            if not (final / "meta.json").is_file():  # nobody built it while we waited
                est = estimate_bytes(paths, pol["resize_size"])
                cap, free = max_bytes(), shutil.disk_usage(root).free
                if est > cap or est > free - (1 << 30):
                    why = (f"{est / 1e9:.2f} GB > {MAX_GB_ENV}={cap / 1e9:g}" if est > cap else
                           f"{est / 1e9:.2f} GB > the free disk under {root} ({free / 1e9:.2f} GB, 1 GB kept)")
                    if log:
                        log(f"decode cache off for {split or 'data'}: {why}; decoding live every epoch")
                    return None, {**rec, "used": False, "reason": why, "bytes": est}
                for stale in root.glob(f".{key}.tmp.*"):  # a build killed before its rename
                    shutil.rmtree(stale, ignore_errors=True)
                tmp = root / f".{key}.tmp.{os.getpid()}"
                t0 = time.perf_counter()
                try:
                    _write(tmp, paths, base_fn, pol, group_key(folder, split, pol), f"decode cache {split}")
                    os.rename(tmp, final)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
                rec.update(built=True, build_s=round(time.perf_counter() - t0, 3))
                _drop_stale(root, group_key(folder, split, pol), key)
    cache = DecodeCache(final)
    if len(cache) != len(paths):
        raise UserError(f"decode cache {final} holds {len(cache)} images, expected {len(paths)}: remove it")
    return cache, {**rec, "used": True, "bytes": cache.nbytes}


def shared(paths: Sequence[str], base_fn, pre, *, folder: str = "", split: str = "",
           log: Log | None = None) -> tuple[DecodeCache | None, dict]:
    """:func:`open_or_build` on rank 0, then the same cache (or the same fallback) on every rank."""
    if not D.is_distributed():
        return open_or_build(paths, base_fn, pre, folder=folder, split=split, log=log)
    if D.is_main():
        try:
            cache, rec = open_or_build(paths, base_fn, pre, folder=folder, split=split, log=log)
        except Exception as e:  # tell the waiting ranks, then fail here too
            D.broadcast_object({"error": str(e)})
            raise
        D.broadcast_object(rec)
        return cache, rec
    rec = D.broadcast_object(None)
    if "error" in rec:
        raise UserError(f"decode cache: rank 0 could not build it: {rec['error']}")
    return (DecodeCache(Path(rec["path"])) if rec["used"] else None), {**rec, "built": False}


def attach(bundle, mode: str = "auto", log: Log | None = None) -> dict:
    """Serve ``bundle.train`` and ``bundle.val`` (a DataBundle of a folder) from decode caches made for
    ``bundle.preprocess`` (built when missing); the record for train --json / run.json.

    ``auto``: on for folder datasets (every source a file path); ``off``: live decoding. Set the final
    preprocessing first (a Preprocess of another resize policy decodes the files again: right, not faster).
    """
    check_mode(mode)
    rec: dict = {"mode": mode, "used": False, "bytes": 0, "build_s": 0.0, "splits": {}}
    splits = {"train": bundle.train, "val": bundle.val}
    if mode == "off":
        return {**rec, "reason": "--decode-cache off"}
    if not all(isinstance(src, str | os.PathLike) for ds in splits.values() for src, _ in ds.samples):
        return {**rec, "reason": "in-memory dataset (nothing to decode)"}
    pre = bundle.preprocess
    for name, ds in splits.items():
        cache, r = shared([os.fspath(src) for src, _ in ds.samples],
                          lambda i, ds=ds: pre.train_base(ds.load_image(i)), pre, folder=ds.folder,
                          split=name, log=log)
        rec["splits"][name] = r
        if cache is not None:
            setattr(bundle, name, ds.with_cache(cache))
    parts = rec["splits"].values()
    rec.update(used=all(r["used"] for r in parts), bytes=sum(r["bytes"] for r in parts if r["used"]),
               build_s=round(sum(r["build_s"] for r in parts), 3))
    if log and any(r["used"] for r in parts):
        built = [n for n, r in rec["splits"].items() if r["built"]]
        log(f"decode cache: {sum(r['images'] for r in parts if r['used'])} images at {pre.resize_size} px, "
            f"{rec['bytes'] / 1e6:.1f} MB under {cache_dir() / 'decode'}"
            + (f" (built {', '.join(built)} in {rec['build_s']:.1f} s)" if built else " (reused)"))
    return rec
