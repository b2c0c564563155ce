"""Training-recipe ablation on real frames at a fixed budget: which options earn their place.

ResNet18 from scratch on the real sample's train split, final size 128 px, 12 epochs, no early
stopping; val macro-F1 of best.pt (after EMA/averaging where on) and wall time per run. Every
configuration runs with 3 seeds, seed by seed (all configurations with seed 0 first), each
result appended to bench/.work/recipe/results.jsonl as it lands; a rerun skips what is there,
and ``--table`` prints the table from whatever has finished.

    .venv/bin/python bench/bench_recipe.py [--seeds 0 1 2] [--only baseline ema]
    .venv/bin/python bench/bench_recipe.py --table
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time

from common import WORK, sample_manifest

BUDGET = {"arch": "resnet18", "weights": "none", "image_size": 128, "epochs": 12, "patience": 100}
# The scratch recipe before this ablation with every option off, spelled out so that its rows
# keep their meaning when the defaults change. "previous" is the recipe the issue measured (0.73);
# each other row adds one option to the baseline; the row equal to RECIPES["scratch"] is marked.
BASELINE = {"lr": 2e-3, "batch_size": 32, "weight_decay": 0.05, "warmup_epochs": 1.0, "label_smoothing": 0.1,
            "backbone_lr": 1.0, "augment": "none", "mixup": 0.0, "cutmix": 0.0, "random_erase": 0.0, "ema": 0.0, "progressive": 1.0,
            "eval_scale": 1.0, "average": 1}
CONFIGS = {
    "previous": {"lr": 1e-3, "batch_size": 64},
    "baseline": {},
    "ema": {"ema": 0.99},
    "trivialaugment": {"augment": "trivial"},
    "mixup+cutmix": {"mixup": 0.2, "cutmix": 1.0, "mix_epochs": 9},
    "random-erase": {"random_erase": 0.25},
    "progressive": {"progressive": 0.5},
    "eval-scale": {"eval_scale": 1.15},
    "average-3": {"average": 3},
    "previous+progressive": {"lr": 1e-3, "batch_size": 64, "progressive": 0.5},
}
RESULTS = WORK / "recipe" / "results.jsonl"


def done() -> list[dict]:
    return [json.loads(line) for line in RESULTS.read_text().splitlines()] if RESULTS.is_file() else []


def run(name: str, seed: int) -> dict:
    from pipeline.training.config import TrainConfig
    from pipeline.training.train import train

    out = WORK / "recipe" / f"{name}-{seed}"
    shutil.rmtree(out, ignore_errors=True)
    config = TrainConfig(manifest=str(sample_manifest()), out=str(out), seed=seed, **BUDGET, **{**BASELINE, **CONFIGS[name]})
    start = time.perf_counter()
    best = train(config)
    return {"config": name, "seed": seed, "val_macro_f1": best["f1"], "seconds": time.perf_counter() - start,
            "options": CONFIGS[name]}


def table(rows: list[dict]) -> str:
    from pipeline.training.config import RECIPES

    lines = ["| configuration | options | val macro-F1, mean | spread (min-max) | seeds | time per run (median) | time vs previous |",
             "|---|---|---|---|---|---|---|"]
    base = [r["seconds"] for r in rows if r["config"] == "previous"]  # the "today"
    for name in CONFIGS:
        mine = [r for r in rows if r["config"] == name]
        if not mine:
            continue
        f1 = [r["val_macro_f1"] for r in mine]
        seconds = statistics.median(r["seconds"] for r in mine)  # a run beside another job would skew a mean
        ratio = f"{seconds / statistics.median(base):.2f}x" if base else ""
        options = ", ".join(f"{k}={v}" for k, v in CONFIGS[name].items()) or "lr=0.002, batch_size=32, every option off"
        if {**BASELINE, **CONFIGS[name]} == {**BASELINE, **RECIPES["scratch"]}:
            name = f"**{name}: the defaults**"
        lines.append(f"| {name} | {options} | {statistics.mean(f1):.3f} | {min(f1):.3f}-{max(f1):.3f} | {len(f1)} | "
                     f"{seconds:.0f} s | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--table", action="store_true", help="print the table of the finished runs and stop")
    args = parser.parse_args()
    if not args.table:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            for name in args.only:
                if any(r["config"] == name and r["seed"] == seed for r in done()):
                    continue
                result = run(name, seed)
                with RESULTS.open("a") as f:
                    f.write(json.dumps(result) + "\n")
                print(f"{name} seed {seed}: val macro-F1 {result['val_macro_f1']:.3f} in {result['seconds']:.0f}s", flush=True)
    print(table(done()))


if __name__ == "__main__":
    main()
