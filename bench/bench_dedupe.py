"""Near-duplicate detection on real frames: does a Kaggle-style test copy (1/3 scale, JPEG 75)
of a training frame get that frame excluded as a leak? And do groups ever mix characters?

    .venv/bin/python bench/bench_dedupe.py [--copies 150]
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

from common import require_sample

from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=150)
    args = parser.parse_args()

    import polars as pl

    from pipeline.engine import manifest as engine

    sample = require_sample()
    frames = sorted((sample / "simpsons_dataset").glob("*/*.jpg"))
    chosen = random.Random(0).sample(frames, args.copies)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        (root / "kaggle_simpson_testset").mkdir(parents=True)
        (root / "simpsons_dataset").symlink_to((sample / "simpsons_dataset").resolve())
        for i, frame in enumerate(chosen):
            img = Image.open(frame).convert("RGB")
            img = img.resize((round(img.width / 3), round(img.height / 3)), Image.Resampling.BILINEAR)
            img.save(root / "kaggle_simpson_testset" / f"{frame.parent.name}_{i}.jpg", quality=75)
        engine.run(root, Path(tmp) / "out", engine.ManifestConfig(), plots=False)
        df = engine.read(Path(tmp) / "out" / engine.MANIFEST).table
    leaks = set(df.filter(pl.col("status") == "leak")["path"])
    sources = {f"simpsons_dataset/{f.parent.name}/{f.name}" for f in chosen}
    mixed = df.filter(pl.col("group_size") > 1).group_by("group").agg(pl.col("label").n_unique()).filter(pl.col("label") > 1)
    print(f"{len(frames)} real frames, {len(chosen)} test copies at 1/3 scale, JPEG quality 75")
    print(f"source frames excluded as leaks: {len(sources & leaks)}/{len(sources)} ({len(sources & leaks) / len(sources):.1%})")
    print(f"near-identical neighbours excluded with them: {len(leaks - sources)}")
    print(f"near-duplicate groups: {df.filter(pl.col('group_size') > 1)['group'].n_unique()}, mixing two characters: {len(mixed)}")


if __name__ == "__main__":
    main()
