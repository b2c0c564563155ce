"""Batched ONNX inference on CUDA or CPU, with decoding overlapped with the model.

``Classifier`` is the embeddable API: it reads classes and preprocessing from the model file
itself, so a caller hands it pictures and gets labels back.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.metadata import INPUT_NAME, MetadataError, ModelInfo, decode
from runtime.parallel import in_order
from runtime.preprocess import ImageSource, preprocess


class ModelError(RuntimeError):
    """The model file is missing, not ONNX, or not one of ours."""


class DeviceError(RuntimeError):
    """The requested device cannot be used."""


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float
    top_k: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Result:
    """One input's outcome: a prediction, or the reason it has none."""

    source: ImageSource
    prediction: Prediction | None
    error: str | None = None


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


class Classifier:
    """``Classifier("model.onnx").predict(["a.jpg", pil_image, array], top_k=3)``."""

    def __init__(self, model: str | os.PathLike, device: str = "auto", threads: int | None = None):
        path = Path(model)
        if device not in ("auto", "cpu", "cuda"):
            raise DeviceError(f"unknown device {device!r}: use auto, cpu or cuda")
        if not path.is_file():
            raise ModelError(f"{path}: model file not found")
        self.session = _session(path, device, threads)
        try:
            self.info: ModelInfo = decode(self.session.get_modelmeta().custom_metadata_map)
        except MetadataError as e:
            raise ModelError(f"{path}: {e}") from None
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        self.classes: tuple[str, ...] = self.info.classes
        self.workers = threads or min(8, os.cpu_count() or 1)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed float32 NCHW batch -> raw scores (N x classes), float32."""
        (logits,) = self.session.run(None, {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})
        return logits.astype(np.float32)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed float32 NCHW batch -> class probabilities (N x classes)."""
        return softmax(self.logits(batch))

    def _prediction(self, probs: np.ndarray, top_k: int) -> Prediction:
        order = np.argsort(-probs, kind="stable")[: max(1, top_k)]
        top = tuple((self.classes[i], float(probs[i])) for i in order)
        return Prediction(label=top[0][0], confidence=top[0][1], top_k=top)

    def iter_predict(
        self, items: Iterable[ImageSource], top_k: int = 1, batch_size: int = 32
    ) -> Iterator[Result]:
        """Results in input order. Decoding runs in a thread pool while the model runs; at most
        a few batches are in flight, so memory stays flat however many files there are."""
        pre = self.info.preprocessing
        ready: list[tuple[ImageSource, np.ndarray | str]] = []  # an array, or why there is none
        with ThreadPoolExecutor(self.workers) as pool:
            for source, future in in_order(pool, lambda item: preprocess(item, pre), items, 2 * batch_size):
                try:
                    ready.append((source, future.result()))
                except Exception as e:  # noqa: BLE001 - a bad file is a row, not a crash
                    ready.append((source, _describe(e)))
                if len(ready) == batch_size:
                    yield from self._run(ready, top_k)
                    ready.clear()
            yield from self._run(ready, top_k)

    def _run(self, ready: Sequence[tuple[ImageSource, np.ndarray | str]], top_k: int) -> Iterator[Result]:
        arrays = [a for _, a in ready if isinstance(a, np.ndarray)]
        probs = iter(self.probabilities(np.stack(arrays)) if arrays else ())
        for source, array in ready:
            if isinstance(array, np.ndarray):
                yield Result(source, self._prediction(next(probs), top_k))
            else:
                yield Result(source, None, array)

    def predict(self, items: Sequence[ImageSource], top_k: int = 1, batch_size: int = 32) -> list[Prediction]:
        """Predictions for paths, PIL images or uint8 arrays; a bad item raises ValueError."""
        results = list(self.iter_predict(items, top_k=top_k, batch_size=batch_size))
        failed = [r for r in results if r.prediction is None]
        if failed:
            raise ValueError(f"{_name(failed[0].source)}: {failed[0].error}")
        return [r.prediction for r in results]


def _name(source: ImageSource) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__


def _describe(error: Exception) -> str:
    """One line a user can act on, without the stack."""
    from PIL import UnidentifiedImageError

    if isinstance(error, UnidentifiedImageError):
        return "not an image (cannot identify the file format)"
    if isinstance(error, FileNotFoundError):
        return "file not found"
    if isinstance(error, PermissionError):
        return "permission denied"
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"cannot decode: {text}"
