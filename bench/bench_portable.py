"""The portable model against the plain one in Python: speed and agreement, per architecture.

For each ``--arch``, a model trained briefly on the real sample and exported with --int8
--portable (``common.edge_model``, made once), then on the same real frames:
1. images/s through the Python runtime (``Classifier.iter_predict``), medians of interleaved
   rounds: the plain model (draft-mode JPEG decode + Python resize, crop, normalisation + model)
   against the portable model (the same decode + one graph run per picture size), fp32 and
   int8, and the ratio portable / plain (target >= 0.95x);
2. top-1 agreement of each portable model with its plain model on these frames, over all and on
   the plain model's clear answers (``export.onnx_export.agreement``: must stay >= 99.5%).
The browser side is bench/bench_web.py.

    .venv/bin/python bench/bench_portable.py [--arch resnet18 efficientnet_lite0] [--images 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from common import SAMPLE, edge_model, files, require_sample

PAIRS = {"fp32": ("model.onnx", "model.portable.onnx"), "int8": ("model.int8.onnx", "model.portable.int8.onnx")}


def rates(classifiers: dict, images: list[Path], rounds: int) -> dict[str, float]:
    """Images/s of each classifier over ``images``, the median of ``rounds`` interleaved rounds
    (the machine's load drifts; interleaving spreads it over every side alike)."""
    for clf in classifiers.values():
        list(clf.iter_predict(images[:32]))  # warm-up
    seen: dict[str, list[float]] = {name: [] for name in classifiers}
    for _ in range(rounds):
        for name, clf in classifiers.items():
            start = time.perf_counter()
            count = sum(1 for _ in clf.iter_predict(images, batch_size=32))
            seen[name].append(count / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in seen.items()}


def scored(clf, images: list[Path]):
    """Every class's probability for each image, as ``agreement`` takes them."""
    from export.onnx_export import Scored

    probs = np.zeros((len(images), len(clf.classes)), np.float32)
    index = {c: i for i, c in enumerate(clf.classes)}
    for row, result in enumerate(clf.iter_predict(images, top_k=len(clf.classes))):
        for label, p in result.prediction.top_k:
            probs[row, index[label]] = p
    return Scored([clf.classes[i] for i in probs.argmax(1)], probs, None)


def bench(arch: str, image_size: int, images: list[Path], rounds: int) -> None:
    from export.onnx_export import agreement
    from runtime import Classifier

    folder = edge_model(arch, image_size)
    classifiers = {f"{kind} {variant}": Classifier(folder / name, device="cpu", threads=2, unknown=False)
                   for variant, pair in PAIRS.items() for kind, name in zip(("plain", "portable"), pair)}
    measured = rates(classifiers, images, rounds)
    print(f"{arch}, {image_size} px: {len(images)} real frames, onnxruntime CPU, 2 threads, medians of {rounds} interleaved rounds")
    for variant in PAIRS:
        plain, portable = classifiers[f"plain {variant}"], classifiers[f"portable {variant}"]
        same = agreement(scored(portable, images), scored(plain, images))
        base = measured[f"plain {variant}"]
        print(f"  {variant}: plain {base:6.1f} img/s, portable {measured[f'portable {variant}']:6.1f} img/s = "
              f"{measured[f'portable {variant}'] / base:.2f}x; top-1 agreement {same['top1_agreement_with_reference']:.2%}, "
              f"{same['top1_agreement_on_clear_answers']:.2%} on {same['clear_answers']} clear answers, "
              f"max |prob diff| {same['max_abs_probability_diff']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", nargs="+", default=["resnet18", "efficientnet_lite0"])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    require_sample()
    frames = [p for p in files(SAMPLE / "simpsons_dataset") if p.suffix == ".jpg"]
    images = frames[:: max(1, len(frames) // args.images)][: args.images]
    for arch in args.arch:
        bench(arch, args.image_size, images, args.rounds)


if __name__ == "__main__":
    main()
