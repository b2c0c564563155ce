"""Fine-tune a torchvision classifier from the manifest: plain functions, one loop.

Reproducibility: every epoch reseeds the RNGs and the sampler from (seed, epoch), so an epoch
is a function of its number and the weights it starts from. ``last.pt`` holds the weights,
optimiser, scheduler and scaler after each epoch, which is all ``--resume`` needs to continue
exactly. Under ``torchrun`` each rank trains on its shard (DDP); rank 0 alone writes files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pipeline.engine.manifest import Manifest, read as read_manifest
from pipeline.engine.schema import Split
from pipeline.training import datasets
from pipeline.training.checkpoint import DEFAULT_SCORE, Calibration, Checkpoint, save_tensors
from pipeline.training.config import TrainConfig, eval_size, resolve
from pipeline.training.inference import amp_dtype, eval_loader, loader_workers, on_device, pick_device, predict, predict_rows
from pipeline.writers import write_json
from pipeline.training.model import build_model, freeze_finer_than, pretrained_normalisation, train_mode
from runtime.errors import SimpsonsError
from runtime.files import Lock
from runtime.metadata import Preprocessing
from runtime.metrics import classification_report
from runtime.openset import ACCEPT_KNOWN
from runtime.progress import progress

log = logging.getLogger("simpsons.train")


class TrainError(SimpsonsError):
    """The run cannot start or continue as asked; the message says why."""

CENTROID_IMAGES_PER_CLASS = 200  # training images per class behind the open-set scores' centroids and prototypes
# ...each also as a test-style copy this many times smaller (presets.test_style_copy): the Kaggle test
# images are about a third of the frame size, and with only the frames behind them the distance scores
# call more small known pictures unknown (BENCHMARKS.md, "Unknown verdict").
SHRUNK_COPIES = 3.0


def file_hash(path: Path) -> str:
    import xxhash

    return xxhash.xxh3_64_hexdigest(path.read_bytes())


def config_hash(config: TrainConfig) -> str:
    import xxhash

    return xxhash.xxh3_64_hexdigest(json.dumps(asdict(config), sort_keys=True).encode())


def distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def head_parameters(model: nn.Module) -> set[int]:
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    return {id(p) for p in last.parameters()}


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with four groups: backbone/head x decayed/not (no decay on norms and biases); the
    backbone learns at ``backbone_lr`` times the head's rate (fine-tuning keeps what it knows)."""
    head = head_parameters(model)
    groups: dict[tuple[bool, bool], list] = {(h, d): [] for h in (False, True) for d in (True, False)}
    for p in model.parameters():
        if p.requires_grad:  # --train-from: frozen layers are not optimised at all
            groups[(id(p) in head, p.ndim > 1)].append(p)
    return torch.optim.AdamW(
        [{"params": ps, "weight_decay": config.weight_decay if decay else 0.0, "is_head": is_head,
          "lr": config.lr * (1.0 if is_head else config.backbone_lr)}
         for (is_head, decay), ps in groups.items()],
        lr=config.lr,
    )


def epoch_size(config: TrainConfig, epoch: int) -> int:
    """Progressive resizing: the crops grow linearly from ``progressive`` x the image size in
    the first epoch to the full size two thirds of the way through (multiples of 8); small
    early epochs cost less and teach coarse shapes first."""
    if config.progressive >= 1:
        return config.image_size
    full_at = max(1, math.ceil(2 * config.epochs / 3) - 1)
    share = config.progressive + (1 - config.progressive) * min(1.0, epoch / full_at)
    return max(16, int(round(config.image_size * share / 8)) * 8)


def make_mixer(config: TrainConfig, num_classes: int):
    """MixUp and/or CutMix on whole batches (torchvision's), or None when both are off."""
    from torchvision.transforms import v2

    mixers = ([v2.MixUp(alpha=config.mixup, num_classes=num_classes)] if config.mixup > 0 else []) + \
             ([v2.CutMix(alpha=config.cutmix, num_classes=num_classes)] if config.cutmix > 0 else [])
    return v2.RandomChoice(mixers) if mixers else None


def make_scheduler(optimizer, config: TrainConfig, steps_per_epoch: int):
    """Linear warm-up then cosine decay to zero, per step; the backbone's rate is zero while
    only the head trains (``freeze_epochs``), which keeps DDP's parameter set unchanged."""
    total, warmup = config.epochs * steps_per_epoch, config.warmup_epochs * steps_per_epoch

    def cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    def backbone(step: int) -> float:
        return 0.0 if step < config.freeze_epochs * steps_per_epoch else cosine(step)

    lambdas = [cosine if g["is_head"] else backbone for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def train_one_epoch(model, criterion, optimizer, scheduler, loader, device, dtype, scaler, desc: str,
                    mixer=None, ema=None) -> tuple[float, float]:
    """One pass over the loader (images mixed by ``mixer`` if given, ``ema`` updated after
    each step); returns (mean loss, images per second)."""
    train_mode(model)
    total_loss, seen, start = 0.0, 0, time.perf_counter()
    for images, targets in progress(loader, len(loader), desc):
        if mixer is not None:
            images, targets = mixer(images, targets)
        images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(unwrap(model))
        total_loss += loss.item() * len(targets)
        seen += len(targets)
    return total_loss / max(seen, 1), seen / (time.perf_counter() - start)


def evaluate(model, criterion, loader, device, dtype, classes: list[str]) -> dict:
    (logits, *_), targets = predict(model, loader, device, dtype)
    report = classification_report(
        [classes[i] for i in targets.tolist()], [classes[i] for i in logits.argmax(1).tolist()], classes
    )
    report["loss"] = float(criterion(logits, targets).item()) if len(targets) else float("nan")
    return report


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


def make_checkpoint(state_dict: dict, config: TrainConfig, classes, pre: Preprocessing, epoch: int, metrics: dict) -> Checkpoint:
    return Checkpoint(
        state_dict=state_dict, arch=config.arch, classes=list(classes), preprocessing=pre,
        config=asdict(config), config_hash=config_hash(config), epoch=epoch, metrics=metrics,
    )


def average_states(states: list[dict]) -> dict:
    """The element-wise mean of several state dicts (floating tensors; counters from the first)."""
    return {k: torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v
            for k, v in states[0].items()}


def log_epoch(writer, epoch: int, train_loss: float, speed: float, report: dict, lr: float, classes) -> None:
    from pipeline.figures import confusion_figure

    writer.add_scalar("loss/train", train_loss, epoch)
    writer.add_scalar("loss/val", report["loss"], epoch)
    writer.add_scalar("accuracy/val", report["accuracy"], epoch)
    writer.add_scalar("f1_macro/val", report["macro avg"]["f1"], epoch)
    writer.add_scalar("lr", lr, epoch)
    writer.add_scalar("throughput/train_images_per_s", speed, epoch)
    writer.add_figure("confusion/val", confusion_figure(np.array(report["confusion_matrix"]), classes), epoch)
    writer.flush()


def load_data(config: TrainConfig, manifest: Manifest, pre: Preprocessing, rank: int, world: int, pin: bool):
    """Train and val loaders from the manifest, and the training targets (for class weights).
    ``pre`` is the evaluation preprocessing (at the evaluation size); the training crops use
    ``config.image_size``."""
    from pipeline.training.presets import TrainPreset

    root, classes = manifest.data_root(config.data_root), manifest.classes
    augment = TrainPreset(replace(pre, image_size=config.image_size), config.downscale, config.augment, config.random_erase)
    train_set = datasets.ManifestDataset(manifest.rows(Split.TRAIN), root, classes, augment)
    val_rows = manifest.rows(Split.VAL)
    if not len(train_set) or not len(val_rows):
        raise TrainError(f"{config.manifest}: the manifest has {len(train_set)} train and {len(val_rows)} val images; both must be > 0")
    sampler = datasets.EpochSampler(train_set.targets, len(classes), config.balance == "sampler", config.seed, rank, world)
    return (
        datasets.loader(train_set, config.batch_size, loader_workers(config.workers), sampler, pin),
        eval_loader(val_rows, root, classes, pre, config.batch_size, config.workers, pin),
        train_set.targets,
    )


def make_model(config: TrainConfig, num_classes: int, resume: bool, rank: int, world: int) -> nn.Module:
    """Rank 0 fetches pretrained weights first (into torchvision's cache), the others follow;
    a resumed run needs none, its weights come from ``last.pt``."""
    seed_everything(config.seed)
    if world > 1 and rank != 0:
        dist.barrier()
    model = build_model(config.arch, num_classes, "none" if resume else config.weights)
    if world > 1 and rank == 0:
        dist.barrier()
    frozen = freeze_finer_than(model, config.train_from)
    if frozen and rank == 0:
        total = sum(p.numel() for p in model.parameters())
        log.info("--train-from %d: %.1fM of %.1fM parameters keep their pretrained weights", config.train_from, frozen / 1e6, total / 1e6)
    return model


def calibrate_best(config: TrainConfig, manifest: Manifest, device: torch.device) -> str:
    """Fit the temperature, the open-set centroids and threshold on ``best.pt`` and store them
    in it; returns the line that reports the fit."""
    from pipeline.training.calibration import all_right, calibrate
    from pipeline.training.network import Network

    path = Path(config.out) / "best.pt"
    ckpt = Checkpoint.load(path)
    classes, pre = ckpt.classes, ckpt.preprocessing
    root = manifest.data_root(config.data_root)
    network = Network(ckpt.model(), Calibration(), len(classes))

    def run(rows, shrink: float = 1.0):
        return predict_rows(network, rows, root, classes, pre, device, config.batch_size, config.workers, shrink=shrink)

    val = manifest.rows(Split.VAL)
    (logits, features, _), targets = run(val)
    temperature_on = None
    if all_right(logits, targets):  # no error to fit a temperature on: the val images' test-style copies hold some
        (copy_logits, *_), copy_targets = run(val, SHRUNK_COPIES)
        temperature_on = (copy_logits, copy_targets)
    train = manifest.rows(Split.TRAIN).group_by("label", maintain_order=True).head(CENTROID_IMAGES_PER_CLASS)
    ((_, full, _), full_targets), ((_, small, _), small_targets) = run(train), run(train, SHRUNK_COPIES)
    train_features, train_targets = torch.cat([full, small]), torch.cat([full_targets, small_targets])
    ckpt.calibration, warnings = calibrate(logits, features, targets, train_features, train_targets, len(classes),
                                           DEFAULT_SCORE, ACCEPT_KNOWN, temperature_on)
    ckpt.save(path)
    for warning in warnings:
        log.warning(warning)
    c, fit = ckpt.calibration, ckpt.calibration.fit
    threshold = f"{c.ood_threshold:.4g}" if c.ood_threshold is not None else "none"
    copies = "" if temperature_on is None else {
        "nll": " (temperature on their test-style copies: every val image was right)",
        "rule of succession": " (temperature by the rule of succession: every val image and its test-style copy was right)",
    }[fit["temperature_by"]]
    return (f"calibrated best.pt on {fit['val_images']} val images{copies}: temperature {c.temperature:.3f}; NLL "
            f"{fit['nll_before']:.3f} -> {fit['nll_after']:.3f}, ECE {fit['ece_before']:.3f} -> {fit['ece_after']:.3f}; "
            f"unknown threshold ({c.ood_score}) {threshold}")


def recalibrate(config: TrainConfig) -> str:
    """``calibrate_best`` on a finished run (its own config), holding the run folder's lock: a
    checkpoint calibrated by an older version gets this version's shipped score, no training."""
    with Lock(Path(config.out) / "last.pt"):
        return calibrate_best(config, read_manifest(Path(config.manifest)), pick_device(config.device))


def resume_state(out: Path, manifest_path: Path) -> dict:
    """The training state in ``last.pt``, after checking the manifest is the one the run began with."""
    saved = json.loads((out / "config.json").read_text()).get("manifest_hash")
    if saved and saved != file_hash(manifest_path):
        raise TrainError(f"{manifest_path} has changed since this run started (hash {file_hash(manifest_path)}, "
                         f"run began with {saved}): resuming would mix two data sets; start a new run")
    ckpt = Checkpoint.load(out / "last.pt")
    if ckpt.training is None:
        raise TrainError(f"{out / 'last.pt'}: holds no training state to resume from")
    return {"state_dict": ckpt.state_dict, "epoch": ckpt.epoch, **ckpt.training}


def train(config: TrainConfig, resume: bool = False) -> dict:
    """Train, keeping ``best.pt`` (best val macro-F1) and ``last.pt``, then calibrate
    ``best.pt``; returns the best metrics. "Auto" options are resolved from the recipe for the
    start point first. Rank 0 holds the run folder's lock throughout: a second run into the
    same folder is refused, not interleaved."""
    config = resolve(config)
    rank, world, local_rank = distributed()
    lock = Lock(Path(config.out) / "last.pt") if rank == 0 else None
    try:
        return _train(config, resume, rank, world, local_rank)
    finally:
        if lock:
            lock.release()


class BestEpochs:
    """The weights of the best ``keep`` epochs so far, on disk in ``RUN/.best/``, for
    averaging at the end (``--average``); what they are is saved in ``last.pt``, so a resumed
    run keeps averaging the same epochs."""

    def __init__(self, folder: Path, keep: int, entries: list | None = None):
        self.folder, self.keep, self.entries = folder, keep, [tuple(e) for e in entries or []]  # (f1, epoch), best first

    def offer(self, f1: float, epoch: int, state_dict: dict) -> None:
        if self.keep < 2:
            return
        self.entries = sorted([*self.entries, (f1, epoch)], key=lambda e: (-e[0], e[1]))
        if (f1, epoch) in self.entries[: self.keep]:
            self.folder.mkdir(parents=True, exist_ok=True)
            save_tensors(state_dict, self.folder / f"epoch-{epoch}.pt")
        for _, dropped in self.entries[self.keep:]:
            (self.folder / f"epoch-{dropped}.pt").unlink(missing_ok=True)
        self.entries = self.entries[: self.keep]

    def average(self) -> dict | None:
        if len(self.entries) < 2:
            return None
        return average_states([torch.load(self.folder / f"epoch-{e}.pt", weights_only=True) for _, e in self.entries])


def _train(config: TrainConfig, resume: bool, rank: int, world: int, local_rank: int) -> dict:
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    device = pick_device(config.device, local_rank)
    manifest_path, out = Path(config.manifest), Path(config.out)
    state = resume_state(out, manifest_path) if resume else None
    manifest = read_manifest(manifest_path)
    classes = manifest.classes
    mean, std = pretrained_normalisation(config.arch, config.weights) or (manifest.mean, manifest.std)
    pre = Preprocessing.for_size(eval_size(config), mean, std, config.crop_fraction)
    train_loader, val_loader, targets = load_data(config, manifest, pre, rank, world, pin=device.type == "cuda")

    model = on_device(make_model(config, len(classes), resume, rank, world), device)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True) if config.ema > 0 else None
    weight = datasets.class_weights(targets, len(classes)) if config.balance == "loss" else None
    criterion = nn.CrossEntropyLoss(weight=None if weight is None else weight.to(device), label_smoothing=config.label_smoothing)
    val_criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)  # val logits come back on the CPU
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, len(train_loader))
    dtype = amp_dtype(config.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    mixer = make_mixer(config, len(classes))

    start_epoch, best, stale, history = 0, {"f1": -1.0, "epoch": -1}, 0, []
    best_epochs = BestEpochs(out / ".best", config.average)
    if state is not None:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start_epoch, best, stale, history = state["epoch"] + 1, state["best"], state["stale"], state["history"]
        best_epochs = BestEpochs(out / ".best", config.average, state.get("best_epochs"))
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
    if config.compile:
        model = torch.compile(model)

    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", {**asdict(config), "manifest_hash": file_hash(manifest_path),
                                         "config_hash": config_hash(config), "classes": classes, "world_size": world})
        writer = SummaryWriter(str(out))
        log.info("training %s (%s recipe) on %d images (%d classes), validating on %d at %d px; %s, %d process(es), amp %s",
                 config.arch, config.start, len(targets), len(classes), len(val_loader.dataset), pre.image_size, device, world, dtype)

    for epoch in range(start_epoch, config.epochs):
        seed_everything(config.seed * 1000 + epoch)
        train_loader.sampler.set_epoch(epoch, epoch_size(config, epoch))
        mixing = mixer if config.mix_epochs is None or epoch < config.mix_epochs else None
        loss, speed = train_one_epoch(model, criterion, optimizer, scheduler, train_loader, device, dtype, scaler,
                                      f"epoch {epoch + 1}/{config.epochs}", mixing, ema)
        report, weights = evaluate(model, val_criterion, val_loader, device, dtype, classes), unwrap(model)
        if ema is not None:  # the moving average competes with the raw weights at every epoch
            averaged = evaluate(ema.module, val_criterion, val_loader, device, dtype, classes)
            if averaged["macro avg"]["f1"] > report["macro avg"]["f1"]:
                report, weights = {**averaged, "weights": "ema"}, ema.module
        f1 = report["macro avg"]["f1"]
        improved = f1 > best["f1"]
        if improved:
            best, stale = {"f1": f1, "epoch": epoch, "accuracy": report["accuracy"], "loss": report["loss"]}, 0
        else:
            stale += 1
        if rank == 0:
            lr = scheduler.get_last_lr()[-1]
            log_epoch(writer, epoch, loss, speed, report, lr, classes)
            metrics = {"epoch": epoch + 1, "train_loss": loss, "val_loss": report["loss"], "val_accuracy": report["accuracy"],
                       "val_macro_f1": f1, "lr": lr, "train_images_per_s": speed, "train_size": epoch_size(config, epoch),
                       "weights": report.get("weights", "raw")}
            history.append(metrics)
            write_json(out / "history.json", history)
            best_epochs.offer(f1, epoch, weights.state_dict())
            if improved:
                make_checkpoint(weights.state_dict(), config, classes, pre, epoch, metrics).save(out / "best.pt")
            ckpt = make_checkpoint(unwrap(model).state_dict(), config, classes, pre, epoch, metrics)
            ckpt.training = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "scaler": scaler.state_dict(), "best": best, "stale": stale, "history": history,
                             "best_epochs": best_epochs.entries, **({"ema": ema.state_dict()} if ema is not None else {})}
            ckpt.save(out / "last.pt")
            log.info("epoch %d: train loss %.3f, val loss %.3f, val acc %.3f, val macro-F1 %.3f%s%s, %.0f img/s", epoch + 1,
                     loss, report["loss"], report["accuracy"], f1, " (ema)" if "weights" in report else "",
                     " (best)" if improved else "", speed)
        if stale >= config.patience:
            if rank == 0:
                log.info("early stop: no better val macro-F1 for %d epochs", stale)
            break
    if writer:
        writer.close()
    if rank == 0:
        best = average_best(best_epochs, best, config, classes, pre, val_loader, val_criterion, device, dtype, out)
        log.info(calibrate_best(config, manifest, device))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return best


def average_best(best_epochs: BestEpochs, best: dict, config: TrainConfig, classes, pre, val_loader, criterion, device, dtype,
                 out: Path) -> dict:
    """``--average N``: the mean of the best N epochs' weights replaces best.pt if it scores
    better on val (averaging nearby minima often generalises better than any one of them)."""
    state = best_epochs.average()
    if state is None:
        return best
    model = on_device(build_model(config.arch, len(classes), "none"), device)
    model.load_state_dict(state)
    report = evaluate(model, criterion, val_loader, device, dtype, classes)
    f1 = report["macro avg"]["f1"]
    log.info("average of epochs %s: val macro-F1 %.3f (best single epoch %.3f)",
             ", ".join(str(e + 1) for _, e in sorted(best_epochs.entries, key=lambda e: e[1])), f1, best["f1"])
    if f1 <= best["f1"]:
        return best
    metrics = {"epoch": best["epoch"] + 1, "val_macro_f1": f1, "val_accuracy": report["accuracy"], "val_loss": report["loss"],
               "weights": f"average of {len(best_epochs.entries)} epochs"}
    make_checkpoint(model.state_dict(), config, classes, pre, best["epoch"], metrics).save(out / "best.pt")
    return {**best, "f1": f1, "accuracy": report["accuracy"], "loss": report["loss"], "averaged": len(best_epochs.entries)}
