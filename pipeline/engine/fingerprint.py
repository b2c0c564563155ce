"""Read each file: content hash (streamed), then, for pictures only, header, decode check,
perceptual hash, pixel moments (the second read comes from the page cache).

This is the data engine's only expensive step, so it runs on a thread pool (xxhash and Pillow's
decoder release the GIL), decodes JPEGs at reduced scale, and is cached by (path, size, mtime):
a rerun over unchanged files reads nothing but the cache.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import multiprocessing
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
import polars as pl
import xxhash
from PIL import Image

from pipeline.engine.schema import Status, on_disk
from runtime.labels import is_image_name
from runtime.parallel import deferred_interrupts, has_ended, in_order
from runtime.preprocess import ImageError, NotAnImageError, decoding, opened, orientation, to_rgb

FINGERPRINT_VERSION = 3  # bump when any column's algorithm changes: the cache is keyed by it
STATS_MIN_SIZE = 128  # per-image statistics at this shorter side; JPEGs decode at the smallest DCT scale keeping both sides >= this
THUMB_SIZE = 8  # verification thumbnail, RGB
PARENT_POLL = 1.0  # seconds between a worker process's checks that its command is still running
TASK_FILES = 16  # files per parallel task: amortises the hand-over to a thread or process
PROCESS_MIN_FILES = 4000  # from this many files to fingerprint, worker processes beat threads (see executor)
READ_CHUNK = 1 << 20  # bytes hashed at a time
KEY = ["path", "size_bytes", "mtime_ns"]
BAD_NAME = "the file or folder name is not valid UTF-8 (shown with \\xNN escapes); rename it"

# Pillow warns from 89 MP on; the runtime's pixel limit (MAX_PIXELS), far below, refuses such a
# picture with a reason in its row, so the warning would only repeat it as noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

FINGERPRINT_SCHEMA = {
    "path": pl.String,
    "size_bytes": pl.Int64,
    "mtime_ns": pl.Int64,
    "status": pl.String,  # ok, unreadable, not_image, corrupt, bad_name
    "reason": pl.String,
    "hash": pl.String,  # xxh3-64 of the file's bytes, hex
    "format": pl.String,
    "width": pl.Int32,  # after EXIF orientation
    "height": pl.Int32,
    "phash": pl.UInt64,  # DCT perceptual hash of the 32x32 grey image
    "thumb": pl.Binary,  # THUMB_SIZE x THUMB_SIZE x 3 uint8, to verify perceptual-hash matches
    "pixel_mean": pl.List(pl.Float64),  # per RGB channel, 0..1 scale, at the common statistics scale
    "pixel_sq_mean": pl.List(pl.Float64),  # mean of squares, likewise
}


def _dct_matrix(n: int = 32) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    return np.cos(np.pi * (2 * i + 1) * k / (2 * n))


_DCT = _dct_matrix()[:8]


def perceptual_hash(small: Image.Image) -> int:
    """pHash of a 32x32 image: its 8x8 lowest DCT frequencies against their median. Stable
    under resizing and re-encoding; flat cartoon colours have no ties to break it."""
    grey = np.asarray(small.convert("L"), dtype=np.float64)
    low = (_DCT @ grey @ _DCT.T).ravel()
    ac = np.partition(low[1:], 31)  # median of the 63 non-DC terms (np.median is 10x slower)
    bits = low > ac[31]
    return int(np.packbits(bits).view(">u8")[0])


_LEVELS = np.arange(256, dtype=np.float64) / 255.0


def pixel_moments(img: Image.Image) -> tuple[list[float], list[float]]:
    """Per-channel mean and mean of squares (0..1 scale) of the picture reduced to a shorter side
    of at most ``STATS_MIN_SIZE``: every image then counts the same in the normalisation
    statistics, whatever its size or format (a 120-Mpixel PNG weighs what a thumbnail does).
    From 256-bin histograms: exact, without materialising the pixels as floats."""
    scale = STATS_MIN_SIZE / min(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BOX)
    hist = np.asarray(img.histogram(), dtype=np.float64).reshape(3, 256)
    count = img.width * img.height
    return (hist @ _LEVELS / count).tolist(), (hist @ _LEVELS**2 / count).tolist()


def _failure(status: Status, reason: str, digest: str | None = None) -> dict:
    return {"status": status.value, "reason": reason, "hash": digest}


def content_hash(fp: BinaryIO) -> str | None:
    """xxh3-64 of everything left in ``fp``, read ``READ_CHUNK`` bytes at a time (the same
    digest as hashing the bytes at once): a 2 GB file in a class folder costs a chunk of
    memory, not 2 GB. None for an empty file."""
    digest, empty = xxhash.xxh3_64(), True
    while chunk := fp.read(READ_CHUNK):
        digest.update(chunk)
        empty = False
    return None if empty else digest.hexdigest()


def fingerprint_stream(fp: BinaryIO, name: str) -> dict:
    """The fingerprint columns (all but the key) of one file, open for reading and seekable.
    Only a file named like a picture is decoded, through the runtime's decoding boundary: a
    hostile file is a ``not_image`` or ``corrupt`` row with a reason, and a picture above the
    runtime's pixel limit is refused before its pixels exist."""
    digest = content_hash(fp)
    if digest is None:
        return _failure(Status.NOT_IMAGE, "empty file")
    if not is_image_name(name):
        return _failure(Status.NOT_IMAGE, f"not an image file extension ({Path(name).suffix or 'none'})", digest)
    try:
        return {"status": Status.OK.value, "reason": None, "hash": digest, **_pixels(fp)}
    except NotAnImageError as e:
        return _failure(Status.NOT_IMAGE, str(e), digest)
    except ImageError as e:
        return _failure(Status.CORRUPT, str(e), digest)


def _pixels(fp: BinaryIO) -> dict:
    """Format, size (upright) and the pixel-derived columns. The size is the stored one, read
    from the header before the decoding, which reduces a JPEG to near ``STATS_MIN_SIZE``."""
    fp.seek(0)
    with decoding(), Image.open(fp) as header:
        fmt, (width, height) = header.format, header.size
    fp.seek(0)
    with opened(fp, min_size=STATS_MIN_SIZE) as raw:
        if orientation(raw) in (5, 6, 7, 8):  # rotated 90 degrees by EXIF
            width, height = height, width
        img = to_rgb(raw)
        small = img.resize((32, 32), Image.Resampling.BOX)
        mean, sq_mean = pixel_moments(img)
        return {
            "format": fmt,
            "width": width,
            "height": height,
            "phash": perceptual_hash(small),
            "thumb": small.resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BOX).tobytes(),
            "pixel_mean": mean,
            "pixel_sq_mean": sq_mean,
        }


def fingerprint_file(root: Path, file: dict) -> dict:
    """Never raises: a file that cannot be read is a row with a status. ``file``: its KEY and,
    from the scan, ``bad_name`` (its path is shown escaped and cannot be opened: never read)."""
    key = {k: file[k] for k in KEY}
    if file.get("bad_name"):
        return {**key, "status": Status.BAD_NAME.value, "reason": BAD_NAME, "hash": None}
    try:
        with open(on_disk(root, key["path"]), "rb") as fp:
            return {**key, **fingerprint_stream(fp, key["path"])}
    except OSError as e:  # opening or hashing it: the decoding turns its own failures into rows
        return {**key, **_failure(Status.UNREADABLE, f"cannot read: {e.strerror or e}")}


def fingerprint_files(root: Path, files: list[dict]) -> list[dict]:
    """One task's worth of files (a thread's or a worker process's)."""
    return [fingerprint_file(root, file) for file in files]


def exit_with(command: int) -> None:
    """Worker initializer: end this worker once the command that started it (pid ``command``)
    has ended. Killed with SIGKILL, a command cannot shut its pool down: its workers, children
    of the forkserver rather than of the command, waited for work forever, and held the
    forkserver and the resource tracker alive with them (~200 MB)."""
    def watch() -> None:
        while not has_ended(command):
            time.sleep(PARENT_POLL)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-command", daemon=True).start()


class Processes(ProcessPoolExecutor):
    """A process pool that Ctrl-C or SIGTERM never interrupts half-way through starting a
    worker. Workers start as work is submitted; a KeyboardInterrupt raised after a worker was
    forked but before the pool recorded it left a worker the pool did not know: shutting down
    sent one stop signal too few, the unknown worker could take it, and the command waited
    for a known one forever, with the forkserver and the resource tracker."""

    def submit(self, fn: Callable, /, *args, **kwargs) -> Future:
        with deferred_interrupts():
            return super().submit(fn, *args, **kwargs)


def executor(files: int, workers: int) -> Executor:
    """Threads for small sets, processes for large ones. Decoding releases the GIL only in
    part (header parsing, the small numpy steps hold it), so processes win once their start-up
    (about half a second: each imports Pillow, numpy, polars) is paid back: from
    ``PROCESS_MIN_FILES`` on (bench/bench_fingerprint.py). Processes start with "forkserver",
    not fork: this process already runs library threads that a fork would copy mid-lock."""
    if workers > 1 and files >= PROCESS_MIN_FILES:
        return Processes(workers, mp_context=multiprocessing.get_context("forkserver"), initializer=exit_with, initargs=(os.getpid(),))
    return ThreadPoolExecutor(workers)


def fingerprint(
    files: pl.DataFrame,
    root: Path,
    cached: pl.DataFrame,
    save_chunk: Callable[[pl.DataFrame], None],
    workers: int,
    chunk_size: int = 256,
    progress: Callable[[Iterator, int], Iterator] = lambda it, total: it,
    ray: str | None = None,
) -> None:
    """Fingerprint the ``files`` (KEY and ``bad_name``) whose key is not among the ``cached``
    keys, in parallel (``TASK_FILES`` files per task, a bounded window of tasks in flight; with
    ``ray``, on that Ray cluster's workers), handing them to ``save_chunk`` every ``chunk_size``
    files, in path order: a run killed half-way keeps its work, nothing accumulates here (memory
    stays flat however many files there are), and the chunks of one run read one after the other
    are sorted (``ShardCache.compact`` then merges a few streams, not every chunk)."""
    todo = files.select(*KEY, "bad_name").join(cached.select(KEY), on=KEY, how="anti").sort("path")
    tasks = (todo.slice(i, TASK_FILES).to_dicts() for i in range(0, len(todo), TASK_FILES))  # Python rows per task only
    chunk = []

    def save() -> None:
        save_chunk(pl.DataFrame(chunk, schema=FINGERPRINT_SCHEMA))
        chunk.clear()

    with contextlib.ExitStack() as stack:
        if ray:
            from runtime.distributed import ordered_map

            schema = pl.DataFrame(schema=FINGERPRINT_SCHEMA).to_arrow().schema
            rows = ordered_map(ray, todo.to_dicts(), lambda: functools.partial(fingerprint_files, root), workers, schema)
        else:
            pool = stack.enter_context(executor(len(todo), workers))
            computed = in_order(pool, functools.partial(fingerprint_files, root), tasks, 4 * workers)
            rows = itertools.chain.from_iterable(future.result() for _, future in computed)
        for row in progress(rows, len(todo)):
            chunk.append(row)
            if len(chunk) == chunk_size:
                save()
        if chunk:
            save()
