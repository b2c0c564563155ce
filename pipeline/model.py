"""Build a torchvision classifier with a head sized for our classes.

Any torchvision classification architecture works; the last Linear layer is replaced, keeping
its name, so a checkpoint's ``state_dict`` loads into ``torchvision.models.<arch>(num_classes=N)``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from runtime.metadata import Preprocessing


class WeightsError(RuntimeError):
    """Pretrained weights could not be had; the message says what to do instead."""


def available_archs() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    name, last = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], nn.Linear(last.in_features, num_classes))
    return model


def _imagenet(arch: str) -> nn.Module:
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    try:
        return torchvision.models.get_model(arch, weights=weights)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; a partial download a RuntimeError
        raise WeightsError(
            f"could not download ImageNet weights for {arch} ({type(e).__name__}: {str(e)[:80]}); "
            "offline? pass --weights PATH (a local state dict) or --weights none"
        ) from None


def _local(arch: str, path: Path) -> nn.Module:
    import torchvision

    model = torchvision.models.get_model(arch, weights=None)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as e:
        raise WeightsError(f"{path}: cannot read weights ({str(e).splitlines()[0][:100]})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(usable) < len(own) // 2:
        raise WeightsError(f"{path}: not {arch} weights ({len(usable)} of {len(own)} tensors match)")
    model.load_state_dict(usable, strict=False)
    return model


def build_model(arch: str, num_classes: int, weights: str = "none") -> nn.Module:
    """``weights``: ``imagenet`` (torchvision's, downloaded), ``none``, or a local file."""
    import torchvision

    if arch not in available_archs():
        raise WeightsError(f"unknown architecture {arch!r}; e.g. resnet18, resnet50, efficientnet_b0, convnext_tiny")
    if weights == "imagenet":
        model = _imagenet(arch)
    elif weights == "none":
        model = torchvision.models.get_model(arch, weights=None)
    else:
        model = _local(arch, Path(weights))
    return _replace_head(model, num_classes)


def load_checkpoint(path: Path) -> tuple[nn.Module, dict]:
    """A model from ``best.pt``/``last.pt`` (our format), in eval mode, with the checkpoint."""
    import torchvision

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model = torchvision.models.get_model(ckpt["arch"], weights=None, num_classes=len(ckpt["classes"]))
        model.load_state_dict(ckpt["state_dict"])
    except FileNotFoundError:
        raise WeightsError(f"{path}: checkpoint not found") from None
    except (KeyError, TypeError) as e:
        raise WeightsError(f"{path}: not a Simpsons checkpoint (missing {e})") from None
    except pickle.UnpicklingError:
        raise WeightsError(f"{path}: cannot load checkpoint (not a PyTorch checkpoint, or one holding more than tensors)") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        raise WeightsError(f"{path}: cannot load checkpoint ({str(e).splitlines()[0][:120]})") from None
    return model.eval(), ckpt


def checkpoint_preprocessing(ckpt: dict) -> Preprocessing:
    """The eval preprocessing a checkpoint was trained with."""
    return Preprocessing(
        image_size=int(ckpt["image_size"]),
        resize_size=int(ckpt.get("resize_size", ckpt["image_size"])),
        mean=tuple(ckpt["mean"]),
        std=tuple(ckpt["std"]),
    )
