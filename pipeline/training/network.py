"""The network as evaluation and export see it: ``image -> (logits, features, ood_score)``.

The open-set scores are post-hoc rules over what the network already computes (logits and
penultimate features); ``Network`` puts the chosen one into the graph as the ``ood_score``
output, so every consumer of the exported file computes the same number.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.training.checkpoint import Calibration
from pipeline.training.model import split_head
from runtime.openset import SCORES

ScoreRule = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _msp(logits, features, temperature, centroids):
    return 1 - torch.softmax(logits / temperature, dim=1).amax(dim=1)


def _max_logit(logits, features, temperature, centroids):
    return -logits.amax(dim=1)


def _energy(logits, features, temperature, centroids):
    return -temperature * torch.logsumexp(logits / temperature, dim=1)


def _cosine(logits, features, temperature, centroids):
    return 1 - (features @ centroids.T).amax(dim=1)


# (logits, L2-normalised features, temperature, class centroids) -> score, higher = less known.
# Names and ranges are runtime.openset.SCORES: the runtime checks thresholds against them.
SCORE_RULES: dict[str, ScoreRule] = {"msp": _msp, "max_logit": _max_logit, "energy": _energy, "cosine": _cosine}
assert SCORE_RULES.keys() == SCORES.keys()


def needs_centroids(score: str) -> bool:
    return score == "cosine"


class Network(nn.Module):
    """The classifier as evaluation and export see it: ``image -> (logits, features,
    ood_score)``. The weights are the checkpoint's; temperature and centroids are buffers, so
    they travel into the ONNX graph as constants."""

    def __init__(self, model: nn.Module, calibration: Calibration, num_classes: int):
        super().__init__()
        self.body, self.head = split_head(model)
        centroids = calibration.centroids
        if centroids is None:
            centroids = torch.zeros(num_classes, self.head.in_features)
        self.register_buffer("temperature", torch.tensor(float(calibration.temperature)))
        self.register_buffer("centroids", centroids.float())
        self.rule = SCORE_RULES[calibration.ood_score]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raw = self.body(image)
        logits = self.head(raw)
        features = F.normalize(raw.float(), dim=1)
        return logits, features, self.rule(logits.float(), features, self.temperature, self.centroids)
