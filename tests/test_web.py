"""The browser page in headless Chromium: ``make web`` assembles it, a local server on
127.0.0.1 serves it, and web/test/browser.mjs picks 100+ generated frames in its file input,
exactly as a person would. The page's answers are compared with the Python runtime's.

Needs node, the page's npm packages and Debian's chromium (``.ci/run`` installs them); without
them the test is skipped, unless ``SIMPSONS_REQUIRE_BROWSER=1`` (set by CI) makes it fail.
"""

from __future__ import annotations

import functools
import json
import random
import shutil
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import synth
from runtime import Classifier
from tests.conftest import ARTEFACTS, EASY_CLASSES, EASY_COLOURS, REPO

def frames(folder: Path, count: int = 104) -> list[Path]:
    """Cartoon frames of the easy classes' colours at assorted sizes and formats, plus a
    corrupt JPEG and a text file named like a picture."""
    folder.mkdir(parents=True)
    rng, looks, paths = random.Random(5), synth.class_looks(), []
    for i in range(count):
        colour = EASY_COLOURS[i % 3]
        img = synth.draw_frame(looks[EASY_CLASSES[i % 3]], rng, (rng.choice((48, 64, 96, 160)), rng.choice((36, 48, 72, 120))))
        tint = Image.new("RGB", img.size, colour)
        img = Image.blend(img, tint, 0.55)
        path = folder / f"frame_{i:03d}.{'png' if i % 10 == 0 else 'jpg'}"
        img.save(path, **({} if path.suffix == ".png" else {"quality": 90}))
        paths.append(path)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "notes.jpg").write_text("not an image")
    return paths + [folder / "broken.jpg", folder / "notes.jpg"]


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def serve(folder: Path):
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def open_page(folder: Path, tmp_path: Path, files: list[Path], name: str) -> dict:
    server = serve(folder)
    try:
        out, shot = tmp_path / f"{name}.json", tmp_path / f"{name}.png"
        done = subprocess.run(["node", str(REPO / "web" / "test" / "browser.mjs"), f"http://127.0.0.1:{server.server_port}/index.html",
                               str(out), str(shot), *map(str, files)], cwd=REPO / "web", capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        server.shutdown()
    report = json.loads(out.read_text())
    report["screenshot"] = shot
    assert report["blocked"] == [], report["blocked"]  # nothing beyond 127.0.0.1
    return report


@pytest.fixture(scope="module")
def page(browser, pipeline_run, tmp_path_factory) -> Path:
    """``make web`` on the pipeline run's portable model: the folder a person would serve."""
    out = tmp_path_factory.mktemp("web-out")
    for name in ("model.portable.onnx", "model.portable.json"):
        shutil.copy(pipeline_run["onnx"].parent / name, out / name)
    done = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "web", f"OUT={out}"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return out / "web"


def test_page_classifies_like_the_python_runtime(page: Path, pipeline_run, tmp_path: Path):
    files = frames(tmp_path / "frames")
    report = open_page(page, tmp_path, files, "web")
    assert report["error"] is None, report
    by_name = {r["name"]: r for r in report["results"]}
    assert len(by_name) == len(files)
    assert by_name["broken.jpg"]["error"] and by_name["notes.jpg"]["error"]  # an error card each, the rest goes on

    images = files[:-2]
    python = Classifier(pipeline_run["onnx"], device="cpu").predict(images, top_k=3)  # the Python runtime
    agree, diffs = [], []
    for path, expected in zip(images, python):
        got = by_name[path.name]
        assert got["error"] is None, got
        agree.append(got["top"][0][0] == expected.top_k[0][0])
        browser_probs = dict(got["top"])
        diffs.append(max(abs(browser_probs[label] - p) for label, p in expected.top_k if label in browser_probs))
    agreement, max_diff = float(np.mean(agree)), float(max(diffs))
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(report["screenshot"], ARTEFACTS / "web-page.png")
    (ARTEFACTS / "web-page.json").write_text(json.dumps(
        {"images": len(images), "top1_agreement_with_python": agreement, "max_probability_diff": max_diff,
         "seconds_in_page": report["seconds"]}, indent=1))
    print(f"browser vs Python runtime on {len(images)} frames: top-1 agreement {agreement:.2%}, max |prob diff| {max_diff:.3g}")
    assert agreement >= 0.99 and max_diff < 0.05
    with Image.open(report["screenshot"]) as shot:
        assert shot.size == (1100, 860)


def test_page_refuses_a_missing_or_mismatched_sidecar(page: Path, tmp_path: Path):
    broken = tmp_path / "broken-page"
    shutil.copytree(page, broken)
    sidecar = json.loads((broken / "model.portable.json").read_text())
    (broken / "model.portable.json").write_text(json.dumps({**sidecar, "sha256": "0" * 64}))
    report = open_page(broken, tmp_path, [], "mismatch")
    assert "sha256 differs" in report["error"] and "Cannot use the model" in report["status"]
    (broken / "model.portable.json").unlink()
    report = open_page(broken, tmp_path, [], "missing")
    assert "no sidecar" in report["error"]


def test_readme_javascript_example_runs_in_node(page, pipeline_run):
    """The README's Node example, as written, on the portable model."""
    import re

    readme = (REPO / "README.md").read_text()
    examples = re.findall(r"```javascript\n(.*?)```", readme, flags=re.S)
    assert examples, "the README shows the JavaScript example"
    image = sorted((pipeline_run["data"] / "kaggle_simpson_testset").glob("*.jpg"))[0]
    expected = Classifier(pipeline_run["portable"], device="cpu").predict([image])[0]
    for code in examples:
        code = code.replace("out/model.portable", str(pipeline_run["onnx"].parent / "model.portable"))
        code = code.replace("demo/data/kaggle_simpson_testset/bart_simpson_0.jpg", str(image))
        script = REPO / "web" / ".readme-example.mjs"  # inside web/ so node finds web/node_modules
        script.write_text(code)
        try:
            done = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=120)
        finally:
            script.unlink()
        assert done.returncode == 0, done.stderr[-2000:]
        label, confidence = done.stdout.split()
        assert label == expected.label and abs(float(confidence) - expected.confidence) < 0.01
