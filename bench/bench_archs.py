"""Inference speed per architecture on the CPU: EfficientNet-Lite0 against ResNet18 (the
from-scratch default) and ResNet50 (the reference), fp32 and int8 ONNX, each at the size it is
trained at.

Model only: onnxruntime on preprocessed tensors, batch 16. End to end: files -> labels through
``simpsons-infer``'s Classifier (decoding, preprocessing, batch 32), the way a user runs it.
Every case is measured in each of --rounds interleaved rounds; medians of the rates and of the
ratios to ResNet18 fp32 in the same round are printed. Speed does not depend on the weights, so
the models are randomly initialised (bench_infer.py's checkpoints).

    .venv/bin/python bench/bench_archs.py [--rounds 3] [--images 256]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from bench_infer import random_checkpoint
from common import WORK, sample_manifest

CASES = [("resnet18", 128), ("resnet50", 224), ("efficientnet_lite0", 128), ("efficientnet_lite0", 224)]


def exported(arch: str, size: int, manifest) -> dict:
    """fp32 and int8 Classifiers of a random ``arch`` at ``size``, exported once into bench/.work."""
    from export.config import ExportConfig
    from export.onnx_export import export
    from runtime import Classifier

    checkpoint = random_checkpoint(manifest, arch, size)
    out = WORK / f"onnx-{arch}-{size}-random" / "model.onnx"
    if not out.with_suffix(".int8.onnx").is_file():
        export(ExportConfig(checkpoint=checkpoint, out=out, manifest=manifest, int8=True, eval_images=64))
    return {"fp32": Classifier(out, device="cpu"), "int8": Classifier(out.with_suffix(".int8.onnx"), device="cpu")}


def model_only(classifier, tensors: np.ndarray, batch: int = 16) -> float:
    start = time.perf_counter()
    for i in range(0, len(tensors), batch):
        classifier.logits(tensors[i : i + batch])
    return len(tensors) / (time.perf_counter() - start)


def end_to_end(classifier, paths: list[str]) -> float:
    start = time.perf_counter()
    done = sum(r.prediction is not None for r in classifier.iter_predict(paths, batch_size=32))
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from pipeline.engine import manifest as engine
    from runtime.preprocess import preprocess

    manifest = sample_manifest()
    m = engine.read(manifest)
    paths = [str(m.data_root() / p) for p in m.rows("train")["path"].to_list()[: args.images]]
    models = {case: exported(*case, manifest) for case in CASES}
    tensors = {case: np.stack([preprocess(p, models[case]["fp32"].info.preprocessing) for p in paths]) for case in CASES}
    for case in CASES:  # warm-up
        for classifier in models[case].values():
            classifier.logits(tensors[case][:16])

    rounds = []
    for _ in range(args.rounds):
        rounds.append({(case, kind, how): (model_only(c, tensors[case]) if how == "model" else end_to_end(c, paths))
                       for how in ("model", "e2e") for case in CASES for kind, c in models[case].items()})
    base = {how: (CASES[0], "fp32", how) for how in ("model", "e2e")}
    print(f"{len(paths)} frames of the real sample, {args.rounds} interleaved rounds, medians; ratios to ResNet18 fp32 in the same round\n")
    print("| arch | size | precision | model only, img/s | vs ResNet18 | end to end, img/s | vs ResNet18 |\n|---|---|---|---|---|---|---|")
    for case in CASES:
        for kind in ("fp32", "int8"):
            cells = []
            for how in ("model", "e2e"):
                key = (case, kind, how)
                cells += [f"{statistics.median(r[key] for r in rounds):.1f}",
                          f"{statistics.median(r[key] / r[base[how]] for r in rounds):.2f}x"]
            print(f"| {case[0]} | {case[1]} | {kind} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
