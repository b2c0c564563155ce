"""The contract between export and every consumer of ``model.onnx``.

The keys are defined here, once, so the exporter writes and the runtime reads the same names.
A consumer needs nothing but the ONNX file: classes, normalisation and the resize rule travel in
its ``metadata_props``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

FORMAT_VERSION = 1
INPUT_NAME = "image"  # float32, N x 3 x H x W, RGB, normalised with mean/std below
OUTPUT_NAME = "logits"  # float32, N x len(classes), before softmax


class MetadataError(ValueError):
    """The model file lacks what a consumer needs to use it."""


@dataclass(frozen=True)
class Preprocessing:
    """How a picture becomes the network's input; training's eval transform uses the same rule.

    Decode, apply EXIF orientation, flatten alpha onto white, convert to RGB; resize so the
    shorter side is ``resize_size`` (bilinear, antialiased); centre-crop ``image_size`` square;
    scale to 0..1; subtract ``mean`` and divide by ``std`` per channel; lay out as CHW.
    """

    image_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    @classmethod
    def for_size(cls, image_size: int, mean, std, crop_fraction: float = 0.875) -> Preprocessing:
        return cls(
            image_size=image_size,
            resize_size=int(round(image_size / crop_fraction)),
            mean=tuple(float(m) for m in mean),
            std=tuple(float(s) for s in std),
        )

    def describe(self) -> str:
        return (
            f"RGB; resize shorter side to {self.resize_size} ({self.interpolation}, antialiased); "
            f"centre crop {self.image_size}x{self.image_size}; /255; "
            f"(x - mean) / std; NCHW float32"
        )


@dataclass(frozen=True)
class ModelInfo:
    """Everything a consumer reads from the model file."""

    classes: tuple[str, ...]
    preprocessing: Preprocessing
    arch: str
    config_hash: str
    format_version: int = FORMAT_VERSION


def encode(info: ModelInfo) -> dict[str, str]:
    """Flatten to the string -> string map ONNX stores in ``metadata_props``."""
    p = info.preprocessing
    return {
        "format_version": str(info.format_version),
        "classes": json.dumps(list(info.classes)),
        "arch": info.arch,
        "config_hash": info.config_hash,
        "preprocessing": json.dumps(asdict(p)),
        "preprocessing_rule": p.describe(),
        "mean": json.dumps(list(p.mean)),
        "std": json.dumps(list(p.std)),
        "image_size": str(p.image_size),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
    }


def decode(props: dict[str, str]) -> ModelInfo:
    """Read our metadata back; a model exported by someone else fails with a clear reason."""
    missing = [k for k in ("format_version", "classes", "preprocessing", "arch") if k not in props]
    if missing:
        raise MetadataError(f"not a Simpsons classifier export: metadata lacks {', '.join(missing)}")
    version = int(props["format_version"])
    if version > FORMAT_VERSION:
        raise MetadataError(f"metadata format {version} is newer than this runtime ({FORMAT_VERSION})")
    try:
        p = json.loads(props["preprocessing"])
        pre = Preprocessing(
            image_size=int(p["image_size"]),
            resize_size=int(p["resize_size"]),
            mean=tuple(float(x) for x in p["mean"]),
            std=tuple(float(x) for x in p["std"]),
            interpolation=p.get("interpolation", "bilinear"),
        )
        classes = tuple(json.loads(props["classes"]))
    except (ValueError, KeyError, TypeError) as e:
        raise MetadataError(f"malformed metadata: {e}") from None
    return ModelInfo(
        classes=classes,
        preprocessing=pre,
        arch=props["arch"],
        config_hash=props.get("config_hash", ""),
        format_version=version,
    )
