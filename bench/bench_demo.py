"""Which start serves ``make demo`` better: ResNet18 from scratch (today's demo) or
EfficientNet-Lite0 fine-tuned from its ImageNet weights, on the demo's own data (``simpsons synth``
with the Makefile's DEMO_SYNTH) and its far-from-Simpsons unknowns (``demo/data/unknown``).

Per start: training wall time, test macro-F1 (the 252 small test images) and the unknown
verdict's AUROC per score, from ``simpsons evaluate --unknown``. The starts train one after
the other on the same manifest, so their times compare only on an otherwise idle machine.

    .venv/bin/python bench/bench_demo.py [--starts resnet18-scratch lite0-imagenet]
"""

from __future__ import annotations

import argparse
import json

from common import WORK, simpsons

SYNTH = ("--per-class", "50", "--unknown", "120")  # the Makefile's DEMO_SYNTH
STARTS = {
    "resnet18-scratch": ("--arch", "resnet18", "--weights", "none", "--epochs", "12", "--image-size", "64", "--progressive", "1"),
    "lite0-imagenet": ("--arch", "efficientnet_lite0", "--weights", "imagenet", "--epochs", "12", "--image-size", "64"),
    "lite0-imagenet-80": ("--arch", "efficientnet_lite0", "--weights", "imagenet", "--epochs", "12", "--image-size", "80"),
    "lite0-imagenet-64-16ep": ("--arch", "efficientnet_lite0", "--weights", "imagenet", "--epochs", "16", "--image-size", "64"),
    "lite0-imagenet-72": ("--arch", "efficientnet_lite0", "--weights", "imagenet", "--epochs", "12", "--image-size", "72"),
    "lite0-imagenet-80-7ep": ("--arch", "efficientnet_lite0", "--weights", "imagenet", "--epochs", "7", "--image-size", "80"),
    "lite0-imagenet-80-9ep": ("--arch", "efficientnet_lite0", "--weights", "imagenet", "--epochs", "9", "--image-size", "80"),
    "lite0-imagenet-aug-none": ("--arch", "efficientnet_lite0", "--weights", "imagenet", "--epochs", "12", "--image-size", "64",
                                "--augment", "none"),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", nargs="+", default=["resnet18-scratch", "lite0-imagenet"], choices=list(STARTS))
    args = parser.parse_args()
    work = WORK / "demo"
    if not (work / "out" / "manifest.parquet").is_file():
        simpsons("synth", work / "data", *SYNTH)
        simpsons("manifest", work / "data", "--out", work / "out", "--no-plots")
    print("| start | train time | test macro-F1 | unknown AUROC per score (shipped in bold) |\n|---|---|---|---|")
    for name in args.starts:
        seconds = simpsons("train", "--manifest", work / "out" / "manifest.parquet", "--out", work / name, *STARTS[name])
        simpsons("evaluate", "--checkpoint", work / name / "best.pt", "--manifest", work / "out" / "manifest.parquet",
                 "--out", work / f"{name}-eval", "--unknown", work / "data" / "unknown")
        report = json.loads((work / f"{name}-eval" / "report.json").read_text())
        unknown = report["unknown"]
        scores = ", ".join(f"**{k} {s['auroc']:.3f}**" if k == unknown["shipped"] else f"{k} {s['auroc']:.3f}"
                           for k, s in unknown["scores"].items())
        print(f"| {name} | {seconds:.0f} s | {report['macro avg']['f1']:.3f} | {scores} |", flush=True)


if __name__ == "__main__":
    main()
