"""The portable model against the current path, in Python and in headless Chromium.

Exports a trained checkpoint (default: the one bench_openset.py trains) with --int8 --portable,
then on the same real frames:
1. onnxruntime in Python, images/s, medians of interleaved rounds: the plain model through the
   Python runtime (decode + Python preprocessing + model) against the portable model (decode +
   one graph), fp32 and int8;
2. images/s in headless Chromium (onnxruntime-web, WASM, one thread) for the portable fp32 and
   int8 models, through the page's own code (web/test/browser.mjs);
3. each variant's agreement with its reference, from the export report.

    .venv/bin/python bench/bench_portable.py [--checkpoint PATH] [--images 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import REPO, SAMPLE, WORK, files, require_sample


def export(checkpoint: Path, out: Path) -> dict:
    report = out / "model.report.json"
    if not report.is_file():
        done = subprocess.run([sys.executable, "-m", "pipeline.cli", "export", "--checkpoint", str(checkpoint),
                               "--out", str(out / "model.onnx"), "--int8", "--portable"], cwd=REPO, capture_output=True, text=True)
        if done.returncode:
            sys.exit(done.stderr[-2000:])
    return json.loads(report.read_text())


def python_rates(models: dict[str, Path], images: list[Path], rounds: int) -> dict[str, float]:
    from runtime import Classifier

    classifiers = {name: Classifier(path, device="cpu", threads=2, unknown=False) for name, path in models.items()}
    for clf in classifiers.values():
        list(clf.iter_predict(images[:32]))  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, clf in classifiers.items():
            start = time.perf_counter()
            results = list(clf.iter_predict(images, batch_size=32))
            rates[name].append(len(results) / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


def browser_rate(out: Path, model: Path, images: list[Path]) -> float:
    """``make web`` for ``model``, serve it on 127.0.0.1, classify ``images`` in the page."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    web = out / f"web-{model.stem}"
    done = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "web", f"OUT={out}", f"WEB={web}", f"WEB_MODEL={model}"],
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr[-2000:])
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(web)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = out / f"{model.stem}.browser.json"
        done = subprocess.run(["node", "test/browser.mjs", f"http://127.0.0.1:{server.server_port}/index.html", str(result),
                               str(out / f"{model.stem}.png"), *map(str, images)], cwd=REPO / "web", capture_output=True, text=True)
        if done.returncode:
            sys.exit(done.stderr[-2000:])
    finally:
        server.shutdown()
    report = json.loads(result.read_text())
    return len(report["results"]) / report["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path, default=WORK / "openset-lisa_simpson" / "run" / "best.pt")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--browser-images", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    require_sample()
    if not args.checkpoint.is_file():
        sys.exit(f"{args.checkpoint}: no checkpoint (run bench/bench_openset.py first, or pass --checkpoint)")
    out = WORK / "portable"
    out.mkdir(parents=True, exist_ok=True)
    report = export(args.checkpoint, out)
    images = [p for p in files(SAMPLE / "simpsons_dataset") if p.suffix == ".jpg"][:: max(1, 1128 // args.images)][: args.images]
    models = {"plain fp32": out / "model.onnx", "portable fp32": out / "model.portable.onnx",
              "plain int8": out / "model.int8.onnx", "portable int8": out / "model.portable.int8.onnx"}
    rates = python_rates(models, images, args.rounds)
    print(f"{len(images)} real frames, onnxruntime CPU, 2 threads, medians of {args.rounds} interleaved rounds")
    for name, rate in rates.items():
        base = rates[name.replace("portable", "plain")]
        print(f"  {name:14s} {rate:6.1f} img/s  {rate / base:.2f}x the plain path")
    if shutil.which("node") and Path("/usr/bin/chromium").exists():
        few = images[: args.browser_images]
        for name in ("portable fp32", "portable int8"):
            print(f"  Chromium (WASM, 1 thread) {name}: {browser_rate(out, models[name], few):.1f} img/s on {len(few)} frames")
    for name, v in report["variants"].items():
        agreement = f", top-1 agreement with {v['reference']} {v['top1_agreement_with_reference']:.2%}, max |prob diff| " \
                    f"{v['max_abs_probability_diff']:.3f}" if "reference" in v else ""
        print(f"  {name}: {v['size_mb']} MB, val accuracy {v['accuracy']:.3f}, macro-F1 {v['macro_f1']:.3f}{agreement}")


if __name__ == "__main__":
    main()
