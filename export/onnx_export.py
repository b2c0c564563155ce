"""Checkpoint -> self-describing ONNX, verified against PyTorch, plus int8 and fp16 variants.

The file carries everything a consumer needs (classes, normalisation, resize rule,
architecture, config hash: see ``runtime.metadata``). Verification and the variants' accuracy
use the runtime's own ``Classifier`` and ``preprocess``, i.e. exactly what users will run.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from pipeline import data, manifest as manifest_io
from pipeline.io import atomic_write, write_json
from pipeline.model import checkpoint_preprocessing, load_checkpoint
from runtime.classifier import Classifier
from runtime.metadata import INPUT_NAME, OUTPUT_NAME, ModelInfo, Preprocessing, encode
from runtime.metrics import classification_report
from runtime.preprocess import preprocess

OPSET = 18
TOLERANCE = 1e-3  # max |logit difference| between onnxruntime fp32 and PyTorch


class ExportError(RuntimeError):
    """Export or verification failed; the message says which and why."""


@dataclass(frozen=True)
class Sample:
    """Image files of one manifest split with their labels."""

    paths: list[Path]
    labels: list[str]

    def head(self, n: int) -> Sample:
        return Sample(self.paths[:n], self.labels[:n])


def sample_split(manifest: Path, split: str, classes: list[str], limit: int, seed: int = 0) -> Sample:
    """Up to ``limit`` usable images of ``split`` (a seeded sample when there are more)."""
    table, stats = manifest_io.read(manifest)
    rows = data.split_rows(table, split).filter(pl.col("label").is_in(classes))
    if len(rows) > limit:
        rows = rows.sample(limit, seed=seed).sort("path")
    if not len(rows):
        raise ExportError(f"{manifest}: no usable {split} images to verify or calibrate with")
    root = Path(stats["config"]["data_root"])
    return Sample([root / p for p in rows["path"]], rows["label"].to_list())


def batches(sample: Sample, pre: Preprocessing, size: int) -> Iterator[np.ndarray]:
    """Preprocessed float32 batches, made as they are consumed: memory holds one batch."""
    for start in range(0, len(sample.paths), size):
        yield np.stack([preprocess(p, pre) for p in sample.paths[start : start + size]])


def write_metadata(path: Path, info: ModelInfo) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in encode(info).items():
        model.metadata_props.add(key=key, value=value)
    model.doc_string = (
        f"Simpsons character classifier ({info.arch}, {len(info.classes)} classes). Input "
        f"'{INPUT_NAME}': float32 [N,3,{info.preprocessing.image_size},{info.preprocessing.image_size}], "
        f"{info.preprocessing.describe()}. Output '{OUTPUT_NAME}': float32 [N,{len(info.classes)}] logits."
    )
    atomic_write(path, lambda tmp: onnx.save(model, str(tmp)))


def to_onnx(model, pre: Preprocessing, path: Path, opset: int = OPSET) -> None:
    """torch.export-based exporter: one self-contained file (no external data), a dynamic
    batch axis, the graph optimised by onnxscript."""
    import torch

    dummy = torch.randn(2, 3, pre.image_size, pre.image_size)
    batch = torch.export.Dim("batch", min=1, max=4096)

    def write(tmp: Path) -> None:
        torch.onnx.export(
            model.eval(), (dummy,), str(tmp), dynamo=True, opset_version=opset, external_data=False,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},), verbose=False,
        )

    atomic_write(path, write)


def verify(model, path: Path, sample: Sample, pre: Preprocessing, tolerance: float) -> dict:
    """onnx.checker, then onnxruntime (via the runtime's Classifier) against PyTorch on the
    same preprocessed images."""
    import onnx
    import torch

    onnx.checker.check_model(str(path), full_check=True)
    clf = Classifier(path, device="cpu")
    expected, got = [], []
    with torch.inference_mode():
        for batch in batches(sample, pre, 32):
            expected.append(model(torch.from_numpy(batch)).numpy())
            got.append(clf.logits(batch))
    expected, got = np.concatenate(expected), np.concatenate(got)
    result = {
        "images": len(got),
        "max_abs_logit_diff": float(np.abs(expected - got).max()),
        "top1_agreement": float((expected.argmax(1) == got.argmax(1)).mean()),
        "tolerance": tolerance,
    }
    if result["top1_agreement"] < 1.0 or result["max_abs_logit_diff"] > tolerance:
        raise ExportError(
            f"{path}: onnxruntime disagrees with PyTorch (top-1 agreement {result['top1_agreement']:.4f}, "
            f"max |logit diff| {result['max_abs_logit_diff']:.2e} > {tolerance:.0e})"
        )
    return result


def quantize_int8(fp32: Path, out: Path, calibration: Iterator[np.ndarray]) -> None:
    """Static QDQ quantisation, per-channel int8 weights, min-max calibrated on the batches
    given, after onnxruntime's pre-processing (the shape inference and graph optimisation that
    quantisation expects)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = calibration

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        atomic_write(out, lambda dest: quantize_static(
            str(prepared), str(dest), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        ))


def convert_fp16(fp32: Path, out: Path) -> None:
    """Half-precision weights and compute for GPUs; inputs and outputs stay float32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    atomic_write(out, lambda tmp: onnx.save(model, str(tmp)))


def score(path: Path, sample: Sample, classes: list[str], reference: list[str] | None = None) -> tuple[dict, list[str]]:
    """Accuracy and macro-F1 of one model file, measured the way users run it (Classifier over
    the files), and its top-1 agreement with ``reference`` predictions."""
    results = list(Classifier(path, device="cpu").iter_predict(sample.paths, batch_size=32))
    failed = [r for r in results if r.prediction is None]
    if failed:
        raise ExportError(f"{failed[0].source}: {failed[0].error}")
    predicted = [r.prediction.label for r in results]
    report = classification_report(sample.labels, predicted, classes)
    result = {"file": path.name, "size_mb": round(path.stat().st_size / 2**20, 2),
              "accuracy": report["accuracy"], "macro_f1": report["macro avg"]["f1"]}
    if reference is not None:
        result["top1_agreement_with_fp32"] = float(np.mean([a == b for a, b in zip(predicted, reference)]))
    return result, predicted


def export(
    checkpoint: Path, out: Path, manifest: Path | None = None, int8: bool = False, fp16: bool = False,
    tolerance: float = TOLERANCE, verify_images: int = 64, calibration_images: int = 512, eval_images: int = 2000,
    opset: int = OPSET,
) -> dict:
    """Write ``out`` (+ ``.int8.onnx`` / ``.fp16.onnx``) and ``<out>.report.json``; returns the report."""
    model, ckpt = load_checkpoint(checkpoint)
    pre, classes = checkpoint_preprocessing(ckpt), list(ckpt["classes"])
    manifest = manifest or Path(ckpt["config"]["manifest"])
    if not manifest.is_file():
        raise ExportError(f"{manifest}: manifest not found (pass --manifest); export verifies on its val images")
    info = ModelInfo(classes=tuple(classes), preprocessing=pre, arch=ckpt["arch"], config_hash=ckpt.get("config_hash", ""))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out.parent).close()
    except OSError as e:
        raise ExportError(f"{out}: cannot write there ({e.strerror or e})") from None

    to_onnx(model, pre, out, opset)
    write_metadata(out, info)
    val = sample_split(manifest, "val", classes, eval_images)
    report = {"checkpoint": str(checkpoint), "opset": opset,
              "verification": verify(model, out, val.head(verify_images), pre, tolerance)}
    fp32_score, fp32_pred = score(out, val, classes)
    report["variants"] = {"fp32": fp32_score}
    print(f"fp32: {out} verified on {report['verification']['images']} val images: top-1 agreement "
          f"{report['verification']['top1_agreement']:.2%}, max |logit diff| {report['verification']['max_abs_logit_diff']:.2e}",
          file=sys.stderr)
    variants = []
    if int8:
        calibration = sample_split(manifest, "train", classes, calibration_images, seed=1)
        variants.append(("int8", lambda p: quantize_int8(out, p, batches(calibration, pre, 16))))
    if fp16:
        variants.append(("fp16", lambda p: convert_fp16(out, p)))
    for name, make in variants:
        path = out.with_suffix(f".{name}.onnx")
        make(path)
        write_metadata(path, info)
        report["variants"][name], _ = score(path, val, classes, fp32_pred)
        v = report["variants"][name]
        print(f"{name}: {path}: accuracy {v['accuracy']:.4f} (fp32 {fp32_score['accuracy']:.4f}), macro-F1 "
              f"{v['macro_f1']:.4f} (fp32 {fp32_score['macro_f1']:.4f}), agreement with fp32 "
              f"{v['top1_agreement_with_fp32']:.2%}", file=sys.stderr)
    report["eval_images"] = len(val.labels)
    write_json(out.with_suffix(".report.json"), report)
    return report
