"""``simpsons export``'s configuration: the one place its defaults live (the command takes its
option defaults from here); torch-free, so the command line starts fast. ``<out>.report.json``
records what ran."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from runtime.openset import ACCEPT_KNOWN

OPSET = 18


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    checkpoint: Path = Path("out/run/best.pt")
    out: Path = Path("out/model.onnx")
    manifest: Path | None = None  # verification and calibration images; default: the training manifest
    data_root: Path | None = None  # default: as recorded at training
    int8: bool = False  # also a static-quantised int8 model (CPU)
    fp16: bool = False  # also a float16 model (GPU)
    portable: bool = False  # also model.portable.onnx: uint8 pixels in, preprocessing and softmax inside
    accept_known: float = ACCEPT_KNOWN  # each variant's unknown threshold accepts this share of known val images
    tolerance: float = 1e-3  # max |logit difference| between onnxruntime fp32 and PyTorch
    verify_images: int = 64  # val images compared with PyTorch
    eval_images: int = 2000  # val images that score each variant and choose its threshold
    calibration_images: int = 512  # train images for int8 calibration (min-max)
    opset: int = OPSET

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
