"""Honest confidence and the "unknown" verdict, fitted after training.

Temperature scaling (Guo et al., 2017): one scalar T, fitted on the val split by minimising the
negative log-likelihood of ``softmax(logits / T)``; it changes no prediction, only how sure
each one claims to be. A val split classified without an error has no such minimum (the NLL
falls as T shrinks, to certainty on every picture, wrong ones included): then T is fitted on
test-style copies of the val images, which hold errors and look like the real test set; where
those too are all right, T makes the mean top-1 probability (n + 1) / (n + 2), Laplace's rule
of succession for n right answers and none wrong. The open-set scores (``network.SCORE_RULES``)
are post-hoc rules over what the network already computes; what they need from the training and
val images (class centroids, prototypes, a standardisation) and the threshold of the shipped one
are fitted here.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.training.checkpoint import Calibration
from pipeline.training.network import SCORE_RULES, ScoreConstants, available, project, prototype_distance
from runtime.metrics import negative_log_likelihood, reliability
from runtime.openset import threshold_for

TEMPERATURE_RANGE = (0.05, 20.0)
# Nearest-prototype distance: the training features projected onto their top PROTOTYPE_DIMS
# principal axes, each class summarised by up to PROTOTYPES_PER_CLASS k-means centres there. On the
# real sample (eighteen leave-one-out runs, energy plus the distance, prototypes from the frames:
# `bench/bench_openset.py --feature-scores`): 64 centres gave AUROC 0.860 against 0.865 for the
# distance to every training image (which the graph cannot carry for 42 classes), 16 centres
# 0.857; 256 dimensions 0.860, 128 0.858. BENCHMARKS.md, "Unknown verdict".
PROTOTYPES_PER_CLASS = 64
PROTOTYPE_DIMS = 256


def all_right(logits: torch.Tensor, targets: torch.Tensor) -> bool:
    return len(targets) > 0 and bool((logits.argmax(1) == targets).all())


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The T in ``TEMPERATURE_RANGE`` minimising the NLL: a golden-section search on log T (the
    NLL is unimodal in it), exact to 1e-4 and free of an optimiser's step size. Without an
    error the NLL has no minimum; then ``succession_temperature``."""
    if all_right(logits, targets):
        return succession_temperature(logits)
    logits, targets = logits.double(), targets.long()

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits / math.exp(log_t), targets))

    lo, hi, ratio = math.log(TEMPERATURE_RANGE[0]), math.log(TEMPERATURE_RANGE[1]), (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    while hi - lo > 1e-4:
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return math.exp((lo + hi) / 2)


def succession_temperature(logits: torch.Tensor) -> float:
    """The T in ``TEMPERATURE_RANGE`` at which the mean top-1 probability of n pictures, all
    classified right, is (n + 1) / (n + 2): as sure as n right answers and none wrong allow,
    no surer. A bisection on log T (the top-1 probability falls as T grows), exact to 1e-4."""
    logits, target = logits.double(), (len(logits) + 1) / (len(logits) + 2)

    def confidence(log_t: float) -> float:
        return float(torch.softmax(logits / math.exp(log_t), dim=1).amax(1).mean())

    lo, hi = math.log(TEMPERATURE_RANGE[0]), math.log(TEMPERATURE_RANGE[1])
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if confidence(mid) > target else (lo, mid)
    return math.exp((lo + hi) / 2)


def class_centroids(features: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The L2-normalised mean feature of each class (zeros for a class without images)."""
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64)
    sums.index_add_(0, targets.long(), features.double())
    return F.normalize(sums, dim=1).float()


def prototype_space(features: torch.Tensor, targets: torch.Tensor, num_classes: int,
                    per_class: int = PROTOTYPES_PER_CLASS, dims: int = PROTOTYPE_DIMS) -> tuple[torch.Tensor, torch.Tensor]:
    """The training set in a size a graph can carry, deterministic: a projection onto the top
    ``dims`` principal axes of the L2-normalised features ((D + 1) x d, the last row the offset
    that centres them) and up to ``per_class`` L2-normalised k-means centres of each class's
    projected features (a class with no more images keeps them all)."""
    from sklearn.cluster import KMeans

    features = F.normalize(features.double(), dim=1)
    centre = features.mean(dim=0)
    dims = max(1, min(dims, len(features) - 1, features.shape[1]))
    axes = torch.linalg.svd(features - centre, full_matrices=False).Vh[:dims].T  # D x d
    projection = torch.cat([axes, -(centre @ axes)[None]])
    projected, targets, found = project(features, projection).numpy(), targets.numpy(), []
    for c in range(num_classes):
        own = projected[targets == c]
        if len(own) > per_class:
            own = KMeans(per_class, n_init=3, random_state=0).fit(own).cluster_centers_
        found.append(torch.from_numpy(own))
    return projection.float(), F.normalize(torch.cat(found), dim=1).float()


def fit_report(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> dict:
    """NLL and expected calibration error (15 bins) before (T = 1) and after scaling."""
    out = {}
    for name, t in (("before", 1.0), ("after", temperature)):
        probs = torch.softmax(logits.double() / t, dim=1).numpy()
        out[f"nll_{name}"] = negative_log_likelihood(probs, targets.numpy())
        out[f"ece_{name}"] = reliability(probs, targets.numpy())["ece"]
    return out


def calibrate(
    val_logits: torch.Tensor, val_features: torch.Tensor, val_targets: torch.Tensor,
    train_features: torch.Tensor, train_targets: torch.Tensor, num_classes: int,
    score: str, accept_known: float, temperature_on: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[Calibration, list[str]]:
    """Temperature (fitted on ``temperature_on``'s logits and targets if given, else on val's),
    what every candidate score needs (kept whichever ships, so each can be evaluated and
    exported) and the threshold accepting ``accept_known`` of val, from the network's outputs;
    returns the calibration and the warnings a person should see."""
    fit_logits, fit_targets = temperature_on or (val_logits, val_targets)
    temperature = fit_temperature(fit_logits, fit_targets)
    projection, prototypes = prototype_space(train_features, train_targets, num_classes)
    calibration = Calibration(
        temperature=temperature, ood_score=score, accept_known=accept_known,
        centroids=class_centroids(train_features, train_targets, num_classes), projection=projection, prototypes=prototypes,
        fit={**fit_report(fit_logits, fit_targets, temperature), "val_images": len(val_targets),
             "temperature_on": "val" if temperature_on is None else "val copies",
             "temperature_by": "rule of succession" if all_right(fit_logits, fit_targets) else "nll"},
    )
    calibration = replace(calibration, standardise=standardisation(val_logits, val_features, calibration))
    calibration, warnings = with_threshold(calibration, ood_scores(val_logits, val_features, calibration)[score].numpy(), accept_known)
    if not TEMPERATURE_RANGE[0] * 1.01 < temperature < TEMPERATURE_RANGE[1] / 1.01:
        warnings.append(f"the temperature reached its bound ({temperature:.3g}): the val split is too small or too hard "
                        "to calibrate on (every image wrong, say), so confidences stay uncertain")
    return calibration, warnings


def standardisation(val_logits: torch.Tensor, val_features: torch.Tensor, calibration: Calibration) -> tuple[float, float, float, float]:
    """Mean and std of energy and of the nearest-prototype distance on val: summed as z-scores, each
    counts alike whatever its units."""
    k = ScoreConstants(calibration, val_logits.shape[1], val_features.shape[1])
    energy = SCORE_RULES["energy"](val_logits.float(), val_features.float(), k).double()
    distance = prototype_distance(val_features.float(), k).double()
    spread = [max(float(x.std()), 1e-6) if len(x) > 1 else 1.0 for x in (energy, distance)]
    return float(energy.mean()), spread[0], float(distance.mean()), spread[1]


def ood_scores(logits: torch.Tensor, features: torch.Tensor, calibration: Calibration) -> dict[str, torch.Tensor]:
    """Every candidate score for these outputs that the calibration holds what it needs for."""
    k = ScoreConstants(calibration, logits.shape[1], features.shape[1])
    return {name: rule(logits.float(), features.float(), k) for name, rule in SCORE_RULES.items() if available(name, calibration)}


def with_threshold(calibration: Calibration, known: np.ndarray, accept_known: float) -> tuple[Calibration, list[str]]:
    """The calibration with the threshold that accepts ``accept_known`` of the known scores,
    or without one (and a warning) when there are too few images to choose it."""
    threshold, problem = threshold_for(known, accept_known)
    return replace(calibration, ood_threshold=threshold, accept_known=accept_known), [problem] if problem else []
