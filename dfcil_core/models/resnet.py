"""The reference's `resnet32`: He et al.'s CIFAR ResNet with option-A shortcuts (§2.1).

`blocks_per_stage=5, width=16` is ResNet-32 (470,004 parameters with a 100-way head). The demo uses
the same code with fewer blocks and a lower resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # Option A: subsample by 2 and zero-pad the channels; no parameters.
        self.pad = (planes - in_planes) // 2 if (stride != 1 or in_planes != planes) else None
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.pad is not None:
            shortcut = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """Backbone -> 64-d (4 * width) penultimate feature `pen` -> one linear head `last` over all K classes."""

    def __init__(self, n_classes: int, in_channels: int = 3, blocks_per_stage: int = 5, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages, in_planes = [], width
        for planes, stride in ((width, 1), (2 * width, 2), (4 * width, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.feature_dim = in_planes
        self.last = nn.Linear(in_planes, n_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)  # fan_in, ReLU gain; linear bias keeps PyTorch's default

    def features(self, x: Tensor) -> Tensor:
        out = self.stages(F.relu(self.bn1(self.conv1(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: Tensor, pen: bool = False) -> Tensor:
        h = self.features(x)
        return h if pen else self.last(h)


def build_model(cfg: dict, n_classes: int, in_channels: int) -> nn.Module:
    if cfg.get("name", "resnet32") != "resnet32":
        raise ValueError(f"unknown model {cfg['name']!r}; expected 'resnet32'")
    return CifarResNet(n_classes, in_channels, cfg.get("blocks_per_stage", 5), cfg.get("width", 16))
