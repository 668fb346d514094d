"""``edgecv predict`` / ``edgecv.predict()``: image files -> batched predictions.

(The PATH arguments are listed by :func:`edgecv.data.scan.list_inputs`, the listing rule of every command;
decoding is :func:`edgecv.data.decode.decode_image`, the one decoder bench and training use.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgecv.errors import UserError
from edgecv.serve.config import PredictConfig
from edgecv.utils import progress


def predict_paths(predictor, paths: list[Path], batch_size: int, topk: int,
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


def classify(source: str | Path, paths: list[str], cfg: PredictConfig | None = None,
             log: Callable[[str], None] = lambda m: None, warn: Callable[[str], None] = lambda m: None) -> dict:
    """List ``paths`` (files, folders, patterns), open ``source`` with ``cfg.artifact`` and classify every image
    (``cfg``: :class:`~edgecv.serve.config.PredictConfig`, its defaults when None).

    A bad option, a folder that cannot be listed or a path that yields no image is a UserError before the model
    loads (the listing's unless ``skip_bad``); ``warn`` gets the listing's lines (what was skipped). Returns
    ``{"artifact", "sha256", "runtime", "selection", "predictions", "bad", "scan"}``: one prediction row per
    readable image, one ``bad`` entry per image that could not be decoded."""
    from edgecv.data.scan import list_inputs
    from edgecv.serve.predictor import load_predictor

    cfg = cfg or PredictConfig()
    cfg.validate()
    files, scan = list_inputs(list(paths))
    scan.check(cfg.skip_bad)  # before loading the model: one line naming what could not be listed or held nothing
    if not files:
        raise UserError(f"no image to classify in {' '.join(map(str, paths))}")
    for line in scan.lines():
        warn(line)
    pred = load_predictor(source, artifact=cfg.artifact, threads=cfg.threads, bench_json=cfg.bench_json, log=log)
    try:
        d = pred.describe()
        log(f"predict: {len(files)} image(s) with {d['artifact']} ({d['runtime']}, sha256 {d['sha256'][:12]})")
        rows, bad = predict_paths(pred, files, batch_size=cfg.batch_size, topk=cfg.topk)
    finally:
        pred.close()
    return {"artifact": d["artifact"], "sha256": d["sha256"], "runtime": d["runtime"], "selection": d["selection"],
            "predictions": rows, "bad": bad, "scan": scan.to_dict()}
