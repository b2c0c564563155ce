"""The one implementation of image loading and eval preprocessing.

Training's validation/test transform, the ONNX verification and ``simpsons-infer`` all call
``preprocess``; that is what makes exported accuracy equal trained accuracy. numpy and Pillow
only: the runtime must not need torch.

Every picture is decoded through ``decoded``, which is where hostile files are contained: a
failure of any kind inside the image library becomes one ``ImageError`` (a row with a reason,
never the end of a run), a picture above ``MAX_PIXELS`` is refused before its pixels are
allocated, and the pictures being decoded at once, across threads, hold at most ``MAX_PIXELS``
pixels together, so memory does not grow with the input nor with the number of threads.
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TypeVar, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from runtime.errors import SimpsonsError
from runtime.metadata import Preprocessing

ImageSource = Union[str, os.PathLike, Image.Image, np.ndarray]
T = TypeVar("T")

ORIENTATION = 0x0112  # the EXIF tag
MAX_ASPECT = 4  # longer side / shorter side beyond which only the centre crop is resampled
# The most pixels one picture may have once decoded (after a JPEG's reduction on decode), e.g.
# 6900x4600. Decoding it and flattening its alpha holds about 12 bytes per pixel (about 380 MB
# at the limit, under 600 MB for the whole process); a larger picture is refused with a
# reason before its pixels are allocated. JPEG photos of any camera fit: they decode reduced.
MAX_PIXELS = 32_000_000
_INTERPOLATION = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
_TRANSPOSE = {  # EXIF orientation -> what turns the stored pixels upright (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}
_ROWS_PIXELS = 1 << 20  # 16-bit pictures are scaled to 8 bits this many pixels at a time


class ImageError(SimpsonsError):
    """One picture cannot be used; the message says why, in a line."""


class NotAnImageError(ImageError):
    """The file is no picture at all (its format is not recognised), rather than a damaged one."""


def orientation(img: Image.Image) -> int:
    """The EXIF orientation (1..8), or 1 (as stored) when there is none or it cannot be read:
    a mistyped or truncated EXIF block must not cost the picture, only its rotation."""
    try:
        value = img.getexif().get(ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - Pillow's EXIF parser raises anything on a hostile block
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def _to_8bit(img: Image.Image) -> Image.Image:
    """A 16- or 32-bit grey picture to 8 bits, its maximum to 255. The float64 arithmetic runs
    over slices of rows, so a 13000x13000 16-bit picture needs no 8-bytes-per-pixel copy."""
    array = np.asarray(img)
    scale = 255.0 / max(float(array.max()), 1.0)
    out = np.empty(array.shape, dtype=np.uint8)
    rows = max(1, _ROWS_PIXELS // max(1, array.shape[1]))
    for top in range(0, array.shape[0], rows):
        out[top : top + rows] = (array[top : top + rows] * scale).clip(0, 255)  # truncated, as astype
    return Image.fromarray(out)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode (P, LA, RGBA, CMYK, I;16, L) to RGB, upright by its EXIF orientation;
    transparency is flattened onto white."""
    turn = _TRANSPOSE.get(orientation(img))
    if turn is not None:  # transposed here, not by exif_transpose: that re-encodes the EXIF, and fails on a mistyped tag
        img = img.transpose(turn)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), rgba).convert("RGB")
    if img.mode.startswith("I;16") or img.mode == "I":
        img = _to_8bit(img)
    return img.convert("RGB") if img.mode != "RGB" else img


@contextlib.contextmanager
def decoding() -> Iterator[None]:
    """The boundary around one picture's decoding. Hostile files make Pillow's plugins raise
    nearly anything (TypeError from TIFF tags, struct.error from EXIF, EOFError, zlib.error,
    IndexError...), so every exception inside becomes an ``ImageError`` with a one-line reason:
    one file is one error row, never the end of a run. MemoryError and KeyboardInterrupt pass
    through: they are about the process, not the file."""
    try:
        yield
    except (ImageError, MemoryError):
        raise
    except UnidentifiedImageError:
        raise NotAnImageError("not an image (cannot identify the file format)") from None
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except Exception as e:  # noqa: BLE001 - see the docstring
        raise ImageError(f"cannot decode: {str(e).splitlines()[0] if str(e).strip() else type(e).__name__}") from None


class PixelBudget:
    """Pixels being decoded at once in this process, across threads: a decoder waits until its
    picture fits, so eight threads on eight large pictures take turns instead of multiplying
    the peak by eight. A picture is counted from before its decoding to the end of its
    conversion, when only the small result remains."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = min(pixels, self.limit)
        with self._changed:
            self._changed.wait_for(lambda: self.used + pixels <= self.limit)
            self.used += pixels
        try:
            yield
        finally:
            with self._changed:
                self.used -= pixels
                self._changed.notify_all()


DECODING = PixelBudget(MAX_PIXELS)


def check_size(img: Image.Image) -> None:
    """Refuse, from the header alone, a picture whose decoded pixels would exceed ``MAX_PIXELS``."""
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise ImageError(f"too large: {width}x{height} pixels ({width * height / 1e6:.0f} MP) is above the "
                         f"{MAX_PIXELS / 1e6:.0f} MP limit of one picture")


def _regular_file(path: str | os.PathLike) -> IO[bytes]:
    """``path`` opened for reading, refused unless it is a regular file: opening a FIFO would
    wait for a writer forever (non-blocking open, then a check of what was opened)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ImageError("not a regular file (a folder, FIFO, socket or device)")
    return os.fdopen(fd, "rb")


@contextlib.contextmanager
def opened(source: str | os.PathLike | IO[bytes], min_size: int | None = None) -> Iterator[Image.Image]:
    """The picture in ``source`` (a path or a binary file object), loaded, inside ``decoding``
    and the decoding budget: convert it (``to_rgb``) and reduce it to what you keep within the
    ``with`` block. With ``min_size``, a JPEG decodes at a reduced scale (DCT draft mode) that
    still keeps both sides >= ``min_size``: several times faster on large frames, and a 12000 px
    photo never exists at full size. ``ImageError`` says why a file cannot be used."""
    with decoding():
        with _regular_file(source) if isinstance(source, (str, os.PathLike)) else contextlib.nullcontext(source) as fp:
            with Image.open(fp) as img:
                if min_size and img.format == "JPEG":
                    img.draft("RGB", (min_size, min_size))
                check_size(img)
                with DECODING.hold(img.width * img.height):
                    img.load()
                    yield img


def decoded(source: ImageSource, finish: Callable[[Image.Image], T], min_size: int | None = None) -> T:
    """``finish(the picture in RGB, upright)`` for a path, PIL image or uint8 array, decoded as
    ``opened`` does; ``finish`` runs inside the boundary and budget, so the full-size picture
    is gone by the time the next one may start."""
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim not in (2, 3) or (source.ndim == 3 and source.shape[2] not in (3, 4)):
            raise ImageError(f"array images must be uint8 HxW or HxWx3/4, got {source.dtype} {source.shape}")
        source = Image.fromarray(source)
    if isinstance(source, Image.Image):
        with decoding():
            check_size(source)
            with DECODING.hold(source.width * source.height):
                return finish(to_rgb(source))
    with opened(Path(source), min_size) as img:
        return finish(to_rgb(img))


def load_image(source: ImageSource, min_size: int | None = None) -> Image.Image:
    """Decode to RGB, upright (see ``opened`` for ``min_size``). A file that cannot be decoded,
    or is too large, raises ``ImageError`` with a one-line reason."""
    return decoded(source, lambda img: img, min_size)


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """Shorter side to ``shorter``, aspect kept; the rounding matches torchvision's Resize(int)."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def resize_crop(img: Image.Image, p: Preprocessing, size: int | None = None) -> Image.Image:
    """Resize the shorter side to ``resize_size``, then take the centre square of side
    ``image_size`` (torchvision's rounding, pixel for pixel). With ``size`` (up to
    ``resize_size``), a larger square around that crop, placed so that its own centre
    ``image_size`` square (the portable graph's crop) is exactly the same pixels.

    A very elongated image (a 65000x1 strip) would resize to millions of pixels, so beyond
    ``MAX_ASPECT`` only the square is resampled: Pillow's ``box`` maps it onto the source at the
    full resize's scale, giving the same picture (to rounding) with work and memory bounded by
    the crop."""
    w, h = resized_size(img.width, img.height, p.resize_size)
    size = size or p.image_size
    margin = int(round((size - p.image_size) / 2.0))
    top = int(round((h - p.image_size) / 2.0)) - margin
    left = int(round((w - p.image_size) / 2.0)) - margin
    resample = _INTERPOLATION[p.interpolation]
    if max(w, h) <= MAX_ASPECT * p.resize_size:
        return img.resize((w, h), resample).crop((left, top, left + size, top + size))
    sx, sy = img.width / w, img.height / h
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return img.resize((size, size), resample, box=box)


def square(source: ImageSource, p: Preprocessing) -> np.ndarray:
    """The RGB uint8 ``resize_size`` square the Python runtime hands a portable model: the
    picture resized as ``preprocess`` resizes it, cut around its centre crop (``resize_crop``).
    On it the graph's antialiased Resize is the identity and its crop takes ``preprocess``'s
    very pixels, so both kinds of model answer alike here; Pillow resizes several times faster
    than onnxruntime's Resize, and frames of one size batch whole. Other runtimes (the browser
    page) hand the graph pictures of any size."""
    return decoded(source, lambda img: np.asarray(resize_crop(img, p, p.resize_size)), min_size=p.resize_size)


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
    return decoded(source, lambda img: normalise(resize_crop(img, p), p), min_size=p.resize_size)
