"""Build a classifier with a head sized for our classes: any torchvision classification
architecture, or EfficientNet-Lite0/1/2 (``efficientnet_lite``), whose ImageNet weights install
from the package index instead of downloading at run time.

The last Linear layer is replaced, keeping its name, so a checkpoint's ``state_dict`` loads into
``build_model(arch, N)``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from pipeline.training import efficientnet_lite as lite
from pipeline.training.efficientnet_lite import WeightsError
from pipeline.training.tensors import read_tensors

__all__ = ["WeightsError", "available_archs", "build_model", "freeze_finer_than", "pretrained_normalisation", "pooled", "split_embedding",
           "split_head", "train_mode"]


def available_archs() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models) + lite.lite_archs()


def _bare(arch: str) -> nn.Module:
    """The architecture with random weights and its 1000-class ImageNet head."""
    import torchvision

    if arch in lite.lite_archs():
        return lite.build_efficientnet_lite(arch, 1000, pretrained=False)
    return torchvision.models.get_model(arch, weights=None)


def pretrained_normalisation(arch: str, weights: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The mean and std the ImageNet weights of ``arch`` were trained with where they must be
    kept (EfficientNet-Lite's (x - 127) / 128), or None: normalise with the data set's own
    statistics, as the reference pipeline does for ResNet50."""
    if weights == "imagenet" and arch in lite.lite_archs():
        return lite.MEAN, lite.STD
    return None


def _head_name(model: nn.Module) -> str:
    """The classifier head is the last Linear layer in every torchvision classifier."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], module)


def _replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    name = _head_name(model)
    _set_module(model, name, nn.Linear(model.get_submodule(name).in_features, num_classes))
    return model


def split_head(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """(body, head): a copy of ``model`` whose head is the identity, so it returns the
    penultimate features, and the head itself. ``head(body(x)) == model(x)``."""
    name = _head_name(model)
    body = copy.deepcopy(model)
    _set_module(body, name, nn.Identity())
    return body, model.get_submodule(name)


class Embedding(NamedTuple):
    """A classifier cut where its embedding is: ``head(neck(trunk(x))) == model(x)``."""

    trunk: nn.Module  # image -> the embedding, or a feature map whose spatial mean it is
    neck: nn.Module  # the trunk's output -> the penultimate features
    head: nn.Linear  # penultimate features -> logits
    dim: int  # the embedding's length


def split_embedding(model: nn.Module) -> Embedding:
    """Where the open-set distances measure: EfficientNet-Lite's last block (320 channels, before
    the 1x1 convolution that widens them to 1280 through ReLU6, whose sparse, clipped output places
    a new character nearer the known ones: eighteen leave-one-out runs, the shipped score's AUROC
    0.856 against 0.847, worst character 0.739 against 0.723, BENCHMARKS.md "Unknown verdict");
    every other architecture's penultimate features."""
    body, head = split_head(model)
    if isinstance(body, lite.EfficientNetLite):
        return Embedding(nn.Sequential(body.stem, body.blocks), nn.Sequential(body.head, body.pool, nn.Flatten(1), body.classifier),
                         head, body.head[0].in_channels)
    return Embedding(body, nn.Identity(), head, head.in_features)


def pooled(inner: torch.Tensor) -> torch.Tensor:
    """The embedding from a trunk's output: a feature map's spatial mean, a vector as it is."""
    return inner.mean(dim=(2, 3)) if inner.ndim == 4 else inner


def _imagenet(arch: str) -> nn.Module:
    import torchvision

    if arch in lite.lite_archs():  # from the installed weights package: no download
        return lite.build_efficientnet_lite(arch, 1000, pretrained=True)
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    try:
        return torchvision.models.get_model(arch, weights=weights)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; a partial download a RuntimeError
        raise WeightsError(
            f"could not download ImageNet weights for {arch} ({type(e).__name__}: {str(e)[:80]}); "
            "offline? pass --weights PATH (a local state dict) or --weights none"
        ) from None


def _local(arch: str, path: Path) -> nn.Module:
    model = _bare(arch)
    state = read_tensors(path, "weights", WeightsError)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: not {arch} weights (holds a {type(state).__name__}, not a state dict)")
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and isinstance(v, torch.Tensor) and own[k].shape == v.shape}
    if len(usable) < len(own) // 2:
        raise WeightsError(f"{path}: not {arch} weights ({len(usable)} of {len(own)} tensors match)")
    model.load_state_dict(usable, strict=False)
    return model


def build_model(arch: str, num_classes: int, weights: str = "none") -> nn.Module:
    """``weights``: ``imagenet`` (torchvision's, downloaded; EfficientNet-Lite's, from its
    installed package), ``none``, or a local file."""
    if arch not in available_archs():
        raise WeightsError(f"unknown architecture {arch!r}; e.g. resnet18, resnet50, efficientnet_lite0, convnext_tiny")
    if weights == "imagenet":
        model = _imagenet(arch)
    elif weights == "none":
        model = _bare(arch)
    else:
        model = _local(arch, Path(weights))
    return _replace_head(model, num_classes)


def output_strides(model: nn.Module, probe: int = 64) -> dict[str, float]:
    """How much smaller than the input each parameter's layer output is (2 for a stride-2 stem,
    32 for the last stage of a ResNet; infinite after the global pooling), found by one forward
    pass on a ``probe`` x ``probe`` image in eval mode, so no batch-norm statistic moves."""
    strides: dict[str, float] = {}

    def hook(name: str):
        def record(module, args, output):
            strides[name] = probe / output.shape[-1] if output.dim() == 4 else float("inf")
        return record

    owners = [(name, m) for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    handles = [m.register_forward_hook(hook(name)) for name, m in owners]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, probe, probe))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return {f"{name}.{p}" if name else p: strides[name] for name, m in owners for p, _ in m.named_parameters(recurse=False)}


def freeze_finer_than(model: nn.Module, stride: int) -> int:
    """Fine-tune only the layers whose output is at 1/``stride`` of the input resolution or
    coarser (and the head): the early, fine-resolution layers keep their ImageNet weights, and
    the backward pass stops before them, which is most of a CPU step's cost in a depthwise
    network. The same rule fits every CNN, whatever its module names. Returns the number of
    parameters frozen; ``stride`` 1 freezes nothing."""
    frozen = 0
    strides = output_strides(model) if stride > 1 else {}
    for name, p in model.named_parameters():
        if strides.get(name, float("inf")) < stride:
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


def train_mode(model: nn.Module) -> nn.Module:
    """``model.train()``, except that a batch norm whose weights are frozen keeps its running
    statistics and uses them: a frozen layer must compute what it computed on ImageNet."""
    model.train()
    for m in model.modules():
        weights = list(m.parameters())
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and weights and not any(p.requires_grad for p in weights):
            m.eval()
    return model
