"""A deterministic, stratified train/val split that moves whole near-duplicate groups.

Splitting frame by frame would put near-identical frames on both sides and inflate validation
scores; groups move together instead. The order within a class comes from hashing
(seed, group), so the result does not depend on file-system order or on other classes.
"""

from __future__ import annotations

import polars as pl
import xxhash

from pipeline.engine.schema import USABLE, Split, Status


def mark_unknown_labels(df: pl.DataFrame, classes: list[str]) -> pl.DataFrame:
    """Test images whose name carries no training class cannot be scored."""
    unknown = (pl.col("status") == Status.OK) & ~pl.col("label").is_in(classes)
    return df.with_columns(
        pl.when(unknown).then(pl.lit(Status.UNKNOWN_LABEL)).otherwise(pl.col("status")).alias("status"),
        pl.when(unknown)
        .then(pl.format("label {} is not a training class", pl.col("label").fill_null("(none)")))
        .otherwise(pl.col("reason"))
        .alias("reason"),
    )


def choose_val_groups(groups: list[tuple[str, int]], val_fraction: float, seed: int) -> set[str]:
    """Groups (id, size) of one class -> the ids for validation: walk them in seeded order and
    take each that brings the validation count closer to its target. A class with two or more
    groups always gets at least one validation group and keeps one for training."""
    order = sorted(groups, key=lambda g: xxhash.xxh64_intdigest(f"{seed}:{g[0]}".encode()))
    target = val_fraction * sum(size for _, size in groups)
    chosen, count = set(), 0
    for gid, size in order:
        if abs(count + size - target) < abs(count - target):
            chosen.add(gid)
            count += size
    if len(groups) >= 2:
        if not chosen:
            chosen.add(min(order, key=lambda g: g[1])[0])
        if len(chosen) == len(groups):
            chosen.discard(max(order, key=lambda g: g[1])[0])
    return chosen


def assign_split(df: pl.DataFrame, val_fraction: float = 0.15, seed: int = 0) -> pl.DataFrame:
    """``split``: train/val for usable class-folder images, test for usable test images,
    excluded for everything else (its status says why)."""
    usable = pl.col("status").is_in(USABLE)
    sizes = df.lazy().filter(usable & (pl.col("source") == "train")).group_by("label", "group").len().sort("label", "group").collect()
    val_groups: set[str] = set()
    for _, part in sizes.group_by("label", maintain_order=True):
        val_groups |= choose_val_groups(list(zip(part["group"], part["len"])), val_fraction, seed)
    return df.with_columns(
        pl.when(~usable).then(pl.lit(Split.EXCLUDED))
        .when(pl.col("source") == "test").then(pl.lit(Split.TEST))
        .when(pl.col("group").is_in(list(val_groups))).then(pl.lit(Split.VAL))
        .otherwise(pl.lit(Split.TRAIN))
        .alias("split")
    )
