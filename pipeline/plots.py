"""Class-distribution bar charts, as in the reference write-up."""

from __future__ import annotations

from pathlib import Path

from pipeline import figures

CHARTS = {"classes_trainval.png": ("train", "val"), "classes_test.png": ("test",)}  # file -> splits


def class_distribution(counts: dict[str, dict[str, int]], classes: list[str], out_dir: Path) -> list[Path]:
    """``classes_trainval.png`` (train and val stacked) and ``classes_test.png``."""
    plt = figures.pyplot()
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
        figures.save(fig, out_dir / name)
        written.append(out_dir / name)
    return written
