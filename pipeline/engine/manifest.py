"""The data engine in one visible place: scan -> fingerprint -> corrections -> duplicates ->
near-duplicate groups -> leakage -> labels -> split -> statistics, and the files it writes.

``build`` is pure (tables in, the manifest out as a query); ``run`` is the thin shell around it
that reads the disk, uses the cache and streams the query into ``manifest.parquet``, then writes
``stats.json`` and the plots.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import polars as pl
import xxhash

from pipeline.engine.schema import COLUMNS, MANIFEST, STATS, USABLE, Split, Status
from pipeline.engine import corrections as review, dedupe, split, stats
from pipeline import figures
from pipeline.engine.fingerprint import BAD_NAME, FINGERPRINT_SCHEMA, FINGERPRINT_VERSION, KEY, fingerprint
from pipeline.engine.cache import ShardCache
from pipeline.writers import atomic_write, sink_parquet, write_json
from pipeline.engine.scan import scan
from runtime.errors import SimpsonsError
from runtime.files import BusyError, Lock, check_writable
from runtime.parallel import usable_cores
from runtime.progress import progress

log = logging.getLogger("simpsons.manifest")
CACHE_CHUNK = 256  # files fingerprinted between two cache saves
DECIDED_ON = ["status", "reason", "hash", "phash"]  # the fingerprint columns the decisions read (thumbnails: dedupe.thumbnails)
CARRIED = ["hash", "format", "width", "height", "pixel_mean", "pixel_sq_mean"]  # into the manifest as they are


@dataclass(frozen=True)
class ManifestConfig:
    val_fraction: float = 0.15
    seed: int = 0
    keep_leaks: bool = False
    phash_max_distance: int = dedupe.PHASH_MAX_DISTANCE
    thumb_max_difference: float = dedupe.THUMB_MAX_DIFFERENCE
    corrections: str | None = None  # a corrections CSV (pipeline/engine/corrections.py), applied before any decision


def class_list(df: pl.DataFrame) -> list[str]:
    """Sorted names of the class folders holding at least one readable image; index = class id."""
    ok = df.lazy().filter((pl.col("source") == "train") & (pl.col("status") == Status.OK))
    return sorted(ok.select(pl.col("label").unique()).collect()["label"].to_list())


def decide(files: pl.DataFrame, fingerprints: pl.LazyFrame, config: ManifestConfig,
           corrections: review.Corrections = review.NONE) -> tuple[pl.DataFrame, list[str]]:
    """Scanned files + their fingerprints (a row for each file, in the same order) + a person's
    corrections -> every decision (status, duplicates, groups, leaks, split) and the class
    list, taken on the few columns they read (the content hash as a number); the wide ones join
    the manifest only as it is written. Rows side by side, never joined: a join would hold both
    tables. The corrections come first, so every later rule sees the labels as corrected."""
    narrow = fingerprints.select(*DECIDED_ON).with_columns(pl.col("hash").str.to_integer(base=16, dtype=pl.UInt64))
    df = pl.concat([files.select("path", "source", "label", "size_bytes", "bad_name"), narrow.collect()], how="horizontal")
    df = df.with_columns(  # the scan's word, not the cache's: an older cache (escaping was not one to one) may hold another name's row here
        pl.when(pl.col("bad_name")).then(pl.lit(Status.BAD_NAME)).otherwise(pl.col("status")).alias("status"),
        pl.when(pl.col("bad_name")).then(pl.lit(BAD_NAME)).otherwise(pl.col("reason")).alias("reason"),
    ).drop("bad_name")
    classes = class_list(df)  # before the corrections: a review moves files between classes, never renumbers them
    review.check(corrections, df.get_column("path"), classes)
    df = dedupe.mark_exact_duplicates(review.apply(df, corrections))
    df = dedupe.group_near_duplicates(df, dedupe.thumbnails(fingerprints), config.phash_max_distance, config.thumb_max_difference)
    df = dedupe.mark_leaks(df, config.keep_leaks)
    df = split.mark_unknown_labels(df, classes)
    return split.assign_split(df, config.val_fraction, config.seed).drop("hash"), classes


def build(files: pl.DataFrame, fingerprints: pl.DataFrame | pl.LazyFrame, config: ManifestConfig,
          corrections: review.Corrections = review.NONE) -> tuple[pl.LazyFrame, list[str]]:
    """Scanned files (in path order) + their fingerprints (a row for each, in the same order: a
    table, or a scan of the cache's file) -> the manifest as a query that streams into its
    file, and the class list. The query reads the fingerprints when it runs: ``run`` holds the
    cache's lock until then."""
    if files.height != fingerprints.lazy().select(pl.len()).collect().item():
        raise ValueError("build: the fingerprints are not a row for each scanned file")
    decisions, classes = decide(files, fingerprints.lazy(), config, corrections)
    carried = fingerprints.lazy().select(*CARRIED)
    return pl.concat([decisions.lazy(), carried], how="horizontal").select(COLUMNS), classes


def cache_folder(data_root: Path) -> Path:
    """Where the fingerprints of ``data_root`` are cached: they belong to the data, not to one
    output folder, so every manifest built from the same files reuses them. The algorithm's
    version is part of the path: a change to the hash, thumbnail or statistics starts afresh.
    ``$SIMPSONS_CACHE``, else ``$XDG_CACHE_HOME/simpsons``, else ``~/.cache/simpsons``."""
    base = os.environ.get("SIMPSONS_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "simpsons"
    root = str(data_root.resolve())
    return Path(base) / f"{data_root.resolve().name}-{xxhash.xxh3_64_hexdigest(root.encode())}" / f"fingerprints-v{FINGERPRINT_VERSION}"


def run(data_root: Path, out_dir: Path, config: ManifestConfig, workers: int | None = None, plots: bool = True,
        ray: str | None = None, chunk: int = CACHE_CHUNK, show: Callable = progress) -> dict:
    """Build and write the manifest; returns the statistics. Bad files become rows with a
    status and one warning line each; nothing here stops on a bad file. ``chunk`` files are
    fingerprinted between two cache saves; ``show`` wraps the fingerprinting's iterator (a
    progress bar). Corrections that cannot be applied are one error before anything is written."""
    corrections = review.read(Path(config.corrections)) if config.corrections else review.NONE
    files, empty = scan(data_root, out_dir)
    check_writable(out_dir)
    with Lock(out_dir / MANIFEST), _cache_lock(data_root):  # a second run into the same folder is refused, not interleaved
        fingerprints = _fingerprints(data_root, files, workers, ray, chunk, show)
        return _write(data_root, out_dir, config, corrections, files, fingerprints, empty, plots)


def _cache_lock(data_root: Path) -> Lock:
    """Runs over the same data share its fingerprint cache, one at a time from fingerprinting
    to the written manifest (the build reads the cache's file as it streams): a second run
    waits, then finds the work done."""
    try:
        return Lock(cache_folder(data_root).parent)
    except BusyError:
        log.warning("%s: another run is using this data's fingerprint cache; waiting for it to finish", data_root)
        return Lock(cache_folder(data_root).parent, wait=True)


def _write(data_root: Path, out_dir: Path, config: ManifestConfig, corrections: review.Corrections, files: pl.DataFrame,
           fingerprints: pl.LazyFrame, empty: list[str], plots: bool) -> dict:
    manifest, classes = build(files, fingerprints, config, corrections)
    previous = _read_json(out_dir / STATS)
    reviewed = {"corrections_hash": corrections.hash} if config.corrections else {}

    def publish(tmp: Path) -> dict:
        """Stream the manifest into its temporary file and summarise it from there: stats.json
        is written just before the manifest appears, both only once both are whole. The
        corrections' hash is in the file too, so the manifest's own hash (which a training run
        records, and ``train --resume`` checks) changes with any edit of them."""
        sink_parquet(manifest, tmp, out_dir / MANIFEST, metadata=reviewed or None)
        summary = stats.summarise(pl.scan_parquet(tmp), classes, empty, {"data_root": str(data_root.resolve()), **asdict(config), **reviewed})
        write_json(out_dir / STATS, summary)
        return summary

    summary = atomic_write(out_dir / MANIFEST, publish)
    for problem in summary["problems"]:
        if problem["status"] != Status.LABEL_CONFLICT:  # one line per pair of classes below, not per file
            log.warning("%s: %s [%s]", problem["path"], problem["reason"], problem["status"])
    for stale in summary["corrections"]["stale"]:
        log.warning("%s: %s", stale["path"], stale["review_note"])
    for a, b, n in summary["label_conflicts"]:
        log.warning("%s and %s hold %d identical file(s) (a linked or copied folder?): all marked label_conflict and unused", a, b, n)
    for label in summary["empty_classes"]:
        log.warning("class %s has no training image left (see its files' status in the manifest)", label)
    unchanged = previous.get("counts") == summary["counts"] and all((out_dir / n).is_file() for n in figures.CHARTS)
    if plots and not unchanged:
        figures.class_distribution(summary["counts"], classes, out_dir)
    return summary


def _fingerprints(data_root: Path, files: pl.DataFrame, workers: int | None, ray: str | None, chunk: int,
                  show: Callable) -> pl.LazyFrame:
    """Fingerprint what the cache lacks, fold the cache into one file holding a row for each of
    the ``files`` in their order, and hand the build a scan of it: the fingerprint table is
    never whole in memory."""
    cache, current = ShardCache(cache_folder(data_root), KEY, FINGERPRINT_SCHEMA), files.select(KEY)
    for _ in range(3):  # again only when a shard was found damaged: its files are fingerprinted anew
        fingerprint(
            files, data_root, cache.keys(), cache.save, workers or usable_cores(), chunk,
            progress=lambda it, total: show(it, total, "fingerprinting"), ray=ray,
        )
        if cache.compact(current):
            break
    else:
        raise CacheError(f"{cache.folder}: the fingerprint cache lacks files each time it is written (a failing disk?)")
    for old in cache.folder.parent.glob("fingerprints-v*"):  # an earlier algorithm's cache is of no use
        if old != cache.folder:
            shutil.rmtree(old, ignore_errors=True)
    return pl.scan_parquet(cache.shards()[0]).cast(FINGERPRINT_SCHEMA)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class ManifestError(SimpsonsError):
    """A file given as a manifest is not one."""


class CacheError(SimpsonsError):
    """The fingerprint cache cannot be written back whole."""


@dataclass(frozen=True)
class Manifest:
    """The manifest and the ``stats.json`` beside it, as training, evaluation, the audit and
    export read them."""

    path: Path
    table: pl.DataFrame
    stats: dict

    @property
    def classes(self) -> list[str]:
        return self.stats["classes"]

    @property
    def mean(self) -> list[float]:
        return self.stats["mean"]

    @property
    def std(self) -> list[float]:
        return self.stats["std"]

    def data_root(self, override: str | Path | None = None) -> Path:
        """Where the relative paths live: ``override`` (``--data-root``) or the folder the
        manifest was built from."""
        root = Path(override or self.stats["config"]["data_root"])
        if not root.is_dir():
            raise ManifestError(f"data root {root} is not a folder (moved? pass --data-root)")
        return root

    def rows(self, split: Split | str) -> pl.DataFrame:
        """The usable rows of one split, in path order."""
        return self.table.filter((pl.col("split") == split) & pl.col("status").is_in(USABLE)).sort("path")


def read(manifest: Path) -> Manifest:
    """Read a manifest written by ``run``; a file that is not one is one clear error."""
    stats_path = manifest.parent / STATS
    try:
        table = pl.read_parquet(_existing(manifest))
        stats = json.loads(_existing(stats_path).read_text())
    except (pl.exceptions.PolarsError, OSError, ValueError) as e:
        raise ManifestError(f"{manifest}: not a manifest written by `simpsons manifest` ({str(e).splitlines()[0][:80]})") from None
    problem = _malformed(table, stats)
    if problem:
        raise ManifestError(f"{manifest}: not a manifest written by `simpsons manifest` ({problem})")
    return Manifest(manifest, table, stats)


def _existing(path: Path) -> Path:
    """``path``, or a ManifestError naming it: polars' own error may carry no file name ("None")."""
    if not path.is_file():
        raise ManifestError(f"{path}: not found (run `simpsons manifest DATA_ROOT --out DIR` first)")
    return path


def _malformed(table: pl.DataFrame, stats: dict) -> str | None:
    """What makes an edited or foreign manifest unusable, checked once here so that training,
    evaluation, the audit and export can trust it: None when nothing does."""
    missing = sorted({"path", "label", "split", "status"} - set(table.columns))
    if missing:
        return f"lacks the columns {missing}"
    if not isinstance(stats, dict):
        return f"{STATS} is not an object"
    classes = stats.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        return f"{STATS} lacks its list of classes"
    for key in ("mean", "std"):
        values = stats.get(key)
        if not (isinstance(values, list) and len(values) == 3 and all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0
                                                                      for v in values)):
            return f"{STATS} lacks its per-channel {key} (three numbers)"
    if table["path"].null_count():
        return f"{table['path'].null_count()} row(s) without a path"
    used = table.filter(pl.col("status").is_in(USABLE))
    strangers = used.filter(~pl.col("label").is_in(classes) | pl.col("label").is_null())
    if strangers.height:
        return f"{strangers.height} usable row(s) with a label outside its classes, e.g. {strangers['label'][0]!r}"
    return None
