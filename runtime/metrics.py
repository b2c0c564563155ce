"""Classification metrics from two label lists: one implementation for training, evaluation
and ``simpsons-infer --evaluate``, numpy only so the runtime can use it.

The Kaggle test set covers only some classes, so averages run over the classes present in the
true labels and the absent ones are listed: an absent class has no recall to average.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted ones."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return matrix


def _safe_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def classification_report(
    y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str]
) -> dict:
    """Per-class precision/recall/F1/support, accuracy, macro and weighted averages over the
    classes present in ``y_true`` (as scikit-learn's ``labels=present``), absent classes listed."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({y for y in (*y_true, *y_pred) if y not in index})
    if unknown:
        raise ValueError(f"labels not among the classes: {', '.join(unknown[:5])}")
    t = np.array([index[y] for y in y_true], dtype=np.int64)
    p = np.array([index[y] for y in y_pred], dtype=np.int64)
    matrix = confusion_matrix(t, p, len(classes))
    tp = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    present = support > 0
    weights = support[present] / max(support.sum(), 1)

    def average(values: np.ndarray, weighted: bool) -> float:
        if not present.any():
            return 0.0
        return float((values[present] * weights).sum() if weighted else values[present].mean())

    return {
        "accuracy": float((t == p).mean()) if len(t) else 0.0,
        "num_samples": int(len(t)),
        "per_class": {
            c: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
            if present[i]
        },
        "macro avg": {k: average(v, False) for k, v in (("precision", precision), ("recall", recall), ("f1", f1))},
        "weighted avg": {k: average(v, True) for k, v in (("precision", precision), ("recall", recall), ("f1", f1))},
        "absent_classes": [c for i, c in enumerate(classes) if not present[i]],
        "confusion_matrix": matrix.tolist(),
    }


def report_table(report: dict) -> str:
    """The reference write-up's markdown table: one row per present class, then the averages."""
    lines = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name, m in report["per_class"].items():
        lines.append(f"| {name} | {m['precision']:.2f} | {m['recall']:.2f} | {m['f1']:.2f} | {m['support']} |")
    n = report["num_samples"]
    for avg in ("macro avg", "weighted avg"):
        m = report[avg]
        lines.append(f"| **{avg}** | {m['precision']:.2f} | {m['recall']:.2f} | {m['f1']:.2f} | {n} |")
    lines.append(f"| **accuracy** | | | {report['accuracy']:.2f} | {n} |")
    if report["absent_classes"]:
        lines.append("")
        lines.append(f"Absent from this split ({len(report['absent_classes'])}): " + ", ".join(report["absent_classes"]))
    return "\n".join(lines)


def negative_log_likelihood(probs: np.ndarray, targets: Sequence[int]) -> float:
    """Mean -log p(true class): what temperature scaling minimises."""
    probs, targets = np.asarray(probs, np.float64), np.asarray(targets, np.int64)
    if not len(targets):
        return float("nan")
    return float(-np.log(np.clip(probs[np.arange(len(targets)), targets], 1e-12, None)).mean())


def reliability(probs: np.ndarray, targets: Sequence[int], bins: int = 15) -> dict:
    """Expected calibration error over ``bins`` equal-width confidence bins, and the per-bin
    confidence, accuracy and count a reliability diagram draws."""
    probs, targets = np.asarray(probs, np.float64), np.asarray(targets, np.int64)
    confidence, correct = probs.max(axis=1), (probs.argmax(axis=1) == targets).astype(np.float64)
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)  # (lo, hi] bins
    count = np.bincount(which, minlength=bins).astype(np.float64)
    mean_conf = _safe_divide(np.bincount(which, weights=confidence, minlength=bins), count)
    accuracy = _safe_divide(np.bincount(which, weights=correct, minlength=bins), count)
    ece = float((count * np.abs(mean_conf - accuracy)).sum() / max(len(targets), 1))
    return {"ece": ece, "bins": bins, "confidence": mean_conf.tolist(), "accuracy": accuracy.tolist(), "count": count.astype(int).tolist()}
