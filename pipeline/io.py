"""Writing files so that a run killed half-way never leaves a truncated one, and the
fingerprint cache that lets a rerun skip work already done."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import polars as pl

from runtime.files import atomic_write, remove_stale_temporaries

__all__ = ["ShardCache", "atomic_write", "write_json", "write_parquet"]


def write_json(path: Path, data: object) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8"))


def write_parquet(path: Path, df: pl.DataFrame | pl.LazyFrame) -> None:
    """A table, or a query streamed into the file. Polars reports a failed write (a full disk)
    as its own error; it is an OSError here, so the commands report it in one line like any
    other write failure."""
    def write(tmp: Path) -> None:
        try:
            df.lazy().sink_parquet(tmp, statistics=False)
        except pl.exceptions.PolarsError as e:
            code = re.search(r"os error (\d+)", str(e))
            raise OSError(int(code.group(1)) if code else errno.EIO, os.strerror(int(code.group(1))) if code else str(e), str(path)) from None

    atomic_write(path, write)


class ShardCache:
    """A folder of Parquet shards, one per saved chunk; rows with the same key in a later
    shard win. ``compact`` folds them into one file once a run completes."""

    def __init__(self, folder: Path, key: list[str], schema: dict):
        self.folder, self.key, self.schema = folder, key, schema

    def shards(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet")) if self.folder.is_dir() else []

    def keys(self) -> pl.DataFrame:
        """The key columns of every row saved so far: all that deciding what to compute needs."""
        schema, frames = {k: self.schema[k] for k in self.key}, []
        for shard in self.shards():
            try:
                frames.append(pl.read_parquet(shard, columns=self.key).cast(schema))
            except Exception:  # noqa: BLE001 - a damaged cache is only lost work, never an error
                shard.unlink(missing_ok=True)
        return pl.concat(frames).unique(self.key) if frames else pl.DataFrame(schema=schema)

    def save(self, df: pl.DataFrame) -> None:
        shards = self.shards()
        number = int(shards[-1].stem.split("-")[1]) + 1 if shards else 0
        write_parquet(self.folder / f"part-{number:06d}.parquet", df)

    def compact(self, keep: pl.DataFrame) -> None:
        """Replace every shard by one file holding a row for each key in ``keep`` (the files
        that still exist), streamed from the shards into it: the rows are never all in memory.
        A key saved twice (two runs over the same data at once) has the same fingerprint both
        times; only then is the stream de-duplicated, which holds it whole."""
        self.folder.mkdir(parents=True, exist_ok=True)
        shards = self.shards()
        rows = pl.scan_parquet(shards).cast(self.schema) if shards else pl.LazyFrame(schema=self.schema)
        rows = rows.join(keep.lazy().select(self.key), on=self.key, how="semi")
        if rows.select(self.key).collect().is_duplicated().any():
            rows = rows.unique(self.key, keep="any")
        merged = self.folder / "merged.parquet"
        write_parquet(merged, rows)
        for shard in shards:
            shard.unlink()
        merged.rename(self.folder / "part-000000.parquet")
        remove_stale_temporaries(self.folder)
