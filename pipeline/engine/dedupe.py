"""Exact duplicates, near-duplicate groups and the leakage rule: table -> table, pure (the
thumbnails the grouping compares come beside the table, as one array).

Near duplicates are the same frame resized or re-encoded (the Kaggle test images are downscaled
training frames) and consecutive, near-identical frames. A perceptual-hash distance proposes
pairs; a colour-thumbnail comparison verifies them, because structure alone also matches
distinct frames of different characters.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl

from pipeline.engine.schema import Status
from pipeline.engine.fingerprint import THUMB_SIZE

PHASH_MAX_DISTANCE = 12  # of 64 bits: proposes a pair
EXACT_MAX_FILES = 300_000  # up to here every pair of hashes is compared: as fast as the graph index there, less memory
NEIGHBOURS = 16  # per hash, from the graph index (clusters larger than this stay connected through their members)
CHUNK = 16_384  # hashes looked up in the graph at once: NEIGHBOURS candidates each, the grouping's peak memory
RANGE_CHUNK = 4_096  # hashes looked up at once by the exact search: a hash in a large cluster has thousands
VERIFY_CHUNK = 16_384  # pairs whose thumbnails are compared at once
THUMB_BATCH = 16_384  # thumbnails read from the fingerprint table at once
THUMB_MAX_DIFFERENCE = 10.0  # mean absolute 0..255 difference of the RGB thumbnails (THUMB_SIZE): accepts it


def mark_exact_duplicates(df: pl.DataFrame) -> pl.DataFrame:
    """Among readable files with the same bytes and the same label keep one (a labelled test
    copy before a training one, a test file of no label last, then the first path) and mark
    the others ``duplicate``, naming the kept file. The same bytes under two labels are a
    contradiction no rule can settle (a class folder linked to another, a mislabelled copy):
    every such file is marked ``label_conflict``, naming a file of another label, and none is
    used. ``df`` is in path order: decided on row numbers, hashes and labels, the paths are
    looked up once at the end."""
    _check_path_order(df, "mark_exact_duplicates")
    ok = df.lazy().with_row_index("_row").filter(pl.col("status") == Status.OK).select("_row", "hash", "label", "source")
    per_hash = ok.group_by("hash").agg(
        (pl.col("label").drop_nulls().n_unique() > 1).alias("_conflict"),
        pl.coalesce(  # a labelled test copy stays in the test set; a test file of no label is never scored
            pl.col("_row").filter((pl.col("source") == "test") & pl.col("label").is_not_null()).min(),
            pl.col("_row").filter(pl.col("label").is_not_null()).min(),
            pl.col("_row").min(),
        ).alias("_keeper"),
    )
    rows = ok.join(per_hash, on="hash")
    conflicted = rows.filter("_conflict").select("_row", "hash", "label")
    other = (  # for each file in a conflict: the first file of another label with the same bytes
        conflicted.join(conflicted, on="hash", suffix="_other").filter(pl.col("label") != pl.col("label_other"))
        .group_by("_row").agg(pl.col("_row_other").min())
    )
    decided = rows.join(other, on="_row", how="left").select(
        "_row", "_conflict", "_row_other",
        pl.when(~pl.col("_conflict") & (pl.col("_row") != pl.col("_keeper"))).then(pl.col("_keeper")).alias("_duplicate_of"),
    ).collect()
    paths, labels = df.get_column("path"), df.get_column("label")
    kept, other_row = (_rows_to(len(df), decided["_row"], decided[c]) for c in ("_duplicate_of", "_row_other"))
    conflicted_rows = np.zeros(len(df), dtype=bool)
    conflicted_rows[decided.filter("_conflict")["_row"].to_numpy()] = True
    out = df.with_columns(
        paths.gather(kept).alias("duplicate_of"), paths.gather(other_row).alias("_other"), labels.gather(other_row).alias("_other_label"),
        pl.Series("_conflict", conflicted_rows),
    )
    conflict = pl.col("_conflict")
    return out.with_columns(
        pl.when(conflict).then(pl.lit(Status.LABEL_CONFLICT))
        .when(pl.col("duplicate_of").is_not_null()).then(pl.lit(Status.DUPLICATE))
        .otherwise(pl.col("status")).alias("status"),
        pl.when(conflict & pl.col("_other").is_null()).then(pl.lit("no label of its own; same bytes as files of two labels"))
        .when(conflict).then(pl.format("same bytes as {} (label {})", pl.col("_other"), pl.col("_other_label")))
        .when(pl.col("duplicate_of").is_not_null()).then(pl.format("same bytes as {}", pl.col("duplicate_of")))
        .otherwise(pl.col("reason"))
        .alias("reason"),
    ).drop("_other", "_other_label", "_conflict")


def _check_path_order(df: pl.DataFrame, caller: str) -> None:
    """The row-number logic names a kept file or a group by its first row: right only in path order."""
    if not df.get_column("path").is_sorted():
        raise ValueError(f"{caller}: the table is not in path order")


def _rows_to(n: int, rows: pl.Series, values: pl.Series) -> pl.Series:
    """A column of ``n`` row numbers to gather: ``values[k]`` on row ``rows[k]``, null elsewhere."""
    index = np.full(n, -1, dtype=np.int64)
    index[rows.to_numpy()] = values.fill_null(-1).to_numpy()
    return _gather_index(index)


def _gather_index(index: np.ndarray) -> pl.Series:
    """Row numbers, -1 for none, as an index ``gather`` turns into nulls where there is none."""
    return pl.Series(index).set(pl.Series(index < 0), None)


def conflicting_labels(df: pl.LazyFrame) -> list[tuple[str, str, int]]:
    """(label, other label, files) for each pair of labels that share identical files."""
    pairs = (
        df.lazy().filter(pl.col("status") == Status.LABEL_CONFLICT)
        .with_columns(pl.col("reason").str.extract(r"\(label (.+)\)$").alias("_other_label"))
        .filter(pl.col("label").is_not_null() & pl.col("_other_label").is_not_null())  # a file of no label is not a pair
        .with_columns(pl.min_horizontal("label", "_other_label").alias("a"), pl.max_horizontal("label", "_other_label").alias("b"))
        .group_by("a", "b").len().sort("a", "b")
        .collect()
    )
    return [(a, b, n) for a, b, n in pairs.iter_rows()]


def _codes(phash: np.ndarray) -> np.ndarray:
    """64-bit hashes as the 8-byte binary codes faiss indexes."""
    return np.ascontiguousarray(phash.astype(np.uint64).view(np.uint8).reshape(-1, 8))


def _ordered_unique(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Pairs (min, max) without self-pairs or repeats, sorted: the same set whatever the order found."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    key = np.unique(lo[lo != hi].astype(np.int64) * n + hi[lo != hi])
    return np.stack([key // n, key % n], axis=1)


def candidate_chunks(phash: np.ndarray, max_distance: int, exact_max: int = EXACT_MAX_FILES, workers: int = 2,
                     chunk: int | None = None) -> Iterator[np.ndarray]:
    """Pairs (i, j), i < j, whose hashes differ in at most ``max_distance`` bits, a chunk of
    query hashes at a time: whoever consumes them holds one chunk's candidates, not all.

    Up to ``exact_max`` hashes every pair is compared (faiss' exact binary range search: 2.7 s
    for 100,000, 23 s for 300,000, where the graph index takes as long: bench/bench_groups.py).
    Beyond, graph indexes (HNSW) propose each hash's ``NEIGHBOURS``
    nearest, kept when within ``max_distance``: about N log N work instead of N^2, and on
    clustered data 99.9%+ of the exact pairs (bench/bench_groups.py). One index per worker,
    over every ``workers``-th hash, each built on its own thread: the cores are used, and the
    same hashes always give the same graphs and pairs (the manifest stays reproducible, which
    one index built by several threads would not); every hash is then looked up in all of them.
    A pair can come in two chunks (once from each end). ``chunk``: hashes looked up at once
    (default ``RANGE_CHUNK`` for the exact search, ``CHUNK`` for the graphs)."""
    import faiss

    n, codes = len(phash), _codes(phash)
    if n <= exact_max:
        faiss.omp_set_num_threads(workers)
        index = faiss.IndexBinaryFlat(64)
        index.add(codes)
        step = chunk or RANGE_CHUNK
        for start in range(0, n, step):
            limits, _, found = index.range_search(codes[start : start + step], max_distance + 1)  # radius is exclusive
            query = start + np.repeat(np.arange(len(limits) - 1), np.diff(limits).astype(np.int64))
            yield _ordered_unique(query, found.astype(np.int64), n)
        return
    shards = [np.arange(s, n, workers) for s in range(workers)]
    indexes = [faiss.IndexBinaryHNSW(64, 16) for _ in shards]
    for index in indexes:
        index.hnsw.efConstruction, index.hnsw.efSearch = 60, 64  # 1M hashes: 99.85% of the pairs in ~100 s (bench_groups)
    faiss.omp_set_num_threads(1)
    with ThreadPoolExecutor(workers) as pool:  # faiss releases the GIL while it builds
        list(pool.map(lambda job: job[0].add(codes[job[1]]), zip(indexes, shards)))
    faiss.omp_set_num_threads(workers)
    step = chunk or CHUNK
    for start in range(0, n, step):
        query = np.repeat(np.arange(start, min(n, start + step)), NEIGHBOURS)
        for index, members in zip(indexes, shards):
            distances, found = index.search(codes[start : start + step], NEIGHBOURS)
            keep = (distances.ravel() <= max_distance) & (found.ravel() >= 0)
            yield _ordered_unique(query[keep], members[found.ravel()[keep]], n)


def candidate_pairs(phash: np.ndarray, max_distance: int, exact_max: int = EXACT_MAX_FILES, workers: int = 2,
                    chunk: int | None = None) -> np.ndarray:
    """Every candidate pair at once, sorted (``candidate_chunks`` joined): to compare methods."""
    return _joined(list(candidate_chunks(phash, max_distance, exact_max, workers, chunk)), len(phash))


def _joined(chunks: list[np.ndarray], n: int) -> np.ndarray:
    return _ordered_unique(*np.concatenate(chunks).T, n) if chunks else np.empty((0, 2), dtype=np.int64)


def verified(pairs: np.ndarray, thumbs: np.ndarray, max_difference: float, rows: np.ndarray | None = None) -> np.ndarray:
    """The pairs whose thumbnails differ by at most ``max_difference`` (mean absolute, 0..255),
    a slice at a time in uint8 arithmetic: a few MB however many pairs there are. Pair (i, j)
    compares ``thumbs[rows[i]]`` with ``thumbs[rows[j]]`` (``thumbs[i]`` without ``rows``)."""
    keep = np.zeros(len(pairs), dtype=bool)
    for start in range(0, len(pairs), VERIFY_CHUNK):
        at = pairs[start : start + VERIFY_CHUNK] if rows is None else rows[pairs[start : start + VERIFY_CHUNK]]
        a, b = thumbs[at[:, 0]], thumbs[at[:, 1]]
        difference = (np.maximum(a, b) - np.minimum(a, b)).sum(axis=1, dtype=np.int32)
        keep[start : start + VERIFY_CHUNK] = difference <= max_difference * thumbs.shape[1]
    return pairs[keep]


def near_duplicate_pairs(phash: np.ndarray, thumbs: np.ndarray, max_distance: int, max_difference: float,
                         exact_max: int = EXACT_MAX_FILES, workers: int = 2, rows: np.ndarray | None = None,
                         chunk: int | None = None) -> np.ndarray:
    """The verified pairs, sorted: each chunk of candidates is checked as it comes, so memory
    holds the (few) verified pairs, not every candidate (on generated frames 2% of them are kept).
    Hash i's thumbnail is ``thumbs[rows[i]]`` (``thumbs[i]`` without ``rows``): a table's
    thumbnails serve any subset of its rows without a copy."""
    chunks = [verified(c, thumbs, max_difference, rows) for c in candidate_chunks(phash, max_distance, exact_max, workers, chunk)]
    return _joined(chunks, len(phash))


def connected_components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Each node's component, named by its smallest member index (scipy's sparse graph
    routine: no Python loop per file)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as components

    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = components(graph, directed=False)
    first = np.full(labels.max() + 1 if n else 0, n)
    np.minimum.at(first, labels, np.arange(n))
    return first[labels]


def thumbnails(fingerprints: pl.LazyFrame) -> np.ndarray:
    """Every thumbnail of a fingerprint table, in its row order, as one uint8 array: 192 bytes
    a file (zeros where a file has none). Read a batch at a time, so the column is never in
    memory twice, and without a Python object per file."""
    size = THUMB_SIZE**2 * 3
    column = pl.col("thumb").fill_null(bytes(size)).bin.reinterpret(dtype=pl.Array(pl.UInt8, size))
    thumbs = np.empty((fingerprints.select(pl.len()).collect().item(), size), dtype=np.uint8)
    at = 0
    for batch in fingerprints.select(column).collect_batches(chunk_size=THUMB_BATCH):
        thumbs[at : at + len(batch)] = batch["thumb"].to_numpy()
        at += len(batch)
    return thumbs


def group_near_duplicates(
    df: pl.DataFrame,
    thumbs: np.ndarray,
    max_distance: int = PHASH_MAX_DISTANCE,
    max_difference: float = THUMB_MAX_DIFFERENCE,
) -> pl.DataFrame:
    """Add ``group`` (the first path of its near-duplicate group; exact duplicates join their
    kept file's group) and ``group_size``. ``df`` is in path order, so a group's first path is
    its first row: groups are row numbers until the end, never a table joined back. Row i's
    thumbnail is ``thumbs[i]`` (``thumbnails``: beside the table, which never carries them).
    Unreadable files have no group."""
    _check_path_order(df, "group_near_duplicates")
    paths = df.get_column("path")
    ok = df.get_column("status") == Status.OK
    rows = np.flatnonzero(ok.to_numpy())
    phash = df.get_column("phash").filter(ok).cast(pl.UInt64).to_numpy()
    pairs = near_duplicate_pairs(phash, thumbs, max_distance, max_difference, workers=os.cpu_count() or 1, rows=rows)
    first = np.full(len(df), -1, dtype=np.int64)  # each row's group, as the row of its first path
    first[rows] = rows[connected_components(len(rows), pairs)]
    kept = df.get_column("duplicate_of")
    copies = np.flatnonzero(kept.is_not_null().to_numpy())
    first[copies] = first[paths.search_sorted(kept.gather(copies)).to_numpy()]
    size = np.bincount(first[first >= 0], minlength=len(df))
    return df.with_columns(
        paths.gather(_gather_index(first)).alias("group"),
        pl.Series(size[first], dtype=pl.Int32).set(pl.Series(first < 0), None).alias("group_size"),
    )


def mark_leaks(df: pl.DataFrame, keep_leaks: bool = False) -> pl.DataFrame:
    """A training image whose group holds a test image would let the model see the test set:
    mark it ``leak`` (or only flag it, with ``keep_leaks``, to reproduce published numbers)."""
    test_groups = df.lazy().filter((pl.col("source") == "test") & pl.col("group").is_not_null()).select(pl.col("group").unique()).collect()["group"]
    leak = (pl.col("source") == "train") & pl.col("group").is_in(test_groups.implode()) & (pl.col("status") == Status.OK)
    out = df.with_columns(leak.alias("leak"))
    if keep_leaks:
        return out
    return out.with_columns(
        pl.when(pl.col("leak")).then(pl.lit(Status.LEAK)).otherwise(pl.col("status")).alias("status"),
        pl.when(pl.col("leak"))
        .then(pl.format("near-duplicate of test image group {}", pl.col("group")))
        .otherwise(pl.col("reason"))
        .alias("reason"),
    )
