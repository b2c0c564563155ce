"""The fine-tuning recipe for EfficientNet-Lite0's ImageNet weights, measured on the real sample.

Each row changes one thing from ``BASE`` (or sets a budget a CPU can afford in the wall time of
today's from-scratch default, the first row); every row runs with 3 seeds. Reported per row:
val macro-F1 of best.pt (mean, spread), the same model on down-scaled copies of the val frames
(a third of the frame size, as the Kaggle test images are: does ``--downscale`` matter?), epochs
and time per run. Runs go ``--slots`` at a time (on a lent GPU machine: many; here: 1), each
result appended to ``--results`` as it lands; a rerun skips what is there, ``--table`` prints
what has finished.

    .venv/bin/python bench/bench_finetune.py [--seeds 0 1 2] [--only base aug-none] [--slots 1]
    .venv/bin/python bench/bench_finetune.py --table
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from common import SAMPLE, WORK, in_parallel, sample_manifest, simpsons

# Every value spelled out, so a row keeps its meaning when the recipe changes; no early stopping.
BASE = {"arch": "efficientnet_lite0", "weights": "imagenet", "image_size": 128, "epochs": 12, "patience": 100, "lr": 1e-3,
        "batch_size": 64, "backbone_lr": 0.1, "augment": "trivial", "downscale": 4.0, "train_from": 1}
SCRATCH = {"arch": "resnet18", "weights": "none", "image_size": 128, "epochs": 12, "patience": 100}  # the rest: RECIPES["scratch"]
ROWS = {  # in order of priority: a lent machine's deadline cuts the last
    "scratch-resnet18": SCRATCH,
    "base": {},
    "aug-none": {"augment": "none"},
    "backbone-0.3": {"backbone_lr": 0.3},
    "backbone-1": {"backbone_lr": 1.0},
    "from-16": {"train_from": 16},
    "size-160": {"image_size": 160},
    "downscale-off": {"downscale": 1.0},
    "epochs-6": {"epochs": 6},
    "cpu-128-7ep": {"epochs": 7},
    "cpu-160-from16-8ep": {"image_size": 160, "train_from": 16, "epochs": 8},
    "cpu-224-from32-8ep": {"image_size": 224, "train_from": 32, "epochs": 8},
    "cpu-224-from32-8ep-aug-none": {"image_size": 224, "train_from": 32, "epochs": 8, "augment": "none"},
    "cpu-224-from32-8ep-backbone-1": {"image_size": 224, "train_from": 32, "epochs": 8, "backbone_lr": 1.0},
    "backbone-1-8ep": {"backbone_lr": 1.0, "epochs": 8},
    "backbone-1-size-160": {"backbone_lr": 1.0, "image_size": 160},
    "backbone-1-aug-none": {"backbone_lr": 1.0, "augment": "none"},
    "backbone-1-size-160-aug-none": {"backbone_lr": 1.0, "image_size": 160, "augment": "none"},
    "backbone-1-size-224": {"backbone_lr": 1.0, "image_size": 224},
    "backbone-1-downscale-off": {"backbone_lr": 1.0, "downscale": 1.0},
    "backbone-1-16ep": {"backbone_lr": 1.0, "epochs": 16},
    "backbone-1-6ep-downscale-off": {"backbone_lr": 1.0, "epochs": 6, "downscale": 1.0},  # the from-scratch default's wall time
    "from-32": {"train_from": 32},
    "size-224": {"image_size": 224},
}
RESULTS = WORK / "finetune" / "results.jsonl"
SMALL = 3  # the Kaggle test images are about a third of the frame size


def options(name: str) -> dict:
    return ROWS[name] if name == "scratch-resnet18" else {**BASE, **ROWS[name]}


def done(results: Path) -> list[dict]:
    return [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []


def small_val_copies(manifest: Path) -> Path:
    """The val frames shrunk ``SMALL`` times (box filter, JPEG quality 90) under the same
    relative paths: a data root that ``simpsons evaluate --split val --data-root`` reads."""
    import polars as pl
    from PIL import Image

    root = WORK / "val-small"
    for path in pl.read_parquet(manifest).filter(pl.col("split") == "val")["path"]:
        target = root / path
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(SAMPLE / path) as img:
                img.convert("RGB").reduce(SMALL).save(target, quality=90)
    return root


def finished(out: Path, epochs: int) -> bool:
    """A training that ran all its epochs and calibrated best.pt (its evaluation may have failed)."""
    import torch

    history = out / "history.json"
    if not history.is_file() or len(json.loads(history.read_text())) < epochs:
        return False
    return bool(torch.load(out / "best.pt", weights_only=True).get("calibration", {}).get("fit"))


def run(name: str, seed: int, args, manifest: Path, small: Path) -> None:
    out = WORK / "finetune" / name / str(seed)
    flags = [x for k, v in options(name).items() for x in (f"--{k.replace('_', '-')}", v)]
    common = ["--manifest", manifest, "--data-root", SAMPLE, "--workers", args.workers, "--device", args.device]
    seconds = None  # a finished training is evaluated, not repeated; its time is unknown
    if not finished(out, options(name)["epochs"]):
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        simpsons("train", *common[:4], "--out", out, "--seed", seed, *flags, *common[4:])
        seconds = time.perf_counter() - start
    simpsons("evaluate", "--checkpoint", out / "best.pt", "--split", "val", "--out", out / "eval-small", "--manifest", manifest,
             "--data-root", small, "--workers", args.workers, "--device", args.device)
    history = json.loads((out / "history.json").read_text())
    best = max(history, key=lambda h: h["val_macro_f1"])
    small_f1 = json.loads((out / "eval-small" / "report.json").read_text())["macro avg"]["f1"]
    result = {"row": name, "seed": seed, "val_macro_f1": best["val_macro_f1"], "best_epoch": best["epoch"],
              "val_small_macro_f1": small_f1, "seconds": seconds, "device": args.device, "options": ROWS[name]}
    with args.results.open("a") as f:
        f.write(json.dumps(result) + "\n")
    print(f"{name} seed {seed}: val macro-F1 {result['val_macro_f1']:.3f} (small copies {small_f1:.3f}) in {seconds or 0:.0f}s", flush=True)


def time_per_run(rows: list[dict]) -> str:
    timed = [r["seconds"] for r in rows if r["seconds"] is not None]
    return f"{statistics.median(timed):.0f} s ({rows[0]['device']})" if timed else "-"


def table(rows: list[dict]) -> str:
    lines = ["| row | changed from the base | val macro-F1, mean | spread (min-max) | down-scaled val, mean | seeds | "
             "best epoch (median) | time per run (median) |", "|---|---|---|---|---|---|---|---|"]
    for name in ROWS:
        mine = [r for r in rows if r["row"] == name]
        if not mine:
            continue
        f1, small = [r["val_macro_f1"] for r in mine], [r["val_small_macro_f1"] for r in mine]
        changed = ", ".join(f"{k}={v}" for k, v in ROWS[name].items()) or "nothing"
        lines.append(f"| {name} | {changed} | {statistics.mean(f1):.3f} | {min(f1):.3f}-{max(f1):.3f} | {statistics.mean(small):.3f} | "
                     f"{len(f1)} | {statistics.median(r['best_epoch'] for r in mine):.0f} | "
                     f"{time_per_run(mine)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--slots", type=int, default=1, help="runs at a time")
    parser.add_argument("--workers", default="2", help="data-loader processes per run")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--deadline", type=float, default=None, help="start no run after this many seconds")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--table", action="store_true", help="print the table of the finished runs and stop")
    args = parser.parse_args()
    if not args.table:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        manifest = sample_manifest()
        small = small_val_copies(manifest)
        finished = {(r["row"], r["seed"]) for r in done(args.results)}
        jobs = [lambda n=name, s=seed: run(n, s, args, manifest, small)
                for name in args.only for seed in args.seeds if (name, seed) not in finished]
        in_parallel(jobs, args.slots, args.deadline)
    print(table(done(args.results)))


if __name__ == "__main__":
    main()
