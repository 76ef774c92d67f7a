"""A small CNN for tiny images (digits) and quick runs on any image size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from daal_ray.models.base import TaskModel, register_model


class GridPool(nn.Module):
    """Average pooling to a ``size x size`` grid: ``adaptive_avg_pool2d``'s result, computed as
    a plain ``avg_pool2d`` when the grid divides the map (the same windows, bit for bit, at
    two thirds of the time on CPU: digits' 8 x 8 and CIFAR's 32 x 32 maps)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.size == 0 and w % self.size == 0:
            return F.avg_pool2d(x, (h // self.size, w // self.size))
        return F.adaptive_avg_pool2d(x, self.size)


@register_model("small_cnn")
class SmallCNN(TaskModel):
    """Two conv blocks and a 128-d hidden layer; works on any image size (adaptive pooling)."""

    def __init__(self, num_classes: int, in_channels: int, width: int = 32, feature_dim: int = 128) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.tap_channels = (width, 2 * width)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
            GridPool(4),
        )
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(feature_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.hidden(self.body(x))
        return f, self.head(f)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward_taps(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Taps: the output of each conv block (after its ReLU)."""
        t1 = self.body[:3](x)
        t2 = self.body[3:6](t1)
        f = self.hidden(self.body[6](t2))
        return [t1, t2], f, self.head(f)
