"""Which start serves ``make demo`` better: ResNet18 from scratch (today's demo) or
EfficientNet-Lite0 fine-tuned from its ImageNet weights, on the demo's own data (``simpsons synth``
with the Makefile's DEMO_SYNTH) and its far-from-Simpsons unknowns (``demo/data/unknown``).

Per start: training wall time, test macro-F1 (the 252 small test images) and the unknown
verdict's AUROC per score, from ``simpsons evaluate --unknown``. The starts train one after
the other on the same manifest, so their times compare only on an otherwise idle machine.

    .venv/bin/python bench/bench_demo.py [--starts resnet18-scratch lite0-imagenet] [--seeds 0 1 2]

With several ``--seeds`` each start trains once a seed (the starts in turn within a seed, so a
slow hour touches them alike) and a last row per start gives the means.
"""

from __future__ import annotations

import argparse
import json
import statistics

from common import WORK, simpsons

SYNTH = ("--per-class", "50", "--unknown", "120")  # the Makefile's DEMO_SYNTH
STARTS = {
    "resnet18-scratch": ("--arch", "resnet18", "--weights", "none", "--epochs", "12", "--image-size", "64", "--progressive", "1"),
    "lite0-imagenet": ("--arch", "efficientnet_lite0", "--weights", "imagenet", "--epochs", "12", "--image-size", "64"),
    "lite0-imagenet-80": ("--arch", "efficientnet_lite0", "--weights", "imagenet", "--epochs", "12", "--image-size", "80"),
    "lite0-imagenet-64-16ep": ("--arch", "efficientnet_lite0", "--weights", "imagenet", "--epochs", "16", "--image-size", "64"),
    "lite0-imagenet-56-eval64-20ep": ("--arch", "efficientnet_lite0", "--weights", "imagenet", "--epochs", "20", "--image-size",
                                      "56", "--eval-scale", "1.15"),  # trains smaller, runs at 64 px (the Makefile's demo)
    "lite0-imagenet-72": ("--arch", "efficientnet_lite0", "--weights", "imagenet", "--epochs", "12", "--image-size", "72"),
    "lite0-imagenet-80-7ep": ("--arch", "efficientnet_lite0", "--weights", "imagenet", "--epochs", "7", "--image-size", "80"),
    "lite0-imagenet-80-9ep": ("--arch", "efficientnet_lite0", "--weights", "imagenet", "--epochs", "9", "--image-size", "80"),
    "lite0-imagenet-aug-none": ("--arch", "efficientnet_lite0", "--weights", "imagenet", "--epochs", "12", "--image-size", "64",
                                "--augment", "none"),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", nargs="+", default=["resnet18-scratch", "lite0-imagenet"], choices=list(STARTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    work = WORK / "demo"
    if not (work / "out" / "manifest.parquet").is_file():
        simpsons("synth", work / "data", *SYNTH)
        simpsons("manifest", work / "data", "--out", work / "out", "--no-plots")
    manifest = work / "out" / "manifest.parquet"
    print("| start | seed | train time | test macro-F1 | unknown AUROC per score (shipped in bold) |\n|---|---|---|---|---|")
    runs: dict[str, list[dict]] = {name: [] for name in args.starts}
    for seed in args.seeds:
        for name in args.starts:
            run = work / (name if seed == 0 else f"{name}-seed{seed}")
            evaluated = work / f"{run.name}-eval"
            seconds = simpsons("train", "--manifest", manifest, "--out", run, *STARTS[name], "--seed", seed)
            simpsons("evaluate", "--checkpoint", run / "best.pt", "--manifest", manifest, "--out", evaluated,
                     "--unknown", work / "data" / "unknown")
            report = json.loads((evaluated / "report.json").read_text())
            done = {"seconds": seconds, "f1": report["macro avg"]["f1"], "shipped": report["unknown"]["shipped"],
                    "aurocs": {k: s["auroc"] for k, s in report["unknown"]["scores"].items()}}
            runs[name].append(done)
            print(f"| {name} | {seed} | {seconds:.0f} s | {done['f1']:.3f} | {scores(done['aurocs'], done['shipped'])} |", flush=True)
    if len(args.seeds) > 1:
        for name, done in runs.items():
            f1 = [r["f1"] for r in done]
            means = {k: statistics.mean(r["aurocs"][k] for r in done) for k in done[0]["aurocs"]}
            print(f"| {name} | mean of {len(done)} | {statistics.mean(r['seconds'] for r in done):.0f} s | "
                  f"{statistics.mean(f1):.3f} ({min(f1):.3f}-{max(f1):.3f}) | {scores(means, done[0]['shipped'])} |")

def scores(aurocs: dict[str, float], shipped: str) -> str:
    return ", ".join(f"**{k} {a:.3f}**" if k == shipped else f"{k} {a:.3f}" for k, a in aurocs.items())


if __name__ == "__main__":
    main()
