"""Shared by the bench scripts: where the real sample lives, a timer, scratch space."""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE = Path(os.environ.get("SIMPSONS_SAMPLE", REPO.parent / "shared" / "data" / "simpsons-sample"))
WORK = REPO / "bench" / ".work"
sys.path.insert(0, str(REPO))

# Runs a module as ``python -m`` would and prints its peak memory (VmHWM) last on stderr.
PEAK = ("import atexit, re, runpy, sys\n"
        "atexit.register(lambda: print('PEAK_MB=%d' % (int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) // 1024), file=sys.stderr))\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_module(sys.argv[0], run_name='__main__')\n")


def with_peak(module: str, *args) -> list[str]:
    """The command line that runs ``module`` with ``args`` in its own process and reports its peak memory."""
    return [sys.executable, "-c", PEAK, module, *map(str, args)]


def peak_of(stderr: str) -> int:
    """The peak memory in MB that a ``with_peak`` command printed; -1 if it died before printing it."""
    return next((int(line.split("=")[1]) for line in stderr.splitlines() if line.startswith("PEAK_MB=")), -1)


def require_sample() -> Path:
    if not (SAMPLE / "simpsons_dataset").is_dir():
        sys.exit(f"bench: the real sample is not at {SAMPLE} (set SIMPSONS_SAMPLE)")
    return SAMPLE


@contextmanager
def timed(results: dict, name: str):
    start = time.perf_counter()
    yield
    results[name] = time.perf_counter() - start


def sample_manifest() -> Path:
    """The sample's manifest, built once into bench/.work (cached like any manifest run)."""
    from pipeline.engine import manifest as engine

    out = WORK / "sample-data"
    if not (out / engine.MANIFEST).is_file():
        engine.run(require_sample(), out, engine.ManifestConfig(), plots=False)
    return out / engine.MANIFEST


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())
