"""The demo chain end to end at a tiny size: `make demo-run` exactly as `make demo` runs it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_demo_chain_runs_twice_and_reports(tmp_path: Path):
    demo = tmp_path / "demo"
    command = [
        "make", "--no-print-directory", "-C", str(REPO), "demo-run",
        f"BIN={Path(sys.executable).parent}", f"DEMO={demo}",
        "DEMO_SYNTH=--classes 4 --per-class 10 --test-per-class 2 --size 96x72 --unknown 10",
        # the demo's start (Lite0 from the ImageNet weights its package installs), at a tiny size
        'DEMO_TRAIN=ARCH=efficientnet_lite0 WEIGHTS=imagenet EPOCHS=1 IMAGE_SIZE=32 TRAIN_ARGS="--workers 0 --batch-size 16"',
    ]
    for _ in range(2):  # twice in a row: it starts from scratch each time
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = demo / "out"
    for artefact in ("data/manifest.parquet", "data/classes_test.png", "run/best.pt", "eval/report.md",
                     "eval/predictions.png", "model.onnx", "model.int8.onnx", "model.fp16.onnx", "predictions.csv"):
        assert (out / artefact).is_file(), artefact
    assert "Artefacts" in done.stdout and "| **macro avg** |" in done.stdout
    assert "# test report: efficientnet_lite0" in done.stdout  # fine-tuned, from weights found offline
    assert "Evaluation on 8 labelled files" in done.stdout  # simpsons-infer --evaluate on the test folder
    assert "Unknown verdict" in done.stdout and "AUROC" in done.stdout  # evaluate and infer, on demo/data/unknown
