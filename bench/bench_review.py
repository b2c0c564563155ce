"""What a review buys: the real sample with 5% of its labels flipped (bench_audit.py's flipped
sample), a model trained, ``simpsons audit --checkpoint --folds`` ranks the labels, and two
reviewers act on the top K of ``label_issues.csv`` (K = the flipped frames still usable):

- oracle: accepts only the suggestions that are right (a flipped frame whose suggested class is
  its true one);
- accept-all: accepts every suggestion among the top K.

Each review is a corrections.csv, applied by ``simpsons manifest --corrections``; the model is
then retrained on each manifest (and on the flipped one, "before") with each seed. Every model
is scored on the same frames with their true labels: the val frames of all three manifests,
named by what they really show (a flipped val label would otherwise score the model against the
flip, and the reviews move frames between the splits). Prints val macro-F1 per review and seed,
and how many flips each review fixed (and how many right labels it broke).

    .venv/bin/python bench/bench_review.py [--seeds 0 1 2 --arch resnet18 --weights none --image-size 96 --epochs 12
                                            --folds 4 --device auto --slots 1 --train-args "--workers 2"]

Each run's files stay under bench/.work/review/<settings>/ and finished steps are reused, so an
interrupted run continues. ``--sample`` points at another data set in the Kaggle layout (a
small generated one checks the script end to end in a minute).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
from pathlib import Path

import polars as pl

from bench_audit import flipped_sample
from common import SAMPLE, WORK, in_parallel, simpsons

REVIEWS = ("oracle", "accept-all")


def true_label(path: str) -> str:
    """What a frame of the flipped sample really shows: its file name's prefix (bench_audit)."""
    return path.rsplit("/", 1)[-1].split("-", 1)[0]


def review(issues: pl.DataFrame, k: int, oracle: bool) -> pl.DataFrame:
    """A corrections table from the top ``k`` label issues: relabel to the suggestion, every
    one, or (``oracle``) only where the suggestion is the frame's true class."""
    top = issues.head(k).with_columns(pl.col("path").map_elements(true_label, return_dtype=pl.String).alias("_truth"))
    if oracle:
        top = top.filter(pl.col("suggested") == pl.col("_truth"))
    return top.select("path", pl.lit("relabel").alias("action"), pl.col("suggested").alias("label"),
                      pl.lit("bench_review").alias("note"), "hash")


def flips_fixed(manifest: pl.DataFrame, flipped: set[str]) -> tuple[int, int]:
    """(flipped frames now under their true class, right labels the review made wrong)."""
    reviewed = manifest.filter(pl.col("review") == "relabel").with_columns(
        pl.col("path").map_elements(true_label, return_dtype=pl.String).alias("_truth"))
    was_flipped = pl.col("path").is_in(list(flipped))
    fixed = reviewed.filter(was_flipped & (pl.col("label") == pl.col("_truth"))).height
    broken = reviewed.filter(~was_flipped & (pl.col("label") != pl.col("_truth"))).height
    return fixed, broken


def clean_val(manifests: dict[str, Path], out: Path) -> int:
    """A manifest whose val split is the frames every manifest validates on, under their true
    classes (``out``/manifest.parquet, stats.json beside it); returns how many."""
    tables = {name: pl.read_parquet(path) for name, path in manifests.items()}
    common = set.intersection(*(set(t.filter((pl.col("split") == "val") & (pl.col("status") == "ok"))["path"]) for t in tables.values()))
    before = tables["before"]
    clean = before.with_columns(
        pl.when(pl.col("path").is_in(list(common))).then(pl.lit("val")).otherwise(pl.lit("excluded")).alias("split"),
        pl.col("path").map_elements(true_label, return_dtype=pl.String).alias("label"))
    out.mkdir(parents=True, exist_ok=True)
    clean.write_parquet(out / "manifest.parquet")
    (out / "stats.json").write_text((manifests["before"].parent / "stats.json").read_text())
    return len(common)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--image-size", default="96")
    parser.add_argument("--epochs", default="12")
    parser.add_argument("--folds", default="4")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--slots", type=int, default=1, help="retraining runs at a time")
    parser.add_argument("--share", type=float, default=0.05, help="share of the labels flipped")
    parser.add_argument("--train-args", default="", help="more `simpsons train` options, as one string")
    parser.add_argument("--sample", type=Path, default=SAMPLE, help="the data set to flip (Kaggle layout)")
    args = parser.parse_args()
    if not (args.sample / "simpsons_dataset").is_dir():
        raise SystemExit(f"bench: no data set at {args.sample} (set SIMPSONS_SAMPLE or pass --sample)")
    work = WORK / "review" / f"{args.sample.name}-{args.arch}-{args.weights}-{args.image_size}px-{args.epochs}ep-{args.share}"
    data = work / "data"
    flipped = flipped_sample(data, args.share, sample=args.sample)
    training = ["--arch", args.arch, "--weights", args.weights, "--image-size", args.image_size, "--epochs", args.epochs,
                "--device", args.device, *shlex.split(args.train_args)]

    def train(name: str, seed: int) -> Path:
        run = work / "runs" / f"{name}-seed{seed}"
        if not (run / "best.pt").is_file():
            simpsons("train", "--manifest", work / name / "manifest.parquet", "--out", run, "--seed", seed, *training)
        return run / "best.pt"

    simpsons("manifest", data, "--out", work / "before", "--no-plots")
    before = pl.read_parquet(work / "before" / "manifest.parquet")
    usable = set(before.filter(pl.col("split").is_in(["train", "val"]))["path"]) & flipped
    checkpoint = train("before", args.seeds[0])
    if not (work / "before" / "label_issues.csv").is_file():
        simpsons("audit", work / "before", "--checkpoint", checkpoint, "--folds", args.folds, "--device", args.device)
    issues = pl.read_csv(work / "before" / "label_issues.csv", infer_schema=False)
    manifests, relabelled, fixed = {"before": work / "before" / "manifest.parquet"}, {"before": 0}, {"before": (0, 0)}
    for name in REVIEWS:
        corrections = review(issues, len(usable), oracle=name == "oracle")
        corrections.write_csv(work / f"{name}.csv")
        simpsons("manifest", data, "--out", work / name, "--no-plots", "--corrections", work / f"{name}.csv")
        manifests[name], relabelled[name] = work / name / "manifest.parquet", corrections.height
        fixed[name] = flips_fixed(pl.read_parquet(manifests[name]), flipped)
    frames = clean_val(manifests, work / "clean")

    def score(name: str, seed: int) -> float:
        out = work / "eval" / f"{name}-seed{seed}"
        simpsons("evaluate", "--checkpoint", train(name, seed), "--manifest", work / "clean" / "manifest.parquet",
                 "--split", "val", "--out", out, "--device", args.device)
        return json.loads((out / "report.json").read_text())["macro avg"]["f1"]

    found: dict[tuple[str, int], float] = {}
    in_parallel([lambda n=name, s=seed: found.update({(n, s): score(n, s)}) for name in manifests for seed in args.seeds], args.slots)
    scores = {name: [found[name, seed] for seed in args.seeds if (name, seed) in found] for name in manifests}

    print(f"{len(flipped)} labels flipped ({len(usable)} usable: K = {len(usable)}); {args.arch} {args.weights} {args.image_size} px, "
          f"{args.epochs} epochs, audit --folds {args.folds}; val macro-F1 on {frames} frames under their true classes\n")
    print(f"| review | relabelled | flips fixed | right labels broken | val macro-F1, mean | {' | '.join(f'seed {s}' for s in args.seeds)} |")
    print(f"|---|---|---|---|---|{'---|' * len(args.seeds)}")
    for name, values in scores.items():
        mended, broken = fixed[name]
        print(f"| {name} | {relabelled[name]} | {mended} of {len(usable)} | {broken} | {statistics.fmean(values):.3f} | "
              f"{' | '.join(f'{v:.3f}' for v in values)} |")


if __name__ == "__main__":
    main()
