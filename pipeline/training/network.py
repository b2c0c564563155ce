"""The network as evaluation and export see it: ``image -> (logits, features, ood_score)``.

The open-set scores are post-hoc rules over what the network already computes (logits and its
embedding: ``model.split_embedding``); ``Network`` puts the chosen one into the graph as the
``ood_score`` output, so every consumer of the exported file computes the same number.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.training.checkpoint import Calibration, CheckpointError
from pipeline.training.model import pooled, split_embedding
from runtime.openset import SCORES

ScoreRule = Callable[[torch.Tensor, torch.Tensor, "ScoreConstants"], torch.Tensor]


class ScoreConstants(nn.Module):
    """What the scores need beyond the network's outputs, fitted at calibration, as buffers: they
    travel into the ONNX graph as constants. Absent ones are zeros (their scores are not offered)."""

    def __init__(self, calibration: Calibration, num_classes: int, dim: int):
        super().__init__()
        c = calibration
        self.register_buffer("temperature", torch.tensor(float(c.temperature)))
        self.register_buffer("centroids", (c.centroids if c.centroids is not None else torch.zeros(num_classes, dim)).float())
        space = c.prototypes is not None and c.projection is not None
        self.register_buffer("projection", (c.projection if space else torch.zeros(dim + 1, 1)).float())
        self.register_buffer("prototypes", (c.prototypes if space else torch.zeros(1, 1)).float())
        self.register_buffer("standardise", torch.tensor(c.standardise or (0.0, 1.0, 0.0, 1.0), dtype=torch.float32))


def _msp(logits, features, k):
    return 1 - torch.softmax(logits / k.temperature, dim=1).amax(dim=1)


def _max_logit(logits, features, k):
    return -logits.amax(dim=1)


def _energy(logits, features, k):
    return -k.temperature * torch.logsumexp(logits / k.temperature, dim=1)


def _cosine(logits, features, k):
    return 1 - (features @ k.centroids.T).amax(dim=1)


def project(features: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """Features in the training features' principal subspace (``calibration.prototype_space``),
    L2-normalised: where the prototypes live."""
    return F.normalize(features @ projection[:-1] + projection[-1], dim=1)


def prototype_distance(features: torch.Tensor, k: ScoreConstants) -> torch.Tensor:
    """1 - the cosine similarity to the nearest training prototype, of any class."""
    return 1 - (project(features, k.projection) @ k.prototypes.T).amax(dim=1)


def _energy_prototype(logits, features, k):
    """Energy says how sure the head is, the distance how far the picture lies from every training
    picture; a new character can fool one and not the other (BENCHMARKS.md, "Unknown verdict")."""
    energy, distance = _energy(logits, features, k), prototype_distance(features, k)
    return (energy - k.standardise[0]) / k.standardise[1] + (distance - k.standardise[2]) / k.standardise[3]


# (logits, L2-normalised features, constants) -> score, higher = less known. Names and ranges are
# runtime.openset.SCORES: the runtime checks thresholds against them.
SCORE_RULES: dict[str, ScoreRule] = {"msp": _msp, "max_logit": _max_logit, "energy": _energy, "cosine": _cosine,
                                     "energy_prototype": _energy_prototype}
assert SCORE_RULES.keys() == SCORES.keys()


def available(score: str, calibration: Calibration) -> bool:
    """Whether ``calibration`` holds what ``score`` needs."""
    if score == "cosine":
        return calibration.centroids is not None
    if score == "energy_prototype":
        return all(x is not None for x in (calibration.prototypes, calibration.projection, calibration.standardise))
    return True


class Network(nn.Module):
    """The classifier as evaluation and export see it: ``image -> (logits, features,
    ood_score)``, with the weights of the checkpoint and the constants of its calibration; the
    features are the L2-normalised embedding."""

    def __init__(self, model: nn.Module, calibration: Calibration, num_classes: int):
        super().__init__()
        self.trunk, self.neck, self.head, dim = split_embedding(model)
        fitted = calibration.feature_dim()
        if fitted not in (None, dim):
            raise CheckpointError(f"the calibration was fitted on {fitted} features, the network's embedding has {dim} "
                                  "(an older version's): run `simpsons calibrate RUN_DIR` to fit it again")
        self.constants = ScoreConstants(calibration, num_classes, dim)
        self.rule = SCORE_RULES[calibration.ood_score]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inner = self.trunk(image)
        logits = self.head(self.neck(inner))
        features = F.normalize(pooled(inner).float(), dim=1)
        return logits, features, self.rule(logits.float(), features, self.constants)
