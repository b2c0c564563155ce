"""Where `simpsons manifest` holds its memory and spends its time, stage by stage.

The manifest's peak (VmHWM, bench_scale.py) says how much, not where. Here the manifest runs
in its own process from an empty cache, with the allocator settings the command uses, while
a thread reads VmRSS every 5 ms and charges it to the stage running then (the innermost of
the stages below); each stage's seconds are summed over its calls (a stage inside another is
counted in both). Run on the data roots bench_scale.py draws (25k and 50k are subsets of the
100k frames):

    .venv/bin/python bench/bench_stages.py bench/.work/scale/share-0.25 bench/.work/scale/share-0.5 bench/.work/scale/data-100000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO

STAGES = [  # (module, function, stage name), in the order they run
    ("pipeline.engine.manifest", "scan", "scan"),
    ("pipeline.engine.manifest", "fingerprint", "fingerprinting"),
    ("pipeline.engine.cache", "ShardCache.compact", "compaction"),
    ("pipeline.engine.manifest", "decide", "decisions"),
    ("pipeline.engine.dedupe", "thumbnails", "thumbnails"),
    ("pipeline.engine.dedupe", "group_near_duplicates", "grouping"),
    ("pipeline.engine.split", "assign_split", "split"),
    ("pipeline.engine.manifest", "sink_parquet", "writing"),
    ("pipeline.engine.stats", "summarise", "statistics"),
]

CHILD = """
import importlib, json, re, sys, threading, time
sys.path.insert(0, {repo!r})
from pathlib import Path
from pipeline.launcher import glibc_returns_freed_memory, polars_returns_freed_memory
polars_returns_freed_memory(); glibc_returns_freed_memory()  # as `simpsons manifest` runs
from pipeline.engine import manifest

running, peaks, seconds = ["other"], {{}}, {{}}

def sample():
    while True:
        mb = int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) // 1024
        peaks[running[-1]] = max(peaks.get(running[-1], 0), mb)
        time.sleep(0.005)

def charged(name, function):
    def run(*args, **kwargs):
        running.append(name)
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
            running.pop()
    return run

for module, attribute, name in {stages!r}:
    owner = importlib.import_module(module)
    *classes, function = attribute.split(".")
    for cls in classes:
        owner = getattr(owner, cls)
    setattr(owner, function, charged(name, getattr(owner, function)))
threading.Thread(target=sample, daemon=True).start()
manifest.run(Path({data!r}), Path({out!r}), manifest.ManifestConfig(), plots=False)
print(json.dumps({{"peaks": peaks, "seconds": seconds}}))
"""


def measure(data: Path) -> dict[str, dict]:
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "SIMPSONS_CACHE": f"{scratch}/cache"}
        code = CHILD.format(repo=str(REPO), stages=STAGES, data=str(data), out=f"{scratch}/out")
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="+", type=Path, help="data roots, smallest first")
    args = parser.parse_args()
    runs = {data: measure(data) for data in args.data}
    files = {data: sum(1 for p in data.rglob("*") if p.is_file() or p.is_symlink()) for data in args.data}
    print("| stage | " + " | ".join(f"{files[d]:,} files: peak MB, s" for d in args.data) + " |")
    print("|---|" + "---|" * len(args.data))
    for _, _, name in STAGES:
        cells = (f"{runs[d]['peaks'].get(name, '-')}, {runs[d]['seconds'].get(name, 0):.1f}" for d in args.data)
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
