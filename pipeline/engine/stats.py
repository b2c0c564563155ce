"""Summaries of the manifest: normalisation statistics, counts, groups and problems.

Each is a query over the manifest (a scan of its file): they read a few columns each, so
summarising a million rows never holds the table.
"""

from __future__ import annotations

import math

import polars as pl

from pipeline.engine.schema import ACTIONS, PICTURES, Review, Split, Status
from pipeline.engine.dedupe import conflicting_labels

SPLITS = (Split.TRAIN, Split.VAL, Split.TEST)


def channel_stats(df: pl.LazyFrame) -> tuple[list[float], list[float]]:
    """Per-channel RGB mean and std (0..1) over the train split, each image weighing the same
    (from its per-image moments: no pixels are held in memory). The sums are exact
    (``math.fsum``), so they do not depend on the order in which a parallel query hands the
    rows over: identical runs write identical stats.json, to the last digit."""
    columns = df.filter((pl.col("split") == Split.TRAIN) & pl.col("pixel_mean").is_not_null()).select(
        *(pl.col(column).list.get(c).alias(f"{column}{c}") for column in ("pixel_mean", "pixel_sq_mean") for c in range(3))
    ).collect()
    if not columns.height:  # no training image
        return [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    moments = [math.fsum(columns[name].to_numpy()) / columns.height for name in columns.columns]
    mean, squares = moments[:3], moments[3:]
    std = [math.sqrt(max(q - m * m, 0.0)) for q, m in zip(squares, mean)]
    return list(mean), std


def counts(df: pl.LazyFrame, classes: list[str]) -> dict[str, dict[str, int]]:
    """Images per split and class, zero-filled so every class appears."""
    table = df.filter(pl.col("split").is_in(SPLITS)).group_by("split", "label").len().collect()
    out = {split: dict.fromkeys(classes, 0) for split in SPLITS}
    for split, label, n in table.iter_rows():
        out[split][label] = n
    return out


def groups_of(df: pl.LazyFrame, column: str) -> list[list[str]]:
    """Lists of paths that share ``column`` (only groups of two or more)."""
    grouped = (
        df.filter(pl.col(column).is_not_null())
        .group_by(column)
        .agg(pl.col("path").sort())
        .filter(pl.col("path").list.len() > 1)
        .sort(pl.col("path").list.first())
    )
    return grouped.collect()["path"].to_list()


def corrections(df: pl.LazyFrame) -> dict:
    """What the review did: rows per action applied, rows it changed, and each stale decision
    (the file changed since it was reviewed) with why it was not applied."""
    applied = dict(df.filter(pl.col("review").is_not_null()).group_by("review").len().collect().iter_rows())
    stale = df.filter(pl.col("review") == Review.STALE).select("path", "review_note").sort("path").collect()
    return {**{action.value: applied.get(action, 0) for action in ACTIONS},
            "corrected": df.filter(pl.col("corrected")).select(pl.len()).collect().item(), "stale": stale.to_dicts()}


def summarise(df: pl.LazyFrame, classes: list[str], empty_folders: list[str], config: dict) -> dict:
    """Everything ``stats.json`` holds: the class list (index = class id) and how the data
    engine judged every file."""
    mean, std = channel_stats(df)
    per_split = counts(df, classes)
    totals = dict(df.group_by("split").len().collect().iter_rows())
    copies = df.filter(pl.col("duplicate_of").is_not_null()).group_by("duplicate_of").agg(pl.col("path").sort()).sort("duplicate_of")
    problems = (df.filter(~pl.col("status").is_in([*PICTURES, Status.EXCLUDED_BY_REVIEW]))  # a person's decision is no problem
                .select("path", "status", "reason"))
    return {
        "classes": classes,
        "mean": mean,
        "std": std,
        "counts": per_split,
        "totals": {s: totals.get(s, 0) for s in (*SPLITS, Split.EXCLUDED)},
        "status": dict(sorted(df.group_by("status").len().collect().iter_rows())),
        "exact_duplicate_groups": [[kept, *paths] for kept, paths in copies.collect().iter_rows()],
        "near_duplicate_groups": groups_of(df.filter(pl.col("group_size") > 1), "group"),
        "leaks": df.filter(pl.col("leak")).select("path").collect()["path"].to_list(),
        "label_conflicts": [list(pair) for pair in conflicting_labels(df)],
        "corrections": corrections(df),
        "empty_classes": [c for c in classes if per_split[Split.TRAIN][c] == 0],
        "problems": problems.collect().to_dicts() + [{"path": p, "status": "empty_folder", "reason": "class folder holds no file"} for p in empty_folders],
        "config": config,
    }
