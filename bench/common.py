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
    from pipeline import manifest as engine

    out = WORK / "sample-data"
    if not (out / engine.MANIFEST).is_file():
        engine.run(require_sample(), out, engine.ManifestConfig(), plots=False)
    return out / engine.MANIFEST


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())
