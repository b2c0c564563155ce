"""The training configuration: the one place its defaults live.

``simpsons train``'s options take their defaults from here, the Makefile passes only what it
changes, and ``config.json`` (written beside every run) holds these fields plus a few facts
about the run (``RUN_FACTS``); loading it refuses anything else, so a typo or a file from a
different version fails loudly instead of being ignored. torch-free, so the CLI imports it fast.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from runtime.errors import SimpsonsError

RUN_FACTS = {"manifest_hash", "config_hash", "classes", "world_size"}  # written by train(), not options


class ConfigError(SimpsonsError):
    """A saved configuration cannot be used."""


@dataclass
class TrainConfig:
    manifest: str
    out: str
    arch: str = "resnet50"
    weights: str = "imagenet"
    image_size: int = 224
    crop_fraction: float = 0.875
    epochs: int = 12
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    balance: str = "sampler"  # sampler | loss | none
    freeze_epochs: int = 0  # head only for this many epochs (staged fine-tuning)
    downscale: float = 4.0  # random down-scaling up to this factor
    patience: int = 5  # early stopping: epochs without a better val macro-F1
    workers: int = -1  # data-loader processes; -1: one per core, at most 8
    amp: str = "auto"  # auto (bf16/fp16 on CUDA) | bf16 | fp16 | off
    compile: bool = False
    device: str = "auto"
    seed: int = 0
    data_root: str | None = None  # default: where the manifest was built from

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: not a readable config ({e})") from None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(saved) - known - RUN_FACTS)
        if unknown:
            raise ConfigError(f"{path}: unknown keys {', '.join(unknown)} (written by another version?)")
        missing = sorted(f.name for f in fields(cls) if f.name not in saved)
        if missing:
            raise ConfigError(f"{path}: lacks {', '.join(missing)} (written by another version?)")
        return cls(**{name: saved[name] for name in known})

    def to_dict(self) -> dict:
        return asdict(self)
