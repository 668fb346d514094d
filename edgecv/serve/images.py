"""``edgecv predict``: PATH arguments (files, folders recursively, globs) -> image files -> batched predictions.

(Decoding is :func:`edgecv.data.decode.decode_image`, the one decoder bench and training use.)
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np

from edgecv.data.datasets import IMG_EXTENSIONS
from edgecv.errors import UserError
from edgecv.utils import progress


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith(".")


def expand_paths(args: list[str]) -> list[Path]:
    """Files (any name), folders (images inside, recursive) and globs -> a sorted, de-duplicated list of files."""
    out: list[Path] = []
    for a in args:
        p = Path(a)
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.is_file() and _is_image(q))
        elif p.exists():
            out.append(p)
        elif glob.has_magic(a):
            hits = [Path(h) for h in sorted(glob.glob(a, recursive=True))]
            if not hits:
                raise UserError(f"{a}: the pattern matches no file")
            for h in hits:
                out += sorted(q for q in h.rglob("*") if q.is_file() and _is_image(q)) if h.is_dir() else [h]
        else:
            raise UserError(f"{a}: no such file or directory")
    seen, uniq = set(), []
    for p in out:
        if p not in seen:
            seen.add(p)
            uniq.append(p)
    return uniq


def predict_paths(predictor, paths: list[Path], batch_size: int = 32, topk: int = 5,
                  max_pixels: int | None = None) -> tuple[list[dict], list[dict]]:
    """Classify ``paths`` in batches -> ``(rows, bad)``: one row per readable image (``file`` + the prediction),
    one ``{"file", "error"}`` per image that cannot be decoded."""
    from edgecv.data.decode import ImageError

    rows, bad = [], []
    b = max(1, int(batch_size))
    for i in progress(range(0, len(paths), b), desc="predict", total=(len(paths) + b - 1) // b):
        files, xs = [], []
        for p in paths[i:i + b]:
            try:
                xs.append(predictor.decode(p, max_pixels=max_pixels, name=str(p)))
                files.append(p)
            except ImageError as e:
                bad.append({"file": str(p), "error": str(e)})
        if xs:
            for p, r in zip(files, predictor.results(predictor.logits(np.stack(xs)), topk), strict=True):
                rows.append({"file": str(p), **r})
    return rows, bad
