"""The data engine and batch inference on 100,000 files.

Generated frames (``simpsons synth``: 42 classes of drawn characters, Kaggle layout), drawn
once into bench/.work/scale. Measured, each in its own process (peak memory = VmHWM):
1. ``simpsons manifest`` end to end (fingerprint, group, split, stats) on 25k, 50k and 100k
   files, from an empty cache, against the naive loop (one thread: read, md5, full decode;
   median of 3 passes) timed on the same 100k files in the same run: seconds per file and
   peak memory;
2. ``simpsons-infer`` on the 100k files with a model: images/s over the first and the last
   fifth of the run (from the rows the CSV holds, sampled every 2 s) and peak memory;
3. the same inference killed half-way and finished with ``--resume``: rows, duplicates.

    .venv/bin/python bench/bench_scale.py --model demo/out/model.int8.onnx [--files 100000] [--manifest-only]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, WORK, peak_of, with_peak

def draw(root: Path, files: int) -> Path:
    data = root / f"data-{files}"
    if not (data / "simpsons_dataset").is_dir():
        per_class = files // 42
        subprocess.run([sys.executable, "-m", "pipeline.cli", "synth", str(data), "--per-class", str(per_class),
                        "--test-per-class", "2", "--size", "160x120"], cwd=REPO, check=True)
    return data


def subset(data: Path, share: float, into: Path) -> Path:
    """A data root linking every n-th training frame of ``data`` (and no test images)."""
    if not into.is_dir():
        step = round(1 / share)
        for folder in sorted((data / "simpsons_dataset").iterdir()):
            (into / "simpsons_dataset" / folder.name).mkdir(parents=True)
            for p in sorted(folder.iterdir())[::step]:
                (into / "simpsons_dataset" / folder.name / p.name).symlink_to(p)
    return into


def naive(data: Path) -> float:
    from PIL import Image

    start = time.perf_counter()
    for p in sorted(data.rglob("*.jpg")):
        raw = p.read_bytes()
        hashlib.md5(raw).hexdigest()
        try:
            with Image.open(p) as img:
                img.convert("RGB").load()
        except OSError:
            pass
    return time.perf_counter() - start


def manifest(data: Path, out: Path) -> tuple[float, int, int]:
    env = {**os.environ, "SIMPSONS_CACHE": str(out / "cache")}
    start = time.perf_counter()
    done = subprocess.run(with_peak("pipeline.launcher", "manifest", data, "--out", out, "--no-plots"), cwd=REPO, env=env,
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr[-2000:])
    files = sum(1 for p in data.rglob("*") if p.is_file() or p.is_symlink())
    return time.perf_counter() - start, peak_of(done.stderr), files


def rows_in(csv: Path) -> int:
    try:
        with open(csv, "rb") as f:
            return max(0, sum(1 for _ in f) - 1)
    except FileNotFoundError:
        return 0


def infer(data: Path, model: Path, out: Path, stop_after: float | None = None, resume: bool = False) -> dict:
    """Run simpsons-infer, sampling the CSV's rows every 2 s; ``stop_after`` sends Ctrl-C."""
    args = [data, "--model", model, "-o", out, "-q", *(["--resume"] if resume else [])]
    process = subprocess.Popen(with_peak("runtime.cli", *args), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    start, samples = time.perf_counter(), []
    while process.poll() is None:
        time.sleep(2)
        samples.append((time.perf_counter() - start, rows_in(out)))
        if stop_after and samples[-1][0] >= stop_after:
            process.send_signal(signal.SIGINT)
            break
    stderr = process.communicate()[1]
    return {"code": process.returncode, "seconds": time.perf_counter() - start, "samples": samples,
            "peak_mb": peak_of(stderr), "rows": rows_in(out)}


def rate(samples: list[tuple[float, int]], total: int, first: bool) -> float:
    """Images/s over the first (or last) fifth of the rows."""
    lo, hi = (0, total // 5) if first else (total - total // 5, total)
    inside = [(t, n) for t, n in samples if lo <= n <= hi] or samples
    (t0, n0), (t1, n1) = inside[0], inside[-1]
    return (n1 - n0) / max(t1 - t0, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, help="an exported model, e.g. demo/out/model.int8.onnx")
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--manifest-only", action="store_true", help="measure the manifest, skip inference")
    args = parser.parse_args()
    if args.model is None and not args.manifest_only:
        parser.error("--model is needed to measure inference (or pass --manifest-only)")
    root = WORK / "scale"
    data = draw(root, args.files)
    sets = {share: subset(data, share, root / f"share-{share}") for share in (0.25, 0.5)}
    print(f"{args.files:,} generated frames in {data}")

    passes = [naive(data) for _ in range(3)]  # one pass swung 0.17-0.24 ms/file between runs: the median of 3
    baseline = statistics.median(passes)
    total = sum(1 for _ in data.rglob("*.jpg"))
    print(f"\nnaive loop (1 thread: read, md5, full decode), median of {', '.join(f'{p:.1f}' for p in passes)} s: "
          f"{baseline:.1f}s = {1000 * baseline / total:.2f} ms/file")
    print("| files | manifest seconds | ms per file | vs the naive loop | peak MB |")
    print("|---|---|---|---|---|")
    for share, folder in (*sets.items(), (1.0, data)):
        out = root / f"manifest-{share}"
        shutil.rmtree(out, ignore_errors=True)
        seconds, peak, files = manifest(folder, out)
        per_file = seconds / files
        print(f"| {files:,} | {seconds:.1f} | {1000 * per_file:.2f} | {per_file / (baseline / total):.2f}x | {peak} |", flush=True)
    if args.manifest_only:
        return

    out = root / "rows.csv"
    out.unlink(missing_ok=True)
    run = infer(data, args.model, out)
    print(f"\nsimpsons-infer, {run['rows']:,} files: {run['seconds']:.0f}s; {rate(run['samples'], run['rows'], True):.0f} img/s over "
          f"the first fifth, {rate(run['samples'], run['rows'], False):.0f} img/s over the last; peak {run['peak_mb']} MB")
    out.unlink()
    cut = infer(data, args.model, out, stop_after=run["seconds"] / 2)
    kept = cut["rows"]
    resumed = infer(data, args.model, out, resume=True)
    with open(out) as f:
        paths = [line.split(",", 1)[0] for line in f][1:]
    print(f"killed (Ctrl-C) at {cut['samples'][-1][0]:.0f}s with {kept:,} rows (exit {cut['code']}); --resume added "
          f"{resumed['rows'] - kept:,} (exit {resumed['code']}): {len(paths):,} rows, {len(paths) - len(set(paths))} duplicates")


if __name__ == "__main__":
    main()
