"""The browser page in headless Chromium: ``make web`` assembles it, a local server on
127.0.0.1 serves it, and web/test/browser.mjs picks 100+ generated frames in its file input,
exactly as a person would. The page's answers are compared with the Python runtime's.

Needs node, the page's npm packages and Debian's chromium (``.ci/run`` installs them); without
them the test is skipped, unless ``SIMPSONS_REQUIRE_BROWSER=1`` (set by CI) makes it fail.
"""

from __future__ import annotations

import functools
import json
import os
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


def open_page(folder: Path, tmp_path: Path, files: list[Path], name: str, query: str = "", webgpu: str = "off") -> dict:
    """The page opened in a fresh Chromium profile (a first visit), ``files`` picked as soon as
    it is ready; ``webgpu`` as web/test/browser.mjs takes it (off, swiftshader, broken)."""
    server = serve(folder)
    try:
        out, shot = tmp_path / f"{name}.json", tmp_path / f"{name}.png"
        done = subprocess.run(["node", str(REPO / "web" / "test" / "browser.mjs"), f"http://127.0.0.1:{server.server_port}/index.html{query}",
                               str(out), str(shot), *map(str, files)], cwd=REPO / "web", capture_output=True, text=True, timeout=600,
                              env={**os.environ, "WEBGPU": webgpu})
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


def compared(report: dict, images: list[Path], plain: Path) -> tuple[float, float, float]:
    """The page's top-1 agreement with the Python runtime's plain model on ``images``, and the
    mean and largest difference between their probabilities of the same class."""
    by_name = {r["name"]: r for r in report["results"]}
    python = Classifier(plain, device="cpu").predict(images, top_k=3)
    agree, diffs = [], []
    for path, expected in zip(images, python):
        got = by_name[path.name]
        assert got["error"] is None, got
        agree.append(got["top"][0][0] == expected.top_k[0][0])
        browser_probs = dict(got["top"])
        diffs.append(max(abs(browser_probs[label] - p) for label, p in expected.top_k if label in browser_probs))
    return float(np.mean(agree)), float(np.mean(diffs)), float(max(diffs))


def test_page_classifies_like_the_python_runtime(page: Path, pipeline_run, tmp_path: Path):
    """Served by a plain static server, the page runs the model in a WebAssembly worker a core,
    one thread each, which needs no cross-origin isolation (so no reload for it); WebGPU is
    absent (no GPU here)."""
    files = frames(tmp_path / "frames")
    report = open_page(page, tmp_path, files, "web")
    assert report["error"] is None, report
    by_name = {r["name"]: r for r in report["results"]}
    assert len(by_name) == len(files)
    assert by_name["broken.jpg"]["error"] and by_name["notes.jpg"]["error"]  # an error card each, the rest goes on
    assert not report["isolated"] and report["isolation"] is None, report
    assert report["backend"] == "wasm" and report["workers"] == min(4, report["cores"]) and report["threads"] == 1, report
    assert f"WebAssembly (SIMD) in {report['workers']} worker" in report["engine"] and "1 thread each" in report["engine"], report
    assert "WebGPU has no adapter" in report["engine"] and "isolated" not in report["engine"], report
    timings = report["timings"]
    assert 0 < timings["model_fetched_s"] <= timings["session_created_s"] <= timings["ready_s"] < timings["first_answer_s"], timings

    images = files[:-2]
    agreement, mean_diff, max_diff = compared(report, images, pipeline_run["onnx"])
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(report["screenshot"], ARTEFACTS / "web-page.png")
    (ARTEFACTS / "web-page.json").write_text(json.dumps(
        {"images": len(images), "top1_agreement_with_python": agreement, "mean_probability_diff": mean_diff,
         "max_probability_diff": max_diff, "seconds_in_page": report["seconds"]}, indent=1))
    print(f"browser vs Python runtime on {len(images)} frames: top-1 agreement {agreement:.2%}, "
          f"|prob diff| mean {mean_diff:.3g}, max {max_diff:.3g}")
    # The page scales each picture with the canvas's filter, Python with PIL's: on a 32 px model
    # that moves a probability by up to about 0.05 (0.005 on average); a wrong crop, channel order
    # or normalisation moves them all.
    assert agreement >= 0.99 and mean_diff < 0.01 and max_diff < 0.1
    with Image.open(report["screenshot"]) as shot:
        assert shot.size == (1100, 860)


def test_a_webgpu_without_a_device_falls_back_to_webassembly(page: Path, pipeline_run, tmp_path: Path):
    """A WebGPU adapter that cannot give a device (as with a faulty driver): the session fails,
    the page says so, runs on WebAssembly and answers as before."""
    images = frames(tmp_path / "frames", count=8)[:-2]
    report = open_page(page, tmp_path, images, "broken", webgpu="broken")
    assert report["error"] is None and report["backend"] == "wasm", report
    assert "WebGPU failed (" in report["note"] and "WebGPU failed" in report["engine"]
    agreement, mean_diff, max_diff = compared(report, images, pipeline_run["onnx"])
    assert agreement == 1.0 and mean_diff < 0.01 and max_diff < 0.1


def float_resize(page: Path, out: Path) -> Path:
    """``page`` with a model WebGPU starts but cannot run: its resize on floats, as portable
    models exported before the uint8 resize have it (onnxruntime-web's WebGPU kernels have no
    antialiased Resize: the session starts, every run fails)."""
    import onnx
    from onnx import TensorProto, helper

    from runtime.metadata import sha256

    shutil.copytree(page, out)
    sidecar = json.loads((out / "model.portable.json").read_text())
    model = onnx.load(str(out / sidecar["model_file"]))
    resize = next(node for node in model.graph.node if node.op_type == "Resize")
    at = list(model.graph.node).index(resize)
    pixels, resize.input[0], resize.output[0] = resize.output[0], "pre/image_f", "pre/resized_f"
    model.graph.node.insert(at + 1, helper.make_node("Cast", ["pre/resized_f"], [pixels], to=TensorProto.UINT8))
    model.graph.node.insert(at, helper.make_node("Cast", ["image"], ["pre/image_f"], to=TensorProto.FLOAT))
    onnx.save(model, str(out / sidecar["model_file"]))
    (out / "model.portable.json").write_text(json.dumps({**sidecar, "sha256": sha256(out / sidecar["model_file"])}))
    return out


def test_a_model_webgpu_cannot_run_falls_back_at_its_first_run(page: Path, tmp_path: Path):
    images = frames(tmp_path / "frames", count=6)[:-2]
    report = open_page(float_resize(page, tmp_path / "float-resize"), tmp_path, images, "float-resize", webgpu="swiftshader")
    assert report["error"] is None and report["backend"] == "wasm", report
    assert "WebGPU failed" in report["note"] and "antialias" in report["note"]
    assert all(r["error"] is None for r in report["results"]) and len(report["results"]) == len(images)


def test_page_runs_on_webgpu_where_the_browser_has_it(page: Path, pipeline_run, tmp_path: Path):
    """Chromium's WebGPU on SwiftShader (Vulkan on the CPU: the WebGPU code path, without a
    GPU): the page picks it, and answers as the Python runtime does."""
    images = frames(tmp_path / "frames", count=6)[:-2]
    report = open_page(page, tmp_path, images, "webgpu", webgpu="swiftshader")
    assert report["error"] is None, report
    assert report["backend"] == "webgpu" and report["engine"].startswith("Running on WebGPU"), report
    agreement, mean_diff, max_diff = compared(report, images, pipeline_run["onnx"])
    assert agreement == 1.0 and mean_diff < 0.01 and max_diff < 0.1


def test_without_its_service_worker_the_page_still_uses_every_core(page: Path, tmp_path: Path):
    """Where the service worker cannot start (here: its file is missing), the page is not
    isolated, which its workers do not need: a worker a core, one thread each, every picture
    answered; asked for more threads (?threads=2) it says why it runs one. Isolated,
    ?workers=0 runs the model on the page's thread with ?threads=N threads; numbers out of range
    are bounded."""
    images = frames(tmp_path / "frames", count=6)[:-2]
    alone = tmp_path / "no-worker"
    shutil.copytree(page, alone)
    (alone / "sw.js").unlink()
    report = open_page(alone, tmp_path, images, "no-worker", query="?threads=2")
    assert report["error"] is None and not report["isolated"] and report["workers"] == min(4, report["cores"]) and report["threads"] == 1, report
    assert "one thread a session: not cross-origin isolated (the service worker did not start" in report["engine"], report
    assert all(r["error"] is None for r in report["results"]) and len(report["results"]) == len(images)
    report = open_page(page, tmp_path, images, "page-thread", query="?threads=2&backend=wasm&workers=0")
    assert report["isolated"] and report["workers"] == 0 and report["threads"] == min(2, report["cores"]), report
    assert "on the page's thread" in report["engine"] and "WebGPU off (?backend=wasm)" in report["engine"], report
    assert all(r["error"] is None for r in report["results"]) and len(report["results"]) == len(images), report
    report = open_page(page, tmp_path, images, "out-of-range", query="?workers=1e9&threads=-1&backend=wasm")
    assert report["workers"] == max(4, report["cores"]) and report["threads"] == 1, report  # bounded, not a billion workers
    assert all(r["error"] is None for r in report["results"]) and len(report["results"]) == len(images), report


def test_make_web_ships_the_model_export_chose(pipeline_run, tmp_path: Path, browser):
    """``make web`` copies the portable file named by the export report's web_model (int8 where
    it agrees with fp32), with its sidecar as model.portable.json; without a report, fp32."""
    out = tmp_path / "out"
    out.mkdir()
    for path in pipeline_run["onnx"].parent.glob("model.portable*"):
        shutil.copy(path, out / path.name)
    report = json.loads(pipeline_run["onnx"].with_suffix(".report.json").read_text())
    (out / "model.report.json").write_text(json.dumps({**report, "web_model": "model.portable.int8.onnx"}))

    def shipped() -> str:
        done = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "web", f"OUT={out}"], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        name = json.loads((out / "web" / "model.portable.json").read_text())["model_file"]
        assert (out / "web" / name).is_file()
        return name

    assert shipped() == "model.portable.int8.onnx"
    (out / "model.report.json").unlink()
    assert shipped() == "model.portable.onnx"


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
