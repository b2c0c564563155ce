"""Fine-tune a torchvision classifier from the manifest: plain functions, one loop.

Reproducibility: every epoch reseeds the RNGs and the sampler from (seed, epoch), so an epoch
is a function of its number and the weights it starts from. ``last.pt`` holds the weights,
optimiser, scheduler and scaler after each epoch, which is all ``--resume`` needs to continue
exactly. Under ``torchrun`` each rank trains on its shard (DDP); rank 0 alone writes files.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pipeline import data, manifest as manifest_io
from pipeline.io import atomic_write, write_json
from pipeline.model import build_model
from runtime.metadata import Preprocessing
from runtime.metrics import classification_report
from runtime.progress import progress


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
        saved = json.loads(path.read_text())
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})


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


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda: no CUDA device is visible to PyTorch")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Mixed precision only on CUDA: bf16 where the GPU has it, else fp16 with a grad scaler."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def head_parameters(model: nn.Module) -> set[int]:
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    return {id(p) for p in last.parameters()}


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with four groups: backbone/head x decayed/not (no decay on norms and biases)."""
    head = head_parameters(model)
    groups: dict[tuple[bool, bool], list] = {(h, d): [] for h in (False, True) for d in (True, False)}
    for p in model.parameters():
        groups[(id(p) in head, p.ndim > 1)].append(p)
    return torch.optim.AdamW(
        [{"params": ps, "weight_decay": config.weight_decay if decay else 0.0, "is_head": is_head}
         for (is_head, decay), ps in groups.items()],
        lr=config.lr,
    )


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


def train_one_epoch(model, criterion, optimizer, scheduler, loader, device, dtype, scaler, desc: str) -> tuple[float, float]:
    """One pass over the loader; returns (mean loss, images per second)."""
    model.train()
    total_loss, seen, start = 0.0, 0, time.perf_counter()
    for images, targets in progress(loader, len(loader), desc):
        images = images.to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total_loss += loss.item() * len(targets)
        seen += len(targets)
    return total_loss / max(seen, 1), seen / (time.perf_counter() - start)


@torch.inference_mode()
def predict(model, loader, device, dtype=None, tta: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and targets for a whole loader; ``tta`` averages with the mirror."""
    model.eval()
    all_logits, all_targets = [], []
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(images).float()
            if tta:
                logits = (logits.softmax(1) + model(images.flip(3)).float().softmax(1)).log()
        all_logits.append(logits.cpu())
        all_targets.append(targets)
    return torch.cat(all_logits), torch.cat(all_targets)


def evaluate(model, criterion, loader, device, dtype, classes: list[str]) -> dict:
    logits, targets = predict(model, loader, device, dtype)
    report = classification_report(
        [classes[i] for i in targets.tolist()], [classes[i] for i in logits.argmax(1).tolist()], classes
    )
    report["loss"] = float(criterion(logits, targets).item()) if len(targets) else float("nan")
    return report


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


def checkpoint(model, config: TrainConfig, classes, pre: Preprocessing, epoch: int, metrics: dict) -> dict:
    """The contract every later stage reads (``torch.load(weights_only=True)``)."""
    return {
        "state_dict": unwrap(model).state_dict(),
        "arch": config.arch,
        "classes": list(classes),
        "mean": list(pre.mean),
        "std": list(pre.std),
        "image_size": pre.image_size,
        "resize_size": pre.resize_size,
        "config": asdict(config),
        "config_hash": config_hash(config),
        "epoch": epoch,
        "metrics": metrics,
    }


def save(obj: dict, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


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


def load_data(config: TrainConfig, table, stats: dict, pre: Preprocessing, rank: int, world: int, pin: bool):
    """Train and val loaders from the manifest, and the training targets (for class weights)."""
    from pipeline.presets import EvalPreset, TrainPreset

    root = Path(config.data_root or stats["config"]["data_root"])
    classes = stats["classes"]
    train_set = data.ManifestDataset(data.split_rows(table, "train"), root, classes, TrainPreset(pre, config.downscale))
    val_set = data.ManifestDataset(data.split_rows(table, "val"), root, classes, EvalPreset(pre))
    if not len(train_set) or not len(val_set):
        raise ValueError(f"{config.manifest}: the manifest has {len(train_set)} train and {len(val_set)} val images; both must be > 0")
    workers = config.workers if config.workers >= 0 else min(8, os.cpu_count() or 1)
    sampler = data.EpochSampler(train_set.targets, len(classes), config.balance == "sampler", config.seed, rank, world)
    return (
        data.loader(train_set, config.batch_size, workers, sampler, pin),
        data.loader(val_set, config.batch_size, workers, None, pin),
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
    return model


def train(config: TrainConfig, resume: bool = False) -> dict:
    """Train, keeping ``best.pt`` (best val macro-F1) and ``last.pt``; returns the best metrics."""
    rank, world, local_rank = distributed()
    device = pick_device(config.device, local_rank)
    manifest_path, out = Path(config.manifest), Path(config.out)
    table, stats = manifest_io.read(manifest_path)
    classes = stats["classes"]
    pre = Preprocessing.for_size(config.image_size, stats["mean"], stats["std"], config.crop_fraction)
    train_loader, val_loader, targets = load_data(config, table, stats, pre, rank, world, pin=device.type == "cuda")

    model = make_model(config, len(classes), resume, rank, world).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    weight = data.class_weights(targets, len(classes)).to(device) if config.balance == "loss" else None
    criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, len(train_loader))
    dtype = amp_dtype(config.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    start_epoch, best, stale, history = 0, {"f1": -1.0, "epoch": -1}, 0, []
    if resume:
        state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best, stale, history = state["epoch"] + 1, state["best"], state["stale"], state["history"]
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
        print(f"training {config.arch} on {len(targets)} images ({len(classes)} classes), validating on "
              f"{len(val_loader.dataset)}; {device}, {world} process(es), amp {dtype}", file=sys.stderr)

    for epoch in range(start_epoch, config.epochs):
        seed_everything(config.seed * 1000 + epoch)
        train_loader.sampler.set_epoch(epoch)
        loss, speed = train_one_epoch(model, criterion, optimizer, scheduler, train_loader, device, dtype, scaler,
                                      f"epoch {epoch + 1}/{config.epochs}")
        report = evaluate(model, criterion, val_loader, device, dtype, classes)
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
                       "val_macro_f1": f1, "lr": lr, "train_images_per_s": speed}
            history.append(metrics)
            write_json(out / "history.json", history)
            ckpt = checkpoint(model, config, classes, pre, epoch, metrics)
            if improved:
                save(ckpt, out / "best.pt")
            save({**ckpt, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                  "scaler": scaler.state_dict(), "best": best, "stale": stale, "history": history}, out / "last.pt")
            print(f"epoch {epoch + 1}: train loss {loss:.3f}, val loss {report['loss']:.3f}, val acc "
                  f"{report['accuracy']:.3f}, val macro-F1 {f1:.3f}{' (best)' if improved else ''}, "
                  f"{speed:.0f} img/s", file=sys.stderr)
        if stale >= config.patience:
            if rank == 0:
                print(f"early stop: no better val macro-F1 for {stale} epochs", file=sys.stderr)
            break
    if writer:
        writer.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return best
