"""From the manifest to DataLoaders: datasets, class balancing and distributed sampling."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class ManifestDataset(Dataset):
    """(image tensor, class index) for the manifest rows of one split with status ok."""

    def __init__(self, rows: pl.DataFrame, root: Path, classes: list[str], transform: Callable):
        index = {c: i for i, c in enumerate(classes)}
        self.paths = [os.path.join(root, p) for p in rows["path"]]
        self.targets = [index[label] for label in rows["label"]]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """``key`` is an index, or (index, seed) from ``EpochSampler``: each sample's
        augmentation draws from its own generators, seeded by the sampler, so it is independent
        of worker count and of persistent workers' history, and no global RNG is touched."""
        i, seed, size = key if isinstance(key, tuple) else (key, 0, None)
        return self.transform(self.paths[i], seed, size), self.targets[i]


class UnlabelledDataset(Dataset):
    """(image tensor, -1) for image files outside the manifest (``--unknown`` folders)."""

    def __init__(self, paths: list[str], transform: Callable):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.paths[i]), -1


def class_weights(targets: list[int], num_classes: int) -> torch.Tensor:
    """Inverse frequency, normalised to mean 1 over the classes present; absent classes 0."""
    counts = torch.bincount(torch.tensor(targets), minlength=num_classes).float()
    weights = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
    return weights * (counts > 0).sum() / weights.sum()


class EpochSampler(Sampler[tuple[int, int, int | None]]):
    """(index, sample seed, image size) triples: shuffled or class-balanced, seeded by (seed,
    epoch), sharded across ranks; the size is the epoch's (progressive resizing), set with the
    epoch, so worker processes that live across epochs get it with every sample.

    Seeding by epoch makes an epoch's order and augmentations a pure function of its number,
    which is what lets ``--resume`` continue exactly; sharding replaces DistributedSampler, so
    balanced sampling works under DDP too.
    """

    def __init__(self, targets: list[int], num_classes: int, balanced: bool, seed: int, rank: int = 0, world: int = 1):
        self.n, self.seed, self.rank, self.world, self.epoch, self.size = len(targets), seed, rank, world, 0, None
        self.weights = class_weights(targets, num_classes)[torch.tensor(targets)] if balanced else None
        self.per_rank = math.ceil(self.n / world)

    def set_epoch(self, epoch: int, size: int | None = None) -> None:
        self.epoch, self.size = epoch, size

    def __iter__(self) -> Iterator[tuple[int, int, int | None]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        total = self.per_rank * self.world
        if self.weights is not None:
            order = torch.multinomial(self.weights, total, replacement=True, generator=g)
        else:
            order = torch.randperm(self.n, generator=g).repeat(math.ceil(total / max(self.n, 1)))[:total]
        seeds = torch.randint(0, 2**62, (total,), generator=g)
        mine = slice(self.rank, None, self.world)
        return iter((i, s, self.size) for i, s in zip(order[mine].tolist(), seeds[mine].tolist()))

    def __len__(self) -> int:
        return self.per_rank


def loader(dataset: Dataset, batch_size: int, workers: int, sampler: Sampler | None = None, pin: bool = False) -> DataLoader:
    """Decoding in worker processes that stay alive between epochs; pinned memory for CUDA."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        drop_last=False,
    )
