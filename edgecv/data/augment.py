"""Training-time augmentation presets, as replayable views of a deterministic base image.

The base image is :meth:`Preprocess.train_base` (decode + shorter side resized to ``resize_size``; this is what
the decode cache memoizes). One augmented view is ``apply(base, sample(w, h, g))``: :meth:`Augment.sample` draws
every random number of the view from torch's RNG (``g`` or the global one) into a fixed-length tuple of floats,
and :meth:`Augment.apply` is a pure function of ``(base, params)``, so a view can be replayed pixel for pixel.

Presets (``PRESETS``):

* ``none``: the centre ``input_size`` crop of the base (what evaluation sees); no randomness.
* ``light``: centre crop, reflect-pad by ``input_size // 8``, random ``input_size`` crop, horizontal flip (if
  ``hflip``). Draws its numbers in the same order as the historical
  ``RandomCrop(padding, reflect) + RandomHorizontalFlip`` transform, so with the same global seed it gives the
  same pixels. For tiny images (CIFAR-sized).
* ``standard``: ``RandomResizedCrop(input_size, scale=(0.25, 1))`` of the base, flip, mild colour jitter
  (brightness, contrast, saturation factors in [0.8, 1.2], applied in that order).
* ``strong``: ``standard`` + TrivialAugmentWide + random erasing (p=0.25, filled with the ImageNet mean colour,
  i.e. ~0 after normalisation). MixUp/CutMix for this preset happen on batches, in the training loop.

Parameter layout (``N_PARAMS`` floats, unused slots 0): ``[0:4]`` crop top, left, height, width (light: top, left
in the padded image); ``[4]`` flip 0/1; ``[5:8]`` brightness, contrast, saturation factors; ``[8]`` the seed of the
TrivialAugmentWide draw; ``[9:14]`` erase 0/1, top, left, height, width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from edgecv.errors import UserError

if TYPE_CHECKING:
    import torch

PRESETS = ("none", "light", "standard", "strong")
RRC_SCALE = (0.25, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
JITTER = 0.2
ERASE_P = 0.25
ERASE_SCALE = (0.02, 0.33)
ERASE_RATIO = (0.3, 3.3)
ERASE_FILL = (124, 116, 104)  # ImageNet mean * 255
_SEED_MAX = 1 << 24  # integers below this are exact in a float32/float64 slot


def default_preset(input_size: int) -> str:
    """``light`` for tiny inputs (<= 64 px, where a random resized crop throws away too much), else ``standard``."""
    return "light" if int(input_size) <= 64 else "standard"


def resolve_preset(requested: str, input_size: int, recorded: str | None = None) -> str:
    """The preset a training uses: ``requested`` unless it is ``auto``; then ``recorded`` (the preset a teacher
    checkpoint was trained with: compress reuses it for the student stages) or, without one,
    :func:`default_preset` of ``input_size``."""
    if requested == "auto":
        return recorded or default_preset(input_size)
    if requested not in PRESETS:
        raise UserError(f"--augment must be auto or one of {', '.join(PRESETS)}, got '{requested}'")
    return requested


def centre_crop(img: Image.Image, size: int) -> Image.Image:
    """The centre ``size`` square (offsets rounded down; black beyond the edges): the one centre-crop rule of
    evaluation (:meth:`Preprocess.to_array`) and of the ``none``/``light`` presets."""
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def _randint(n: int, g: torch.Generator | None) -> int:
    """An integer in ``[0, n)`` — the same call torchvision's random transforms make."""
    import torch

    return int(torch.randint(0, n, size=(1,), generator=g).item())


def _uniform(lo: float, hi: float, g: torch.Generator | None) -> float:
    import torch

    return float(torch.empty(1).uniform_(lo, hi, generator=g).item())


def _rect(w: int, h: int, scale, ratio, g, tries: int = 10) -> tuple[int, int, int, int] | None:
    """A random rectangle ``(top, left, height, width)`` of ``scale`` x the area and aspect in ``ratio``
    (RandomResizedCrop's rule); ``None`` when ``tries`` draws all fall outside the image."""
    area = w * h
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(tries):
        target = area * _uniform(scale[0], scale[1], g)
        aspect = math.exp(_uniform(log_ratio[0], log_ratio[1], g))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return _randint(h - ch + 1, g), _randint(w - cw + 1, g), ch, cw
    return None


def _centre_rect(w: int, h: int) -> tuple[int, int, int, int]:
    """RandomResizedCrop's fallback: the centre crop with the aspect clamped into ``RRC_RATIO``."""
    aspect = w / h
    if aspect < RRC_RATIO[0]:
        cw, ch = w, int(round(w / RRC_RATIO[0]))
    elif aspect > RRC_RATIO[1]:
        ch, cw = h, int(round(h * RRC_RATIO[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


@dataclass(frozen=True)
class Augment:
    """One preset at one input size; ``__call__(base)`` draws and applies a view."""

    preset: str
    input_size: int
    hflip: bool = True

    N_PARAMS = 16

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise UserError(
                f"unknown augmentation preset '{self.preset}' (expected one of {', '.join(PRESETS)})"
            )
        if int(self.input_size) < 1:
            raise UserError(f"augmentation input size must be >= 1, got {self.input_size}")

    @property
    def replayable(self) -> bool:
        """Every preset is: the TrivialAugmentWide draw of ``strong`` is replayed from its recorded seed."""
        return True

    @property
    def pad(self) -> int:
        return max(1, self.input_size // 8)

    # -- drawing -------------------------------------------------------------------------------------------
    def sample(self, w: int, h: int, g: torch.Generator | None = None) -> tuple[float, ...]:
        import torch

        p = [0.0] * self.N_PARAMS
        if self.preset == "none":
            return tuple(p)
        if self.preset == "light":
            side = self.input_size + 2 * self.pad  # the centre crop, padded
            p[0] = float(_randint(side - self.input_size + 1, g))
            p[1] = float(_randint(side - self.input_size + 1, g))
            p[4] = float(self.hflip and bool(torch.rand(1, generator=g).item() < 0.5))
            return tuple(p)
        rect = _rect(w, h, RRC_SCALE, RRC_RATIO, g) or _centre_rect(w, h)
        p[0:4] = [float(v) for v in rect]
        p[4] = float(self.hflip and bool(torch.rand(1, generator=g).item() < 0.5))
        p[5:8] = [_uniform(1.0 - JITTER, 1.0 + JITTER, g) for _ in range(3)]
        if self.preset == "strong":
            p[8] = float(_randint(_SEED_MAX, g))
            if torch.rand(1, generator=g).item() < ERASE_P:
                s = self.input_size
                er = _rect(s, s, ERASE_SCALE, ERASE_RATIO, g)
                if er is not None:
                    p[9] = 1.0
                    p[10:14] = [float(v) for v in er]
        return tuple(p)

    # -- applying ------------------------------------------------------------------------------------------
    def apply(self, base: Image.Image, params: tuple[float, ...]) -> Image.Image:
        from torchvision.transforms.v2 import functional as F

        if len(params) != self.N_PARAMS:
            raise ValueError(f"expected {self.N_PARAMS} augmentation parameters, got {len(params)}")
        base = base if base.mode == "RGB" else base.convert("RGB")
        s = self.input_size
        p = [float(v) for v in params]
        if self.preset in ("none", "light"):
            img = centre_crop(base, s)
            if self.preset == "light":
                img = F.pad(img, [self.pad], padding_mode="reflect")
                img = F.crop(img, int(p[0]), int(p[1]), s, s)
        else:
            top, left, ch, cw = (int(v) for v in p[0:4])
            img = F.resized_crop(base, top, left, ch, cw, [s, s], interpolation=F.InterpolationMode.BILINEAR)
        if p[4] >= 0.5:
            img = F.horizontal_flip(img)
        if self.preset in ("standard", "strong"):
            img = F.adjust_brightness(img, p[5])
            img = F.adjust_contrast(img, p[6])
            img = F.adjust_saturation(img, p[7])
        if self.preset == "strong":
            img = _trivial_augment(img, int(p[8]))
            if p[9] >= 0.5:
                img = img.copy()
                top, left, eh, ew = (int(v) for v in p[10:14])
                img.paste(ERASE_FILL, (left, top, left + ew, top + eh))
        return img

    def __call__(self, base: Image.Image, g: torch.Generator | None = None) -> Image.Image:
        return self.apply(base, self.sample(*base.size, g))


def _trivial_augment(img: Image.Image, seed: int) -> Image.Image:
    """TrivialAugmentWide with its draw replayed from ``seed`` (the global RNG is forked, so it is left as it was)."""
    import torch
    from torchvision.transforms import v2

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return v2.TrivialAugmentWide()(img)
