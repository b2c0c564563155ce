"""Smaller and faster variants of an exported fp32 model: static int8 (CPU) and float16 (GPU).

int8 is onnxruntime's static QDQ quantisation, per-channel weights, min-max calibrated on
training images. Networks with depthwise convs (EfficientNet-Lite, MobileNet) need two more
steps to stay close to fp32: a float stem and bias correction (measured in BENCHMARKS.md,
"EfficientNet-Lite0 int8").
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path

import numpy as np

from pipeline.writers import atomic_write
from runtime.metadata import FEATURES, INPUT_NAME, LOGITS, OOD_SCORE


BIAS_CORRECTION_BATCHES = 8  # calibration batches whose means drive the bias correction


def _groups(node) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def float_stem(model) -> list[str]:
    """The nodes int8 keeps in float: where the second Conv is depthwise (MobileNet, EfficientNet,
    ConvNeXt), every node up to and including it; none otherwise (ResNet, ...). That depthwise
    conv has large kernels summing to ~0 (edge detectors with batch norm folded in): int8
    rounding leaves each a sum error of up to 0.3, an offset on every flat region of the frame,
    most of EfficientNet-Lite0's int8 error. Only a prefix of the graph can stay float:
    onnxruntime's WeightBiasQuantization re-quantises, per tensor, the weights of any float Conv
    fed by a DequantizeLinear when the model loads, so excluding a conv in the middle of the
    graph makes it worse."""
    nodes = list(model.graph.node)
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    if len(convs) < 2 or _groups(nodes[convs[1]]) == 1:
        return []
    return [n.name for n in nodes[: convs[1] + 1]]


def open_set_tail(model) -> list[str]:
    """The nodes int8 keeps in float: those computing the features' normalisation and the open-set
    score from the network's outputs. Under 1% of the network's multiply-adds, where rounding
    the distances to the training prototypes to 8 bits would move the unknown verdict."""
    producer = {o: n for n in model.graph.node for o in n.output}

    def ancestors(output: str) -> set[str]:
        found, todo = set(), [output]
        while todo:
            node = producer.get(todo.pop())
            if node is not None and node.name not in found:
                found.add(node.name)
                todo.extend(node.input)
        return found

    network = ancestors(LOGITS)
    return sorted((ancestors(OOD_SCORE) | ancestors(FEATURES)) - network)


def int8_weights_only(model, nodes: Collection[str], min_size: int = 4096) -> None:
    """Store the large float constants that ``nodes`` read (the open-set tail's projection and
    prototypes: as large as the int8 network itself) as int8, one scale a column, dequantised in
    the graph: a quarter of the bytes, while the computation stays float. Rounding them alone
    leaves the score as it was (unlike rounding the activations too)."""
    from onnx import helper, numpy_helper

    inits, nodes = {i.name: i for i in model.graph.initializer}, set(nodes)
    wanted = {name for n in model.graph.node if n.name in nodes for name in n.input
              if name in inits and np.prod(inits[name].dims) >= min_size}
    for position, name in enumerate(sorted(wanted)):
        w = numpy_helper.to_array(inits[name]).astype(np.float32)
        scale = np.abs(w).max(axis=tuple(range(w.ndim - 1))) / 127
        scale = np.where(scale > 0, scale, 1).astype(np.float32)
        model.graph.initializer.remove(inits[name])
        model.graph.initializer.extend([
            numpy_helper.from_array(np.clip(np.round(w / scale), -127, 127).astype(np.int8), f"{name}_int8"),
            numpy_helper.from_array(scale, f"{name}_scale"),
            numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{name}_zero_point"),
        ])
        model.graph.node.insert(position, helper.make_node(
            "DequantizeLinear", [f"{name}_int8", f"{name}_scale", f"{name}_zero_point"], [name], axis=w.ndim - 1))


def correct_biases(model, calibration: Iterable[np.ndarray], skip: Collection[str] = ()) -> None:
    """Bias correction (Nagel et al., 2019, "Data-free quantization"): subtract from each Conv's
    bias the mean error its int8 weights (per-channel symmetric, rounded as onnxruntime rounds
    them) add to its output, from the mean of its input per channel over ``calibration``."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.name not in skip
             and n.input[1] in inits and len(inits[n.input[1]].dims) == 4]
    inputs = sorted({n.input[0] for n in convs})
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.initializer.append(numpy_helper.from_array(np.array([0, 2, 3], dtype=np.int64), "bias_correction_axes"))
    axes_input = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18
    for i, name in enumerate(inputs):  # per-channel means in the graph: the outputs stay small
        probe.graph.node.append(
            helper.make_node("ReduceMean", [name, "bias_correction_axes"], [f"bias_correction_mean_{i}"], keepdims=0) if axes_input
            else helper.make_node("ReduceMean", [name], [f"bias_correction_mean_{i}"], keepdims=0, axes=[0, 2, 3]))
        probe.graph.output.append(helper.make_tensor_value_info(f"bias_correction_mean_{i}", onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = [f"bias_correction_mean_{i}" for i in range(len(inputs))]
    sums, images = [0.0] * len(inputs), 0
    for batch in calibration:
        sums = [s + len(batch) * m.astype(np.float64) for s, m in zip(sums, session.run(outputs, {INPUT_NAME: batch}))]
        images += len(batch)
    means = {name: s / images for name, s in zip(inputs, sums)}
    for node in convs:
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)  # out, in / groups, kh, kw
        scale = np.abs(w).max(axis=tuple(range(1, w.ndim)), keepdims=True) / 127
        error = np.clip(np.round(w / np.where(scale > 0, scale, 1)), -127, 127) * scale - w
        out, per_group = w.shape[:2]
        mean_in = means[node.input[0]].reshape(-1, per_group)[np.arange(out) // (out // _groups(node))]
        delta = (error.reshape(out, per_group, -1).sum(axis=2) * mean_in).sum(axis=1)
        if len(node.input) > 2 and node.input[2]:
            bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
            inits[node.input[2]].CopyFrom(numpy_helper.from_array((bias - delta).astype(np.float32), node.input[2]))
        else:
            name = f"{node.input[1]}_corrected_bias"
            model.graph.initializer.append(numpy_helper.from_array((-delta).astype(np.float32), name))
            if len(node.input) > 2:
                node.input[2] = name
            else:
                node.input.append(name)


def quantize_int8(fp32: Path, out: Path, calibration: Callable[[], Iterator[np.ndarray]]) -> None:
    """Static QDQ quantisation, per-channel int8 weights, min-max calibrated on the batches
    ``calibration()`` yields, after onnxruntime's pre-processing (the shape inference and graph
    optimisation that quantisation expects). Networks with depthwise convs keep their stem float
    (``float_stem``) and have their biases corrected for the int8 weights' rounding
    (``correct_biases``, on the first ``BIAS_CORRECTION_BATCHES`` batches: ``calibration`` is
    then called twice): EfficientNet-Lite0's top-1 agreement with fp32 went from 94% to 98.5%. The
    open-set score stays float (``open_set_tail``)."""
    import itertools

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = calibration()

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        for i, node in enumerate(model.graph.node):  # nodes_to_exclude goes by name; inlined functions have none
            node.name = node.name or f"{node.op_type}_{i}"
        stem, tail = float_stem(model), open_set_tail(model)
        if any(n.op_type == "Conv" and _groups(n) > 1 for n in model.graph.node):  # ResNets: no gain, left as they were
            correct_biases(model, itertools.islice(calibration(), BIAS_CORRECTION_BATCHES), skip=stem)
        onnx.save(model, str(prepared))
        quantized = Path(tmp) / "quantized.onnx"
        quantize_static(str(prepared), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=stem + tail)
        model = onnx.load(str(quantized))
        int8_weights_only(model, tail)
        atomic_write(out, lambda dest: onnx.save(model, str(dest)))


def convert_fp16(fp32: Path, out: Path) -> None:
    """Half-precision weights and compute for GPUs; inputs and outputs stay float32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    atomic_write(out, lambda tmp: onnx.save(model, str(tmp)))
