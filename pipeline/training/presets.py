"""Training and evaluation transforms, kept apart as in torchvision's classification references.

The eval transform is the runtime's ``preprocess`` wrapped in a tensor: training, export and
``simpsons-infer`` cannot drift apart.
"""

from __future__ import annotations

import io
import random

import torch
from PIL import Image
from torchvision.transforms import v2 as T

from pipeline.synth import downscaled_copy, shrink
from runtime.metadata import Preprocessing
from runtime.preprocess import load_image, preprocess


class RandomDownscale:
    """Shrink by a random factor, sometimes: the Kaggle test images are ~3x smaller than the
    training frames, so the model must also learn from blurry, low-resolution copies."""

    def __init__(self, max_factor: float = 4.0, p: float = 0.5):
        self.max_factor, self.p = max_factor, p

    def __call__(self, img: Image.Image, rng: random.Random) -> Image.Image:
        if rng.random() >= self.p:
            return img
        return shrink(img, rng.uniform(1.0, self.max_factor))


AUTO_AUGMENT = {"trivial": T.TrivialAugmentWide, "randaugment": T.RandAugment}


class TrainPreset:
    """Random down-scaling, a random resized crop (of the epoch's size: progressive resizing
    changes it), a flip, colour jitter, optionally TrivialAugment or RandAugment, normalisation,
    optionally random erasing: torchvision's own transforms, as in its classification references."""

    def __init__(self, pre: Preprocessing, downscale: float = 4.0, augment: str = "none", random_erase: float = 0.0):
        self.size, self.draft = pre.image_size, 2 * pre.image_size  # decode JPEGs no larger than the crops need
        self.downscale = RandomDownscale(downscale)
        self.before = T.Compose([
            T.RandomHorizontalFlip(),
            T.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.02),
            *([AUTO_AUGMENT[augment]()] if augment != "none" else []),
            T.PILToTensor(),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(pre.mean, pre.std),
            *([T.RandomErasing(p=random_erase, value=0)] if random_erase > 0 else []),
        ])

    def __call__(self, path: str, seed: int, size: int | None = None) -> torch.Tensor:
        """One augmented sample at ``size`` (default: the image size); ``seed`` decides every
        random choice (Python's for the down-scaling, torch's, in a forked generator state,
        for torchvision's transforms)."""
        img = self.downscale(load_image(path, min_size=self.draft), random.Random(seed))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            crop = T.RandomResizedCrop(size or self.size, scale=(0.35, 1.0), antialias=True)
            return self.before(crop(img))


def test_style_copy(img: Image.Image, factor: float) -> Image.Image:
    """The picture as the Kaggle test set holds frames (``synth.downscaled_copy``): ``factor``
    times smaller and saved again as a JPEG. Both change the network's features; the
    re-encoding more than the size."""
    return Image.open(io.BytesIO(downscaled_copy(img, factor))).convert("RGB")


class EvalPreset:
    """The runtime's preprocessing; with ``shrink`` > 1, of a test-style copy of the picture
    (the calibration's copies of training images)."""

    def __init__(self, pre: Preprocessing, shrink: float = 1.0):
        self.pre, self.shrink = pre, shrink

    def __call__(self, path: str, seed: int = 0, size: int | None = None) -> torch.Tensor:
        source = test_style_copy(load_image(path), self.shrink) if self.shrink > 1 else path
        return torch.from_numpy(preprocess(source, self.pre))
