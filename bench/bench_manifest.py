"""Data engine speed on the real sample, against a naive loop measured in the same run.

Baseline: one thread reads each file, md5-hashes it and fully decodes it.
Best of three runs each. Prints: first full manifest and cached rerun (without the plots, timed apart) as fractions of
the baseline, and peak memory
(RSS) of `simpsons manifest` on 1/4, 1/2 and all of the images (flat = streaming).

    .venv/bin/python bench/bench_manifest.py
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, files, require_sample, timed

from PIL import Image


def naive(paths: list[Path]) -> None:
    for p in paths:
        data = p.read_bytes()
        hashlib.md5(data).hexdigest()
        with Image.open(p) as img:
            img.convert("RGB").load()


def peak_rss_mb(data_root: Path, out: Path) -> float:
    """Peak RSS of a fresh `simpsons manifest` process (VmHWM: ru_maxrss would keep this
    process's size across the fork and exec)."""
    code = (
        "import re; from pathlib import Path; from pipeline import manifest as m;"
        f"m.run(Path({str(data_root)!r}), Path({str(out)!r}), m.ManifestConfig());"
        "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
    )
    env = {**os.environ, "SIMPSONS_CACHE": str(out / "cache")}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True, env=env)
    return int(done.stdout.split()[-1]) / 1024


def subset(sample: Path, fraction: float, into: Path) -> Path:
    """A data root of symlinks to every n-th image of each class."""
    step = round(1 / fraction)
    for folder in sorted((sample / "simpsons_dataset").iterdir()):
        target = into / "simpsons_dataset" / folder.name
        target.mkdir(parents=True)
        for p in sorted(folder.iterdir())[::step]:
            (target / p.name).symlink_to(p)
    return into


def main() -> None:
    from pipeline.engine import manifest as engine

    sample = require_sample()
    paths = files(sample)
    naive(paths)  # warm the page cache so both sides read from memory
    t: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for attempt in range(3):  # each figure is the best of three: the least disturbed run
            out = Path(tmp) / f"out{attempt}"
            os.environ["SIMPSONS_CACHE"] = str(Path(tmp) / f"cache{attempt}")  # each attempt's first run starts empty
            runs = {
                "naive": lambda: naive(paths),
                "first": lambda: engine.run(sample, out, engine.ManifestConfig(), plots=False),
                "rerun": lambda: engine.run(sample, out, engine.ManifestConfig(), plots=False),
                "plots": lambda: engine.run(sample, out, engine.ManifestConfig()),  # drawn once
                "rerun_with_plots": lambda: engine.run(sample, out, engine.ManifestConfig()),  # skipped
            }
            for name, run in runs.items():
                seconds: dict[str, float] = {}
                with timed(seconds, name):
                    run()
                t[name] = min(t.get(name, float("inf")), seconds[name])
        rss = {f: peak_rss_mb(subset(sample, f, Path(tmp) / f"s{f}") if f < 1 else sample, Path(tmp) / f"o{f}")
               for f in (0.25, 0.5, 1.0)}
    n = len(paths)
    print(f"images: {n}")
    print(f"naive loop (1 thread, md5 + full decode): {t['naive']:.2f}s ({n / t['naive']:.0f} img/s)")
    print(f"first manifest: {t['first']:.2f}s = {t['first'] / t['naive']:.2f}x the naive loop (target <= 0.50)")
    print(f"cached rerun:   {t['rerun']:.2f}s = {t['rerun'] / t['naive']:.3f}x the naive loop (target <= 0.10)")
    print(f"class-distribution plots (matplotlib, a fixed cost whatever the data size): {t['plots'] - t['rerun']:.2f}s; "
          f"a rerun whose counts did not change skips them: {t['rerun_with_plots']:.2f}s")
    print("peak RSS of `simpsons manifest`: " + ", ".join(f"{int(f * 100)}% of images {mb:.0f} MB" for f, mb in rss.items()))


if __name__ == "__main__":
    main()
