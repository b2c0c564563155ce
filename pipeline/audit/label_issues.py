"""Which labels look wrong: cleanlab's label-issue ranking on out-of-sample probabilities.

A model's probabilities on images it trained on say little about their labels, so only images
it did not see are scored: the val and test splits with the given checkpoint, and with
``folds = K`` also the training images, each predicted by a model trained (with the
checkpoint's own configuration) on the other K-1 folds. Folds take whole near-duplicate groups,
so no frame is predicted by a model that trained on its twin.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import torch
import xxhash

from pipeline.engine import manifest as manifest_io
from pipeline.engine.manifest import Manifest
from pipeline.engine.schema import Split
from pipeline.training.checkpoint import load_model
from pipeline.training.config import TrainConfig
from pipeline.training.inference import check_classes, pick_device, predict_rows, usable_rows
from pipeline.writers import write_json, write_parquet

log = logging.getLogger("simpsons.audit")


def probabilities(model, temperature: float, rows: pl.DataFrame, root: Path, classes: list[str], pre, workers: int,
                  device: str) -> np.ndarray:
    """Calibrated class probabilities for manifest rows (the checkpoint's eval preprocessing)."""
    (logits, *_), _ = predict_rows(model, rows, root, classes, pre, pick_device(device), workers=workers)
    return torch.softmax(logits / temperature, dim=1).numpy()


def fold_of(groups: pl.Series, folds: int) -> np.ndarray:
    """A fold per row, the same for every member of a near-duplicate group (seeded hashing)."""
    return np.array([xxhash.xxh64_intdigest(g.encode()) % folds for g in groups])


def cross_validated(manifest: Manifest, config: dict, folds: int, workers: int, device: str) -> tuple[pl.DataFrame, np.ndarray]:
    """Training rows and their probabilities, each from the fold model that did not train on it."""
    from pipeline.training.train import train

    df, stats = manifest.table, manifest.stats
    rows = manifest.rows(Split.TRAIN)
    fold = fold_of(rows["group"].fill_null(rows["path"]), folds)
    probs = np.zeros((len(rows), len(stats["classes"])), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="simpsons-folds-") as tmp:
        for k in range(folds):
            held = set(rows.filter(pl.Series(fold == k))["path"])
            folder = Path(tmp) / f"fold-{k}"
            held_out = df.with_columns(pl.when(pl.col("path").is_in(list(held))).then(pl.lit(Split.EXCLUDED))
                                       .otherwise(pl.col("split")).alias("split"))
            write_parquet(folder / manifest_io.MANIFEST, held_out)
            write_json(folder / manifest_io.STATS, stats)
            log.info("fold %d/%d: training on %d images, predicting %d", k + 1, folds, len(rows) - len(held), len(held))
            options = {k2: v for k2, v in config.items() if k2 in TrainConfig.__dataclass_fields__}
            train(replace(TrainConfig(**options), manifest=str(folder / manifest_io.MANIFEST), out=str(folder / "run")))
            model, ckpt = load_model(folder / "run" / "best.pt")
            mask = fold == k
            probs[mask] = probabilities(model, ckpt.calibration.temperature, rows.filter(pl.Series(mask)),
                                        manifest.data_root(config.get("data_root")), ckpt.classes, ckpt.preprocessing,
                                        workers, device)
    return rows, probs


def find(manifest: Manifest, checkpoint: Path, folds: int, workers: int, device: str) -> tuple[pl.DataFrame, list]:
    """(label issues, most likely first; misclassified test images as (path, true label,
    [(class, probability)] x 3))."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    model, ckpt = load_model(checkpoint)
    classes = manifest.classes
    check_classes(ckpt.classes, manifest, checkpoint)
    root = manifest.data_root(ckpt.config.get("data_root"))
    parts = []
    for split in (Split.VAL, Split.TEST):
        rows = usable_rows(manifest, split, classes)
        if len(rows):
            parts.append((rows, probabilities(model, ckpt.calibration.temperature, rows, root, classes, ckpt.preprocessing,
                                              workers, device)))
    if folds >= 2:
        parts.append(cross_validated(manifest, ckpt.config, folds, workers, device))
    rows = pl.concat([r.select("path", "split", "label") for r, _ in parts])
    probs = np.concatenate([p for _, p in parts])
    labels = np.array([classes.index(label) for label in rows["label"]])
    quality = get_label_quality_scores(labels, probs)
    ranked = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence")
    guess = probs.argmax(1)
    issues = rows.with_columns(
        pl.Series("suggested", [classes[i] for i in guess]),
        pl.Series("suggested_probability", probs.max(1).astype(np.float64)),
        pl.Series("label_quality", quality.astype(np.float64)),
    )[ranked.tolist()]
    test = rows.with_row_index().filter((pl.col("split") == Split.TEST))
    order = np.argsort(-probs, axis=1)[:, :3]
    misclassified = [(p, label, [(classes[j], float(probs[i, j])) for j in order[i]])
                     for i, p, label in test.select("index", "path", "label").iter_rows() if guess[i] != labels[i]]
    log.info("%d label issue(s) among %d out-of-sample images; %d misclassified test images",
             len(issues), len(rows), len(misclassified))
    return issues, misclassified
