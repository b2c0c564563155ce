"""Batched ONNX inference on CUDA or CPU, with decoding overlapped with the model.

``Classifier`` is the embeddable API: it reads classes, preprocessing, temperature and the
unknown threshold from the model file itself (or its sidecar), so a caller hands it pictures
and gets labels back, ``unknown`` included. Both kinds of exported model run here: the plain
one (float32 input, preprocessing in Python) and the portable one (uint8 pixels in,
preprocessing and softmax inside the graph).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from runtime.errors import DeviceError, MetadataError, ModelError, SimpsonsError
from runtime.listing import display_path
from runtime.metadata import FEATURES, INPUT_NAME, LOGITS, OOD_SCORE, PROBABILITIES, ModelInfo, check_sidecar, info_from_props, read_sidecar
from runtime.openset import check_threshold
from runtime.parallel import in_order, usable_cores
from runtime.preprocess import ImageSource, preprocess, square

log = logging.getLogger("simpsons.runtime")
UNKNOWN = "unknown"  # the label of an image the open-set score rejects


@dataclass(frozen=True)
class Prediction:
    label: str  # the best class, or "unknown" when the open-set score rejects the image
    confidence: float  # calibrated probability of the best class
    top_k: tuple[tuple[str, float], ...]  # best class first, also when the label is "unknown"
    ood_score: float | None = None  # higher = less like any known class; None if the model has none
    unknown: bool = False


@dataclass(frozen=True)
class Result:
    """One input's outcome: a prediction, or the reason it has none."""

    source: ImageSource
    prediction: Prediction | None
    error: str | None = None

    def row(self) -> dict:
        """The prediction row every output format shares (the ``Prediction`` fields, flat)."""
        p = self.prediction
        return {
            "path": display_path(self.source) if isinstance(self.source, (str, os.PathLike)) else type(self.source).__name__,
            "status": "ok" if p else self.error,
            "label": p.label if p else None,
            "confidence": p.confidence if p else None,
            "ood_score": p.ood_score if p else None,
            "unknown": p.unknown if p else None,
            "top_labels": [label for label, _ in p.top_k] if p else [],
            "top_probs": [prob for _, prob in p.top_k] if p else [],
        }


class Outputs(NamedTuple):
    """What one batch gives: calibrated probabilities, and where the model has them, the
    open-set score and the L2-normalised features."""

    probabilities: np.ndarray
    ood_score: np.ndarray | None
    features: np.ndarray | None


def _import_onnxruntime():
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # provider load failures are reported by us, in one line
    return ort


def nvidia_driver() -> bool:
    """Whether the NVIDIA driver library loads: without it the CUDA provider cannot."""
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1" if sys.platform != "win32" else "nvcuda.dll")
        return True
    except OSError:
        return False


def _session(path: Path, device: str, threads: int | None):
    """Create the session, then check which provider really loaded: onnxruntime-gpu lists
    CUDA as available on machines without a GPU and silently falls back to the CPU."""
    ort = _import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    # Idle inference threads sleep instead of spinning, leaving the cores to the decoders.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    want_cuda = device in ("cuda", "auto") and "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cuda" and not want_cuda:
        raise DeviceError("--device cuda: this onnxruntime build has no CUDA provider (install onnxruntime-gpu)")
    want_cuda = want_cuda and nvidia_driver()
    if device == "cuda" and not want_cuda:
        raise DeviceError("--device cuda: no NVIDIA driver on this machine (libcuda not found); use --device cpu or auto")
    if want_cuda and hasattr(ort, "preload_dlls"):
        try:  # CUDA/cuDNN from the nvidia-* wheels torch installs, when present
            ort.preload_dlls(directory="")
        except Exception:  # noqa: BLE001 - absence is handled by the provider check below
            pass
    providers = (["CUDAExecutionProvider"] if want_cuda else []) + ["CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise ModelError(f"{path}: not a loadable ONNX model ({str(e).splitlines()[0][:200]})") from None
    if device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        raise DeviceError(
            "--device cuda: onnxruntime's CUDA provider did not load (no GPU, or CUDA/cuDNN "
            "libraries missing); use --device cpu or auto"
        )
    return session


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def model_info(path: Path, session) -> ModelInfo:
    """The ONNX metadata (and a sidecar beside the file must agree with it), or where a runtime
    stripped it, the sidecar."""
    props = session.get_modelmeta().custom_metadata_map
    try:
        if "classes" not in props and "format_version" not in props:
            return read_sidecar(path)
        info = info_from_props(props)
        check_sidecar(path, info)
        return info
    except MetadataError as e:
        raise MetadataError(f"{path}: {e}") from None


def check_graph(path: Path, session, info: ModelInfo) -> bool:
    """Compare the graph with its metadata before any image is read; returns whether the model
    is portable (uint8 pixels in). Each mismatch is one line naming what is wrong."""
    inputs, outputs = session.get_inputs(), {o.name: o for o in session.get_outputs()}
    if [i.name for i in inputs] != [INPUT_NAME]:
        raise ModelError(f"{path}: expected one input named {INPUT_NAME!r}, the graph has {[i.name for i in inputs]}")
    image = inputs[0]
    portable = image.type == "tensor(uint8)"
    if image.type not in ("tensor(uint8)", "tensor(float)") or len(image.shape) != 4:
        raise ModelError(f"{path}: input {INPUT_NAME!r} is {image.type} {image.shape}; expected float32 [N,3,S,S] or uint8 [N,H,W,3]")
    size = info.preprocessing.image_size
    expected = [None, None, None, 3] if portable else [None, 3, size, size]
    for got, want in zip(image.shape, expected):
        if want is not None and isinstance(got, int) and got != want:
            raise ModelError(f"{path}: input {INPUT_NAME!r} has shape {image.shape}, but the metadata says {expected} (image_size {size})")
    main = PROBABILITIES if portable else LOGITS
    if main not in outputs:
        raise ModelError(f"{path}: the graph has no {main!r} output (outputs: {', '.join(outputs)})")
    width = outputs[main].shape[-1] if outputs[main].shape else None
    if isinstance(width, int) and width != len(info.classes):
        raise ModelError(f"{path}: output {main!r} has {width} columns but the metadata names {len(info.classes)} classes")
    return portable


class Classifier:
    """``Classifier("model.onnx").predict(["a.jpg", pil_image, array], top_k=3)``.

    ``unknown_threshold`` overrides the threshold stored in the model; ``unknown=False`` turns
    the verdict off (every image gets its best class)."""

    def __init__(
        self, model: str | os.PathLike, device: str = "auto", threads: int | None = None,
        unknown_threshold: float | None = None, unknown: bool = True,
    ):
        path = Path(model)
        if device not in ("auto", "cpu", "cuda"):
            raise DeviceError(f"unknown device {device!r}: use auto, cpu or cuda")
        if not path.is_file():
            raise ModelError(f"{path}: model file not found")
        self.path = path
        self.session = _session(path, device, threads)
        self.info: ModelInfo = model_info(path, self.session)
        self.portable = check_graph(path, self.session, self.info)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        self.classes: tuple[str, ...] = self.info.classes
        self.workers = threads or min(8, usable_cores())
        self.threshold = self._threshold(unknown, unknown_threshold)

    def _threshold(self, unknown: bool, override: float | None) -> float | None:
        """The threshold in use, or None (no verdicts) with one warning saying why."""
        if not unknown:
            return None
        if OOD_SCORE not in self.outputs:
            log.warning("%s has no ood_score output (exported before unknown verdicts existed; "
                        "re-export it to get them): every image gets one of the classes", self.path.name)
            return None
        if override is not None:
            problem = check_threshold(self.info.ood_score, override)
            if problem:
                raise SimpsonsError(problem)
            return float(override)
        if self.info.ood_threshold is None:
            log.warning("%s carries no unknown threshold (too few val images at export?): no unknown "
                        "verdicts unless --unknown-threshold is given", self.path.name)
        return self.info.ood_threshold

    def run(self, batch: np.ndarray) -> Outputs:
        """One batch through the graph: preprocessed float32 NCHW for the plain model, uint8
        NHWC pixels of one size for the portable one."""
        dtype = np.uint8 if self.portable else np.float32
        values = dict(zip(self.outputs, self.session.run(None, {INPUT_NAME: np.ascontiguousarray(batch, dtype=dtype)})))
        if self.portable:
            probs = values[PROBABILITIES].astype(np.float32)
        else:
            probs = softmax(values[LOGITS].astype(np.float32) / np.float32(self.info.temperature))
        ood, features = values.get(OOD_SCORE), values.get(FEATURES)
        return Outputs(probs, None if ood is None else ood.reshape(-1).astype(np.float32), features)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed float32 NCHW batch -> raw scores (N x classes) of a plain model."""
        if self.portable:
            raise ModelError(f"{self.path}: a portable model gives probabilities, not logits")
        (logits,) = self.session.run([LOGITS], {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})
        return logits.astype(np.float32)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities (N x classes) for one batch."""
        return self.run(batch).probabilities

    def prediction(self, probs: np.ndarray, ood_score: float | None, top_k: int) -> Prediction:
        order = np.argsort(-probs, kind="stable")[: max(1, top_k)]
        top = tuple((self.classes[i], float(probs[i])) for i in order)
        unknown = bool(self.threshold is not None and ood_score is not None and ood_score > self.threshold)
        return Prediction(label=UNKNOWN if unknown else top[0][0], confidence=top[0][1], top_k=top,
                          ood_score=None if ood_score is None else float(ood_score), unknown=unknown)

    def prepare(self, item: ImageSource) -> np.ndarray:
        """Decode one picture and bring it to the model's input, in a decoding thread: the
        preprocessed float32 crop for the plain model, the uint8 square around it for the
        portable one (``square``: the graph then sees the same pixels)."""
        if self.portable:
            return square(item, self.info.preprocessing)
        return preprocess(item, self.info.preprocessing)

    def iter_predict(
        self, items: Iterable[ImageSource], top_k: int = 1, batch_size: int = 32
    ) -> Iterator[Result]:
        """Results in input order. Decoding runs in a thread pool while the model runs; at most
        two batches are in flight, so memory stays flat however many files there are."""
        ready: list[tuple[ImageSource, np.ndarray | str]] = []  # an array, or why there is none
        with ThreadPoolExecutor(self.workers) as pool:
            for source, future in in_order(pool, self.prepare, items, 2 * batch_size):
                try:
                    ready.append((source, future.result()))
                except (SimpsonsError, OSError) as e:  # a bad file is a row, not a crash
                    ready.append((source, str(e) or type(e).__name__))
                if len(ready) == batch_size:
                    yield from self._answer(ready, top_k)
                    ready.clear()
            yield from self._answer(ready, top_k)

    def _answer(self, ready: Sequence[tuple[ImageSource, np.ndarray | str]], top_k: int) -> Iterator[Result]:
        """One model run over what decoded; every input gets its result, in order."""
        arrays = [a for _, a in ready if isinstance(a, np.ndarray)]
        out = self.run(np.stack(arrays)) if arrays else None
        row = 0
        for source, array in ready:
            if isinstance(array, str):
                yield Result(source, None, array)
                continue
            ood = None if out.ood_score is None else out.ood_score[row]
            yield Result(source, self.prediction(out.probabilities[row], ood, top_k))
            row += 1

    def predict(self, items: Sequence[ImageSource], top_k: int = 1, batch_size: int = 32) -> list[Prediction]:
        """Predictions for paths, PIL images or uint8 arrays; a bad item raises ValueError."""
        results = list(self.iter_predict(items, top_k=top_k, batch_size=batch_size))
        failed = [r for r in results if r.prediction is None]
        if failed:
            raise ValueError(f"{_name(failed[0].source)}: {failed[0].error}")
        return [r.prediction for r in results]


def _name(source: ImageSource) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__
