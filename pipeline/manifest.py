"""The data engine in one visible place: scan -> fingerprint -> duplicates -> near-duplicate
groups -> leakage -> labels -> split -> statistics, and the files it writes.

``build`` is pure (tables in, table out); ``run`` is the thin shell around it that reads the
disk, uses the cache and writes ``manifest.parquet``, ``stats.json`` and the plots.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import polars as pl
import xxhash

from pipeline import dedupe, split, stats
from pipeline import plots as plots_module
from pipeline.fingerprint import FINGERPRINT_SCHEMA, FINGERPRINT_VERSION, KEY, fingerprint
from pipeline.io import ShardCache, write_json, write_parquet
from pipeline.scan import scan
from runtime.errors import SimpsonsError
from runtime.files import Lock, check_writable
from runtime.progress import progress

log = logging.getLogger("simpsons.manifest")
MANIFEST = "manifest.parquet"
STATS = "stats.json"
CACHE_CHUNK = 256  # files fingerprinted between two cache saves
COLUMNS = [
    "path", "label", "split", "status", "reason", "source", "hash", "size_bytes", "width", "height",
    "format", "phash", "group", "group_size", "duplicate_of", "leak", "pixel_mean", "pixel_sq_mean",
]


@dataclass(frozen=True)
class ManifestConfig:
    val_fraction: float = 0.15
    seed: int = 0
    keep_leaks: bool = False
    phash_max_distance: int = dedupe.PHASH_MAX_DISTANCE
    thumb_max_difference: float = dedupe.THUMB_MAX_DIFFERENCE


def class_list(df: pl.DataFrame) -> list[str]:
    """Sorted names of the class folders holding at least one readable image; index = class id."""
    return sorted(df.filter((pl.col("source") == "train") & (pl.col("status") == "ok"))["label"].unique().to_list())


def build(files: pl.DataFrame, fingerprints: pl.DataFrame | pl.LazyFrame, config: ManifestConfig) -> tuple[pl.DataFrame, list[str]]:
    """Scanned files + their fingerprints (a table, or a scan of the cache's file) -> the
    manifest table (in path order) and the class list. Each step keeps the row order and copies
    only the columns it decides on."""
    df = (
        files.sort("path").lazy()
        .join(fingerprints.lazy().drop("size_bytes", "mtime_ns"), on="path", how="left", maintain_order="left")
        .collect()
    )
    df = df.with_columns(
        pl.when(pl.col("bad_name")).then(pl.lit("bad_name")).otherwise(pl.col("status")).alias("status"),
        pl.when(pl.col("bad_name")).then(pl.lit("the file or folder name is not valid UTF-8 (shown with \\xNN escapes); rename it"))
        .otherwise(pl.col("reason")).alias("reason"),
    )
    classes = class_list(df)
    df = dedupe.mark_exact_duplicates(df)
    df = dedupe.group_near_duplicates(df, config.phash_max_distance, config.thumb_max_difference).drop("thumb")  # its only use
    df = dedupe.mark_leaks(df, config.keep_leaks)
    df = split.mark_unknown_labels(df, classes)
    df = split.assign_split(df, config.val_fraction, config.seed)
    return df.select(COLUMNS), classes


def cache_folder(data_root: Path) -> Path:
    """Where the fingerprints of ``data_root`` are cached: they belong to the data, not to one
    output folder, so every manifest built from the same files reuses them. The algorithm's
    version is part of the path: a change to the hash, thumbnail or statistics starts afresh.
    ``$SIMPSONS_CACHE``, else ``$XDG_CACHE_HOME/simpsons``, else ``~/.cache/simpsons``."""
    base = os.environ.get("SIMPSONS_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "simpsons"
    root = str(data_root.resolve())
    return Path(base) / f"{data_root.resolve().name}-{xxhash.xxh3_64_hexdigest(root.encode())}" / f"fingerprints-v{FINGERPRINT_VERSION}"


def run(data_root: Path, out_dir: Path, config: ManifestConfig, workers: int | None = None, plots: bool = True,
        ray: str | None = None) -> dict:
    """Build and write the manifest; returns the statistics. Bad files become rows with a
    status and one warning line each; nothing here stops on a bad file."""
    files, empty = scan(data_root)
    check_writable(out_dir)
    with Lock(out_dir / MANIFEST):  # a second run into the same folder is refused, not interleaved
        return _run(data_root, out_dir, config, files, empty, workers, plots, ray)


def _run(data_root: Path, out_dir: Path, config: ManifestConfig, files: pl.DataFrame, empty: list[str],
         workers: int | None, plots: bool, ray: str | None) -> dict:
    df, classes = build(files, _fingerprints(data_root, files, workers, ray), config)
    summary = stats.summarise(df, classes, empty, {"data_root": str(data_root.resolve()), **asdict(config)})
    for problem in summary["problems"]:
        if problem["status"] != "label_conflict":  # one line per pair of classes below, not per file
            log.warning("%s: %s [%s]", problem["path"], problem["reason"], problem["status"])
    for a, b, n in summary["label_conflicts"]:
        log.warning("%s and %s hold %d identical file(s) (a linked or copied folder?): all marked label_conflict and unused", a, b, n)
    for label in summary["empty_classes"]:
        log.warning("class %s has no training image left (see its files' status in the manifest)", label)
    previous = _read_json(out_dir / STATS)
    write_parquet(out_dir / MANIFEST, df)
    write_json(out_dir / STATS, summary)
    unchanged = previous.get("counts") == summary["counts"] and all((out_dir / n).is_file() for n in plots_module.CHARTS)
    if plots and not unchanged:
        plots_module.class_distribution(summary["counts"], classes, out_dir)
    return summary


def _fingerprints(data_root: Path, files: pl.DataFrame, workers: int | None, ray: str | None) -> pl.LazyFrame:
    """Fingerprint what the cache lacks, fold the cache into one file and hand the build a scan
    of it: the fingerprint table is never whole in memory until the build joins it."""
    cache = ShardCache(cache_folder(data_root), KEY, FINGERPRINT_SCHEMA)
    cached, current = cache.keys(), files.filter(~pl.col("bad_name")).select(KEY)
    computed = fingerprint(
        current, data_root, cached, cache.save, workers or os.cpu_count() or 1, CACHE_CHUNK,
        progress=lambda it, total: progress(it, total, "fingerprinting"), ray=ray,
    )
    if computed or len(cached) != len(current) or len(cache.shards()) != 1:  # after this, one file holds exactly these rows
        cache.compact(current)
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


def read(manifest: Path) -> tuple[pl.DataFrame, dict]:
    """The manifest and the ``stats.json`` written beside it: what training and export read."""
    try:
        table = pl.read_parquet(manifest)
        stats = json.loads((manifest.parent / STATS).read_text())
    except FileNotFoundError as e:
        raise ManifestError(f"{e.filename}: not found (run `simpsons manifest DATA_ROOT --out DIR` first)") from None
    except (pl.exceptions.PolarsError, OSError, ValueError) as e:
        raise ManifestError(f"{manifest}: not a manifest written by `simpsons manifest` ({str(e).splitlines()[0][:80]})") from None
    missing = {"path", "label", "split", "status"} - set(table.columns)
    if missing or "classes" not in stats:
        raise ManifestError(f"{manifest}: not a manifest written by `simpsons manifest` (lacks {sorted(missing) or 'classes'})")
    return table, stats


def data_root(stats: dict, override: str | Path | None = None) -> Path:
    """Where the manifest's relative paths live: ``override`` (``--data-root``) or the folder
    the manifest was built from. Train, evaluate and export all resolve it here."""
    root = Path(override or stats["config"]["data_root"])
    if not root.is_dir():
        raise ManifestError(f"data root {root} is not a folder (moved? pass --data-root)")
    return root
