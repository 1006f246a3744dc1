"""Architectures adapted to a dataset's channels, size and classes.

Every model is wrapped in :class:`ImageClassifier`, which takes images in [0, 1] and normalises
them itself, so an epsilon always means the same thing in pixel space.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ParamError
from ..registry import MODELS, register_model


class ImageClassifier(nn.Module):
    """``logits = backbone((x * scale [, RGB -> BGR] - mean) / std)`` for ``x`` in [0, 1], NCHW:
    the model's preprocessing as part of the model, so budgets stay in [0, 1] pixel space."""

    def __init__(self, backbone: nn.Module, mean: tuple[float, ...], std: tuple[float, ...],
                 scale: float = 1.0, bgr: bool = False):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.scale, self.bgr = float(scale), bool(bgr)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            x = x * self.scale
        if self.bgr:
            x = x.flip(1)
        return self.backbone((x - self.mean) / self.std)  # type: ignore[no-any-return]


# ---------------------------------------------------------------- CIFAR-style ResNet-20

class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images (He et al. 2016, CIFAR variant)."""

    def __init__(self, depth: int, in_channels: int, num_classes: int, width: int = 16):
        super().__init__()
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        cin = width
        for stage, mult in enumerate((1, 2, 4)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(_BasicBlock(cin, width * mult, stride))
                cin = width * mult
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.stem(x))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def _check_width(width: int) -> None:
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 256:
        raise ParamError("width", f"must be between 1 and 256 (got {width})")


@register_model("resnet20", description="CIFAR-style ResNet-20 (0.27M params at width 16)")
def resnet20(in_channels: int, num_classes: int, image_size: int, width: int = 16) -> nn.Module:
    _check_width(width)
    return CifarResNet(20, in_channels, num_classes, width)


@register_model("resnet56", description="CIFAR-style ResNet-56 (0.85M params at width 16)")
def resnet56(in_channels: int, num_classes: int, image_size: int, width: int = 16) -> nn.Module:
    _check_width(width)
    return CifarResNet(56, in_channels, num_classes, width)


def _torchvision_resnet(arch: str, in_channels: int, num_classes: int,
                        image_size: int) -> nn.Module:
    import torchvision

    net: Any = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if image_size <= 64:
        # Small inputs: 3x3 stem without the max-pool, as is usual for CIFAR-size images.
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return net  # type: ignore[no-any-return]


@register_model("resnet18", description="torchvision ResNet-18, stem adapted to small inputs")
def resnet18(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return _torchvision_resnet("resnet18", in_channels, num_classes, image_size)


@register_model("resnet50", description="torchvision ResNet-50, stem adapted to small inputs")
def resnet50(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return _torchvision_resnet("resnet50", in_channels, num_classes, image_size)


DATA_ARGS = ("in_channels", "num_classes", "image_size")


def build_model(name: str, *, in_channels: int, num_classes: int, image_size: int,
                mean: tuple[float, ...], std: tuple[float, ...],
                params: dict[str, Any] | None = None) -> ImageClassifier:
    """A freshly initialised model wrapped with the dataset's normalisation."""
    backbone = MODELS.create(name, in_channels=in_channels, num_classes=num_classes,
                             image_size=image_size, **(params or {}))
    return ImageClassifier(backbone, mean, std)
