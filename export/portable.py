"""The portable model: decoded pixels in, calibrated probabilities out, nothing else to know.

An exported network (input ``image``, float32 NCHW, normalised) gets a preprocessing graph in
front and temperature + softmax behind, in plain ONNX operators (opset 18), so any runtime
that can run ONNX (onnxruntime for the web, Node, Java, C#...) classifies from an RGB uint8
``[N, H, W, 3]`` array of any size:

    Resize (uint8, channels last: shorter side to resize_size, antialiased, as Pillow) -> centre
    crop (torchvision's rounding) -> Cast -> NCHW -> (x / 255 - mean) / std -> network ->
    logits / T -> Softmax

The resize targets follow ``runtime.preprocess.resized_size`` in integer arithmetic, the crop
offsets its round-half-to-even, so the graph and the Python runtime see the same pixels up to
rounding at the borders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime.errors import SimpsonsError
from runtime.metadata import FEATURES, INPUT_NAME, LOGITS, OOD_SCORE, PROBABILITIES, Preprocessing

NETWORK_INPUT = "preprocessed"  # the network's old input, now fed by the preprocessing graph
RESIZE_MODES = {"bilinear": {"mode": "linear"}, "bicubic": {"mode": "cubic", "cubic_coeff_a": -0.5}}  # Pillow's a


class PortableError(SimpsonsError):
    """The preprocessing cannot be expressed in the graph."""


def _const(name: str, value, dtype=np.int64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def preprocessing_nodes(p: Preprocessing) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes from the uint8 ``image`` to the float32 ``NETWORK_INPUT``, and their constants."""
    if p.interpolation not in RESIZE_MODES:
        raise PortableError(f"--portable: interpolation {p.interpolation!r} has no ONNX Resize equivalent here "
                            f"(supported: {', '.join(RESIZE_MODES)})")
    mean, std = np.asarray(p.mean, np.float32), np.asarray(p.std, np.float32)
    constants = [
        _const("pre/S", [p.resize_size]), _const("pre/C", [p.image_size]), _const("pre/two", 2.0, np.float32),
        _const("pre/i0", [0]), _const("pre/i1", [1]), _const("pre/i2", [2]), _const("pre/i3", [3]), _const("pre/i4", [4]),
        _const("pre/axes", [1, 2]),
        _const("pre/scale", (1.0 / (255.0 * std)).reshape(1, 3, 1, 1), np.float32),
        _const("pre/shift", (-mean / std).reshape(1, 3, 1, 1), np.float32),
    ]
    n = helper.make_node
    nodes = [
        n("Shape", [INPUT_NAME], ["pre/shape"]),
        n("Slice", ["pre/shape", "pre/i0", "pre/i1"], ["pre/n"]),
        n("Slice", ["pre/shape", "pre/i1", "pre/i2"], ["pre/h"]),
        n("Slice", ["pre/shape", "pre/i2", "pre/i3"], ["pre/w"]),
        n("Slice", ["pre/shape", "pre/i3", "pre/i4"], ["pre/c"]),
        # shorter side to S, the other floor(S * other / shorter), as resized_size()
        n("LessOrEqual", ["pre/w", "pre/h"], ["pre/portrait"]),
        n("Mul", ["pre/S", "pre/h"], ["pre/Sh"]),
        n("Mul", ["pre/S", "pre/w"], ["pre/Sw"]),
        n("Div", ["pre/Sh", "pre/w"], ["pre/Sh_w"]),
        n("Div", ["pre/Sw", "pre/h"], ["pre/Sw_h"]),
        n("Where", ["pre/portrait", "pre/Sh_w", "pre/S"], ["pre/new_h"]),
        n("Where", ["pre/portrait", "pre/S", "pre/Sw_h"], ["pre/new_w"]),
        n("Concat", ["pre/n", "pre/new_h", "pre/new_w", "pre/c"], ["pre/sizes"], axis=0),
        # The uint8 pixels resized as decoded (channels last), rounded to 8 bits as Pillow does.
        # On uint8 because WebGPU has no antialiased Resize: onnxruntime-web leaves this node
        # to the CPU (its GPU kernels take floats), and runs the rest on the GPU.
        n("Resize", [INPUT_NAME, "", "", "pre/sizes"], ["pre/pixels"], antialias=1,
          coordinate_transformation_mode="half_pixel", nearest_mode="floor", **RESIZE_MODES[p.interpolation]),
        # centre crop: offsets round((new - C) / 2), half to even as Python's round()
        n("Concat", ["pre/new_h", "pre/new_w"], ["pre/new_hw"], axis=0),
        n("Sub", ["pre/new_hw", "pre/C"], ["pre/spare"]),
        n("Cast", ["pre/spare"], ["pre/spare_f"], to=TensorProto.FLOAT),
        n("Div", ["pre/spare_f", "pre/two"], ["pre/half"]),
        n("Round", ["pre/half"], ["pre/start_f"]),
        n("Cast", ["pre/start_f"], ["pre/start"], to=TensorProto.INT64),
        n("Add", ["pre/start", "pre/C"], ["pre/end"]),
        n("Slice", ["pre/pixels", "pre/start", "pre/end", "pre/axes"], ["pre/crop"]),
        n("Cast", ["pre/crop"], ["pre/float"], to=TensorProto.FLOAT),
        n("Transpose", ["pre/float"], ["pre/nchw"], perm=[0, 3, 1, 2]),
        n("Mul", ["pre/nchw", "pre/scale"], ["pre/scaled"]),
        n("Add", ["pre/scaled", "pre/shift"], [NETWORK_INPUT]),
    ]
    return nodes, constants


def make_portable(network: Path, out: Path, p: Preprocessing, temperature: float) -> None:
    """Write ``out``: ``network`` (a plain export, fp32 or int8) wrapped for uint8 pixels,
    with outputs ``probabilities`` [N, C] (calibrated), ``ood_score`` [N] and ``features``."""
    model = onnx.load(str(network))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 18:
        raise PortableError(f"--portable: {network.name} uses ONNX opset {opset}; the antialiased Resize needs 18 or newer")
    graph = model.graph
    for node in graph.node:
        node.input[:] = [NETWORK_INPUT if name == INPUT_NAME else name for name in node.input]
    nodes, constants = preprocessing_nodes(p)
    tail = [
        helper.make_node("Div", [LOGITS, "post/temperature"], ["post/scaled"]),
        helper.make_node("Softmax", ["post/scaled"], [PROBABILITIES], axis=1),
    ]
    constants.append(_const("post/temperature", temperature, np.float32))
    old_outputs = {o.name: o for o in graph.output}
    dims = old_outputs[LOGITS].type.tensor_type.shape.dim
    classes = dims[1].dim_value if len(dims) == 2 and dims[1].dim_value else "C"
    probabilities = helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["N", classes])
    image = helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["N", "H", "W", 3])

    nodes_all = nodes + list(graph.node) + tail
    del graph.node[:]
    graph.node.extend(nodes_all)
    graph.initializer.extend(constants)
    del graph.input[:]
    graph.input.append(image)
    del graph.output[:]
    graph.output.extend([probabilities] + [old_outputs[k] for k in (OOD_SCORE, FEATURES) if k in old_outputs])
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
