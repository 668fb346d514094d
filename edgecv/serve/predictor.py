"""A :class:`Predictor`: one bundle artifact + its runner + the manifest's preprocessing and class names.

The same path as ``edgecv bench --data``: decoded RGB image -> :meth:`Preprocess.to_array` -> runner -> logits,
so a prediction here is bit-for-bit the one bench scored, except that a JPEG at least twice the resize size is
decoded at a reduced DCT scale (:attr:`Predictor.draft_size`). The artifact's sha256 is verified before it is loaded.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

from edgecv.contracts.manifest import MANIFEST, ArtifactEntry, Manifest, load_manifest
from edgecv.data.decode import decode_cost, decode_image
from edgecv.data.preprocess import Preprocess
from edgecv.errors import UserError
from edgecv.runtimes.base import Runner, RuntimeUnavailable, predict_in_chunks, runner_for_entry


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Predictor:
    """Classify images with one artifact of a bundle. Thread-compatible: one caller of :meth:`logits` at a time."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, entry: ArtifactEntry, runner: Runner,
                 load_s: float = 0.0, selection: dict | None = None):
        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest
        self.entry = entry
        self.runner = runner
        self.preprocess = Preprocess.from_dict(manifest.preprocess)
        self.class_names = list(manifest.class_names)
        self.load_s = load_s
        self.selection = selection or {"how": "explicit"}

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(3, S, S)``: one preprocessed image."""
        s = self.preprocess.input_size
        return (3, s, s)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_array(self, images: list[Image.Image]) -> np.ndarray:
        x = np.empty((len(images), *self.input_shape), np.float32)
        for i, im in enumerate(images):
            x[i] = self.preprocess.to_array(im)
        return x

    @property
    def draft_size(self) -> tuple[int, int]:
        """A JPEG is decoded at the smallest DCT scale (1, 1/2, 1/4, 1/8) whose both sides keep the size the
        resize step makes (the shorter side resized to ``resize_size``): a 12-megapixel photo for a 224-px model
        decodes at 1/8, 64x fewer pixels; an image under twice that size decodes as before."""
        r = self.preprocess.resize_size
        return (r, r)

    def decode(self, src: bytes | str | Path, max_pixels: int | None = None, name: str | None = None) -> np.ndarray:
        """Encoded image (bytes or path) -> one ``CHW float32`` model input. Raises ImageError."""
        return self.preprocess.to_array(decode_image(src, max_pixels=max_pixels, name=name, draft=self.draft_size))

    def decode_cost(self, src: bytes | str | Path, max_pixels: int | None = None, name: str | None = None) -> int:
        """Bytes :meth:`decode` holds at its peak for ``src``, from the header alone. Raises ImageError."""
        return decode_cost(src, max_pixels=max_pixels, name=name, draft=self.draft_size)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """``N x 3 x S x S float32`` -> ``N x C float32``; a fixed-batch artifact is fed zero-padded slices."""
        if len(x) == 0:
            return np.zeros((0, self.num_classes), np.float32)
        out = predict_in_chunks(self.runner.predict, np.ascontiguousarray(x, np.float32), self.runner.batch_size)
        return np.asarray(out, np.float32).reshape(len(x), -1)

    def results(self, logits: np.ndarray, topk: int = 5) -> list[dict]:
        """One dict per row: ``label``, ``index``, ``score`` (softmax) and ``topk`` (label, index, score)."""
        probs = softmax(logits)
        k = max(1, min(int(topk), logits.shape[1]))
        out = []
        for row, p in zip(logits, probs, strict=True):
            order = np.argsort(-row, kind="stable")[:k]  # order[0] == argmax (first max on ties), as bench scores
            top = [{"label": self._name(int(j)), "index": int(j), "score": float(p[j])} for j in order]
            out.append({**top[0], "topk": top})
        return out

    def _name(self, j: int) -> str:
        return self.class_names[j] if j < len(self.class_names) else str(j)

    def predict(self, images: list[Image.Image | bytes | str | Path], topk: int = 5) -> list[dict]:
        """Classify PIL images, encoded bytes or paths."""
        arrs = [self.decode(im) for im in images]
        x = np.stack(arrs) if arrs else np.zeros((0, *self.input_shape), np.float32)
        return self.results(self.logits(x), topk)

    def describe(self) -> dict:
        return {"artifact": self.entry.name, "file": self.entry.file, "sha256": self.entry.sha256,
                "runtime": self.runner.runtime, "device": self.runner.device, "threads": self.runner.threads,
                "fixed_batch": self.runner.batch_size, "input_shape": list(self.input_shape),
                "classes": self.num_classes, "load_s": round(self.load_s, 4), "selection": self.selection}

    def close(self) -> None:
        self.runner.close()


def _bundle_of(path: Path) -> tuple[Path, Manifest, str | None]:
    """BUNDLE dir / manifest.json / an artifact file inside a bundle -> (bundle dir, manifest, file name or None)."""
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    if path.is_dir() or path.name == MANIFEST:
        bundle = path if path.is_dir() else path.parent
        return bundle, load_manifest(bundle), None
    bundle = path.parent
    if not (bundle / MANIFEST).is_file():
        raise UserError(f"{path}: no {MANIFEST} beside the artifact, so its preprocessing and class names are "
                        "unknown; pass the bundle folder")
    return bundle, load_manifest(bundle), path.name


def load_predictor(path: str | Path, artifact: str = "auto", threads: int | None = 1, device: str = "cpu",
                   bench_json: str | Path | None = None, tolerance: float = 1.0, log=lambda m: None) -> Predictor:
    """Open ``path`` (bundle, manifest or an artifact file in a bundle) with ``artifact``: ``auto`` or
    ``format-precision`` (e.g. ``onnx-int8``). ``auto``: see :func:`edgecv.serve.select.choose`."""
    from edgecv.serve.select import choose

    t0 = time.perf_counter()
    bundle, man, file = _bundle_of(Path(path))
    runnable = man.ok_artifacts()
    if file is not None:
        picked = [e for e in man.artifacts if e.file == file]
        if not picked:
            raise UserError(f"{path}: not listed in {bundle / MANIFEST}")
        if not picked[0].runtime or picked[0].status != "ok":
            raise UserError(f"{path}: artifact status is {picked[0].status} ({picked[0].error or 'not runnable'})")
        entry, runner, sel = picked[0], None, {"how": "file"}
    elif artifact and artifact != "auto":
        names = [e.name for e in runnable]
        if artifact not in names:
            raise UserError(f"--artifact {artifact}: not a runnable artifact of {bundle} "
                            f"(has: {', '.join(names) or 'none'})")
        entry, runner, sel = runnable[names.index(artifact)], None, {"how": "explicit"}
    else:
        size = Preprocess.from_dict(man.preprocess).input_size
        entry, runner, sel = choose(bundle, runnable, size, threads=threads, device=device, bench_json=bench_json,
                                    tolerance=tolerance, log=log)
    if runner is None:
        try:
            runner = runner_for_entry(bundle, entry, threads=threads, device=device)
        except RuntimeUnavailable as e:
            raise UserError(f"{entry.name}: cannot run here: {e}") from None
    return Predictor(bundle, man, entry, runner, load_s=time.perf_counter() - t0, selection=sel)
