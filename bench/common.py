"""Shared by the bench scripts: where the real sample lives, a timer, scratch space."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

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


def edge_model(arch: str, image_size: int = 128) -> Path:
    """The folder of a model of ``arch`` trained briefly on the sample and exported with
    ``--int8 --portable`` (model.onnx, model.int8.onnx, model.portable.onnx,
    model.portable.int8.onnx, model.report.json), made once into bench/.work: for the speed
    benches, where accuracy does not matter but clear answers need a model that has learnt
    something. ResNet18 trains from scratch for 2 epochs; EfficientNet-Lite keeps its ImageNet
    weights and trains its head for one."""
    out = WORK / f"edge-{arch}-{image_size}"
    if not (out / "model.report.json").is_file():
        if not (out / "run" / "best.pt").is_file():
            recipe = ("--weights", "imagenet", "--epochs", 1, "--train-from", 64) if arch.startswith("efficientnet_lite") \
                else ("--weights", "none", "--epochs", 2)
            simpsons("train", "--manifest", sample_manifest(), "--out", out / "run", "--arch", arch, "--image-size", image_size, *recipe)
        simpsons("export", "--checkpoint", out / "run" / "best.pt", "--out", out / "model.onnx", "--int8", "--portable")
    return out


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def simpsons(*args) -> float:
    """Run ``simpsons ARGS`` in its own process; exits with its stderr if it fails; returns seconds."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
    if done.returncode:
        sys.exit(f"failed: simpsons {' '.join(map(str, args))}\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def in_parallel(jobs: list[Callable[[], None]], slots: int, deadline: float | None = None) -> int:
    """Run ``jobs`` (in order of priority) ``slots`` at a time; none starts after ``deadline``
    seconds from now, so a run on a lent machine ends with what it finished, and a job that
    fails is reported on stderr without stopping the others. Returns how many finished."""
    stop = time.monotonic() + deadline if deadline else float("inf")

    def guarded(job: Callable[[], None]) -> bool:
        if time.monotonic() > stop:
            return False
        try:
            job()
        except SystemExit as e:
            print(e, file=sys.stderr, flush=True)
            return False
        return True

    with ThreadPoolExecutor(slots) as pool:
        return sum(pool.map(guarded, jobs))
