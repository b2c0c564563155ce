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
