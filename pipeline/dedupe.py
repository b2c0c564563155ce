"""Exact duplicates, near-duplicate groups and the leakage rule: pure table -> table.

Near duplicates are the same frame resized or re-encoded (the Kaggle test images are downscaled
training frames) and consecutive, near-identical frames. A perceptual-hash distance proposes
pairs; a colour-thumbnail comparison verifies them, because structure alone also matches
distinct frames of different characters.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.fingerprint import THUMB_SIZE

PHASH_MAX_DISTANCE = 12  # of 64 bits: proposes a pair
THUMB_MAX_DIFFERENCE = 10.0  # mean absolute 0..255 difference of the RGB thumbnails (THUMB_SIZE): accepts it


def mark_exact_duplicates(df: pl.DataFrame) -> pl.DataFrame:
    """Among readable files with the same bytes and the same label keep one (a test copy
    before a training one, then the first path) and mark the others ``duplicate``, naming the
    kept file. The same bytes under two labels are a contradiction no rule can settle (a class
    folder linked to another, a mislabelled copy): every such file is marked ``label_conflict``,
    naming a file of the other label, and none is used."""
    readable = pl.col("status") == "ok"
    labels = df.filter(readable).group_by("hash").agg(pl.col("label").drop_nulls().n_unique().alias("_labels"))
    other = (  # for each file in a conflict: the first path of another label with the same bytes
        df.filter(readable).select("hash", "path", "label")
        .join(df.filter(readable).select("hash", pl.col("path").alias("_other"), pl.col("label").alias("_other_label")), on="hash")
        .filter(pl.col("label") != pl.col("_other_label"))
        .group_by("path").agg(pl.col("_other").min(), pl.col("_other_label").sort_by("_other").first())
    )
    ranked = df.join(labels, on="hash", how="left").join(other, on="path", how="left").with_columns(
        (readable & (pl.col("_labels") > 1)).alias("_conflict"),
        pl.when(pl.col("source") == "test").then(0).otherwise(1).alias("_rank"),
    ).sort(["_rank", "path"])
    keeper = (
        ranked.filter(readable & ~pl.col("_conflict"))
        .group_by("hash", maintain_order=True)
        .agg(pl.col("path").first().alias("_keeper"))
    )
    return (
        ranked.join(keeper, on="hash", how="left")
        .with_columns(
            pl.when(readable & ~pl.col("_conflict") & (pl.col("path") != pl.col("_keeper")))
            .then(pl.col("_keeper"))
            .alias("duplicate_of")
        )
        .with_columns(
            pl.when(pl.col("_conflict")).then(pl.lit("label_conflict"))
            .when(pl.col("duplicate_of").is_not_null()).then(pl.lit("duplicate"))
            .otherwise(pl.col("status")).alias("status"),
            pl.when(pl.col("_conflict")).then(pl.format("same bytes as {} (label {})", pl.col("_other"), pl.col("_other_label")))
            .when(pl.col("duplicate_of").is_not_null()).then(pl.format("same bytes as {}", pl.col("duplicate_of")))
            .otherwise(pl.col("reason"))
            .alias("reason"),
        )
        .drop("_rank", "_keeper", "_labels", "_conflict", "_other", "_other_label")
        .sort("path")
    )


def conflicting_labels(df: pl.DataFrame) -> list[tuple[str, str, int]]:
    """(label, other label, files) for each pair of labels that share identical files."""
    pairs = (
        df.filter(pl.col("status") == "label_conflict")
        .with_columns(pl.col("reason").str.extract(r"\(label (.+)\)$").alias("_other_label"))
        .with_columns(pl.min_horizontal("label", "_other_label").alias("a"), pl.max_horizontal("label", "_other_label").alias("b"))
        .group_by("a", "b").len().sort("a", "b")
    )
    return [(a, b, n) for a, b, n in pairs.iter_rows()]


def candidate_pairs(phash: np.ndarray, max_distance: int, block: int = 1024) -> np.ndarray:
    """All (i, j), i < j, whose hashes differ in at most ``max_distance`` bits, in blocks so
    memory stays at block x N."""
    pairs = []
    for start in range(0, len(phash), block):
        distance = np.bitwise_count(phash[start : start + block, None] ^ phash[None, :])
        i, j = np.nonzero(distance <= max_distance)
        i += start
        keep = i < j
        pairs.append(np.stack([i[keep], j[keep]], axis=1))
    return np.concatenate(pairs) if pairs else np.empty((0, 2), dtype=np.int64)


def verified(pairs: np.ndarray, thumbs: np.ndarray, max_difference: float) -> np.ndarray:
    difference = np.abs(thumbs[pairs[:, 0]].astype(np.int16) - thumbs[pairs[:, 1]]).mean(axis=1)
    return pairs[difference <= max_difference]


def connected_components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Union-find: the smallest member index names each component."""
    parent = np.arange(n)

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs.tolist():
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([root(i) for i in range(n)])


def group_near_duplicates(
    df: pl.DataFrame,
    max_distance: int = PHASH_MAX_DISTANCE,
    max_difference: float = THUMB_MAX_DIFFERENCE,
) -> pl.DataFrame:
    """Add ``group`` (the first path of its near-duplicate group; exact duplicates join their
    kept file's group) and ``group_size``. Unreadable files have no group."""
    ok = df.filter(pl.col("status") == "ok").sort("path")
    phash = ok["phash"].cast(pl.UInt64).to_numpy()
    thumbs = np.frombuffer(b"".join(ok["thumb"].to_list()), dtype=np.uint8).reshape(len(ok), THUMB_SIZE**2 * 3)
    pairs = verified(candidate_pairs(phash, max_distance), thumbs, max_difference)
    paths = ok["path"]
    groups = pl.DataFrame({"_member": paths, "group": paths.gather(connected_components(len(ok), pairs))})
    out = df.with_columns(pl.coalesce("duplicate_of", "path").alias("_member")).join(groups, on="_member", how="left")
    out = out.with_columns(
        pl.when(pl.col("group").is_not_null()).then(pl.len().over("group")).cast(pl.Int32).alias("group_size")
    )
    return out.drop("_member").sort("path")


def mark_leaks(df: pl.DataFrame, keep_leaks: bool = False) -> pl.DataFrame:
    """A training image whose group holds a test image would let the model see the test set:
    mark it ``leak`` (or only flag it, with ``keep_leaks``, to reproduce published numbers)."""
    test_groups = df.filter((pl.col("source") == "test") & pl.col("group").is_not_null())["group"].unique()
    leak = (pl.col("source") == "train") & pl.col("group").is_in(test_groups.implode()) & (pl.col("status") == "ok")
    out = df.with_columns(leak.alias("leak"))
    if keep_leaks:
        return out
    return out.with_columns(
        pl.when(pl.col("leak")).then(pl.lit("leak")).otherwise(pl.col("status")).alias("status"),
        pl.when(pl.col("leak"))
        .then(pl.format("near-duplicate of test image group {}", pl.col("group")))
        .otherwise(pl.col("reason"))
        .alias("reason"),
    )
