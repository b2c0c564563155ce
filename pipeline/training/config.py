"""The training configuration: the one place its defaults live, and the recipes.

``simpsons train``'s options take their defaults from ``TrainConfig``; an option left at
``None`` ("auto") is filled by ``resolve`` from the recipe for the start point (training from
random weights needs other settings than fine-tuning ImageNet weights), and the resolved values
are what ``config.json`` records. The Makefile passes only what it changes. ``config.json``
holds these fields plus a few facts about the run (``RUN_FACTS``); loading it refuses anything
else, so a typo or a file from another version fails loudly. torch-free: the CLI imports it fast.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from runtime.errors import SimpsonsError
from runtime.metadata import MAX_IMAGE_SIZE

RUN_FACTS = {"manifest_hash", "config_hash", "classes", "world_size"}  # written by train(), not options
AUGMENTS = ("none", "trivial", "randaugment")
TRAIN_FROM = (1, 2, 4, 8, 16, 32, 64)  # output strides: 64 leaves a stride-32 network only its head

# The recipe for each start point: what "auto" means. Chosen by measurement (BENCHMARKS.md,
# "Training recipe"); every value can still be set on the command line.
RECIPES = {
    # --weights none: everything is learnt from these images. Chosen by bench/bench_recipe.py
    # (BENCHMARKS.md): 12 epochs leave a from-scratch model under-fitted, so the regularisers
    # did not win over 3 seeds (TrivialAugment cost F1, mixup/cutmix and random erasing no
    # gain) and stay off; EMA, checkpoint averaging and a larger eval size changed nothing;
    # progressive resizing from half size saves a sixth of the time and gave the best mean and
    # the best worst seed.
    "scratch": {
        "lr": 2e-3, "batch_size": 32, "weight_decay": 0.05, "warmup_epochs": 1.0, "label_smoothing": 0.1,
        "backbone_lr": 1.0, "augment": "none", "mixup": 0.0, "cutmix": 0.0, "random_erase": 0.0,
        "ema": 0.0, "progressive": 0.5, "eval_scale": 1.0, "average": 1, "train_from": 1,
    },
    # ImageNet or local weights. Every layer at the head's rate: drawn frames are far from
    # ImageNet's photographs, and on the real sample a backbone at a tenth of the rate kept too
    # much of them (Lite0, 128 px, 12 epochs: val macro-F1 0.948 over 3 seeds, against 0.880
    # at 0.1x, 1 seed; bench/bench_finetune.py). The warm-up keeps the first steps from wrecking it.
    "pretrained": {
        "lr": 1e-3, "batch_size": 64, "weight_decay": 0.05, "warmup_epochs": 1.0, "label_smoothing": 0.1,
        "backbone_lr": 1.0, "augment": "trivial", "mixup": 0.0, "cutmix": 0.0, "random_erase": 0.0,
        "ema": 0.0, "progressive": 1.0, "eval_scale": 1.0, "average": 1, "train_from": 1,
    },
}


class ConfigError(SimpsonsError):
    """A configuration cannot be used."""


@dataclass
class TrainConfig:
    manifest: str
    out: str
    arch: str = "resnet50"
    weights: str = "imagenet"
    image_size: int = 224
    crop_fraction: float = 0.875
    epochs: int = 12
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    label_smoothing: float | None = None
    backbone_lr: float | None = None  # the backbone's learning rate as a share of the head's
    augment: str | None = None  # none | trivial (TrivialAugmentWide) | randaugment
    mixup: float | None = None  # MixUp alpha; 0: off
    cutmix: float | None = None  # CutMix alpha; 0: off
    mix_epochs: int | None = None  # mix images only in the first N epochs (None: all)
    random_erase: float | None = None  # probability of erasing a random rectangle
    ema: float | None = None  # decay of an exponential moving average of the weights; 0: off
    progressive: float | None = None  # image size in the first epoch, as a share of image_size; 1: off
    eval_scale: float | None = None  # evaluate (and export) at image_size x this; 1: the training size
    average: int | None = None  # average the weights of the best N epochs into best.pt; 1: off
    train_from: int | None = None  # fine-tune only layers at 1/N of the input resolution or coarser; 1: all
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

    @property
    def start(self) -> str:
        return "scratch" if self.weights == "none" else "pretrained"


def resolve(config: TrainConfig) -> TrainConfig:
    """Fill every "auto" (None) option from the recipe for the start point, then check that
    the options make sense together; a ``ConfigError`` names the first that does not."""
    recipe = RECIPES[config.start]
    config = replace(config, **{k: v for k, v in recipe.items() if getattr(config, k) is None})
    check(config)
    return config


def check(c: TrainConfig) -> None:
    problems = [
        (c.lr <= 0, f"--lr must be positive, got {c.lr}"),
        (c.batch_size < 1, f"--batch-size must be at least 1, got {c.batch_size}"),
        (not 0 < c.backbone_lr <= 1, f"--backbone-lr is a share of the head's rate, in (0, 1], got {c.backbone_lr}"),
        (c.augment not in AUGMENTS, f"--augment must be one of {', '.join(AUGMENTS)}, got {c.augment!r}"),
        (c.mixup < 0 or c.cutmix < 0, f"--mixup and --cutmix are alphas >= 0 (0: off), got {c.mixup} and {c.cutmix}"),
        (c.mix_epochs is not None and not 1 <= c.mix_epochs <= c.epochs,
         f"--mix-epochs {c.mix_epochs} must be between 1 and --epochs ({c.epochs})"),
        (c.mix_epochs is not None and c.mixup == 0 and c.cutmix == 0, "--mix-epochs needs --mixup or --cutmix"),
        (not 0 <= c.random_erase < 1, f"--random-erase is a probability in [0, 1), got {c.random_erase}"),
        (not 0 <= c.ema < 1, f"--ema is a decay in (0, 1), or 0 for off; got {c.ema}"),
        (not 0 < c.progressive <= 1, f"--progressive is a share of --image-size in (0, 1], got {c.progressive}"),
        (not 1 <= c.eval_scale <= 2, f"--eval-scale must be between 1 and 2, got {c.eval_scale}"),
        (c.image_size < 16 or eval_size(c) > MAX_IMAGE_SIZE,
         f"--image-size x --eval-scale must stay between 16 and {MAX_IMAGE_SIZE} pixels, got {c.image_size} x {c.eval_scale}"),
        (not 1 <= c.average <= c.epochs, f"--average {c.average} must be between 1 and --epochs ({c.epochs})"),
        (c.train_from not in TRAIN_FROM, f"--train-from is one of {', '.join(map(str, TRAIN_FROM))}, got {c.train_from}"),
        (c.train_from > 1 and c.weights == "none", "--train-from freezes layers at their pretrained weights: it needs --weights"),
        (c.freeze_epochs > c.epochs, f"--freeze-epochs {c.freeze_epochs} is more than --epochs ({c.epochs})"),
    ]
    for failed, message in problems:
        if failed:
            raise ConfigError(message)


def eval_size(config: TrainConfig) -> int:
    """The evaluation (and export) image size: larger than the training crops by
    ``eval_scale`` (random crops show objects larger than a centre crop does), a multiple of 8."""
    return max(8, int(round(config.image_size * config.eval_scale / 8)) * 8) if config.eval_scale != 1 else config.image_size


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """``simpsons evaluate``: its options' defaults live here; ``config.json`` beside the report
    records what ran."""

    checkpoint: Path = Path("out/run/best.pt")
    manifest: Path = Path("out/data/manifest.parquet")
    split: str = "test"
    out: Path = Path("out/eval")
    tta: bool = False  # average with the horizontally flipped image
    unknown: Path | None = None  # a folder of characters outside the classes: how well the unknown verdict works
    batch_size: int = 64
    workers: int = 2
    device: str = "auto"
    data_root: Path | None = None  # default: as recorded in stats.json
    grid: int = 36  # pictures in predictions.png

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
