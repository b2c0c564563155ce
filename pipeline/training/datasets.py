"""From the manifest to DataLoaders: datasets, class balancing and distributed sampling."""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pipeline.engine.schema import on_disk
from runtime.errors import SimpsonsError
from runtime.listing import display_path
from runtime.parallel import die_with_parent
from runtime.preprocess import ImageError

log = logging.getLogger("simpsons.data")
SKIPPED = -2  # the target of an unlabelled image that could not be read: left out of the results


class UnreadableImage(SimpsonsError):
    """A manifest image that cannot be read any more (changed or removed since the manifest
    was built), by name. Raised in a data-loader worker, it reaches the main process as torch
    re-raises it: constructed anew from the worker's whole report ("Caught ... in DataLoader
    worker process 0", the traceback, then our line), so the message keeps only our line."""

    def __init__(self, message: str):
        ours = message.rstrip().splitlines()[-1] if message.strip() else message
        super().__init__(ours.removeprefix(f"{type(self).__module__}.{type(self).__qualname__}: "))


def manifest_image(transform: Callable, path: str, *args) -> torch.Tensor:
    """``transform(path, *args)``; an image that cannot be decoded is an ``UnreadableImage``
    naming it: the manifest is stale, and one clear line says which file and what to do."""
    try:
        return transform(path, *args)
    except ImageError as e:
        raise UnreadableImage(f"{display_path(path)}: {e} (changed since the manifest was built? run `simpsons manifest` again)") from None


class ManifestDataset(Dataset):
    """(image tensor, class index) for the manifest rows of one split with status ok."""

    def __init__(self, rows: pl.DataFrame, root: Path, classes: list[str], transform: Callable):
        index = {c: i for i, c in enumerate(classes)}
        self.paths = [os.fspath(on_disk(root, p)) for p in rows["path"]]
        self.targets = [index[label] for label in rows["label"]]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """``key`` is an index, or (index, seed) from ``EpochSampler``: each sample's
        augmentation draws from its own generators, seeded by the sampler, so it is independent
        of worker count and of persistent workers' history, and no global RNG is touched."""
        i, seed, size = key if isinstance(key, tuple) else (key, 0, None)
        return manifest_image(self.transform, self.paths[i], seed, size), self.targets[i]


class UnlabelledDataset(Dataset):
    """(image tensor, -1) for image files outside the manifest (``--unknown`` folders). A file
    that cannot be decoded is skipped with a warning naming it, as ``simpsons-infer`` makes it a
    row with a reason: a folder gathered from anywhere holds such files, and one of them must
    not cost the whole evaluation. It comes back as (zeros, ``SKIPPED``), so batches keep
    their shape; the caller drops those."""

    def __init__(self, paths: list[str], transform: Callable, shape: tuple[int, ...]):
        self.paths, self.transform, self.shape = paths, transform, shape

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            return self.transform(self.paths[i]), -1
        except ImageError as e:
            log.warning("%s: %s; skipped", display_path(self.paths[i]), e)
            return torch.zeros(self.shape), SKIPPED


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


def _start_worker(parent: int, worker_id: int) -> None:
    """A data-loader worker ends with the process that forked it: orphaned by ``kill -9`` of a
    training, workers lived on for seconds (torch polls for the parent every 5 s)."""
    die_with_parent(parent)


def loader(dataset: Dataset, batch_size: int, workers: int, sampler: Sampler | None = None, pin: bool = False) -> DataLoader:
    """Decoding in worker processes that stay alive between epochs and end with this process;
    pinned memory for CUDA. With a ``sampler`` (training), a last batch of one image is dropped:
    batch normalisation cannot train on one sample, and a training set one image past a
    multiple of the batch size (a fold, a reviewed manifest) would end every epoch with an error."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=functools.partial(_start_worker, os.getpid()),
        drop_last=sampler is not None and len(sampler) % batch_size == 1,
    )
