"""Training input pipeline and a from-scratch run on the real sample.

1. Loader-only images/s (decode + augment in worker processes) against training images/s
   (loader + forward/backward), so a starving loader shows as loader ~= training speed.
2. A small model trained from scratch (no ImageNet weights here) on the sample's train split,
   validation macro-F1 printed.

    .venv/bin/python bench/bench_train.py [--arch resnet18 --image-size 96 --epochs 12]
"""

from __future__ import annotations

import argparse
import json
import os
import time

from common import WORK, sample_manifest


def loader_speed(manifest, image_size: int, workers: int, batches: int) -> float:
    from pipeline.training import datasets as data
    from pipeline.engine import manifest as engine
    from pipeline.training.presets import TrainPreset
    from runtime.metadata import Preprocessing

    m = engine.read(manifest)
    pre = Preprocessing.for_size(image_size, m.mean, m.std)
    dataset = data.ManifestDataset(m.rows("train"), m.data_root(), m.classes, TrainPreset(pre))
    sampler = data.EpochSampler(dataset.targets, len(m.classes), True, 0)
    loader = data.loader(dataset, 32, workers, sampler)
    iterator = iter(loader)
    next(iterator)  # workers started
    start, seen = time.perf_counter(), 0
    for _, (images, _) in zip(range(batches), iterator):
        seen += len(images)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    manifest = sample_manifest()
    workers = min(8, os.cpu_count() or 1)
    for size in (224, args.image_size):
        print(f"loader only, {size} px, {workers} workers: {loader_speed(manifest, size, workers, 20):.0f} img/s")

    from pipeline.training.train import TrainConfig, train

    out = WORK / f"train-{args.arch}-{args.image_size}"
    config = TrainConfig(manifest=str(manifest), out=str(out), arch=args.arch, weights="none",
                         image_size=args.image_size, epochs=args.epochs, batch_size=32, lr=2e-3, workers=workers, patience=100)
    start = time.perf_counter()
    best = train(config)
    history = json.loads((out / "history.json").read_text())
    speed = sum(h["train_images_per_s"] for h in history) / len(history)
    print(f"training {args.arch} {args.image_size} px from scratch: {speed:.0f} img/s (loader + step), "
          f"{time.perf_counter() - start:.0f}s for {len(history)} epochs")
    print(f"best val macro-F1 {best['f1']:.3f} (accuracy {best['accuracy']:.3f}) at epoch {best['epoch'] + 1}; checkpoint {out / 'best.pt'}")


if __name__ == "__main__":
    main()
