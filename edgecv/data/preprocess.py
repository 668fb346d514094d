"""The preprocessing contract shared by training, evaluation and every runtime.

A :class:`Preprocess` is saved in every checkpoint and every bundle manifest. All code paths that turn an
image into a model input call :meth:`Preprocess.to_array` / :meth:`Preprocess.eval_transform`, so ONNX
Runtime, OpenVINO, ExecuTorch and PyTorch see bit-identical inputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from edgecv.data.decode import decode_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERP = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


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
    extra: dict = field(default_factory=dict)

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

    @property
    def resize_size(self) -> int:
        return int(round(self.input_size / self.crop_pct))

    # -- transforms ----------------------------------------------------------------------------------------
    def _resize_crop(self, img: Image.Image) -> Image.Image:
        img = decode_image(img)  # any mode -> 8-bit RGB by the one set of rules (the image itself when it is)
        w, h = img.size
        s = self.resize_size
        if w <= h:
            nw, nh = s, max(1, int(round(h * s / w)))
        else:
            nw, nh = max(1, int(round(w * s / h))), s
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), _INTERP[self.interpolation])
        left = (nw - self.input_size) // 2
        top = (nh - self.input_size) // 2
        return img.crop((left, top, left + self.input_size, top + self.input_size))

    def to_array(self, img: Image.Image) -> np.ndarray:
        """PIL image -> ``CHW float32`` array, normalised. The single source of truth for inference."""
        img = self._resize_crop(img)
        a = np.asarray(img, dtype=np.float32) / 255.0
        if self.channel_order == "BGR":
            a = a[..., ::-1]
        a = (a - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(a.transpose(2, 0, 1))

    def eval_transform(self):
        import torch

        def _t(img: Image.Image):
            return torch.from_numpy(self.to_array(img))

        return _t

    def train_transform(self):
        """Light augmentation for small data: resize, random crop with padding, optional flip."""
        import torch
        from torchvision import transforms as T

        pad = max(1, self.input_size // 8)
        aug = [T.RandomCrop(self.input_size, padding=pad, padding_mode="reflect")]
        if self.hflip:
            aug.append(T.RandomHorizontalFlip())
        aug = T.Compose(aug)

        def _t(img: Image.Image):
            img = self._resize_crop(img)
            img = aug(img)
            a = np.asarray(img, dtype=np.float32) / 255.0
            if self.channel_order == "BGR":
                a = a[..., ::-1]
            a = (a - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
            return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))

        return _t
