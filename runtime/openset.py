"""The "unknown" verdict: open-set scores, the threshold and how well they separate.

The score itself is computed inside the exported graph (output ``ood_score``; the rules are in
``pipeline.training.network``), so every consumer of the model file gets the same number. This module
holds what needs no network: each score's name and range, choosing the threshold on known
images, and the measures (AUROC, the false-positive rate at a known-acceptance rate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ACCEPT_KNOWN = 0.95  # default share of known val images the threshold accepts


@dataclass(frozen=True)
class Score:
    """An open-set score: higher means less like any known class."""

    description: str
    low: float = -math.inf  # the range a threshold can sensibly take
    high: float = math.inf


SCORES = {
    "msp": Score("1 - the calibrated top-1 probability (maximum softmax probability)", 0.0, 1.0),
    "max_logit": Score("minus the largest logit"),
    "energy": Score("the free energy -T * logsumexp(logits / T)"),
    "cosine": Score("1 - the cosine similarity of the embedding to the nearest class mean", 0.0, 2.0),
    "energy_prototype": Score("energy plus the cosine distance to the nearest training prototype, each standardised on val"),
}


def check_threshold(score: str | None, threshold: float) -> str | None:
    """Why ``threshold`` cannot be used with ``score``, or None when it can."""
    if not math.isfinite(threshold):
        return f"the unknown threshold must be a finite number, got {threshold}"
    rule = SCORES.get(score or "")
    if rule and not rule.low <= threshold <= rule.high:
        return f"unknown threshold {threshold} is outside the {score} score's range [{rule.low}, {rule.high}]"
    return None


def min_known_images(accept_known: float) -> int:
    """Fewest known images that make an ``accept_known`` quantile mean something: at least two
    images beyond the quantile, and never fewer than 20."""
    return max(20, math.ceil(2 / (1 - accept_known)))


def choose_threshold(known: np.ndarray, accept_known: float = ACCEPT_KNOWN) -> float:
    """The smallest threshold that accepts (score <= threshold) at least ``accept_known`` of
    the known images' scores."""
    if not 0 < accept_known < 1:
        raise ValueError(f"accept_known must be in (0, 1), got {accept_known}")
    ordered = np.sort(np.asarray(known, dtype=np.float64))
    if not len(ordered):
        raise ValueError("no known images to choose a threshold on")
    return float(ordered[min(len(ordered) - 1, math.ceil(accept_known * len(ordered)) - 1)])


def threshold_for(known: np.ndarray, accept_known: float) -> tuple[float | None, str | None]:
    """The threshold for these known scores, or None and the reason there are too few."""
    needed = min_known_images(accept_known)
    if len(known) < needed:
        return None, (f"only {len(known)} val images: too few to choose an unknown threshold accepting "
                      f"{accept_known:.0%} of known images (needs {needed}); no unknown verdicts unless a threshold is given")
    return choose_threshold(known, accept_known), None


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """Probability that an unknown image scores above a known one (ties count half): the area
    under the ROC curve, from ranks (Mann-Whitney U), no curve needed."""
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    if not len(known) or not len(unknown):
        return float("nan")
    scores = np.concatenate([known, unknown])
    order = scores.argsort(kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]  # average rank within ties
    u = ranks[len(known):].sum() - len(unknown) * (len(unknown) + 1) / 2
    return float(u / (len(known) * len(unknown)))


def openset_report(known: np.ndarray, unknown: np.ndarray, threshold: float | None, accept_known: float = ACCEPT_KNOWN) -> dict:
    """How one score separates known from unknown images: AUROC, the share of unknown images
    accepted when ``accept_known`` of the known are (FPR), and both shares at ``threshold``."""
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    at_accept = choose_threshold(known, accept_known)
    report = {
        "known_images": int(len(known)),
        "unknown_images": int(len(unknown)),
        "auroc": auroc(known, unknown),
        f"fpr_at_{round(accept_known * 100)}_known": float((unknown <= at_accept).mean()),
        "threshold": threshold,
    }
    if threshold is not None:
        report["known_accepted"] = float((known <= threshold).mean())
        report["unknown_rejected"] = float((unknown > threshold).mean())
    return report
