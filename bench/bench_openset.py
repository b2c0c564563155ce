"""Calibration and the unknown verdict on real frames: one class left out of training plays
every character the model has never seen.

For each left-out class: the other classes' frames form a data root (every 7th frame of each
becomes a test image, Kaggle-style), the left-out frames an ``unknown/`` folder; then
``simpsons manifest``, ``train`` (from scratch), ``evaluate --split test --unknown``. Printed:
val ECE/NLL before and after temperature scaling (from the calibration stored in best.pt),
test ECE, and for every candidate score AUROC, FPR at 95% known acceptance and, for the
shipped score, the shares accepted and rejected at the stored threshold.

    .venv/bin/python bench/bench_openset.py [--leave-out lisa_simpson abraham_grampa_simpson]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import REPO, WORK, require_sample

SIMPSONS = [sys.executable, "-m", "pipeline.cli"]
TEST_EVERY = 7


def make_root(sample: Path, left_out: str, root: Path) -> None:
    """Symlinks: known classes in the Kaggle layout (every 7th frame as a test image), the
    left-out class in unknown/."""
    if root.is_dir():
        return
    for folder in sorted((sample / "simpsons_dataset").iterdir()):
        frames = sorted(folder.glob("*.jpg"))
        if folder.name == left_out:
            target = root / "unknown"
            target.mkdir(parents=True)
            for f in frames:
                (target / f.name).symlink_to(f)
            continue
        (root / "simpsons_dataset" / folder.name).mkdir(parents=True)
        (root / "kaggle_simpson_testset").mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(frames):
            dest = root / "kaggle_simpson_testset" / f"{folder.name}_{i}.jpg" if i % TEST_EVERY == 0 else root / "simpsons_dataset" / folder.name / f.name
            dest.symlink_to(f)


def run(*args: str) -> None:
    done = subprocess.run([*SIMPSONS, *map(str, args)], cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"failed: simpsons {' '.join(map(str, args))}\n{done.stderr[-2000:]}")


def one(sample: Path, left_out: str, args) -> dict:
    work = WORK / f"openset-{left_out}"
    make_root(sample, left_out, work / "data")
    run("manifest", work / "data", "--out", work / "out", "--no-plots")
    if not (work / "run" / "best.pt").is_file():
        run("train", "--manifest", work / "out" / "manifest.parquet", "--out", work / "run", "--arch", args.arch,
            "--weights", "none", "--image-size", args.image_size, "--epochs", args.epochs, *args.train_args.split())
    run("evaluate", "--checkpoint", work / "run" / "best.pt", "--manifest", work / "out" / "manifest.parquet",
        "--split", "test", "--out", work / "eval", "--unknown", work / "data" / "unknown")
    import torch

    fit = torch.load(work / "run" / "best.pt", weights_only=True)["calibration"]["fit"]
    report = json.loads((work / "eval" / "report.json").read_text())
    return {"left_out": left_out, "fit": fit, "report": report}


def ece_floor(predictions_csv: Path, runs: int = 200) -> float:
    """The ECE a perfectly calibrated model would still show on these confidences: correctness
    drawn as Bernoulli(confidence), averaged over ``runs`` draws. Below about this, a measured
    ECE is sampling noise, not miscalibration."""
    import csv

    import numpy as np

    from runtime.metrics import reliability

    confidence = np.array([float(r["confidence"]) for r in csv.DictReader(predictions_csv.open())])
    rng, eces = np.random.default_rng(0), []
    for _ in range(runs):
        correct = rng.random(len(confidence)) < confidence
        probs = np.stack([confidence, 1 - confidence], axis=1)
        eces.append(reliability(probs, np.where(correct, 0, 1))["ece"])
    return float(np.mean(eces))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--leave-out", nargs="+", default=["lisa_simpson", "abraham_grampa_simpson"])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", default="128")
    parser.add_argument("--epochs", default="12")
    parser.add_argument("--train-args", default="--batch-size 32 --lr 2e-3", help="extra `simpsons train` options")
    args = parser.parse_args()
    sample = require_sample()
    os.environ.setdefault("PYTHONPATH", str(REPO))
    for left_out in args.leave_out:
        r = one(sample, left_out, args)
        fit, report, unknown = r["fit"], r["report"], r["report"]["unknown"]
        cal = report["calibration"]
        print(f"\n## left out: {left_out} ({unknown['scores'][unknown['shipped']]['unknown_images']} unknown frames, "
              f"{report['num_samples']} known test frames, test macro-F1 {report['macro avg']['f1']:.3f})")
        print(f"val ({fit['val_images']} images): NLL {fit['nll_before']:.3f} -> {fit['nll_after']:.3f}, "
              f"ECE {fit['ece_before']:.3f} -> {fit['ece_after']:.3f}; test: NLL {cal['nll_before']:.3f} -> "
              f"{cal['nll_after']:.3f}, ECE {cal['ece_before']:.3f} -> {cal['ece_after']:.3f} (T = {cal['temperature']:.3f}); "
              f"ECE of a perfectly calibrated model on these test confidences: {ece_floor(WORK / f'openset-{left_out}' / 'eval' / 'predictions.csv'):.3f}")
        print("| score | AUROC | FPR at 95% known accepted | known test accepted at threshold | unknown rejected at threshold |")
        print("|---|---|---|---|---|")
        for name, s in unknown["scores"].items():
            at = f"{s['known_accepted']:.1%} | {s['unknown_rejected']:.1%}" if s.get("threshold") is not None else " | "
            print(f"| {name}{' (shipped)' if name == unknown['shipped'] else ''} | {s['auroc']:.3f} | {s['fpr_at_95_known']:.3f} | {at} |")


if __name__ == "__main__":
    main()
