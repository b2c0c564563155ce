"""Tiny ONNX models built directly (no training): the runtime's tests do not depend on a
training run, and can plant every kind of wrong model.

The network averages each colour channel of the normalised image and multiplies by a matrix,
so ``EASY_CLASSES`` (a red, a green and a blue class) are told apart by colour; the open-set
score is minus the largest logit, so a grey picture (no dominant colour) scores high.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime.metadata import FEATURES, INPUT_NAME, LOGITS, OOD_SCORE, ModelInfo, Preprocessing, encode
from tests.conftest import EASY_CLASSES

PRE = Preprocessing.for_size(16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def network(classes: int = 3, input_shape=("N", 3, 16, 16), outputs=(LOGITS, FEATURES, OOD_SCORE), input_name: str = INPUT_NAME) -> onnx.ModelProto:
    weight = np.zeros((3, classes), np.float32)
    for i in range(min(3, classes)):
        weight[i, i] = 4.0
    weight -= weight.mean(axis=1, keepdims=True)  # a channel above the others raises its class
    n = helper.make_node
    nodes = [
        n("GlobalAveragePool", [input_name], ["pooled"]),
        n("Flatten", ["pooled"], ["flat"]),
        n("MatMul", ["flat", "weight"], [LOGITS]),
        n("LpNormalization", ["flat"], [FEATURES], axis=1, p=2),
        n("ReduceMax", [LOGITS, "axis1"], ["top"], keepdims=0),
        n("Neg", ["top"], [OOD_SCORE]),
    ]
    shapes = {LOGITS: ["N", classes], FEATURES: ["N", 3], OOD_SCORE: ["N"]}
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shapes[name]) for name in outputs],
        initializer=[numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(np.array([1], np.int64), "axis1")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def info(classes=EASY_CLASSES, **changes) -> ModelInfo:
    base = ModelInfo(classes=tuple(classes), preprocessing=PRE, arch="tiny", config_hash="0", ood_score="max_logit")
    return ModelInfo(**{**base.__dict__, **changes})


def save(model: onnx.ModelProto, path: Path, props: dict[str, str] | None) -> Path:
    """Write ``model`` with ``props`` as metadata (None: no metadata at all)."""
    del model.metadata_props[:]
    for key, value in (props or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def plain(path: Path, **changes) -> Path:
    """A well-formed plain model (float32 input) with our metadata."""
    return save(network(), path, encode(info(**changes)))
