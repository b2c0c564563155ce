"""Threads or processes for fingerprinting: where does each pay? (sets PROCESS_MIN_FILES)

Real sample frames under distinct names (symlinks: the bytes are read and decoded each time),
fingerprinted from an empty cache with a thread pool and with a process pool, the two
interleaved over rounds, medians shown; 2 workers (this machine's cores).

    .venv/bin/python bench/bench_fingerprint.py [--sizes 500 1128 4000 16000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import polars as pl

from common import SAMPLE, WORK, files, require_sample


def folder_of(n: int) -> tuple:
    """``n`` files linked to the sample's frames, and the table fingerprint() takes."""
    frames = [p for p in files(SAMPLE / "simpsons_dataset") if p.suffix == ".jpg"]
    root = WORK / f"fingerprint-{n}"
    if not root.is_dir():
        root.mkdir(parents=True)
        for i in range(n):
            (root / f"{i:06d}.jpg").symlink_to(frames[i % len(frames)])
    keys = pl.DataFrame({"path": [f"{i:06d}.jpg" for i in range(n)], "size_bytes": [0] * n, "mtime_ns": list(range(n)), "bad_name": [False] * n})
    return root, keys


def timed(root, keys, processes: bool, workers: int) -> float:
    from pipeline.engine import fingerprint as fp

    fp.PROCESS_MIN_FILES = 0 if processes else 10**12
    chunks = []
    start = time.perf_counter()
    fp.fingerprint(keys, root, keys.clear(), chunks.append, workers)
    seconds = time.perf_counter() - start
    table = pl.concat(chunks)
    assert len(table) == len(keys) and (table["status"] == "ok").all()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1128, 4000, 16000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    require_sample()
    print("| files | threads (s) | processes (s) | processes vs threads | files/s, better of the two |")
    print("|---|---|---|---|---|")
    for n in args.sizes:
        root, keys = folder_of(n)
        times = {True: [], False: []}
        for _ in range(args.rounds):
            for processes in (False, True):
                times[processes].append(timed(root, keys, processes, args.workers))
        threads, procs = statistics.median(times[False]), statistics.median(times[True])
        print(f"| {n:,} | {threads:.2f} | {procs:.2f} | {threads / procs:.2f}x | {n / min(threads, procs):.0f} |", flush=True)


if __name__ == "__main__":
    main()
