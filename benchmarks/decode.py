#!/usr/bin/env python
"""JPEG decode + shorter-side resize throughput, per decoder, on real photos (one run, interleaved).

    .venv/bin/python benchmarks/decode.py [~/.cache/edgecv/hymenoptera] [--sizes 128 224] [--rounds 3]
    .venv/bin/python benchmarks/decode.py [ROOT] --epoch 128 [--rounds 3]

``--epoch S``: the data side of one training epoch alone (no model): every train image through the training
transform (the preset ``edgecv train`` picks at S px) and every val image through the eval transform, in
DataLoader batches of 32 with no worker, decoding live vs from the decode cache (built first, timed apart).

Every decoder turns the file's bytes (read into memory first: no disk time) into an RGB uint8 image whose
shorter side is the training size (the size computed from the header, the same for every decoder), the step
the decode cache memoizes. Rounds interleave the decoders (each round runs every decoder over every image, in a
rotated order); images/s is the median over rounds, on ONE thread (torch.set_num_threads(1): a DataLoader
worker decodes one image at a time). ``mad`` is the mean absolute difference, in 8-bit levels, of each
decoder's pixels from Pillow's full decode + resize (``pil_full``, today's path); ``max`` the largest.

Decoders: ``pil_full`` (edgecv.data.decode.decode_image + Pillow resize), ``pil_draft`` (the same with Pillow's
JPEG draft mode: libjpeg-turbo DCT scaling to the smallest 1/2^k scale whose both sides stay >= the size, then
the resize), ``tv`` (torchvision.io.decode_jpeg + torchvision antialiased resize), ``tv_pilresize``
(decode_jpeg, then Pillow's resize), ``simplejpeg`` / ``simplejpeg_scaled`` (simplejpeg's libjpeg-turbo,
full / min_width+min_height DCT scaling, then Pillow's resize) when simplejpeg is installed.
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, features

from edgecv.data.decode import decode_image

EXTS = (".jpg", ".jpeg")


def target(w: int, h: int, s: int) -> tuple[int, int]:
    return (s, max(1, round(h * s / w))) if w <= h else (max(1, round(w * s / h)), s)


def pil_resize(im: Image.Image, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(im if im.size == size else im.resize(size, Image.BILINEAR))


def decoders(s: int) -> dict:
    import torchvision.io as tio
    from torchvision.transforms.v2 import functional as F

    def pil_full(b, size):
        return pil_resize(decode_image(b), size)

    def pil_draft(b, size):
        return pil_resize(decode_image(b, draft=(s, s)), size)

    def tv(b, size):
        t = tio.decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8), mode=tio.ImageReadMode.RGB,
                            apply_exif_orientation=True)
        return F.resize(t, [size[1], size[0]], antialias=True).permute(1, 2, 0).numpy()

    def tv_pilresize(b, size):
        t = tio.decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8), mode=tio.ImageReadMode.RGB,
                            apply_exif_orientation=True)
        return pil_resize(Image.fromarray(t.permute(1, 2, 0).numpy()), size)

    out = {"pil_full": pil_full, "pil_draft": pil_draft, "tv": tv, "tv_pilresize": tv_pilresize}
    try:
        import simplejpeg
    except ImportError:
        return out

    def sj(b, size):
        return pil_resize(Image.fromarray(simplejpeg.decode_jpeg(b, colorspace="RGB")), size)

    def sj_scaled(b, size):
        return pil_resize(Image.fromarray(simplejpeg.decode_jpeg(b, colorspace="RGB", min_width=s, min_height=s)),
                          size)

    out.update(simplejpeg=sj, simplejpeg_scaled=sj_scaled)
    return out


def data_epoch(root: str, size: int, rounds: int) -> None:
    import os
    import tempfile

    from torch.utils.data import DataLoader

    from edgecv.data import cache as C
    from edgecv.data.augment import resolve_preset
    from edgecv.data.datasets import load_train_val

    os.environ["EDGECV_CACHE"] = tempfile.mkdtemp(prefix="edgecv-decode-bench-")
    live = load_train_val(root, img_size=size)
    live.preprocess = pre = live.preprocess.with_augment(resolve_preset("auto", size))
    cached = load_train_val(root, img_size=size, preprocess=pre)
    t0 = time.perf_counter()
    rec = C.attach(cached, "auto")
    build = time.perf_counter() - t0
    runs = {"live": live, "cached": cached}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(rounds):
        for k in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            b = runs[k]
            t0 = time.perf_counter()
            for ds, tf, shuffle in ((b.train, pre.train_transform(), True), (b.val, pre.eval_transform(), False)):
                for _ in DataLoader(ds.with_transform(tf), batch_size=32, shuffle=shuffle, num_workers=0):
                    pass
            times[k].append(time.perf_counter() - t0)
    n = len(live.train) + len(live.val)
    print(f"\ndata side of one epoch at {size} px ({len(live.train)} train + {len(live.val)} val images, preset "
          f"{pre.augment}); cache {rec['bytes'] / 1e6:.1f} MB built in {build:.2f} s\n"
          "| inputs | s per epoch (median of rounds) | images/s |\n|---|---|---|")
    for k, ts in times.items():
        m = statistics.median(ts)
        print(f"| {k} | {m:.2f} | {n / m:.0f} |")
    print(f"| cached / live | {statistics.median(times['cached']) / statistics.median(times['live']):.2f} | |")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", nargs="?", default=str(Path("~/.cache/edgecv/hymenoptera").expanduser()))
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epoch", type=int, default=None, metavar="S", help="time the data side of an epoch at S px")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.epoch:
        data_epoch(a.root, a.epoch, a.rounds)
        return 0
    files = sorted(p for p in Path(a.root).rglob("*") if p.suffix.lower() in EXTS)
    if not files:
        print(f"no JPEG under {a.root}", file=sys.stderr)
        return 2
    blobs = [p.read_bytes() for p in files]
    dims = [Image.open(io.BytesIO(b)).size for b in blobs]
    print(f"{len(files)} JPEGs under {a.root}, median {statistics.median(w for w, _ in dims):.0f}x"
          f"{statistics.median(h for _, h in dims):.0f} px; Pillow {Image.__version__} (libjpeg-turbo "
          f"{features.version('jpg')}), torch {torch.__version__}, {platform.processor() or platform.machine()}; "
          "1 thread")
    for s in a.sizes:
        decs = decoders(s)
        sizes = [target(w, h, s) for w, h in dims]
        ref = [decs["pil_full"](b, z) for b, z in zip(blobs, sizes, strict=True)]
        times: dict[str, list[float]] = {k: [] for k in decs}
        diffs: dict[str, tuple[float, int]] = {}
        names = list(decs)
        for r in range(a.rounds):
            for k in names[r % len(names):] + names[:r % len(names)]:
                t0 = time.perf_counter()
                outs = [decs[k](b, z) for b, z in zip(blobs, sizes, strict=True)]
                times[k].append(time.perf_counter() - t0)
                if r == 0:
                    d = [np.abs(o.astype(np.int16) - q.astype(np.int16)) for o, q in zip(outs, ref, strict=True)]
                    diffs[k] = (float(np.mean([x.mean() for x in d])), int(max(x.max() for x in d)))
        base = len(blobs) / statistics.median(times["pil_full"])
        print(f"\nsize {s} (shorter side)\n| decoder | images/s | x pil_full | mad | max |\n|---|---|---|---|---|")
        for k in names:
            ips = len(blobs) / statistics.median(times[k])
            print(f"| {k} | {ips:.0f} | {ips / base:.2f} | {diffs[k][0]:.3f} | {diffs[k][1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
