"""Shared fixtures: every test makes its own small images; nothing depends on ../shared."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from PIL import Image

from pipeline import synth


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1234)


def frame(rng: random.Random, label: str = "homer_simpson", size=(96, 72)) -> Image.Image:
    return synth.draw_frame(synth.class_looks()[label], rng, size)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """4 classes x 12 frames (96x72), 3 test images per class, with the planted problems."""
    root = tmp_path / "data"
    synth.write_dataset(root, classes=4, per_class=12, test_per_class=3, seed=3, size=(96, 72))
    return root


def save(img: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def invoke(*args: str):
    """Run `simpsons ...` in-process; returns click's Result."""
    from click.testing import CliRunner

    from pipeline.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


TINY = ("--arch", "resnet18", "--weights", "none", "--image-size", "32", "--batch-size", "16", "--workers", "0")


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory) -> dict[str, Path]:
    """synth -> manifest -> train (resnet18, 32 px, 3 epochs) -> export fp32 + int8: shared by
    the training, export and runtime tests, built once."""
    base = tmp_path_factory.mktemp("pipeline")
    data, out = base / "data", base / "out"
    synth.write_dataset(data, classes=3, per_class=30, test_per_class=4, seed=1, size=(96, 72))
    steps = [
        ("manifest", data, "--out", out / "data"),
        ("train", "--manifest", out / "data" / "manifest.parquet", "--out", out / "run", *TINY, "--epochs", "3", "--lr", "3e-3"),
        ("export", "--checkpoint", out / "run" / "best.pt", "--out", out / "model.onnx", "--int8"),
    ]
    for step in steps:
        result = invoke(*step)
        assert result.exit_code == 0, (step[0], result.output, result.exception)
    return {
        "data": data,
        "manifest": out / "data" / "manifest.parquet",
        "run": out / "run",
        "onnx": out / "model.onnx",
        "int8": out / "model.int8.onnx",
    }
