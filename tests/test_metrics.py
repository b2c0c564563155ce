"""runtime.metrics against scikit-learn, on known predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from runtime.metrics import classification_report, report_table

CLASSES = ["bart", "homer", "lisa", "marge", "milhouse"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_report_equals_scikit_learn_over_present_classes(seed: int):
    rng = np.random.default_rng(seed)
    y_true = list(rng.choice(CLASSES[:4], size=60))  # milhouse never appears in the truth
    y_pred = [t if rng.random() < 0.6 else str(rng.choice(CLASSES)) for t in y_true]
    report = classification_report(y_true, y_pred, CLASSES)
    present = [c for c in CLASSES if c in y_true]
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=present, average=average, zero_division=0)
        assert report[f"{average} avg"] == pytest.approx({"precision": p, "recall": r, "f1": f})
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=present, zero_division=0)
    for i, c in enumerate(present):
        assert report["per_class"][c] == pytest.approx({"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]})
    assert report["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert report["absent_classes"] == ["milhouse"]


def test_table_lists_absent_classes():
    report = classification_report(["bart", "bart", "lisa"], ["bart", "lisa", "lisa"], CLASSES)
    table = report_table(report)
    assert "| bart | 1.00 | 0.50 | 0.67 | 2 |" in table
    assert "Absent from this split (3): homer, marge, milhouse" in table


def test_unknown_labels_are_an_error():
    with pytest.raises(ValueError, match="ned"):
        classification_report(["ned"], ["bart"], CLASSES)
