"""Where a label comes from in the Kaggle layout; shared by the data engine and ``--evaluate``."""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_TEST_NAME = re.compile(r"^(?P<label>.+?)_\d+$")


def label_from_test_name(path: str | Path) -> str | None:
    """``kaggle_simpson_testset/homer_simpson_12.jpg`` -> ``homer_simpson``."""
    match = _TEST_NAME.match(Path(path).stem)
    return match.group("label") if match else None


def label_from_path(path: str | Path, classes: Collection[str]) -> str | None:
    """A known class folder wins, then a ``<class>_<n>`` file name; None when neither applies."""
    path = Path(path)
    for parent in path.parents:
        if parent.name in classes:
            return parent.name
    label = label_from_test_name(path)
    return label if label in classes else None


def is_image_name(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES
