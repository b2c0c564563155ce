"""Running a trained network over manifest rows: what training's validation and calibration,
evaluation, the audit's label issues and export's checks all do, written once.

Which device and mixed-precision type, which rows a checkpoint can be scored on (the usable
rows of a split whose class it knows, after checking it was trained on these classes), the
evaluation loader, and ``predict`` over it.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from pipeline.engine.manifest import Manifest
from pipeline.engine.schema import Split
from pipeline.training import datasets
from pipeline.training.presets import EvalPreset
from runtime.errors import SimpsonsError
from runtime.metadata import Preprocessing


class ClassesError(SimpsonsError):
    """A checkpoint and a manifest disagree on the classes: scores would be meaningless."""


class DeviceError(SimpsonsError):
    """The device asked for is not there."""


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA where PyTorch sees it, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda: no CUDA device is visible to PyTorch")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


def on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """The model on ``device`` in the channels-last layout, in which oneDNN's (CPU) and cuDNN's
    convolutions run fastest: a training step on these 2 cores is 1.5x faster for
    EfficientNet-Lite0 (its depthwise convolutions), 1.2x for ResNet18 (BENCHMARKS.md)."""
    return model.to(device, memory_format=torch.channels_last)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Mixed precision only on CUDA: bf16 where the GPU has it, else fp16 with a grad scaler."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def loader_workers(workers: int) -> int:
    """-1: one data-loader process per core, at most 8."""
    return workers if workers >= 0 else min(8, os.cpu_count() or 1)


def check_classes(classes: list[str], manifest: Manifest, checkpoint: Path) -> None:
    if classes != manifest.classes:
        first = next((f"{a!r} vs {b!r}" for a, b in zip(classes, manifest.classes) if a != b), "one list is longer")
        raise ClassesError(f"{checkpoint}: its classes differ from the manifest's ({len(classes)} vs {len(manifest.classes)} in "
                           f"{manifest.path}, first difference: {first}); use the checkpoint trained on this manifest")


def usable_rows(manifest: Manifest, split: Split | str, classes: list[str]) -> pl.DataFrame:
    """The rows of ``split`` a model of ``classes`` can be scored on, in path order."""
    return manifest.rows(split).filter(pl.col("label").is_in(classes))


def eval_loader(rows: pl.DataFrame, root: Path, classes: list[str], pre: Preprocessing, batch_size: int = 64,
                workers: int = 2, pin: bool = False, shrink: float = 1.0) -> DataLoader:
    """Batches of manifest rows under the evaluation transform (the runtime's preprocessing,
    of pictures ``shrink`` times smaller)."""
    dataset = datasets.ManifestDataset(rows, root, classes, EvalPreset(pre, shrink))
    return datasets.loader(dataset, batch_size, loader_workers(workers), None, pin)


def as_tuple(output) -> tuple[torch.Tensor, ...]:
    return output if isinstance(output, tuple) else (output,)


@torch.inference_mode()
def predict(model: nn.Module, loader, device: torch.device, dtype: torch.dtype | None = None,
            tta: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every output of ``model`` (logits, or ``Network``'s logits, features and score) as
    float32 CPU tensors over a whole loader, and the targets; ``tta`` averages each output
    with that of the mirrored image."""
    model.eval()
    outputs, all_targets = [], []
    for images, targets in loader:
        images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = as_tuple(model(images))
            if tta:
                out = tuple((a + b) / 2 for a, b in zip(out, as_tuple(model(images.flip(3)))))
        outputs.append([o.float().cpu() for o in out])
        all_targets.append(targets)
    return [torch.cat(parts) for parts in zip(*outputs)], torch.cat(all_targets)


def predict_rows(model: nn.Module, rows: pl.DataFrame, root: Path, classes: list[str], pre: Preprocessing,
                 device: torch.device, batch_size: int = 64, workers: int = 2,
                 tta: bool = False, shrink: float = 1.0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``predict`` over manifest rows: the one way a checkpoint is scored on them."""
    return predict(on_device(model, device), eval_loader(rows, root, classes, pre, batch_size, workers, device.type == "cuda", shrink),
                   device, tta=tta)
