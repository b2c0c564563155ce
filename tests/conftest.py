"""Shared fixtures: every test makes its own small images; nothing depends on ../shared."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from pipeline import synth

REPO = Path(__file__).resolve().parent.parent
ARTEFACTS = REPO / "out" / "test-artefacts"  # screenshots a person can look at after a run
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def pytest_collection_modifyitems(items) -> None:
    """Every test that needs the trained pipeline run is slow; `make test-fast` skips them."""
    for item in items:
        if "pipeline_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory) -> None:
    """Fingerprint caches go to a temporary folder, never to the user's ~/.cache."""
    os.environ["SIMPSONS_CACHE"] = str(tmp_path_factory.mktemp("cache"))


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


EASY_CLASSES = ("abraham_grampa_simpson", "agnes_skinner", "apu_nahasapeemapetilon")
EASY_COLOURS = ((220, 40, 40), (40, 160, 70), (30, 90, 200))


def easy_dataset(root: Path, per_class: int = 30, test_per_class: int = 4, seed: int = 1) -> Path:
    """An easy set in the Kaggle layout: each class a dominant colour under random clutter,
    so a tiny model trained for a few steps must get it right."""
    from PIL import ImageDraw

    rng = random.Random(seed)
    for label, colour in zip(EASY_CLASSES, EASY_COLOURS):
        for i in range(per_class + test_per_class):
            shade = tuple(min(255, max(0, c + rng.randint(-40, 40))) for c in colour)
            img = Image.new("RGB", (96, 72), shade)
            draw = ImageDraw.Draw(img)
            for _ in range(3):
                x, y = rng.randrange(96), rng.randrange(72)
                draw.rectangle((x, y, x + rng.randint(5, 20), y + rng.randint(5, 20)), fill=rng.choice(synth.PALETTE[6:]))
            if i < per_class:
                save(img, root / "simpsons_dataset" / label / f"pic_{i:04d}.jpg", quality=90)
            else:
                save(img.resize((32, 24)), root / "kaggle_simpson_testset" / f"{label}_{i - per_class}.jpg", quality=75)
    return root


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory) -> dict[str, Path]:
    """easy data -> manifest -> train (resnet18, 32 px, 3 epochs) -> export fp32, int8 and
    portable: shared by the training and export tests, built once."""
    base = tmp_path_factory.mktemp("pipeline")
    data, out = easy_dataset(base / "data", per_class=60), base / "out"
    steps = [
        ("manifest", data, "--out", out / "data"),
        ("train", "--manifest", out / "data" / "manifest.parquet", "--out", out / "run", *TINY, "--epochs", "3", "--lr", "3e-3"),
        ("export", "--checkpoint", out / "run" / "best.pt", "--out", out / "model.onnx", "--int8", "--portable", "--accept-known", "0.8"),
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
        "portable": out / "model.portable.onnx",
    }


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None. The page's npm packages are installed
    from web/package-lock.json when npm can; a fresh clone without them skips, not fails."""
    if not shutil.which("node") or not shutil.which("npm"):
        return "node and npm are not installed"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    if not shutil.which("make"):
        return "needs make"
    done = subprocess.run(["make", "--no-print-directory", "web/node_modules/.installed"], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        return f"the page's npm packages could not be installed ({(done.stderr or done.stdout).strip().splitlines()[-1:]})"
    return None


@pytest.fixture(scope="session")
def browser() -> None:
    """Skips a browser test where node, npm, Chromium or the page's packages are missing,
    unless ``SIMPSONS_REQUIRE_BROWSER=1`` (set by CI) makes that a failure."""
    missing = browser_missing()
    if missing and os.environ.get("SIMPSONS_REQUIRE_BROWSER") == "1":
        pytest.fail(f"the browser test is required here but {missing}")
    if missing:
        pytest.skip(missing)
