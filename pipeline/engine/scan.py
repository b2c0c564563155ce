"""Find the data set's files under DATA_ROOT: the first step, from paths to a table.

The Kaggle archive comes in two nestings (``simpsons_dataset/<class>/`` and
``simpsons_dataset/simpsons_dataset/<class>/``; the same for the test folder). A folder named
like the data set is a nesting level, never a class.
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from pipeline.engine.schema import MANIFEST, STATS
from runtime.errors import SimpsonsError
from runtime.files import real_path
from runtime.labels import label_from_test_name
from runtime.listing import Listing, display_path, odd_name

TRAIN_DIR = "simpsons_dataset"
TEST_DIR = "kaggle_simpson_testset"
DATASET_DIRS = frozenset({TRAIN_DIR, TEST_DIR})
log = logging.getLogger("simpsons.manifest")

SCAN_SCHEMA = {
    "path": pl.String,
    "source": pl.String,  # "train" (class folders) or "test" (kaggle_simpson_testset)
    "label": pl.String,
    "size_bytes": pl.Int64,
    "mtime_ns": pl.Int64,
    "bad_name": pl.Boolean,  # the path is not valid text: kept (escaped) with a status, never read
}


class LayoutError(SimpsonsError):
    """DATA_ROOT holds neither of the data set's layouts."""


def nested(root: Path, name: str) -> list[Path]:
    """``root/name`` and ``root/name/name``, those that exist."""
    outer = root / name
    return [d for d in (outer, outer / name) if d.is_dir()]


class Outputs:
    """Which folders under the data root hold a manifest run's output rather than data: this
    run's ``--out`` and any folder with an earlier run's ``manifest.parquet`` and ``stats.json``.
    An output folder inside a class folder (or one beside them) made the next run learn its
    charts as pictures, and a class named after the folder. Each is skipped with a warning."""

    def __init__(self, out_dir: Path | None):
        self.out_dir = None if out_dir is None else real_path(out_dir)

    def __call__(self, folder: Path) -> bool:
        """True for a folder to walk; False, with a warning line naming it, for an output folder."""
        if self.out_dir is not None and real_path(folder) == self.out_dir:
            log.warning("%s: the output folder (--out), inside the data; skipped", display_path(folder))
            return False
        if (folder / MANIFEST).is_file() and (folder / STATS).is_file():
            log.warning("%s: holds an earlier manifest's output (%s, %s), not data; skipped", display_path(folder), MANIFEST, STATS)
            return False
        return True


def class_dirs(data_root: Path, walk: Outputs) -> list[Path]:
    return sorted(
        d for top in nested(data_root, TRAIN_DIR) for d in top.iterdir()
        if d.is_dir() and d.name not in DATASET_DIRS and not d.name.startswith(".") and walk(d)
    )


def _files(folder: Path, walk: Outputs) -> list[Path]:
    """Every regular file under ``folder``, walked as ``simpsons-infer`` walks its input: on a
    stack (1,100 nested folders are no RecursionError), each folder once (a symbolic link back
    up is not followed round), and a warning line for what cannot be listed (an unreadable
    folder, a broken link, a FIFO, which would block a reader); output folders left out."""
    return sorted(Listing([folder], wanted=lambda name: True, descend=walk))


def _row(path: Path, data_root: Path, source: str, label: str | None) -> dict:
    stat = path.stat()
    relative = path.relative_to(data_root).as_posix()
    return {
        "path": display_path(relative),
        "source": source,
        "label": None if label is None else display_path(label),
        "size_bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "bad_name": odd_name(relative),
    }


def scan(data_root: Path, out_dir: Path | None = None) -> tuple[pl.DataFrame, list[str]]:
    """One row per file found (images or not: bad files are reported, not ignored), sorted by
    path, plus the class folders that hold no file. Folders holding a manifest's output (this
    run's ``out_dir``, earlier runs') are not data: left out, with a warning."""
    train_tops, test_tops = nested(data_root, TRAIN_DIR), nested(data_root, TEST_DIR)
    if not data_root.is_dir():
        raise LayoutError(f"{data_root}: {'not a folder' if data_root.exists() else 'no such folder'}")
    if not train_tops and not test_tops:
        raise LayoutError(f"{data_root}: holds neither {TRAIN_DIR}/ nor {TEST_DIR}/ (the Kaggle layout)")
    tables, empty = [], []  # a table per folder: Python rows for one folder at a time, not for a million files
    walk = Outputs(out_dir)
    for folder in class_dirs(data_root, walk):
        files = _files(folder, walk)
        if not files:
            empty.append(folder.relative_to(data_root).as_posix())
        tables.append(pl.DataFrame([_row(p, data_root, "train", folder.name) for p in files], schema=SCAN_SCHEMA))
    for top in test_tops:
        files = sorted(q for q in top.iterdir() if q.is_file())
        tables.append(pl.DataFrame([_row(p, data_root, "test", label_from_test_name(p)) for p in files], schema=SCAN_SCHEMA))
    table = pl.concat(tables) if tables else pl.DataFrame(schema=SCAN_SCHEMA)
    return table.unique("path", keep="first").sort("path"), empty
