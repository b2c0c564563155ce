"""Calibration and the unknown verdict on real frames: one class left out of training plays
every character the model has never seen.

For each left-out class: the other classes' frames form a data root (every 7th frame of each
becomes a test image, Kaggle-style), the left-out frames an ``unknown/`` folder; then
``simpsons manifest``, ``train`` (from scratch, or fine-tuned with ``--weights imagenet``),
``evaluate --split test --unknown``; the left-out classes run ``--slots`` at a time. Printed:
val ECE/NLL before and after temperature scaling (from the calibration stored in best.pt),
test ECE, and for every candidate score AUROC, FPR at 95% known acceptance and, for the
shipped score, the shares accepted and rejected at the stored threshold; last, per score, the
mean and worst AUROC and FPR over the left-out classes. ``--feature-scores`` adds the AUROC and
FPR of scores the graph does not ship (nearest training features, prototypes at other settings, Mahalanobis, energy over
shaped activations: ReAct, ASH-S), from the same runs' features, ``--tta`` with each output
averaged over the mirrored image. ``--recalibrate`` fits the calibration of runs trained earlier again, with this code's shipped
score (``simpsons calibrate``). ``--copies`` adds the verdict on test-style copies of the test
and left-out frames (a third the size, saved again as JPEG: as the real test set holds frames).
``--ensemble-with TAG`` adds two networks together: these
runs and those of ``--tag TAG`` (the same left-out classes, another seed), their energies
averaged and their calibrated probabilities averaged (maximum softmax), from the kept outputs.

    .venv/bin/python bench/bench_openset.py [--leave-out lisa_simpson abraham_grampa_simpson]
    .venv/bin/python bench/bench_openset.py --leave-out all --arch efficientnet_lite0 --weights imagenet
    .venv/bin/python bench/bench_openset.py --leave-out all --arch efficientnet_lite0 --weights imagenet --epochs 8 \
        --train-args "--backbone-lr 1" --tag backbone-1 --feature-scores [--tta]
    .venv/bin/python bench/bench_openset.py --leave-out all --arch efficientnet_lite0 --weights imagenet --epochs 12 \
        --image-size 160 --tag recipe-160 --ensemble-with recipe-160-seed1
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from common import WORK, in_parallel, require_sample, simpsons

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


def work_folder(left_out: str, args) -> Path:
    return WORK / f"openset-{args.arch}-{args.weights}{'-' + args.tag if args.tag else ''}-{left_out}"


def one(sample: Path, left_out: str, args) -> dict:
    """Data root, manifest, training (kept for a rerun), evaluation; the result is also appended
    to ``--results``."""
    work = work_folder(left_out, args)
    make_root(sample, left_out, work / "data")
    simpsons("manifest", work / "data", "--out", work / "out", "--no-plots")
    if (work / "run" / "best.pt").is_file() and args.recalibrate:
        simpsons("calibrate", work / "run", "--device", args.device)
    if not (work / "run" / "best.pt").is_file():
        simpsons("train", "--manifest", work / "out" / "manifest.parquet", "--out", work / "run", "--arch", args.arch,
                 "--weights", args.weights, "--image-size", args.image_size, "--epochs", args.epochs,
                 "--workers", args.workers, "--device", args.device, *args.train_args.split())
    simpsons("evaluate", "--checkpoint", work / "run" / "best.pt", "--manifest", work / "out" / "manifest.parquet",
             "--split", "test", "--out", work / "eval", "--unknown", work / "data" / "unknown", "--workers", args.workers,
             "--device", args.device)
    import torch

    fit = torch.load(work / "run" / "best.pt", weights_only=True)["calibration"]["fit"]
    report = json.loads((work / "eval" / "report.json").read_text())
    result = {"left_out": left_out, "arch": args.arch, "weights": args.weights, "train_args": args.train_args, "fit": fit, "report": report,
              "ece_floor": ece_floor(work / "eval" / "predictions.csv")}
    if args.results:
        with args.results.open("a") as f:
            f.write(json.dumps(result) + "\n")
    return result


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


def outputs(work: Path, tta: bool) -> tuple[dict[str, tuple], float, tuple]:
    """(logits, raw penultimate features, raw embedding, targets) of a finished run's best.pt on
    its train, val and test rows and on the left-out frames, as numpy arrays (kept beside the
    run: computing them is most of the cost); its temperature; its head's weight and bias. The
    embedding is where the shipped distances measure (``model.split_embedding``)."""
    import numpy as np
    import torch
    from torch import nn

    from pipeline.engine.manifest import read as read_manifest
    from pipeline.training import datasets
    from pipeline.training.checkpoint import load_model
    from pipeline.training.evaluate import unknown_images
    from pipeline.training.inference import predict, predict_rows, usable_rows
    from pipeline.training.model import pooled, split_embedding
    from pipeline.training.presets import EvalPreset

    class Outputs(nn.Module):
        def __init__(self, model: nn.Module):
            super().__init__()
            self.trunk, self.neck, self.head, _ = split_embedding(model)

        def forward(self, image):
            inner = self.trunk(image)
            raw = self.neck(inner)
            return self.head(raw), raw, pooled(inner)

    model, ckpt = load_model(work / "run" / "best.pt")
    network = Outputs(model)
    head = (network.head.weight.detach().numpy(), network.head.bias.detach().numpy())
    names, cache = ("train", "val", "test", "unknown"), work / f"outputs{'-tta' if tta else ''}.npz"
    if cache.is_file() and cache.stat().st_mtime >= (work / "run" / "best.pt").stat().st_mtime:  # not from an earlier training
        kept = np.load(cache)
        if all(f"{name}_3" in kept for name in names):  # not from a version without the embedding
            return {name: tuple(kept[f"{name}_{i}"] for i in range(4)) for name in names}, ckpt.calibration.temperature, head
    manifest, pre, cpu = read_manifest(work / "out" / "manifest.parquet"), ckpt.preprocessing, torch.device("cpu")
    found = {split: predict_rows(network, usable_rows(manifest, split, ckpt.classes), manifest.data_root(None), ckpt.classes, pre,
                                 cpu, tta=tta) for split in ("train", "val", "test")}
    unknown = datasets.UnlabelledDataset(unknown_images(work / "data" / "unknown"), EvalPreset(pre), (3, pre.image_size, pre.image_size))
    found["unknown"] = predict(network, datasets.loader(unknown, 64, 2), cpu, tta=tta)
    found = {name: (*(o.numpy() for o in out), targets.numpy()) for name, (out, targets) in found.items()}
    np.savez(cache, **{f"{name}_{i}": a for name, arrays in found.items() for i, a in enumerate(arrays)})
    return found, ckpt.calibration.temperature, head


def energy(logits, temperature: float):
    """The free energy of numpy logits, as the graph computes it (``runtime.openset.SCORES``)."""
    import numpy as np

    return -temperature * np.log(np.exp(logits / temperature).sum(1))


def auroc_and_fpr(known, unknown) -> tuple[float, float]:
    """AUROC and FPR at 95% known accepted of a score on known and unknown frames."""
    from runtime.openset import openset_report

    report = openset_report(known, unknown, None)
    return report["auroc"], report["fpr_at_95_known"]


def feature_scores(work: Path, tta: bool) -> dict[str, tuple[float, float]]:
    """AUROC and FPR at 95% known accepted of scores the graph does not ship, beside energy and
    cosine: the distance to the nearest training features (deep k-NN, Sun et al. 2022: k = 1, 5),
    to the nearest training prototype as calibration builds them (``prototype_space``, from the
    frames alone: the shipped ones add test-style copies) at other counts and dimensions and over
    the penultimate features instead of the embedding, cosine over features centred on the
    training features' mean (one more graph op), the Mahalanobis distance to the nearest class
    mean (shared Ledoit-Wolf covariance, Lee et al. 2018), energy plus a distance (each
    standardised on val), and energy over shaped activations, which would ship as a few graph
    ops: ReAct (penultimate features clipped at the 90th percentile of the training ones, Sun et
    al. 2021) and ASH-S (each picture's top 10% of them kept and rescaled, Djurisic et al. 2023).
    The distances use the graph's L2-normalised embedding unless said."""
    import numpy as np
    import torch
    from sklearn.covariance import LedoitWolf

    from pipeline.training.calibration import PROTOTYPE_DIMS, PROTOTYPES_PER_CLASS, prototype_space
    from pipeline.training.network import project

    def unit(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    kept, temperature, (weight, bias) = outputs(work, tta)
    inputs = {name: {"logits": lg, "features": unit(emb), "embedding": emb, "penultimate": pen} for name, (lg, pen, emb, _) in kept.items()}
    train, labels = inputs["train"]["features"], kept["train"][3]
    classes = range(kept["train"][0].shape[1])
    means = np.stack([train[labels == c].mean(0) for c in classes])
    precision = LedoitWolf().fit(train - means[labels]).precision_
    centre = inputs["train"]["embedding"].mean(0)
    centred_means = np.stack([unit(inputs["train"]["embedding"] - centre)[labels == c].mean(0) for c in classes])
    clip = np.percentile(inputs["train"]["penultimate"], 90)

    def nearest(features, bank, k=1):
        return 1 - np.sort(features @ unit(bank).T, axis=1)[:, -k:].mean(1)

    def ash_s(raw, keep=0.1):
        cut = np.sort(raw, axis=1)[:, [-max(1, int(keep * raw.shape[1]))]]
        kept = np.where(raw >= cut, raw, 0)
        return kept * np.exp(raw.sum(1, keepdims=True) / kept.sum(1, keepdims=True))

    def prototypes(per_class=PROTOTYPES_PER_CLASS, dims=PROTOTYPE_DIMS, over="embedding"):
        space = prototype_space(torch.from_numpy(inputs["train"][over]), torch.from_numpy(labels), len(classes), per_class, dims)
        return lambda x: 1 - (project(torch.from_numpy(unit(x[over])), space[0]) @ space[1].T).amax(dim=1).numpy()

    rules = {
        "energy": lambda x: energy(x["logits"], temperature),
        "cosine": lambda x: nearest(x["features"], means),
        "1-NN": lambda x: nearest(x["features"], train),
        "5-NN": lambda x: nearest(x["features"], train, 5),
        f"nearest prototype ({PROTOTYPES_PER_CLASS} a class, {PROTOTYPE_DIMS} dimensions, frames only)": prototypes(),
        "nearest prototype, 16 a class": prototypes(per_class=16),
        f"nearest prototype, {PROTOTYPE_DIMS // 2} dimensions": prototypes(dims=PROTOTYPE_DIMS // 2),
        "nearest prototype over the penultimate features": prototypes(over="penultimate"),
        "cosine, centred features": lambda x: nearest(unit(x["embedding"] - centre), centred_means),
        "Mahalanobis": lambda x: np.min([np.einsum("ij,jk,ik->i", x["features"] - m, precision, x["features"] - m) for m in means], axis=0),
        "energy, ReAct p90": lambda x: energy(np.minimum(x["penultimate"], clip) @ weight.T + bias, temperature),
        "energy, ASH-S p90": lambda x: energy(ash_s(x["penultimate"]) @ weight.T + bias, temperature),
    }

    def standardised(rule):
        val = rule(inputs["val"])
        return lambda x: (rule(x) - val.mean()) / val.std()

    energy_z = standardised(rules["energy"])
    for name in [n for n in rules if n == "1-NN" or n.startswith("nearest prototype")]:
        rules[f"energy + {name}"] = lambda x, distance=standardised(rules[name]): energy_z(x) + distance(x)
    return {name: auroc_and_fpr(rule(inputs["test"]), rule(inputs["unknown"])) for name, rule in rules.items()}


def copy_scores(work: Path) -> dict[str, tuple[float, ...]]:
    """Per score (energy and the shipped one): known test accepted and left-out rejected at the
    stored threshold's rule (95% of val accepted) and AUROC, on the frames and on test-style
    copies of them (a third the size, JPEG quality 75: how the real test set holds frames)."""
    import torch

    from pipeline.engine.manifest import read as read_manifest
    from pipeline.engine.schema import Split
    from pipeline.training import datasets
    from pipeline.training.calibration import ood_scores
    from pipeline.training.checkpoint import load_model
    from pipeline.training.evaluate import unknown_images
    from pipeline.training.inference import predict, predict_rows
    from pipeline.training.network import Network
    from pipeline.training.presets import EvalPreset
    from pipeline.training.train import SHRUNK_COPIES
    from runtime.openset import auroc, choose_threshold

    model, ckpt = load_model(work / "run" / "best.pt")
    cal, pre, cpu = ckpt.calibration, ckpt.preprocessing, torch.device("cpu")
    network, manifest, frames = Network(model, cal, len(ckpt.classes)).eval(), read_manifest(work / "out" / "manifest.parquet"), unknown_images(work / "data" / "unknown")

    def scores(split: Split | None, shrink: float = 1.0) -> dict:
        if split is None:
            unknown = datasets.UnlabelledDataset(frames, EvalPreset(pre, shrink), (3, pre.image_size, pre.image_size))
            (logits, features, _), _ = predict(network, datasets.loader(unknown, 64, 2), cpu)
        else:
            (logits, features, _), _ = predict_rows(network, manifest.rows(split), manifest.data_root(None), ckpt.classes, pre, cpu, shrink=shrink)
        return {k: v.numpy() for k, v in ood_scores(logits, features, cal).items()}

    val = scores(Split.VAL)
    sets = {f"{kind}{tag}": scores(split, shrink) for kind, split in (("known", Split.TEST), ("unknown", None))
            for tag, shrink in (("", 1.0), (" copies", SHRUNK_COPIES))}
    found = {}
    for name in ("energy", cal.ood_score):
        t = choose_threshold(val[name])
        found[name] = tuple(v for tag in ("", " copies") for v in ((sets["known" + tag][name] <= t).mean(), (sets["unknown" + tag][name] > t).mean(),
                                                                    auroc(sets["known" + tag][name], sets["unknown" + tag][name])))
    return found


def print_copy_scores(works: dict[str, Path]) -> None:
    table = {left_out: copy_scores(work) for left_out, work in works.items()}
    print("\n## Frames and test-style copies (a third the size, JPEG 75): known accepted, left-out rejected at 95% of val, AUROC")
    print("| score | known accepted | left-out rejected | AUROC | on copies: known accepted | left-out rejected | AUROC |\n|---|---|---|---|---|---|---|")
    for name in next(iter(table.values())):
        means = [statistics.mean(table[c][name][i] for c in table) for i in range(6)]
        print(f"| {name} | " + " | ".join(f"{m:.3f}" for m in means) + " |")


def print_feature_scores(works: dict[str, Path], tta: bool) -> None:
    table = {left_out: feature_scores(work, tta) for left_out, work in works.items()}
    print_table("AUROC and FPR at 95% known accepted of scores over the features"
                f"{' (test-time flip: outputs averaged with the mirrored image)' if tta else ''}", table)


def ensemble_scores(works: tuple[Path, Path]) -> dict[str, tuple[float, float]]:
    """AUROC and FPR at 95% known accepted of each network's energy and of the two together."""
    import numpy as np

    from runtime.classifier import softmax

    members = [outputs(work, tta=False) for work in works]
    if any(not np.array_equal(members[0][0][split][3], m[0][split][3]) for m in members for split in ("test", "unknown")):
        raise SystemExit(f"{works[0]} and {works[1]} did not score the same frames")

    rules = {
        "energy, first network": lambda split: energy(members[0][0][split][0], members[0][1]),
        "energy, second network": lambda split: energy(members[1][0][split][0], members[1][1]),
        "energy, mean of the two": lambda split: np.mean([energy(m[0][split][0], m[1]) for m in members], axis=0),
        "msp of the mean probabilities": lambda split: -np.mean([softmax(m[0][split][0] / m[1]) for m in members], axis=0).max(1),
    }
    return {name: auroc_and_fpr(rule("test"), rule("unknown")) for name, rule in rules.items()}


def print_table(title: str, table: dict[str, dict[str, tuple[float, float]]]) -> None:
    """Per score: AUROC per left-out class, mean and worst, and the FPR at 95% known's mean and worst."""
    names = list(next(iter(table.values())))
    print(f"\n## {title}")
    print("| score | " + " | ".join(f"AUROC {c.split('_')[0]}" for c in table) + " | AUROC mean | worst | FPR at 95% known, mean | worst |\n|---|"
          + "---|" * (len(table) + 4))
    for name in names:
        auroc, fpr = ([table[c][name][i] for c in table] for i in (0, 1))
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in auroc) + f" | {statistics.mean(auroc):.3f} | {min(auroc):.3f} | "
              f"{statistics.mean(fpr):.3f} | {max(fpr):.3f} |")


def print_one(r: dict) -> None:
    fit, report, unknown = r["fit"], r["report"], r["report"]["unknown"]
    cal = report["calibration"]
    print(f"\n## left out: {r['left_out']} ({unknown['scores'][unknown['shipped']]['unknown_images']} unknown frames, "
          f"{report['num_samples']} known test frames, test macro-F1 {report['macro avg']['f1']:.3f})")
    print(f"val ({fit['val_images']} images): NLL {fit['nll_before']:.3f} -> {fit['nll_after']:.3f}, "
          f"ECE {fit['ece_before']:.3f} -> {fit['ece_after']:.3f}; test: NLL {cal['nll_before']:.3f} -> "
          f"{cal['nll_after']:.3f}, ECE {cal['ece_before']:.3f} -> {cal['ece_after']:.3f} (T = {cal['temperature']:.3f}); "
          f"ECE of a perfectly calibrated model on these test confidences: {r['ece_floor']:.3f}")
    print("| score | AUROC | FPR at 95% known accepted | known test accepted at threshold | unknown rejected at threshold |")
    print("|---|---|---|---|---|")
    for name, s in unknown["scores"].items():
        at = f"{s['known_accepted']:.1%} | {s['unknown_rejected']:.1%}" if s.get("threshold") is not None else " | "
        print(f"| {name}{' (shipped)' if name == unknown['shipped'] else ''} | {s['auroc']:.3f} | {s['fpr_at_95_known']:.3f} | {at} |")


def summary(results: list[dict]) -> str:
    """Per score: mean and worst AUROC and FPR at 95% known accepted over the left-out classes."""
    scores = results[0]["report"]["unknown"]["scores"]
    lines = [f"\n## {len(results)} left-out classes: {', '.join(r['left_out'] for r in results)}",
             "| score | AUROC mean | AUROC worst | FPR at 95% known, mean | FPR worst | test macro-F1 mean |", "|---|---|---|---|---|---|"]
    f1 = statistics.mean(r["report"]["macro avg"]["f1"] for r in results)
    for name in scores:
        auroc = [r["report"]["unknown"]["scores"][name]["auroc"] for r in results]
        fpr = [r["report"]["unknown"]["scores"][name]["fpr_at_95_known"] for r in results]
        lines.append(f"| {name} | {statistics.mean(auroc):.3f} | {min(auroc):.3f} | {statistics.mean(fpr):.3f} | {max(fpr):.3f} | {f1:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--leave-out", nargs="+", default=["lisa_simpson", "abraham_grampa_simpson"], help="class names, or all")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--weights", default="none", help="none (from scratch) or imagenet (fine-tuned)")
    parser.add_argument("--image-size", default="128")
    parser.add_argument("--epochs", default="12")
    parser.add_argument("--train-args", default="", help="extra `simpsons train` options")
    parser.add_argument("--slots", type=int, default=1, help="left-out classes at a time")
    parser.add_argument("--workers", default="2", help="data-loader processes per run")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--results", type=Path, default=None, help="append each result to this JSON Lines file")
    parser.add_argument("--tag", default="", help="names the work folders, so runs with other --train-args keep their own")
    parser.add_argument("--recalibrate", action="store_true", help="refit trained runs' calibration with this code first")
    parser.add_argument("--feature-scores", action="store_true", help="also: AUROC of scores over the features (k-NN, ...)")
    parser.add_argument("--copies", action="store_true", help="also: the verdict on test-style copies of the frames")
    parser.add_argument("--tta", action="store_true", help="with --feature-scores: average each output with the mirrored image's")
    parser.add_argument("--ensemble-with", metavar="TAG", help="also: these runs and those of --tag TAG as two networks together")
    args = parser.parse_args()
    sample = require_sample()
    left_out = sorted(p.name for p in (sample / "simpsons_dataset").iterdir()) if args.leave_out == ["all"] else args.leave_out
    other = argparse.Namespace(**{**vars(args), "tag": args.ensemble_with})
    missing = [c for c in left_out if args.ensemble_with and not (work_folder(c, other) / "run" / "best.pt").is_file()]
    if missing:
        parser.error(f"--ensemble-with {args.ensemble_with}: no trained run for {', '.join(missing)} (train them with --tag {args.ensemble_with})")
    results: dict[str, dict] = {}
    in_parallel([lambda c=c: results.update({c: one(sample, c, args)}) for c in left_out], args.slots)
    for c in left_out:
        if c in results:
            print_one(results[c])
    if results:
        print(summary([results[c] for c in left_out if c in results]))
    if args.feature_scores and results:
        print_feature_scores({c: work_folder(c, args) for c in left_out if c in results}, args.tta)
    if args.copies and results:
        print_copy_scores({c: work_folder(c, args) for c in left_out if c in results})
    if args.ensemble_with and results:
        print_table(f"Two networks: --tag {args.tag or '(none)'} and --tag {args.ensemble_with}",
                    {c: ensemble_scores((work_folder(c, args), work_folder(c, other))) for c in left_out if c in results})


if __name__ == "__main__":
    main()
