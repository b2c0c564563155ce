"""The fingerprint cache: Parquet shards that let a rerun skip the files it has already read."""

from __future__ import annotations

import functools
from pathlib import Path

import polars as pl

from pipeline.writers import write_parquet
from runtime.files import remove_stale_temporaries


class ShardCache:
    """A folder of Parquet shards, one per saved chunk, that ``compact`` folds into one file
    sorted by the key's first column (a path). Chunks saved sorted, one after the other in that
    order (as one fingerprinting run saves them), make that fold a merge of a few streams."""

    def __init__(self, folder: Path, key: list[str], schema: dict):
        self.folder, self.key, self.schema = folder, key, schema
        self.order = key[0]

    def shards(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet")) if self.folder.is_dir() else []

    def keys(self) -> pl.DataFrame:
        """The key columns of every row saved so far: all that deciding what to compute needs."""
        schema, frames = self._key_schema(), []
        for shard in self.shards():
            try:
                frames.append(pl.read_parquet(shard, columns=self.key).cast(schema))
            except Exception:  # noqa: BLE001 - a damaged cache is only lost work, never an error
                shard.unlink(missing_ok=True)
        return pl.concat(frames).unique(self.key) if frames else pl.DataFrame(schema=schema)

    def _key_schema(self) -> dict:
        return {k: self.schema[k] for k in self.key}

    def save(self, df: pl.DataFrame) -> None:
        shards = self.shards()
        number = int(shards[-1].stem.split("-")[1]) + 1 if shards else 0
        write_parquet(self.folder / f"part-{number:06d}.parquet", df)

    def compact(self, keep: pl.DataFrame) -> bool:
        """Make the cache one file holding a row for each key in ``keep`` (the files that still
        exist, sorted) in ``keep``'s order, so a reader can put its columns beside ``keep``
        without a join. Streamed from the shards: the rows are never all in memory (a semi-join
        would hold them, ``is_in`` streams; sorted runs merge as streams). A key saved twice
        (two runs over the same data at once) has the same fingerprint both times; only then is
        the stream de-duplicated, which holds it whole. Returns False when a key of ``keep`` is
        missing: a shard that could not be read whole (a damaged disk) was dropped, or a key
        was never saved; the caller computes those and compacts again."""
        self.folder.mkdir(parents=True, exist_ok=True)
        shards, key = self.shards(), pl.struct(self.key)
        runs, lost = self._sorted_runs(shards)
        if len(shards) == 1 and not lost and pl.read_parquet(shards[0], columns=self.key).cast(self._key_schema()).equals(keep.select(self.key)):
            return True  # already so
        rows = functools.reduce(lambda a, b: a.merge_sorted(b, key=self.order), runs or [pl.LazyFrame(schema=self.schema)])
        rows = rows.filter(key.is_in(keep.select(key.alias("key"))["key"].implode()))
        saved, distinct = rows.select(pl.len(), key.hash().n_unique()).collect().row(0)  # equal hashes: de-duplicated, to be safe
        if distinct < saved:
            rows = rows.unique(self.key, keep="any", maintain_order=True)
        merged = self.folder / "merged.parquet"
        write_parquet(merged, rows)
        for shard in shards:
            shard.unlink(missing_ok=True)
        merged.rename(self.folder / "part-000000.parquet")
        remove_stale_temporaries(self.folder)
        return not lost and distinct == len(keep)

    def _sorted_runs(self, shards: list[Path]) -> tuple[list[pl.LazyFrame], bool]:
        """The shards as scans in order, consecutive shards in one scan while their rows stay
        sorted (one run's chunks; a resumed run or new files start another), and whether a
        shard was lost. A shard unsorted within (an earlier version wrote it) is sorted on its
        own; one that cannot be read whole is deleted: lost work, never an error."""
        runs, current, last, lost = [], [], None, False
        for shard in shards:
            try:
                first, shard_last, ordered = self._span(shard)
            except Exception:  # noqa: BLE001 - any failure to read it is damage
                shard.unlink(missing_ok=True)
                lost = True
                continue
            if not ordered:
                runs.append(pl.scan_parquet(shard).cast(self.schema).sort(self.order))
            elif first is not None:
                if current and first < last:
                    runs.append(pl.scan_parquet(current).cast(self.schema))
                    current = []
                current.append(shard)
                last = shard_last
        return (runs + [pl.scan_parquet(current).cast(self.schema)] if current else runs), lost

    def _span(self, shard: Path) -> tuple[str | None, str | None, bool]:
        """The shard's first and last key and whether it is sorted, read a batch at a time and
        every column: a damaged shard fails here, not half-way through the merge."""
        first = last = None
        ordered = True
        for batch in pl.scan_parquet(shard).cast(self.schema).collect_batches():
            column = batch[self.order]
            if len(column):
                ordered = ordered and column.is_sorted() and (last is None or column[0] >= last)
                first, last = first if first is not None else column[0], column[-1]
        return first, last, ordered
