"""Score a checkpoint on a manifest split and write the report a person reads.

``report.json`` and ``report.md`` (the reference write-up's table, calibration, and with
``--unknown DIR`` how well the unknown verdict works), ``confusion.png``, ``reliability.png``,
``predictions.png`` (a picture grid, errors in red) and ``predictions.csv``. Every probability
shown is calibrated (the checkpoint's temperature).
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import torch

from pipeline import figures
from pipeline.engine.manifest import read as read_manifest
from pipeline.engine.schema import on_disk
from pipeline.training import datasets
from pipeline.training.calibration import fit_report, ood_scores
from pipeline.training.checkpoint import load_model
from pipeline.training.config import EvalConfig
from pipeline.training.inference import check_classes, pick_device, predict, predict_rows, usable_rows
from pipeline.training.network import Network
from pipeline.training.presets import EvalPreset
from pipeline.writers import atomic_write, write_json
from runtime.errors import SimpsonsError
from runtime.listing import Listing
from runtime.metrics import classification_report, reliability, report_table
from runtime.openset import openset_report
from runtime.preprocess import load_image
from runtime.writers import spreadsheet_safe


class EvaluationError(SimpsonsError):
    """The evaluation cannot run as asked; the message says why."""


def grid_sample(true: list[str], pred: list[str], size: int, seed: int = 0) -> list[int]:
    """Up to half the grid shows errors, the rest correct predictions, in a seeded order."""
    order = list(range(len(true)))
    random.Random(seed).shuffle(order)
    wrong = [i for i in order if true[i] != pred[i]][: size // 2]
    right = [i for i in order if true[i] == pred[i]][: size - len(wrong)]
    return sorted(wrong + right)


def write_predictions_csv(path: Path, paths: list[str], true: list[str], probs: np.ndarray, ood: np.ndarray, classes: list[str]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["path", "true", "predicted", "confidence", "ood_score", "correct"])
            for p, t, row, score in zip(paths, true, probs, ood):
                k = int(row.argmax())
                names = map(spreadsheet_safe, (p, t, classes[k]))  # a file or class named "=cmd|..." stays text
                out.writerow([*names, f"{row[k]:.5f}", f"{score:.5f}", int(classes[k] == t)])

    atomic_write(path, write)


def unknown_images(folder: Path) -> list[str]:
    """Every image file under ``folder``: pictures of characters outside the classes."""
    if not folder.is_dir():
        raise EvaluationError(f"--unknown {folder}: no such folder")
    files = [str(p) for p in Listing([folder])]  # walked as simpsons-infer walks its input
    if not files:
        raise EvaluationError(f"--unknown {folder}: no image files found")
    return files


def openset_section(known: dict[str, torch.Tensor], unknown: dict[str, torch.Tensor], shipped: str,
                    threshold: float | None, folder: Path) -> dict:
    """Each candidate score's separation of known and unknown images; the shipped one also at
    the checkpoint's stored threshold."""
    scores = {
        name: openset_report(known[name].numpy(), unknown[name].numpy(), threshold if name == shipped else None)
        for name in known
    }
    return {"folder": str(folder), "shipped": shipped, "scores": scores}


def openset_table(section: dict) -> str:
    lines = ["| score | AUROC | FPR at 95% known accepted | known accepted at threshold | unknown rejected at threshold |",
             "|---|---|---|---|---|"]
    for name, r in section["scores"].items():
        mark = " (shipped)" if name == section["shipped"] else ""
        at = f"{r['known_accepted']:.1%} | {r['unknown_rejected']:.1%}" if r.get("threshold") is not None else " | "
        lines.append(f"| {name}{mark} | {r['auroc']:.3f} | {r['fpr_at_95_known']:.3f} | {at} |")
    return "\n".join(lines)


def markdown(report: dict, arch: str, checkpoint: Path) -> str:
    c = report["calibration"]
    text = (f"# {report['split']} report: {arch} ({checkpoint})\n\n{report_table(report)}\n\n"
            f"Calibration (temperature {c['temperature']:.3f}): NLL {c['nll_before']:.3f} -> {c['nll_after']:.3f}, "
            f"ECE (15 bins) {c['ece_before']:.3f} -> {c['ece_after']:.3f}\n")
    if "unknown" in report:
        u = report["unknown"]
        shipped = u["scores"][u["shipped"]]
        threshold = "no stored threshold" if shipped["threshold"] is None else f"stored threshold {shipped['threshold']:.4g}"
        text += (f"\nUnknown verdict: {shipped['unknown_images']} images from {u['folder']} against "
                 f"{shipped['known_images']} known {report['split']} images ({threshold})\n\n{openset_table(u)}\n")
    return text


def evaluate_checkpoint(config: EvalConfig) -> dict:
    """Score the checkpoint on one split and write the report, figures and predictions, with
    the configuration beside them."""
    model, ckpt = load_model(config.checkpoint)
    classes, pre, calibration = ckpt.classes, ckpt.preprocessing, ckpt.calibration
    manifest = read_manifest(config.manifest)
    check_classes(classes, manifest, config.checkpoint)
    root = manifest.data_root(config.data_root)
    rows = usable_rows(manifest, config.split, classes)
    if not len(rows):
        raise EvaluationError(f"{config.manifest}: no usable {config.split!r} images with a class the model knows")
    extra = unknown_images(config.unknown) if config.unknown else []
    dev = pick_device(config.device)
    network = Network(model, calibration, len(classes))
    (logits, features, ood), targets = predict_rows(network, rows, root, classes, pre, dev, config.batch_size, config.workers,
                                                    tta=config.tta)
    probs = torch.softmax(logits / calibration.temperature, 1).numpy()
    true = [classes[i] for i in targets.tolist()]
    pred = [classes[i] for i in probs.argmax(1).tolist()]
    report = classification_report(true, pred, classes)
    report.update(split=config.split, checkpoint=str(config.checkpoint), tta=config.tta, classes=classes)
    report["calibration"] = {"temperature": calibration.temperature, **fit_report(logits, targets, calibration.temperature)}
    if extra:
        unlabelled = datasets.UnlabelledDataset(extra, EvalPreset(pre), (3, pre.image_size, pre.image_size))
        (u_logits, u_features, _), u_targets = predict(network, datasets.loader(unlabelled, config.batch_size, config.workers), dev,
                                                       tta=config.tta)
        read = u_targets != datasets.SKIPPED
        if not read.any():
            raise EvaluationError(f"--unknown {config.unknown}: none of its {len(extra)} image files could be read")
        u_logits, u_features = u_logits[read], u_features[read]
        report["unknown"] = openset_section(ood_scores(logits, features, calibration), ood_scores(u_logits, u_features, calibration),
                                            calibration.ood_score, calibration.ood_threshold, config.unknown)

    out, split = config.out, config.split
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", report)
    atomic_write(out / "report.md", lambda tmp: tmp.write_text(markdown(report, ckpt.arch, config.checkpoint)))
    write_json(out / "config.json", config.to_dict())
    write_predictions_csv(out / "predictions.csv", rows["path"].to_list(), true, probs, ood.numpy(), classes)
    present = [i for i, c in enumerate(classes) if c in report["per_class"]]
    matrix = np.array(report["confusion_matrix"])[np.ix_(present, present)]
    figures.save(figures.confusion_figure(matrix, [classes[i] for i in present], f"{split}: confusion"), out / "confusion.png")
    before = reliability(torch.softmax(logits, 1).numpy(), targets.numpy())
    figure = figures.reliability_figure(before, reliability(probs, targets.numpy()), f"{split}: reliability", calibration.temperature)
    figures.save(figure, out / "reliability.png")
    shown = grid_sample(true, pred, config.grid)
    paths = [on_disk(root, p) for p in rows["path"]]
    images = [np.asarray(load_image(paths[i], min_size=160)) for i in shown]
    figures.save(figures.prediction_grid(images, [true[i] for i in shown], [pred[i] for i in shown]), out / "predictions.png")
    return report
