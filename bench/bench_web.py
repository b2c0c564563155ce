"""The browser page in headless Chromium: images/s with the model in a worker a core (the default), in one
worker, on the page's own thread, and on WebGPU, and the time from opening the page to its first answer,
per architecture and variant.

For each ``--arch``, the model ``common.edge_model`` trains briefly on the real sample and
exports; ``make web`` builds a page for each portable file (fp32, int8), a local static server
(no isolation headers: the page isolates itself through its service worker) serves it, and
web/test/browser.mjs opens it in a fresh profile (a first visit: the service worker's reload,
the model's download and the session are all counted) and picks ``--images`` real frames as
soon as it is ready. Rows:
- WASM in a worker a core, 1 thread each (``?backend=wasm``): the page's default, each worker
  with its own session and its own batches;
- WASM in one worker, 1 thread (``...&workers=1``): on 2 cores, the page of the stop before
  (the model in one worker on every core but one);
- WASM on the page's thread, every core (``...&workers=0&threads=CORES``): the page before that;
- WebGPU (Chromium on SwiftShader, Vulkan on the CPU: the WebGPU code path runs, but at a
  software rasteriser's speed, not a GPU's), for the file the page ships, on
  ``--webgpu-images`` frames (SwiftShader takes seconds a picture).
img/s counts the page's whole work per picture (decode, graph, result card); "first answer" is
seconds from opening the page to the first picture's answer, then its parts: model downloaded,
session created, first picture classified (its own share). "agrees with Python": the page's
top-1 against the Python runtime's plain model of the same precision on the same frames, over
all and on Python's clear answers (top two at least ``CLEAR_MARGIN`` apart).

    .venv/bin/python bench/bench_web.py [--arch resnet18 efficientnet_lite0] [--images 128] [--webgpu-images 8]

``--sizes 80 72 64`` instead times the page's default row for the shipped file of a model per
input size, the sizes interleaved over ``--rounds`` (the cost of the model's run against its
input size, in one hour's conditions).

    .venv/bin/python bench/bench_web.py --arch efficientnet_lite0 --sizes 80 72 64 --rounds 4

``--folders A B`` does the same for folders exported by ``simpsons export --portable`` (two
exports of one checkpoint, say).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from common import REPO, SAMPLE, edge_model, files, require_sample

VARIANTS = {"fp32": "model.portable.onnx", "int8": "model.portable.int8.onnx"}
PLAIN = {"fp32": "model.onnx", "int8": "model.int8.onnx"}  # the Python runtime's model of the same precision
CORES = os.cpu_count() or 1
RUNS = [("WASM in a worker a core, 1 thread each (the page's default)", "?backend=wasm", "off"),
        ("WASM in one worker, 1 thread", "?backend=wasm&workers=1", "off"),
        ("WASM on the page's thread, every core", f"?backend=wasm&workers=0&threads={CORES}", "off")]
WEBGPU = ("WebGPU on SwiftShader", "", "swiftshader")


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def page(folder: Path, model: str) -> Path:
    """``make web`` for one portable file of ``folder``: the page folder."""
    web = folder / f"web-{Path(model).stem}"
    done = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "web", f"OUT={folder}", f"WEB={web}",
                           f"WEB_MODEL={folder / model}"], capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr[-2000:])
    return web


def visit(web: Path, query: str, webgpu: str, images: list[Path]) -> dict:
    """One first visit of the page served from ``web``, classifying ``images``: browser.mjs's report."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(web)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    result = web / "visit.json"
    try:
        done = subprocess.run(["node", "test/browser.mjs", f"http://127.0.0.1:{server.server_port}/index.html{query}", str(result),
                               str(web / "visit.png"), *map(str, images)], cwd=REPO / "web", capture_output=True, text=True,
                              env={**os.environ, "WEBGPU": webgpu})
        if done.returncode:
            sys.exit(done.stderr[-2000:])
    finally:
        server.shutdown()
    report = json.loads(result.read_text())
    if report["error"]:
        sys.exit(f"{web}{query}: {report['error']}")
    return report


def python_answers(plain: Path, images: list[Path]) -> list[tuple[str, bool]]:
    """The Python runtime's top-1 for each image with ``plain``, and whether it is a clear answer."""
    from export.onnx_export import CLEAR_MARGIN
    from runtime import Classifier

    predictions = Classifier(plain, device="cpu", unknown=False).predict(images, top_k=2)
    return [(p.top_k[0][0], p.top_k[0][1] - p.top_k[1][1] >= CLEAR_MARGIN) for p in predictions]


def row(arch: str, variant: str, name: str, report: dict, python: list[tuple[str, bool]]) -> str:
    t = report["timings"]
    rate = len(report["results"]) / report["seconds"]
    engine = (f"wasm, {report['workers']} worker(s) x {report['threads']} thread(s)" if report["workers"]
              else f"wasm, {report['threads']} thread(s)" if report["backend"] == "wasm" else report["backend"])
    same = [(r["top"][0][0] == label, clear) for r, (label, clear) in zip(report["results"], python)]
    clear = [agree for agree, is_clear in same if is_clear]
    agrees = f"{sum(a for a, _ in same) / len(same):.1%} ({sum(clear) / max(len(clear), 1):.1%} of {len(clear)} clear)"
    return (f"| {arch} | {variant} | {name} ({engine}) | {rate:.1f} | {t['first_answer_s']:.2f} | {t['model_fetched_s']:.2f} | "
            f"{t['session_created_s']:.2f} | {t['first_picture_s']:.3f} | {agrees} |")


def bench(arch: str, image_size: int, images: list[Path], webgpu_images: int) -> None:
    folder = edge_model(arch, image_size)
    report = json.loads((folder / "model.report.json").read_text())
    shipped = report["web_model"]
    agreed = report["variants"]["portable-int8"]["agreement_with_fp32"]
    print(f"{arch}, {image_size} px: the page ships {shipped} (int8 against fp32 on val: "
          f"{agreed['top1_agreement_on_clear_answers']:.2%} on {agreed['clear_answers']} clear answers)", file=sys.stderr)
    for variant, model in VARIANTS.items():
        web = page(folder, model)
        label = variant + (" (shipped)" if model == shipped else "")
        python = python_answers(folder / PLAIN[variant], images)
        for name, query, webgpu in RUNS:
            print(row(arch, label, name, visit(web, query, webgpu, images), python), flush=True)
        if model == shipped and webgpu_images:
            name, query, webgpu = WEBGPU
            report = visit(web, query, webgpu, images[:webgpu_images])
            print(row(arch, label, f"{name}, {webgpu_images} frames", report, python[:webgpu_images]), flush=True)


def interleaved(folders: dict[str, Path], images: list[Path], rounds: int) -> None:
    """The page's default on each exported folder's shipped file, the folders in turn each round:
    medians of img/s and of the time to the first answer."""
    webs = {name: page(folder, json.loads((folder / "model.report.json").read_text())["web_model"]) for name, folder in folders.items()}
    _, query, webgpu = RUNS[0]  # the page's default
    rates: dict[str, list[float]] = {name: [] for name in webs}
    firsts: dict[str, list[float]] = {name: [] for name in webs}
    for _ in range(rounds):
        for name, web in webs.items():
            report = visit(web, query, webgpu, images)
            rates[name].append(len(report["results"]) / report["seconds"])
            firsts[name].append(report["timings"]["first_answer_s"])
    print(f"| model | img/s, median of {rounds} | rounds | against the first | first answer, s |\n|---|---|---|---|---|")
    first = statistics.median(next(iter(rates.values())))
    for name, r in rates.items():
        print(f"| {name} | {statistics.median(r):.1f} | {', '.join(f'{x:.1f}' for x in r)} | {statistics.median(r) / first:.2f}x | "
              f"{statistics.median(firsts[name]):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", nargs="+", default=["resnet18", "efficientnet_lite0"])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--webgpu-images", type=int, default=8, help="frames for the WebGPU row (0: no WebGPU row)")
    parser.add_argument("--sizes", type=int, nargs="+", help="instead: the page's default for each input size, interleaved")
    parser.add_argument("--folders", type=Path, nargs="+", help="instead: the page's default for each exported folder, interleaved")
    parser.add_argument("--rounds", type=int, default=4, help="with --sizes or --folders")
    args = parser.parse_args()
    if args.rounds < 1 or any(size < 1 for size in args.sizes or ()):
        parser.error("--rounds and --sizes take whole numbers of at least 1")
    if missing := [str(f) for f in args.folders or () if not (f / "model.report.json").is_file()]:
        parser.error(f"--folders: no exported model (model.report.json) in {', '.join(missing)}")
    require_sample()
    if not shutil.which("node") or not Path(os.environ.get("CHROMIUM", "/usr/bin/chromium")).exists():
        sys.exit("bench_web needs node and Chromium (apt-get install -y chromium)")
    frames = [p for p in files(SAMPLE / "simpsons_dataset") if p.suffix == ".jpg"]
    images = frames[:: max(1, len(frames) // args.images)][: args.images]
    if args.sizes or args.folders:
        folders = {str(f): f.resolve() for f in args.folders or ()} or {f"{arch}, {size} px": edge_model(arch, size)
                                                              for arch in args.arch for size in args.sizes}
        interleaved(folders, images, args.rounds)
        return
    print(f"headless Chromium, {len(images)} real frames picked at once, a fresh profile per row")
    print("| arch | variant | backend | img/s | first answer, s | model downloaded, s | session created, s | first picture, s | "
          "agrees with Python |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arch in args.arch:
        bench(arch, args.image_size, images, args.webgpu_images)


if __name__ == "__main__":
    main()
