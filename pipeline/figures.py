"""Pictures for people: the confusion matrix and a grid of predictions (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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


def save(fig, path) -> None:
    from pipeline.io import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    pyplot().close(fig)
