"""Pictures for people (matplotlib, headless): the data engine's class-distribution charts, and
evaluation's confusion matrix, reliability diagram and grid of predictions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.writers import atomic_write

CHARTS = {"classes_trainval.png": ("train", "val"), "classes_test.png": ("test",)}  # file -> splits


def pyplot():
    """matplotlib, headless, imported only when a picture is drawn (it costs half a second)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_figure(matrix: np.ndarray, classes: Sequence[str], title: str = "Confusion matrix"):
    """Row-normalised (recall on the diagonal), counts written in the cells that hold any."""
    plt = pyplot()
    matrix = np.asarray(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    norm = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    size = max(4.0, 0.28 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=90, fontsize=6)
    ax.set_yticks(ticks, classes, fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for (i, j), n in np.ndenumerate(matrix):
        if n:
            ax.text(j, i, str(n), ha="center", va="center", fontsize=5, color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    return fig


def prediction_grid(images: Sequence[np.ndarray], true: Sequence[str], predicted: Sequence[str], columns: int = 6):
    """Thumbnails titled 'predicted (true)'; errors in red, as in the reference's picture grid."""
    plt = pyplot()
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 2.0, rows * 2.3), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, t, p in zip(axes.ravel(), images, true, predicted):
        ax.imshow(img)
        ok = t == p
        ax.set_title(p if ok else f"{p}\n(true: {t})", fontsize=7, color="green" if ok else "red")
    fig.tight_layout()
    return fig


def reliability_figure(before: dict, after: dict, title: str = "Reliability", temperature: float | None = None):
    """Two reliability diagrams (runtime.metrics.reliability), before and after temperature
    scaling: per confidence bin, the accuracy (bars) and the gap to the bin's mean confidence
    (red); a calibrated model's bars reach the diagonal. Bin counts sit under the bars."""
    plt = pyplot()
    bins = before["bins"]
    edges = np.linspace(0, 1, bins + 1)[:-1]
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 4.8), sharey=True)
    after_name = f"after temperature scaling (T = {temperature:.2f})" if temperature else "after temperature scaling"
    for ax, result, name in ((axes[0], before, "before (T = 1)"), (axes[1], after, after_name)):
        count, accuracy, confidence = (np.array(result[k]) for k in ("count", "accuracy", "confidence"))
        shown = count > 0
        ax.bar(edges[shown], accuracy[shown], width=1 / bins, align="edge", color="tab:blue", edgecolor="white", label="accuracy")
        ax.bar(edges[shown], confidence[shown] - accuracy[shown], bottom=accuracy[shown], width=1 / bins, align="edge",
               fill=False, hatch="///", edgecolor="tab:red", linewidth=0.8, label="gap to mean confidence")
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        for x, n in zip(edges[shown], count[shown]):
            ax.text(x + 0.5 / bins, 0.01, str(n), ha="center", va="bottom", fontsize=6, color="white")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-1 probability)")
        ax.set_title(f"{name}\nECE {result['ece']:.3f}", fontsize=10)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(f"{title}: {sum(after['count'])} images, {bins} bins", fontsize=11)
    fig.tight_layout()
    return fig


def save(fig, path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    pyplot().close(fig)


def class_distribution(counts: dict[str, dict[str, int]], classes: list[str], out_dir: Path) -> list[Path]:
    """``classes_trainval.png`` (train and val stacked) and ``classes_test.png``."""
    plt = pyplot()
    written = []
    for name, splits in CHARTS.items():
        fig, ax = plt.subplots(figsize=(8, max(3.0, 0.22 * len(classes) + 1)))
        left = [0] * len(classes)
        for split in splits:
            values = [counts[split].get(c, 0) for c in classes]
            ax.barh(classes, values, left=left, label=split)
            left = [a + b for a, b in zip(left, values)]
        for y, total in enumerate(left):
            ax.text(total, y, f" {total}", va="center", fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("images")
        ax.set_title(f"Images per class: {' + '.join(splits)} ({sum(left)} in all)")
        ax.tick_params(axis="y", labelsize=7)
        ax.legend(loc="lower right")
        fig.tight_layout()
        save(fig, out_dir / name)
        written.append(out_dir / name)
    return written
