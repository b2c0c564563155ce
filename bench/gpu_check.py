"""One command that proves the GPU paths: ``make gpu-check`` (not part of ``make test``).

On a machine with CUDA, in a few minutes, on a small ``simpsons synth`` set it runs the real
paths and prints one table: ResNet50 at 224 px for 2 epochs with AMP bf16, and fp16 with the
grad scaler; channels_last (always); ``--compile``; ``--balance loss`` and
``--balance sampler``; ``torchrun --nproc_per_node 1`` (nccl); ``--resume``; export fp32, fp16
and int8; ``simpsons-infer --device cuda`` on each model with its top-1 agreement against the
CPU run (>= 99%) and images per second. Exits non-zero if any step fails. Without CUDA it says
so in one line and exits 0.

    .venv/bin/python bench/gpu_check.py [--work bench/.work/gpu-check] [--keep]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
AGREEMENT = 0.99


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


class Check:
    """Runs steps, records (name, ok, seconds, detail), prints the table at the end."""

    def __init__(self, work: Path):
        self.work, self.rows = work, []

    def run(self, name: str, *command: str | Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess | None:
        start = time.perf_counter()
        try:
            done = subprocess.run([str(c) for c in command], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, **(env or {})})
        except subprocess.TimeoutExpired:
            self.rows.append((name, False, time.perf_counter() - start, f"timed out after {timeout}s"))
            return None
        ok = done.returncode == 0
        detail = "" if ok else (done.stderr.strip().splitlines() or ["exit %d" % done.returncode])[-1][:160]
        self.rows.append((name, ok, time.perf_counter() - start, detail))
        return done if ok else None

    def note(self, name: str, ok: bool, detail: str) -> None:
        self.rows.append((name, ok, 0.0, detail))

    def table(self) -> str:
        lines = ["| step | result | seconds | detail |", "|---|---|---|---|"]
        lines += [f"| {name} | {'ok' if ok else 'FAILED'} | {seconds:.1f} | {detail} |" for name, ok, seconds, detail in self.rows]
        return "\n".join(lines)


def interrupt_after_first_epoch(command: list) -> tuple[bool, str]:
    """Start a 2-epoch run, send Ctrl-C once last.pt exists (epoch 1 saved): a real interruption."""
    import signal

    process = subprocess.Popen([str(c) for c in command], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    last = Path(command[command.index("--out") + 1]) / "last.pt"
    deadline = time.monotonic() + 900
    while not last.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    code = process.wait(timeout=120)
    return last.is_file() and code == 130, f"exit {code} after Ctrl-C, last.pt {'kept' if last.is_file() else 'missing'}"


def labels(path: Path) -> dict[str, str]:
    return {row["path"]: row["label"] for row in csv.DictReader(path.open()) if row["status"] == "ok"}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=REPO / "bench" / ".work" / "gpu-check")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    if not cuda_available():
        print("gpu-check: no CUDA device visible to PyTorch here; nothing to check (run it on a GPU machine)")
        return 0
    simpsons = [sys.executable, "-m", "pipeline.cli"]
    infer = [sys.executable, "-m", "runtime.cli"]
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    data, manifest = work / "data", work / "out" / "manifest.parquet"
    check = Check(work)
    base = ["--manifest", manifest, "--arch", "resnet50", "--weights", "none", "--image-size", "224", "--epochs", "2",
            "--batch-size", "32", "--device", "cuda", "--workers", "4"]
    steps = [
        ("synth 6 classes x 40 frames", [*simpsons, "synth", data, "--classes", "6", "--per-class", "40", "--test-per-class", "6", "--size", "320x240"]),
        ("manifest", [*simpsons, "manifest", data, "--out", manifest.parent, "--no-plots"]),
        ("train bf16, channels_last, balance sampler", [*simpsons, "train", *base, "--out", work / "bf16", "--amp", "bf16"]),
        ("train fp16 + grad scaler, balance loss", [*simpsons, "train", *base, "--out", work / "fp16", "--amp", "fp16", "--balance", "loss"]),
        ("train --compile", [*simpsons, "train", *base, "--out", work / "compiled", "--compile"]),
        ("torchrun --nproc_per_node 1 (nccl)", [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1",
                                                "-m", "pipeline.cli", "train", *base, "--out", work / "ddp"]),
    ]
    for name, command in steps:
        if check.run(name, *command, timeout=900) is None and name in ("synth 6 classes x 40 frames", "manifest"):
            print(check.table())
            return 1
    interrupted = work / "resumed"
    check.note("train, Ctrl-C after epoch 1, then --resume", *interrupt_after_first_epoch([*simpsons, "train", *base, "--out", interrupted]))
    check.run("  --resume", *simpsons, "train", "--resume", interrupted)
    checkpoint = work / "bf16" / "best.pt"
    model = work / "model.onnx"
    check.run("export fp32, fp16, int8, portable", *simpsons, "export", "--checkpoint", checkpoint, "--out", model,
              "--int8", "--fp16", "--portable")
    images = data / "kaggle_simpson_testset"
    for variant in ("model.onnx", "model.fp16.onnx", "model.int8.onnx", "model.portable.onnx"):
        path = work / variant
        if not path.is_file():
            check.note(f"simpsons-infer --device cuda {variant}", False, "model missing")
            continue
        cpu, gpu = work / f"{variant}.cpu.csv", work / f"{variant}.cuda.csv"
        if not check.run(f"simpsons-infer --device cpu {variant}", *infer, images, "--model", path, "--device", "cpu", "-o", cpu, "-q"):
            continue
        start = time.perf_counter()
        done = check.run(f"simpsons-infer --device cuda {variant}", *infer, images, "--model", path, "--device", "cuda", "-o", gpu)
        if done is None:
            continue
        a, b = labels(cpu), labels(gpu)
        agreement = sum(a[k] == b.get(k) for k in a) / max(len(a), 1)
        rate = len(b) / (time.perf_counter() - start)
        check.note(f"  {variant}: cuda vs cpu top-1 agreement", agreement >= AGREEMENT,
                   f"{agreement:.2%} of {len(a)} images; {rate:.0f} img/s end to end (process start included)")
    print(check.table())
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(ok for _, ok, _, _ in check.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
