"""The one image decoder: file path, bytes or PIL image -> 8-bit RGB PIL image.

Training, evaluation, bench, predict and serve all decode through :func:`decode_image`, so every path sees the
same pixels. Mode rules (every Pillow mode becomes ``RGB``):

* ``RGB`` / ``L`` / ``1`` (0 -> black, 1 -> white) / ``P`` without transparency / ``YCbCr`` / ``HSV`` / ``RGBX``:
  plain conversion.
* 16-bit and wider grey (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``, ``I``): values are read as 16-bit
  (0..65535) and *scaled* to 0..255 (``round(v / 257)``), never clipped at 255. ``F`` (float): the smallest of
  the ranges [0, 1], [0, 255], [0, 65535] that holds every pixel is scaled to 0..255 (negatives clip to 0).
* Alpha (``RGBA``, ``LA``, ``PA``, ``La``, ``RGBa``, a ``P``/``L``/``RGB`` image with a ``transparency`` entry):
  composited over :data:`BACKGROUND` (opaque **white**), i.e. a transparent pixel reads as white.
* ``CMYK``: through the embedded ICC profile to sRGB when there is one, else Pillow's plain conversion.
* ``LAB`` and any other mode: Pillow's own conversion to ``RGB`` (CIE-Lab -> sRGB for ``LAB``).
* The EXIF orientation tag is applied (a phone photo taken in portrait is upright), then the first frame of a
  multi-frame file is used.

Readable types: the Pillow formats in :data:`READABLE_FORMATS` that this Pillow build can decode; their file
name endings (:data:`IMAGE_EXTENSIONS`, from Pillow's own registry) are the one list every command uses to pick
images out of a folder (:mod:`edgecv.data.scan`). A file named explicitly is decoded whatever its name.

Bad input is one :class:`ImageError` line (a :class:`~edgecv.errors.UserError`, exit 2): not an image,
truncated, or more pixels than ``max_pixels`` (decompression-bomb guard, checked from the header before any
pixel is decoded — :func:`probe_image` reports the header alone).
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from edgecv.errors import UserError

BACKGROUND = (255, 255, 255)
"""The colour transparent pixels are composited over (opaque white)."""

DEFAULT_MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)
"""Images with more pixels than this are refused before decoding (Pillow's own bomb threshold)."""

BASE_INFO = "edgecv_base"
"""``PIL.Image.info`` key of a decode-cache image (:mod:`edgecv.data.cache`): ``(resize_size, interpolation,
source file)`` of its base step; ``Preprocess.train_base`` of another policy decodes the source file instead."""

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image

_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")

READABLE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "AVIF", "JPEG2000")
"""Pillow formats the decoder reads (each a test decodes); those needing a codec count only where Pillow has it."""
_CODEC = {"WEBP": "webp", "AVIF": "avif", "JPEG2000": "jpg_2000"}  # format -> PIL.features name


def _readable_extensions() -> tuple[str, ...]:
    def built(fmt: str) -> bool:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an older Pillow that does not know the feature name: False
            return fmt in Image.OPEN and (fmt not in _CODEC or bool(features.check(_CODEC[fmt])))

    Image.init()  # every plugin registered (Pillow loads them lazily)
    ok = {f for f in READABLE_FORMATS if built(f)}
    return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in ok))


IMAGE_EXTENSIONS = _readable_extensions()
"""File name endings (lower case, with the dot) of the types the decoder reads: the one list of every command."""


class ImageError(UserError):
    """An image that cannot be decoded (one line: which image and why)."""


class ImageTooLarge(ImageError):
    """An image whose header declares more pixels than allowed."""


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mode: str
    format: str | None

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _name(src: ImageSource, name: str | None) -> str:
    if name:
        return name
    if isinstance(src, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(src, Image.Image):
        return "<image>"
    return str(src)


def _open(src: ImageSource, label: str) -> Image.Image:
    """``Image.open`` (header only) with every failure as one :class:`ImageError` line."""
    fp = io.BytesIO(bytes(src)) if isinstance(src, (bytes, bytearray, memoryview)) else src
    try:
        return Image.open(fp)
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"image {label} is too large to decode safely: {e}") from None
    except FileNotFoundError:
        raise ImageError(f"cannot read image {label}: no such file") from None
    except UnidentifiedImageError:
        raise ImageError(f"cannot read image {label}: not an image (or a format Pillow cannot read)") from None
    except OSError as e:
        raise ImageError(f"cannot read image {label}: {e}") from None


def _check_size(im: Image.Image, label: str, max_pixels: int | None) -> None:
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    w, h = im.size
    if w * h > limit:
        raise ImageTooLarge(f"image {label} is {w}x{h} = {w * h:,} pixels, more than the {limit:,} allowed")
    if w < 1 or h < 1:
        raise ImageError(f"cannot read image {label}: it is {w}x{h} pixels")


def probe_image(src: ImageSource, *, name: str | None = None, max_pixels: int | None = None) -> ImageInfo:
    """Width, height, mode and format from the header alone (no pixel is decoded).

    Raises :class:`ImageError` for a non-image and :class:`ImageTooLarge` above ``max_pixels`` (default
    :data:`DEFAULT_MAX_PIXELS`).
    """
    label = _name(src, name)
    if isinstance(src, Image.Image):
        im = src
    else:
        im = _open(src, label)
    try:
        _check_size(im, label, max_pixels)
        return ImageInfo(im.width, im.height, im.mode, im.format)
    finally:
        if im is not src:
            im.close()


def decode_image(src: ImageSource, *, name: str | None = None, max_pixels: int | None = None,
                 draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode ``src`` into an 8-bit ``RGB`` image following the module's mode rules.

    ``draft``: let a JPEG decode at a reduced scale (1/2, 1/4 or 1/8) no smaller than this size on either side
    (libjpeg DCT scaling; it still reads the whole stream, so truncation is still found). The dataset scan asks
    for ``(1, 1)``; ``Predictor.decode`` (predict, serve) for the size its resize keeps.
    """
    label = _name(src, name)
    if isinstance(src, Image.Image):
        _check_size(src, label, max_pixels)
        if src.format is None:  # made in memory: nothing left to decode
            return to_rgb(src)
    opened = src if isinstance(src, Image.Image) else _open(src, label)
    try:
        _check_size(opened, label, max_pixels)
        if draft is not None and opened.format == "JPEG":
            opened.draft(None, draft)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked above
            opened.load()
            upright = _upright(opened)
            out = to_rgb(upright)
        # never hand back the object we are about to close: a new image on the same pixels (no copy, so a large
        # decode holds its pixels once)
        return opened._new(opened.im) if out is opened else out
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # Pillow's decoders raise these for corrupt data
        raise ImageError(f"cannot read image {label}: {_reason(e)}") from None
    finally:
        if opened is not src:
            opened.close()


def decode_cost(src: ImageSource, *, name: str | None = None, max_pixels: int | None = None,
                draft: tuple[int, int] | None = None) -> int:
    """About the most bytes :func:`decode_image` (same arguments) holds at once, from the header alone.

    Pillow stores 1 (``1``/``L``/``P``), 2 (16-bit grey) or 4 bytes a pixel (everything else, RGB included);
    an image that is not plain RGB, or that its EXIF tag may turn, passes through a second 4-byte buffer; 16-bit
    and float greys through float64 arrays. The EXIF tag is read only where the header holds it (a JPEG, a PNG
    with its ``eXIf`` chunk first): elsewhere Pillow would decode the image to find it, so a turn is assumed.
    Raises like :func:`probe_image`.
    """
    label = _name(src, name)
    im = src if isinstance(src, Image.Image) else _open(src, label)
    try:
        _check_size(im, label, max_pixels)
        if draft is not None and im.format == "JPEG" and im is not src:
            im.draft(None, draft)
        px, mode = im.width * im.height, im.mode
        own = 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4
        plain = mode == "RGB" and "transparency" not in im.info and _upright_in_header(im)
        wide = 24 if mode in _WIDE_GREY or mode == "F" else 0
        return px * (own + (0 if plain else 4) + wide)
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # reading the EXIF block of a broken file
        raise ImageError(f"cannot read image {label}: {_reason(e)}") from None
    finally:
        if im is not src:
            im.close()


def _upright_in_header(im: Image.Image) -> bool:
    """The header says no EXIF turn (without decoding: ``getexif`` loads a PNG's pixels to look after them)."""
    if im.format == "JPEG":
        return im.getexif().get(0x0112, 1) in (1, None)
    raw = im.info.get("exif")
    if raw is None:
        return False
    exif = Image.Exif()
    exif.load(raw)
    return exif.get(0x0112, 1) in (1, None)


def _upright(im: Image.Image) -> Image.Image:
    """``im`` turned as its EXIF orientation tag says (``im`` itself when there is none)."""
    if im.getexif().get(0x0112, 1) in (1, None):
        return im
    return ImageOps.exif_transpose(im)


def _reason(e: Exception) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "truncated" in msg or isinstance(e, EOFError):
        return f"truncated or incomplete file ({msg})"
    return msg[:200]


def to_rgb(im: Image.Image) -> Image.Image:
    """A decoded image in any mode -> 8-bit ``RGB``; ``im`` itself when it already is plain RGB."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in _WIDE_GREY:
        a = np.asarray(im).astype(np.float64)
        return _grey_u8(np.clip(a, 0, 65535) / 257.0)
    if mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        top = float(a.max()) if a.size else 0.0
        scale = 255.0 if top <= 1.0 else 1.0 if top <= 255.0 else 1 / 257.0
        return _grey_u8(np.clip(a * scale, 0, 255))
    if mode == "CMYK":
        return _cmyk_to_rgb(im)
    if mode in ("La", "RGBa"):  # premultiplied alpha
        im = im.convert("LA" if mode == "La" else "RGBA")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        rgba = im if mode == "RGBA" else im.convert("RGBA")
        out = Image.new("RGB", rgba.size, BACKGROUND)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    try:
        return im.convert("RGB")
    except ValueError as e:
        raise ImageError(f"cannot convert image mode {mode} to RGB: {e}") from None


def _grey_u8(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.rint(a).astype(np.uint8)).convert("RGB")


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    icc = im.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # a broken or unusable profile: fall back to the plain conversion
            pass
    return im.convert("RGB")


def image_problem(path: str | Path, max_pixels: int | None = None, data: bytes | None = None) -> str | None:
    """Why loading ``path`` would fail (one line), or None. A reduced-scale full decode: what the dataset scan
    runs for every file, so ``--skip-bad`` skips exactly the images training and eval could not load.
    ``data``: the file's bytes when the caller has read them already (the scan hashes the same bytes)."""
    try:
        decode_image(path if data is None else data, name=str(path), max_pixels=max_pixels, draft=(1, 1)).close()
        return None
    except ImageError as e:
        msg = str(e)
        prefix = f"cannot read image {path}: "
        return msg[len(prefix):] if msg.startswith(prefix) else msg
