"""Do EfficientNet-Lite's ImageNet features transfer to Simpsons frames? A linear probe.

Penultimate features (1280-D) of every real frame, at 224 px (shorter side to 256, bicubic,
centre crop 224, normalised as the weights expect: (x - 127) / 128), from the pretrained
network and from the same network randomly initialised; then a logistic regression on a
stratified 85/15 split (seed 0). Printed: val accuracy and macro-F1 of each, and the mean and
spread of the accuracy over 10 such splits (seeds 0-9): one split's 170 frames move it by
several points. With ``--padding``, a third row runs the pretrained weights with PyTorch's
symmetric padding instead of TF "SAME" on the strided convs.

    .venv/bin/python bench/bench_lite_probe.py [SAMPLE] [--arch efficientnet_lite0] [--padding]

Lite0 on the 1,128-frame sample: ImageNet 0.800 accuracy / 0.802 macro-F1 (0.834 +- 0.031
over 10 splits), random init 0.541 / 0.533 (0.509 +- 0.024); symmetric padding 0.837 +- 0.032
over 10 splits: this probe cannot tell the paddings apart.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import SAMPLE

from pipeline.training.efficientnet_lite import MEAN, STD, SameConv2d, build_efficientnet_lite, lite_archs
from pipeline.training.model import split_head
from runtime.metadata import Preprocessing
from runtime.preprocess import preprocess


SPLITS = 10


def symmetric(self: SameConv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, self.weight, self.bias, self.stride, [k // 2 for k in self.kernel_size], 1, self.groups)


def features(bodies: dict, paths: list[Path], pre: Preprocessing, batch: int = 32) -> dict:
    """Each body's features of every frame; each picture is decoded once for all bodies."""
    out: dict[str, list[np.ndarray]] = {name: [] for name in bodies}
    seconds = dict.fromkeys(bodies, 0.0)
    same = SameConv2d.forward
    with torch.inference_mode():
        for start in range(0, len(paths), batch):
            x = torch.from_numpy(np.stack([preprocess(p, pre) for p in paths[start : start + batch]]))
            for name, (body, padding) in bodies.items():
                SameConv2d.forward = symmetric if padding == "symmetric" else same
                t = time.perf_counter()
                out[name].append(body(x).numpy())
                seconds[name] += time.perf_counter() - t
    SameConv2d.forward = same
    return {name: (np.concatenate(parts), seconds[name]) for name, parts in out.items()}


def probe(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.15, stratify=y, random_state=seed)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(x_train, y_train)
    pred = clf.predict(x_val)
    return accuracy_score(y_val, pred), f1_score(y_val, pred, average="macro")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sample", nargs="?", type=Path, default=SAMPLE, help="folder holding simpsons_dataset/<class>/*.jpg")
    parser.add_argument("--arch", default="efficientnet_lite0", choices=lite_archs())
    parser.add_argument("--padding", action="store_true", help="add a row: ImageNet weights with symmetric padding")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)

    folders = sorted(p for p in (args.sample / "simpsons_dataset").iterdir() if p.is_dir())
    paths = [f for folder in folders for f in sorted(folder.glob("*.jpg"))]
    labels = np.array([p.parent.name for p in paths])
    if not paths:
        raise SystemExit(f"{args.sample}: no simpsons_dataset/<class>/*.jpg frames")
    pre = Preprocessing(image_size=224, resize_size=256, mean=MEAN, std=STD, interpolation="bicubic")

    pretrained = split_head(build_efficientnet_lite(args.arch, len(folders), pretrained=True).eval())[0]
    random_init = split_head(build_efficientnet_lite(args.arch, len(folders), pretrained=False).eval())[0]
    bodies = {"ImageNet (TF SAME padding)": (pretrained, "same"), "random init": (random_init, "same")}
    if args.padding:
        bodies["ImageNet, symmetric padding"] = (pretrained, "symmetric")
    start = time.perf_counter()
    feats = features(bodies, paths, pre)
    print(f"{args.arch}: {len(paths)} frames, {len(folders)} classes, 224 px; features in "
          f"{time.perf_counter() - start:.0f} s; logistic regression on a stratified 85/15 split (seed 0)\n")
    print("| weights | val accuracy | val macro-F1 | accuracy, 10 splits | forward s |\n|---|---|---|---|---|")
    for name, (x, seconds) in feats.items():
        acc, f1 = probe(x, labels)
        accs = [probe(x, labels, seed)[0] for seed in range(SPLITS)]
        print(f"| {name} | {acc:.4f} | {f1:.4f} | {np.mean(accs):.4f} ± {np.std(accs):.4f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
