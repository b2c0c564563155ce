"""Writing files so that a run killed half-way never leaves a truncated one, and the
fingerprint cache that lets a rerun skip work already done."""

from __future__ import annotations

import errno
import functools
import json
import os
import re
from pathlib import Path

import polars as pl

from runtime.files import atomic_write, remove_stale_temporaries

__all__ = ["ShardCache", "atomic_write", "sink_parquet", "write_json", "write_parquet"]
ROW_GROUP = 4_096  # rows a Parquet writer buffers before it writes them: its memory, whatever the table's length


def write_json(path: Path, data: object) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8"))


def write_parquet(path: Path, df: pl.DataFrame | pl.LazyFrame) -> None:
    atomic_write(path, lambda tmp: sink_parquet(df, tmp, path))


def sink_parquet(df: pl.DataFrame | pl.LazyFrame, tmp: Path, path: Path) -> None:
    """A table, or a query streamed into the file ``tmp`` that will become ``path``. Polars
    reports a failed write (a full disk) as its own error; it is an OSError naming ``path``
    here, so the commands report it in one line like any other write failure."""
    try:
        df.lazy().sink_parquet(tmp, statistics=False, row_group_size=ROW_GROUP)
    except pl.exceptions.PolarsError as e:
        code = re.search(r"os error (\d+)", str(e))
        raise OSError(int(code.group(1)) if code else errno.EIO, os.strerror(int(code.group(1))) if code else str(e), str(path)) from None


class ShardCache:
    """A folder of Parquet shards, one per saved chunk; rows with the same key in a later
    shard win. Each chunk is sorted by the key's first column (a path), and the chunks one run
    saves follow each other in that order. ``compact`` folds them into one file, in that order."""

    def __init__(self, folder: Path, key: list[str], schema: dict):
        self.folder, self.key, self.schema = folder, key, schema
        self.order = key[0]

    def shards(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet")) if self.folder.is_dir() else []

    def keys(self) -> pl.DataFrame:
        """The key columns of every row saved so far, in the shards' order: all that deciding
        what to compute needs."""
        schema, frames = {k: self.schema[k] for k in self.key}, []
        for shard in self.shards():
            try:
                frames.append(pl.read_parquet(shard, columns=self.key).cast(schema))
            except Exception:  # noqa: BLE001 - a damaged cache is only lost work, never an error
                shard.unlink(missing_ok=True)
        return pl.concat(frames).unique(self.key, maintain_order=True) if frames else pl.DataFrame(schema=schema)

    def save(self, df: pl.DataFrame) -> None:
        shards = self.shards()
        number = int(shards[-1].stem.split("-")[1]) + 1 if shards else 0
        write_parquet(self.folder / f"part-{number:06d}.parquet", df)

    def compact(self, keep: pl.DataFrame) -> None:
        """Replace every shard by one file holding a row for each key in ``keep`` (the files
        that still exist, sorted) in ``keep``'s order, so a reader can put its columns beside
        ``keep`` without a join. Streamed from the shards into it: the rows are never all in
        memory (a semi-join would hold them, ``is_in`` streams; sorted runs merge as streams).
        A key saved twice (two runs over the same data at once) has the same fingerprint both
        times; only then is the stream de-duplicated, which holds it whole."""
        self.folder.mkdir(parents=True, exist_ok=True)
        shards, key = self.shards(), pl.struct(self.key)
        runs = self._sorted_runs(shards) or [pl.LazyFrame(schema=self.schema)]
        rows = functools.reduce(lambda a, b: a.merge_sorted(b, key=self.order), (run.cast(self.schema) for run in runs))
        rows = rows.filter(key.is_in(keep.select(key.alias("key"))["key"].implode()))
        saved, distinct = rows.select(pl.len(), key.hash().n_unique()).collect().row(0)  # equal hashes: de-duplicated, to be safe
        if distinct < saved:
            rows = rows.unique(self.key, keep="any", maintain_order=True)
        merged = self.folder / "merged.parquet"
        write_parquet(merged, rows)
        for shard in shards:
            shard.unlink()
        merged.rename(self.folder / "part-000000.parquet")
        remove_stale_temporaries(self.folder)

    def _sorted_runs(self, shards: list[Path]) -> list[pl.LazyFrame]:
        """The shards as scans in order, consecutive shards in one scan while their rows stay
        sorted (one run's chunks; a run killed and resumed, or new files, start another). A shard
        unsorted within (written by an earlier version) is sorted on its own."""
        runs, current, last = [], [], None
        for shard in shards:
            column = pl.read_parquet(shard, columns=[self.order])[self.order]
            if not column.is_sorted():
                runs.append(pl.scan_parquet(shard).sort(self.order))
            elif len(column):
                if current and column[0] < last:
                    runs.append(pl.scan_parquet(current))
                    current = []
                current.append(shard)
                last = column[-1]
        return runs + [pl.scan_parquet(current)] if current else runs
