"""The preprocessing contract shared by training, evaluation and every runtime.

A :class:`Preprocess` is saved in every checkpoint and every bundle manifest. All code paths that turn an
image into a model input call :meth:`Preprocess.to_array` / :meth:`Preprocess.eval_transform`, so ONNX
Runtime, OpenVINO, ExecuTorch and PyTorch see bit-identical inputs.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from edgecv.data.augment import PRESETS, Augment, centre_crop
from edgecv.data.decode import BASE_INFO, decode_image
from edgecv.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERP = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


@functools.lru_cache(maxsize=16)
def _levels(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """``(3, 256) float32``: channel ``c``'s normalised value of every 8-bit level, ``(v / 255 - mean) / std`` in
    float32 (the same operations, in the same order, as the per-pixel path)."""
    v = np.arange(256, dtype=np.float32)[None, :] / 255.0
    t = (v - np.asarray(mean, np.float32)[:, None]) / np.asarray(std, np.float32)[:, None]
    t.setflags(write=False)
    return t


@dataclass(frozen=True)
class Preprocess:
    """How a decoded image becomes an ``NCHW float32`` tensor.

    ``resize``: the shorter side is resized to ``round(input_size / crop_pct)``, then the centre
    ``input_size`` square is cropped (``crop_pct=1.0`` resizes the shorter side straight to ``input_size``).
    """

    input_size: int = 224
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"
    layout: str = "NCHW"
    dtype: str = "float32"
    # training-time augmentation policy (not used by runtimes)
    hflip: bool = True
    augment: str = ""  # the preset (edgecv.data.augment.PRESETS); "" (files written before presets) = "light"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.augment and self.augment not in PRESETS:
            raise UserError(
                f"unknown augmentation preset '{self.augment}' (expected one of {', '.join(PRESETS)})"
            )

    # -- (de)serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("mean", "std"):
            if k in known:
                known[k] = tuple(float(x) for x in known[k])
        return cls(**known)

    def with_size(self, input_size: int) -> Preprocess:
        d = self.to_dict()
        d["input_size"] = int(input_size)
        return Preprocess.from_dict(d)

    def with_augment(self, preset: str) -> Preprocess:
        d = self.to_dict()
        d["augment"] = str(preset)
        return Preprocess.from_dict(d)

    @property
    def resize_size(self) -> int:
        return int(round(self.input_size / self.crop_pct))

    @property
    def augment_preset(self) -> str:
        """The training augmentation preset in effect (``light`` for files that predate presets)."""
        return self.augment or "light"

    def augmenter(self) -> Augment:
        return Augment(self.augment_preset, self.input_size, self.hflip)

    # -- transforms ----------------------------------------------------------------------------------------
    def train_base(self, img: Image.Image) -> Image.Image:
        """Decode + resize of the shorter side to :attr:`resize_size` (deterministic: the image augmentation
        starts from, and what the decode cache memoizes)."""
        img = decode_image(img)  # any mode -> 8-bit RGB by the one set of rules (the image itself when it is)
        made_for = img.info.get(BASE_INFO) if isinstance(img, Image.Image) else None
        if made_for is not None and tuple(made_for[:2]) != (self.resize_size, self.interpolation):
            img = decode_image(made_for[2])  # a decode-cache image of another resize policy: the file itself
        w, h = img.size
        s = self.resize_size
        if w <= h:
            nw, nh = s, max(1, int(round(h * s / w)))
        else:
            nw, nh = max(1, int(round(w * s / h))), s
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), _INTERP[self.interpolation])
        return img

    def _resize_crop(self, img: Image.Image) -> Image.Image:
        return centre_crop(self.train_base(img), self.input_size)

    def _normalize_array(self, img: Image.Image) -> np.ndarray:
        a = np.asarray(img)
        if self.channel_order == "BGR":
            a = a[..., ::-1]
        if a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3:
            # one table lookup per pixel: the table holds this very arithmetic for each of the 256 levels, so the
            # result is bit-identical to the float path below (tests/test_data.py), 1.4-2.3x faster at 64-224 px
            # (benchmarks/step_parts.py)
            lut = _levels(self.mean, self.std)
            out = np.empty((3, *a.shape[:2]), np.float32)
            for c in range(3):
                np.take(lut[c], a[..., c], out=out[c])
            return out
        a = (a.astype(np.float32) / 255.0 - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(a.transpose(2, 0, 1))

    def to_array(self, img: Image.Image) -> np.ndarray:
        """PIL image -> ``CHW float32`` array, normalised. The single source of truth for inference."""
        return self._normalize_array(self._resize_crop(img))

    def normalize(self, img: Image.Image):
        """An ``input_size`` RGB PIL image -> ``CHW float32`` torch tensor (the arithmetic of :meth:`to_array`)."""
        import torch

        return torch.from_numpy(self._normalize_array(img))

    def eval_transform(self):
        import torch

        def _t(img: Image.Image):
            return torch.from_numpy(self.to_array(img))

        return _t

    def train_transform(self):
        """``normalize(augmenter()(train_base(img)))``: one random view of the recorded preset per call."""
        aug = self.augmenter()

        def _t(img: Image.Image):
            return self.normalize(aug(self.train_base(img)))

        return _t
