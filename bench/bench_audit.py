"""The audit page: time and size, and how well its label-issue ranking finds wrong labels.

1. ``simpsons audit`` on the real sample's manifest and on 20,000 generated frames: seconds
   and page size.
2. The real sample with 5% of its training-folder labels flipped on purpose (each flipped
   frame filed under another, random class; seeded), a model trained from scratch, then
   ``simpsons audit --checkpoint best.pt --folds 4``: among the top-ranked candidates as many
   as were flipped, the share that were flipped (precision), and the share of flipped frames
   that appear among all candidates (recall).

    .venv/bin/python bench/bench_audit.py [--image-size 96 --epochs 12 --folds 4]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import polars as pl

from common import SAMPLE, WORK, require_sample, sample_manifest, simpsons

def flipped_sample(root: Path, share: float, seed: int = 0, sample: Path = SAMPLE) -> set[str]:
    """Symlinks of the sample in the Kaggle layout, ``share`` of the frames filed under another
    class; a frame's true class is its name's prefix, up to the first ``-``."""
    rng, flipped = random.Random(seed), set()
    if (root / "flipped.txt").is_file():
        return set((root / "flipped.txt").read_text().split())
    classes = sorted(p.name for p in (sample / "simpsons_dataset").iterdir())
    for label in classes:
        for frame in sorted((sample / "simpsons_dataset" / label).iterdir()):
            target = label
            if rng.random() < share:
                target = rng.choice([c for c in classes if c != label])
            name = f"{label}-{frame.name}"  # unique across classes (frame names repeat between them)
            dest = root / "simpsons_dataset" / target / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(frame)
            if target != label:
                flipped.add(f"simpsons_dataset/{target}/{name}")
    (root / "flipped.txt").write_text("\n".join(sorted(flipped)))
    return flipped


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image-size", default="96")
    parser.add_argument("--epochs", default="12")
    parser.add_argument("--folds", default="4")
    parser.add_argument("--generated", type=int, default=20_000)
    args = parser.parse_args()
    require_sample()
    work = WORK / "audit"

    manifest = sample_manifest()
    seconds = simpsons("audit", manifest.parent)
    page = manifest.parent / "audit.html"
    print(f"real sample (1,128 frames): audit {seconds:.1f}s, page {page.stat().st_size / 2**20:.2f} MB")
    generated = work / "generated"
    if not (generated / "out" / "manifest.parquet").is_file():
        simpsons("synth", generated / "data", "--per-class", args.generated // 42, "--size", "160x120")
        simpsons("manifest", generated / "data", "--out", generated / "out", "--no-plots")
    seconds = simpsons("audit", generated / "out")
    page = generated / "out" / "audit.html"
    print(f"{args.generated:,} generated frames: audit {seconds:.1f}s, page {page.stat().st_size / 2**20:.2f} MB")

    data = work / "flipped" / "data"
    flipped = flipped_sample(data, 0.05)
    out = work / "flipped"
    simpsons("manifest", data, "--out", out / "out", "--no-plots")
    if not (out / "run" / "best.pt").is_file():
        simpsons("train", "--manifest", out / "out" / "manifest.parquet", "--out", out / "run", "--arch", "resnet18",
                 "--weights", "none", "--image-size", args.image_size, "--epochs", args.epochs)
    seconds = simpsons("audit", out / "out", "--checkpoint", out / "run" / "best.pt", "--folds", args.folds)
    issues = pl.read_csv(out / "out" / "label_issues.csv")
    df = pl.read_parquet(out / "out" / "manifest.parquet")
    usable = set(df.filter(pl.col("split").is_in(["train", "val"]))["path"]) & flipped
    top = set(issues["path"][: len(usable)])
    print(f"{len(flipped)} labels flipped ({len(usable)} still usable after the data engine), ResNet18 {args.image_size} px, "
          f"{args.epochs} epochs from scratch, --folds {args.folds}: audit {seconds / 60:.1f} min; {len(issues)} candidates; "
          f"precision at {len(usable)}: {len(top & usable) / max(len(usable), 1):.2f}; "
          f"recall: {len(set(issues['path']) & usable) / max(len(usable), 1):.2f}")


if __name__ == "__main__":
    main()
