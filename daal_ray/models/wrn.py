"""Wide residual network (Zagoruyko & Komodakis 2016); WRN-28-2 is the paper's CIFAR model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from daal_ray.models.base import TaskModel, register_model


class _Block(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3, 1x1 shortcut on shape change."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None if (c_in == c_out and stride == 1) else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(F.relu(self.bn2(y)))
        # The shortcut takes the pre-activated input when it projects, as in the reference WRN.
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(TaskModel):
    """WRN-depth-k: 3 groups of (depth - 4) / 6 blocks of widths 16k, 32k, 64k."""

    def __init__(self, num_classes: int, in_channels: int = 3, depth: int = 28, widen_factor: int = 2) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.depth, self.widen_factor = depth, widen_factor
        self.conv = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        layers = []
        c_in = widths[0]
        self.group_ends = tuple(n * g for g in range(1, 4))  # block counts at each group's end
        self.tap_channels = tuple(widths[1:])
        for g, stride in zip(range(1, 4), (1, 2, 2)):
            for b in range(n):
                layers.append(_Block(c_in, widths[g], stride if b == 0 else 1))
                c_in = widths[g]
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(c_in)
        self.fc = nn.Linear(c_in, num_classes)
        self.feature_dim = c_in
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.bn(self.blocks(self.conv(x))))
        f = F.adaptive_avg_pool2d(h, 1).flatten(1)
        return f, self.fc(f)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)

    def forward_taps(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Taps: the output of each of the three groups (the last one before the final BN-ReLU)."""
        h = self.conv(x)
        taps, start = [], 0
        for end in self.group_ends:
            h = self.blocks[start:end](h)
            taps.append(h)
            start = end
        f = F.adaptive_avg_pool2d(F.relu(self.bn(h)), 1).flatten(1)
        return taps, f, self.fc(f)


@register_model("wrn28_2")
def wrn28_2(num_classes: int, in_channels: int = 3) -> WideResNet:
    """WRN-28-2 (depth 28, widen factor 2; 1.5M parameters): the paper's CIFAR task model."""
    return WideResNet(num_classes, in_channels, depth=28, widen_factor=2)
