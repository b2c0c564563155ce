"""The contract between export and every consumer of an exported model.

The keys are defined here, once, so the exporter writes and the runtime reads the same names.
A consumer needs nothing but the ONNX file: classes, normalisation, the resize rule, the
temperature and the unknown threshold travel in its ``metadata_props``. Runtimes that cannot
read ONNX metadata (onnxruntime for Node and the web) read the same facts from ``model.json``,
the sidecar written beside each model, which also names the inputs and outputs and carries the
model file's sha256.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from runtime.errors import MetadataError

FORMAT_VERSION = 2  # 1: no temperature, unknown threshold or variant (still readable: T = 1, no verdict)
INPUT_NAME = "image"  # float32 N x 3 x S x S normalised; uint8 N x H x W x 3 RGB in the portable model
LOGITS = "logits"  # float32 N x classes, before temperature and softmax
FEATURES = "features"  # float32 N x D, the L2-normalised embedding (similarity search; Lite: its last block, others: penultimate)
OOD_SCORE = "ood_score"  # float32 N, higher = less like any known class
PROBABILITIES = "probabilities"  # float32 N x classes, calibrated (portable model only)
OUTPUT_NAME = LOGITS  # the one output every plain model has (format 1 had only this)
VARIANTS = ("fp32", "int8", "fp16", "portable", "portable-int8")
INTERPOLATIONS = ("bilinear", "bicubic")
SIDECAR_SUFFIX = ".json"
# The largest network input, and the largest resize before its centre crop (crop fraction 0.5),
# that any export may ask for: a picture is resized to resize_size before anything else, so a
# damaged or hostile model saying resize_size = 1e9 would otherwise allocate without bound.
MAX_IMAGE_SIZE = 1024
MAX_RESIZE_FACTOR = 2


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
    def for_size(cls, image_size: int, mean, std, crop_fraction: float = 0.875, interpolation: str = "bilinear") -> Preprocessing:
        return cls(
            image_size=image_size,
            resize_size=int(round(image_size / crop_fraction)),
            mean=tuple(float(m) for m in mean),
            std=tuple(float(s) for s in std),
            interpolation=interpolation,
        )

    def describe(self) -> str:
        return (
            f"RGB; resize shorter side to {self.resize_size} ({self.interpolation}, antialiased); "
            f"centre crop {self.image_size}x{self.image_size}; /255; "
            f"(x - mean) / std; NCHW float32"
        )


@dataclass(frozen=True)
class ModelInfo:
    """Everything a consumer reads from the model file (or its sidecar)."""

    classes: tuple[str, ...]
    preprocessing: Preprocessing
    arch: str
    config_hash: str
    format_version: int = FORMAT_VERSION
    variant: str = "fp32"
    temperature: float = 1.0  # probabilities = softmax(logits / temperature)
    ood_score: str | None = None  # the name of the ``ood_score`` output's rule (see runtime.openset)
    ood_threshold: float | None = None  # ood_score above it: the verdict is "unknown"
    accept_known: float | None = None  # the share of known val images the threshold accepts

    def with_threshold(self, threshold: float | None, accept_known: float | None) -> ModelInfo:
        return replace(self, ood_threshold=threshold, accept_known=accept_known if threshold is not None else None)


def to_dict(info: ModelInfo) -> dict:
    """JSON-native form: the sidecar's body, and the source of the metadata strings."""
    out = asdict(info)
    out["classes"] = list(info.classes)
    out["preprocessing"] = {**asdict(info.preprocessing), "mean": list(info.preprocessing.mean), "std": list(info.preprocessing.std)}
    return out


def encode(info: ModelInfo) -> dict[str, str]:
    """Flatten to the string -> string map ONNX stores in ``metadata_props``: strings as they
    are, everything else as JSON; plus readable conveniences (the rule, mean, std, size)."""
    props = {k: v if isinstance(v, str) else json.dumps(v) for k, v in to_dict(info).items() if v is not None}
    p = info.preprocessing
    props.update(
        preprocessing_rule=p.describe(),
        mean=json.dumps(list(p.mean)),
        std=json.dumps(list(p.std)),
        image_size=str(p.image_size),
        input_name=INPUT_NAME,
        output_name=PROBABILITIES if info.variant.startswith("portable") else LOGITS,
    )
    return props


_STRINGS = {"arch", "config_hash", "variant", "ood_score"}  # stored as plain strings, not JSON
_REQUIRED = ("format_version", "classes", "preprocessing", "arch")


def info_from_props(props: dict[str, str]) -> ModelInfo:
    """Read ONNX ``metadata_props`` back; a model exported by someone else fails with a reason."""
    missing = [k for k in _REQUIRED if k not in props]
    if missing:
        raise MetadataError(f"not a Simpsons classifier export: metadata lacks {', '.join(missing)}")
    fields = set(ModelInfo.__dataclass_fields__)
    try:
        native = {k: v if k in _STRINGS else json.loads(v) for k, v in props.items() if k in fields}
    except ValueError as e:
        raise MetadataError(f"malformed metadata: {e}") from None
    return from_dict(native)


def _number(d: dict, key: str, default=None, low: float = -math.inf, high: float = math.inf, kind=float):
    value = d.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        raise MetadataError(f"malformed metadata: {key} = {value!r} (expected a number in [{low}, {high}])")
    if kind is int and value != int(value):
        raise MetadataError(f"malformed metadata: {key} = {value!r} (expected a whole number)")
    return kind(value)


def _triple(p: dict, key: str, positive: bool) -> tuple[float, float, float]:
    values = p.get(key)
    if not isinstance(values, list) or len(values) != 3:
        raise MetadataError(f"malformed metadata: preprocessing {key} = {values!r} (expected 3 numbers, RGB)")
    return tuple(_number({key: v}, key, low=1e-8 if positive else -math.inf) for v in values)


def from_dict(d: dict) -> ModelInfo:
    """Validate every value a consumer relies on, so a damaged or foreign file fails at load
    with the field's name instead of producing wrong labels later."""
    version = _number(d, "format_version", kind=int)
    if version is None or version > FORMAT_VERSION:
        raise MetadataError(f"metadata format {version} is newer than this runtime ({FORMAT_VERSION})")
    classes = d.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise MetadataError(f"malformed metadata: classes must be a non-empty JSON list of names, got {str(classes)[:60]!r}")
    if len(set(classes)) != len(classes):
        raise MetadataError("malformed metadata: classes holds a name twice")
    p = d.get("preprocessing")
    if not isinstance(p, dict):
        raise MetadataError("malformed metadata: preprocessing must be a JSON object")
    interpolation = p.get("interpolation", "bilinear")
    if interpolation not in INTERPOLATIONS:
        raise MetadataError(f"malformed metadata: interpolation {interpolation!r} (this runtime knows {', '.join(INTERPOLATIONS)})")
    image_size = _number(p, "image_size", low=1, high=MAX_IMAGE_SIZE, kind=int)
    pre = Preprocessing(
        image_size=image_size,
        resize_size=_number(p, "resize_size", low=image_size or 1, high=MAX_RESIZE_FACTOR * (image_size or 1), kind=int),
        mean=_triple(p, "mean", positive=False),
        std=_triple(p, "std", positive=True),
        interpolation=interpolation,
    )
    if pre.image_size is None or pre.resize_size is None:
        raise MetadataError("malformed metadata: preprocessing lacks image_size or resize_size")
    variant = d.get("variant", "fp32")
    if variant not in VARIANTS:
        raise MetadataError(f"malformed metadata: variant {variant!r} (expected one of {', '.join(VARIANTS)})")
    score = d.get("ood_score")
    if score is not None and not isinstance(score, str):
        raise MetadataError(f"malformed metadata: ood_score {score!r} is not a name")
    return ModelInfo(
        classes=tuple(classes),
        preprocessing=pre,
        arch=str(d["arch"]),
        config_hash=str(d.get("config_hash", "")),
        format_version=version,
        variant=variant,
        temperature=_number(d, "temperature", 1.0, low=1e-6),
        ood_score=score,
        ood_threshold=_number(d, "ood_threshold"),
        accept_known=_number(d, "accept_known", low=0.0, high=1.0),
    )


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sidecar_path(model: Path) -> Path:
    """``model.onnx`` -> ``model.json``; ``model.int8.onnx`` -> ``model.int8.json``."""
    return model.with_suffix(SIDECAR_SUFFIX)


def sidecar(info: ModelInfo, model: Path, inputs: list[dict], outputs: list[dict]) -> dict:
    """The sidecar's content: the metadata plus the graph's inputs and outputs and the hash of
    the exact file it describes."""
    return {
        **to_dict(info),
        "preprocessing_rule": info.preprocessing.describe(),
        "model_file": model.name,
        "sha256": sha256(model),
        "inputs": inputs,
        "outputs": outputs,
    }


def _sidecar_content(path: Path) -> dict:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MetadataError(f"{path}: not a readable sidecar ({e})") from None
    if not isinstance(d, dict):
        raise MetadataError(f"{path}: not a sidecar (expected a JSON object)")
    return d


def check_sidecar(model: Path, info: ModelInfo) -> None:
    """A model that carries its own metadata (``info``, the truth) and has a sidecar beside it:
    the sidecar must say the same. Runtimes that cannot read ONNX metadata (the web, Node) read
    only the sidecar, and its sha256 covers the model, not itself: a sidecar with its classes
    permuted still matches, and would label every picture wrong there."""
    path = sidecar_path(model)
    if not path.is_file():
        return
    try:
        told = from_dict(_sidecar_content(path))
    except MetadataError as e:
        raise MetadataError(f"its sidecar {path.name}: {e}; the model's own metadata is the truth: re-export, or delete the sidecar") from None
    differ = [k for k, v in to_dict(info).items() if to_dict(told)[k] != v]
    if differ:
        raise MetadataError(f"its sidecar {path.name} contradicts the metadata inside it ({', '.join(differ)}); the model's "
                            "own metadata is the truth: re-export, or delete the sidecar")


def read_sidecar(model: Path) -> ModelInfo:
    """The sidecar's metadata, after checking that it describes this very file."""
    path = sidecar_path(model)
    if not path.is_file():
        raise MetadataError(f"the model has no metadata and no sidecar {path.name} beside it (not a Simpsons classifier export?)")
    d = _sidecar_content(path)
    if d.get("sha256") != sha256(model):
        raise MetadataError(f"{path} does not describe {model.name}: its sha256 differs (re-export, or copy the matching pair)")
    return from_dict(d)
