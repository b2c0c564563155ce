"""Score a checkpoint on a manifest split and write the report a person reads.

``report.json`` and ``report.md`` (the reference write-up's table), ``confusion.png``,
``predictions.png`` (a picture grid, errors in red) and ``predictions.csv``.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import torch

from pipeline import data, figures, manifest as manifest_io
from pipeline.io import atomic_write, write_json
from pipeline.model import checkpoint_preprocessing, load_checkpoint
from pipeline.presets import EvalPreset
from pipeline.train import pick_device, predict
from runtime.metrics import classification_report, report_table
from runtime.preprocess import load_image


def grid_sample(true: list[str], pred: list[str], size: int, seed: int = 0) -> list[int]:
    """Up to half the grid shows errors, the rest correct predictions, in a seeded order."""
    order = list(range(len(true)))
    random.Random(seed).shuffle(order)
    wrong = [i for i in order if true[i] != pred[i]][: size // 2]
    right = [i for i in order if true[i] == pred[i]][: size - len(wrong)]
    return sorted(wrong + right)


def write_predictions_csv(path: Path, paths: list[str], true: list[str], probs: np.ndarray, classes: list[str]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["path", "true", "predicted", "confidence", "correct"])
            for p, t, row in zip(paths, true, probs):
                k = int(row.argmax())
                out.writerow([p, t, classes[k], f"{row[k]:.5f}", int(classes[k] == t)])

    atomic_write(path, write)


def evaluate_checkpoint(
    checkpoint: Path, manifest: Path, split: str, out: Path, tta: bool = False, batch_size: int = 64,
    workers: int = 2, device: str = "auto", data_root: str | None = None, grid: int = 36,
) -> dict:
    model, ckpt = load_checkpoint(checkpoint)
    classes, pre = ckpt["classes"], checkpoint_preprocessing(ckpt)
    table, stats = manifest_io.read(manifest)
    root = Path(data_root or stats["config"]["data_root"])
    rows = data.split_rows(table, split)
    rows = rows.filter(rows["label"].is_in(classes))
    if not len(rows):
        raise ValueError(f"{manifest}: no usable {split!r} images with a class the model knows")
    dataset = data.ManifestDataset(rows, root, classes, EvalPreset(pre))
    dev = pick_device(device, 0)
    logits, targets = predict(model.to(dev), data.loader(dataset, batch_size, workers), dev, tta=tta)
    probs = torch.softmax(logits, 1).numpy()
    true = [classes[i] for i in targets.tolist()]
    pred = [classes[i] for i in probs.argmax(1).tolist()]
    report = classification_report(true, pred, classes)
    report.update(split=split, checkpoint=str(checkpoint), tta=tta, classes=classes)

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", report)
    title = f"# {split} report: {ckpt['arch']} ({checkpoint})\n\n"
    atomic_write(out / "report.md", lambda tmp: tmp.write_text(title + report_table(report) + "\n"))
    write_predictions_csv(out / "predictions.csv", rows["path"].to_list(), true, probs, classes)
    present = [i for i, c in enumerate(classes) if c in report["per_class"]]
    matrix = np.array(report["confusion_matrix"])[np.ix_(present, present)]
    figures.save(figures.confusion_figure(matrix, [classes[i] for i in present], f"{split}: confusion"), out / "confusion.png")
    shown = grid_sample(true, pred, grid)
    images = [np.asarray(load_image(dataset.paths[i], min_size=160)) for i in shown]
    figures.save(figures.prediction_grid(images, [true[i] for i in shown], [pred[i] for i in shown]), out / "predictions.png")
    return report
