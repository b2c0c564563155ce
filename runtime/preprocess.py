"""The one implementation of image loading and eval preprocessing.

Training's validation/test transform, the ONNX verification and ``simpsons-infer`` all call
``preprocess``; that is what makes exported accuracy equal trained accuracy. numpy and Pillow
only: the runtime must not need torch.
"""

from __future__ import annotations

import functools
import os
import struct
import zlib
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from runtime.errors import SimpsonsError
from runtime.metadata import Preprocessing

ImageSource = Union[str, os.PathLike, Image.Image, np.ndarray]

ORIENTATION = 0x0112  # the EXIF tag
MAX_ASPECT = 4  # longer side / shorter side beyond which only the centre crop is resampled
_INTERPOLATION = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode (P, LA, RGBA, CMYK, I;16, L) to RGB; transparency is flattened onto white."""
    if img.getexif().get(ORIENTATION, 1) != 1:  # exif_transpose copies even when nothing turns
        img = ImageOps.exif_transpose(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    if img.mode.startswith("I;16") or img.mode == "I":
        array = np.asarray(img, dtype=np.float64)
        scale = 255.0 / max(float(array.max()), 1.0)
        img = Image.fromarray((array * scale).clip(0, 255).astype(np.uint8))
    return img.convert("RGB") if img.mode != "RGB" else img


class ImageError(SimpsonsError):
    """One picture cannot be used; the message says why, in a line."""


# What decoding a hostile file raises inside Pillow (truncated data, broken chunks, bombs).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, Image.DecompressionBombError)


def load_image(source: ImageSource, min_size: int | None = None) -> Image.Image:
    """Decode to RGB. With ``min_size``, JPEGs decode at a reduced scale (DCT draft mode) that
    still keeps both sides >= ``min_size``: several times faster on large frames. A file that
    cannot be decoded raises ``ImageError`` with a one-line reason."""
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim not in (2, 3) or (source.ndim == 3 and source.shape[2] not in (3, 4)):
            raise ImageError(f"array images must be uint8 HxW or HxWx3/4, got {source.dtype} {source.shape}")
        return to_rgb(Image.fromarray(source))
    if isinstance(source, Image.Image):
        return to_rgb(source)
    try:
        with Image.open(Path(source)) as img:
            if min_size and img.format == "JPEG":
                img.draft("RGB", (min_size, min_size))
            img.load()
            return to_rgb(img)
    except UnidentifiedImageError:
        raise ImageError("not an image (cannot identify the file format)") from None
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except DECODE_ERRORS as e:
        raise ImageError(f"cannot decode: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def decode(source: ImageSource) -> np.ndarray:
    """The decoded picture as RGB uint8 HxWx3: the input of the portable model, which resizes
    and normalises inside its graph (as a browser would feed it). Untouched, except that a
    picture more elongated than ``MAX_ASPECT`` keeps only its centre ``MAX_ASPECT``:1 part, all
    the centre crop can use, so the graph's resize never grows a 65000x1 strip to gigapixels."""
    array = np.asarray(load_image(source))
    h, w = array.shape[:2]
    if w > MAX_ASPECT * h:
        keep = MAX_ASPECT * h
        array = array[:, (w - keep) // 2 : (w - keep) // 2 + keep]
    elif h > MAX_ASPECT * w:
        keep = MAX_ASPECT * w
        array = array[(h - keep) // 2 : (h - keep) // 2 + keep]
    return array


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """Shorter side to ``shorter``, aspect kept; the rounding matches torchvision's Resize(int)."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def resize_crop(img: Image.Image, p: Preprocessing) -> Image.Image:
    """Resize the shorter side to ``resize_size``, then take the centre square (torchvision's
    rounding, pixel for pixel).

    A very elongated image (a 65000x1 strip) would resize to millions of pixels, so beyond
    ``MAX_ASPECT`` only the square is resampled: Pillow's ``box`` maps it onto the source at the
    full resize's scale, giving the same picture (to rounding) with work and memory bounded by
    the crop."""
    w, h = resized_size(img.width, img.height, p.resize_size)
    top = int(round((h - p.image_size) / 2.0))
    left = int(round((w - p.image_size) / 2.0))
    resample = _INTERPOLATION[p.interpolation]
    if max(w, h) <= MAX_ASPECT * p.resize_size:
        return img.resize((w, h), resample).crop((left, top, left + p.image_size, top + p.image_size))
    sx, sy = img.width / w, img.height / h
    box = (left * sx, top * sy, (left + p.image_size) * sx, (top + p.image_size) * sy)
    return img.resize((p.image_size, p.image_size), resample, box=box)


def normalise(img: Image.Image, p: Preprocessing) -> np.ndarray:
    """RGB uint8 HWC -> float32 CHW, ((x / 255) - mean) / std per channel.

    A 256-entry table per channel gives the same floats in one gather pass, twice as fast as
    the arithmetic: this runs once per image in the decoding threads."""
    array = np.asarray(img)
    out = np.empty((3, *array.shape[:2]), dtype=np.float32)
    table = _table(p.mean, p.std)
    for c in range(3):
        np.take(table[c], array[..., c], out=out[c])
    return out


@functools.lru_cache(maxsize=8)
def _table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    levels = np.arange(256, dtype=np.float32) / np.float32(255.0)
    return (levels[None, :] - np.asarray(mean, np.float32)[:, None]) / np.asarray(std, np.float32)[:, None]


def preprocess(source: ImageSource, p: Preprocessing) -> np.ndarray:
    """A file, PIL image or uint8 array -> the model's float32 CHW input."""
    return normalise(resize_crop(load_image(source, min_size=p.resize_size), p), p)
