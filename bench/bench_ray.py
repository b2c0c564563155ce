"""Ray Data on this machine against the single-machine path: the same results, and what Ray costs.

On the real sample (1,128 frames), each command run as a user runs it, in its own process, from
an empty fingerprint cache: ``simpsons manifest`` with and without ``--ray local``, then
``simpsons-infer`` with and without ``--ray local``; outputs compared byte for byte (manifest)
and row for row (predictions). Rounds interleaved; medians. With ``--ray local`` each command
starts and stops a Ray instance of its own, which is most of the overhead on one machine.

    .venv/bin/python bench/bench_ray.py --model bench/.work/portable/model.int8.onnx [--rounds 3]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, WORK, require_sample

BIN = Path(sys.executable).parent


def timed_run(args: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"bench: {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def manifest(data: Path, out: Path, ray: bool) -> float:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "SIMPSONS_CACHE": str(out / "cache")}  # an empty cache: every file fingerprinted
    return timed_run([str(BIN / "simpsons"), "manifest", str(data), "--out", str(out), "--no-plots",
                      *(["--ray", "local"] if ray else [])], env)


def infer(data: Path, model: Path, out: Path, ray: bool) -> float:
    out.unlink(missing_ok=True)
    return timed_run([str(BIN / "simpsons-infer"), str(data), "--model", str(model), "-o", str(out),
                      *(["--ray", "local"] if ray else [])], dict(os.environ))


def rows(path: Path) -> list[dict]:
    with path.open() as f:
        return sorted(csv.DictReader(f), key=lambda row: row["path"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data, work = require_sample(), WORK / "ray"
    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, list[float]] = {k: [] for k in ("manifest", "manifest --ray", "infer", "infer --ray")}
    for _ in range(args.rounds):
        times["manifest"].append(manifest(data, work / "local", ray=False))
        times["manifest --ray"].append(manifest(data, work / "ray", ray=True))
        times["infer"].append(infer(data / "simpsons_dataset", args.model, work / "local.csv", ray=False))
        times["infer --ray"].append(infer(data / "simpsons_dataset", args.model, work / "ray.csv", ray=True))
    same_manifest = (work / "local" / "manifest.parquet").read_bytes() == (work / "ray" / "manifest.parquet").read_bytes()
    local, remote = rows(work / "local.csv"), rows(work / "ray.csv")
    print(f"manifest identical: {same_manifest}; predictions identical: {local == remote} ({len(local)} rows)")
    print("| command | single machine (s) | --ray local (s) | overhead |\n|---|---|---|---|")
    for name in ("manifest", "infer"):
        plain, ray = statistics.median(times[name]), statistics.median(times[f"{name} --ray"])
        print(f"| simpsons{'-infer' if name == 'infer' else ' manifest'} | {plain:.1f} | {ray:.1f} | "
              f"+{ray - plain:.1f} s ({ray / plain:.2f}x) |")


if __name__ == "__main__":
    main()
