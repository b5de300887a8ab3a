"""Backbones that return an embedding, with input normalisation inside the model.

Attacks work in [0, 1] pixel space, so normalisation must be part of the network.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Backbone", "Classifier", "ResNet18", "SmallCNN", "build_backbone"]


class Backbone(nn.Module):
    """Embedding network plus a linear head used by the CE warm start and the baselines."""

    embedding_dim: int

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], num_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.num_classes = num_classes
        self.amp_dtype: torch.dtype | None = None
        self.channels_last = False
        self._compiled_features: Callable[[torch.Tensor], torch.Tensor] | None = None

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def use_fast_path(self, amp: str = "off", channels_last: bool = False,
                      compile: bool = False) -> Backbone:
        """Speed options (``fast`` in the config). The embedding stays float32, so heads,
        losses and attacks are unchanged; only the convolutions run differently."""
        self.amp_dtype = {"off": None, "bf16": torch.bfloat16}[amp]
        self.channels_last = channels_last
        self.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        self._compiled_features = torch.compile(self.features) if compile else None
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding f(x) of images x in [0, 1], float32 whatever the fast path."""
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        features = self._compiled_features or self.features
        if self.amp_dtype is None:
            return features(x)
        with torch.autocast(x.device.type, dtype=self.amp_dtype):
            return features(x).float()

    def linear_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.embed(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)


class SmallCNN(Backbone):
    """A four-conv CNN sized for fast CPU runs on 28x28 or 32x32 images."""

    def __init__(self, in_channels: int, num_classes: int, mean, std, width: int = 32,
                 embedding_dim: int = 128) -> None:
        super().__init__(mean, std, num_classes)
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(w, w, 3, padding=1, stride=2), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1, stride=2), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(2 * w * 16, embedding_dim),
        )
        self.embedding_dim = embedding_dim
        self.linear = nn.Linear(embedding_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(Backbone):
    """The paper's CIFAR ResNet-18: 3x3 stride-1 stem, no max-pool, 512-d pooled embedding."""

    def __init__(self, in_channels: int, num_classes: int, mean, std) -> None:
        super().__init__(mean, std, num_classes)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        layers, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.embedding_dim = 512
        self.linear = nn.Linear(512, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1)


def build_backbone(arch: str, in_channels: int, num_classes: int, mean, std,
                   width: int = 32, embedding_dim: int = 128) -> Backbone:
    if arch == "small_cnn":
        return SmallCNN(in_channels, num_classes, mean, std, width, embedding_dim)
    if arch == "resnet18":
        return ResNet18(in_channels, num_classes, mean, std)
    raise ValueError(f"unknown model.arch {arch!r}")


class Classifier(nn.Module):
    """Images in [0, 1] to class logits: backbone embedding, then a cluster head or the linear one.

    This is what attacks and AutoAttack see; it stays in whatever mode the caller sets.
    """

    def __init__(self, backbone: Backbone, head: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb = self.backbone.embed(x)
        return self.head(emb) if self.head is not None else self.backbone.linear(emb)
