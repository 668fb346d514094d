"""``edgecv predict``: image files -> batched predictions.

(The PATH arguments are listed by :func:`edgecv.data.scan.list_inputs`, the listing rule of every command;
decoding is :func:`edgecv.data.decode.decode_image`, the one decoder bench and training use.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecv.utils import progress


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
