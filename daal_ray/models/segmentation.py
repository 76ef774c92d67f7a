"""Semantic segmentation task models: a dilated residual network and a tiny one.

``drn_a_18`` is the paper's kind of model, a dilated residual network (Yu, Koltun &
Funkhouser 2017, DRN-A-18): the ResNet-18 layout whose last two stages keep the 1/8
resolution and dilate their convolutions by 2 and 4 instead of striding; torchvision's
``replace_stride_with_dilation`` does not support ResNet-18's basic blocks, so the blocks
are written here. A 1 x 1 convolution maps the last map to class scores, which are
upsampled bilinearly to the input size. Weights start from scratch (no download).
``seg_small`` is three convolutions at output stride 4, for tests and smoke runs.

The :class:`~daal_ray.models.TaskModel` contract for dense outputs:

* ``forward_features(x) -> (features [n, d], logits [n, C, H, W])``. The features, one
  vector per image for the acquisition strategies, are the **global average of the
  backbone's last map**, i.e. of the map the classifier head reads (512-d for DRN-A-18).
  It is the segmentation analogue of a classifier's penultimate layer: what the head sees,
  pooled over every location.
* ``forward_head_input(x) -> (map, features, logits)`` and ``classify(map)``: the head
  alone on the last map, so MC dropout reruns only the 1 x 1 convolution (with dropout on
  the map) and the bilinear upsampling. ``classify`` upsamples by the output stride, so it
  equals ``forward``'s logits when the input sides are multiples of the stride.
* ``forward_taps(x)``: the output of each stage, for Learning Loss's module.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from daal_ray.models.base import TaskModel, register_model

__all__ = ["DilatedResNet", "SegmentationModel", "SmallSegNet", "drn_a_18", "seg_small"]


class SegmentationModel(TaskModel):
    """Shared dense head: ``stages`` produce the taps, a 1 x 1 conv scores the last one.

    Subclasses build ``self.stem`` (a module, may be the identity), ``self.stages`` (an
    ``nn.ModuleList``), set ``feature_dim``, ``tap_channels`` and ``output_stride``, then
    call :meth:`_build_head`.
    """

    task = "segmentation"
    output_stride: int = 8
    stem: nn.Module
    stages: nn.ModuleList

    def _build_head(self, num_classes: int) -> None:
        self.head = nn.Conv2d(self.feature_dim, num_classes, 1)

    def forward_taps(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Taps: the output of each stage; then the pooled features and the upsampled logits."""
        h = self.stem(x)
        taps = []
        for stage in self.stages:
            h = stage(h)
            taps.append(h)
        return taps, h.mean(dim=(2, 3)), self._upsample(self.head(h), x.shape[-2:])

    def forward_head_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(last map [n, d, h, w], features [n, d], logits [n, C, H, W])``."""
        taps, features, logits = self.forward_taps(x)
        return taps[-1], features, logits

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, features, logits = self.forward_taps(x)
        return features, logits

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``[n, C, h * stride, w * stride]`` from the last map ``[n, d, h, w]``."""
        if features.dim() != 4:
            raise ValueError(f"{type(self).__name__}.classify takes the head's input map [n, d, h, w] "
                             f"(forward_head_input), got shape {tuple(features.shape)}")
        h, w = features.shape[-2:]
        return self._upsample(self.head(features), (h * self.output_stride, w * self.output_stride))

    @staticmethod
    def _upsample(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if tuple(logits.shape[-2:]) == tuple(size):
            return logits
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class _BasicBlock(nn.Module):
    """ResNet basic block with dilation: two 3 x 3 convs (padding = dilation), BN, ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dilation: int = 1, first_dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, padding=first_dilation, dilation=first_dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)), inplace=True)


class DilatedResNet(SegmentationModel):
    """DRN-A: a ResNet of basic blocks whose stages 3 and 4 dilate (2, 4) instead of striding.

    Args:
        num_classes: classes scored per pixel.
        in_channels: image channels.
        blocks: basic blocks per stage (ResNet-18: 2, 2, 2, 2).
        widths: channels per stage.
    """

    output_stride = 8

    def __init__(self, num_classes: int, in_channels: int = 3, blocks: Sequence[int] = (2, 2, 2, 2),
                 widths: Sequence[int] = (64, 128, 256, 512)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1))
        strides, dilations = (1, 2, 1, 1), (1, 1, 2, 4)
        stages = []
        c_in, prev_dilation = widths[0], 1
        for n, width, stride, dilation in zip(blocks, widths, strides, dilations):
            # The first block keeps the previous stage's dilation so the receptive field grows
            # smoothly where a stride was replaced (as torchvision's dilated ResNets do).
            layers = [_BasicBlock(c_in, width, stride, dilation, first_dilation=prev_dilation)]
            layers += [_BasicBlock(width, width, 1, dilation, first_dilation=dilation) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            c_in, prev_dilation = width, dilation
        self.stages = nn.ModuleList(stages)
        self.feature_dim = widths[-1]
        self.tap_channels = tuple(widths)
        self.dilations = dilations
        self._build_head(num_classes)
        self._init_weights()


class SmallSegNet(SegmentationModel):
    """Three conv-BN-ReLU stages (stride 2, stride 2, dilation 2): output stride 4."""

    output_stride = 4

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Identity()

        def stage(c_in: int, c_out: int, stride: int, dilation: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, padding=dilation, dilation=dilation, bias=False),
                                 nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))

        self.stages = nn.ModuleList([stage(in_channels, width, 2, 1), stage(width, 2 * width, 2, 1),
                                     stage(2 * width, 4 * width, 1, 2)])
        self.feature_dim = 4 * width
        self.tap_channels = (width, 2 * width, 4 * width)
        self._build_head(num_classes)
        self._init_weights()


@register_model("drn_a_18")
def drn_a_18(num_classes: int, in_channels: int = 3) -> DilatedResNet:
    """DRN-A-18: dilated ResNet-18 (output stride 8, 11.2M parameters with 19 classes) for segmentation."""
    return DilatedResNet(num_classes, in_channels)


@register_model("seg_small")
def seg_small(num_classes: int, in_channels: int = 3) -> SmallSegNet:
    """A tiny segmentation net (three convs, output stride 4) for tests and smoke runs."""
    return SmallSegNet(num_classes, in_channels)
