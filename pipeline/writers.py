"""Writing files so that a run killed half-way never leaves a truncated one: every stage
writes its JSON and Parquet files through these."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import polars as pl

from collections.abc import Callable
from typing import TypeVar

from runtime import files

__all__ = ["atomic_write", "sink_parquet", "write_json", "write_parquet"]
T = TypeVar("T")
ROW_GROUP = 4_096  # rows a Parquet writer buffers before it writes them: its memory, whatever the table's length


def atomic_write(path: Path, write: Callable[[Path], T]) -> T:
    """``runtime.files.atomic_write``, with a failed write naming ``path``: a write into an
    open file (a full disk) raises an OSError without a file name, and the commands' one line
    would not say which file could not be written."""
    try:
        return files.atomic_write(path, write)
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from None


def write_json(path: Path, data: object) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8"))


def write_parquet(path: Path, df: pl.DataFrame | pl.LazyFrame) -> None:
    atomic_write(path, lambda tmp: sink_parquet(df, tmp, path))


def sink_parquet(df: pl.DataFrame | pl.LazyFrame, tmp: Path, path: Path, metadata: dict[str, str] | None = None) -> None:
    """A table, or a query streamed into the file ``tmp`` that will become ``path`` (with
    ``metadata``: key-value pairs in its footer). Polars reports a failed write (a full disk)
    as its own error; it is an OSError naming ``path`` here, so the commands report it in one
    line like any other write failure."""
    try:
        df.lazy().sink_parquet(tmp, statistics=False, row_group_size=ROW_GROUP, metadata=metadata)
    except pl.exceptions.PolarsError as e:
        code = re.search(r"os error (\d+)", str(e))
        raise OSError(int(code.group(1)) if code else errno.EIO, os.strerror(int(code.group(1))) if code else str(e), str(path)) from None
