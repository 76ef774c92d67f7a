"""Task-model protocol and registry.

Every task model maps images to logits and exposes its penultimate layer:
``forward_features(x) -> (features [n, feature_dim], logits [n, num_classes])``. Those
features are what acquisition strategies consume.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from daal_ray.registry import Registry


class TaskModel(nn.Module):
    """Base class: subclasses implement ``forward_features`` and set ``feature_dim``."""

    feature_dim: int

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]


ModelFactory = Callable[..., TaskModel]
MODELS: Registry[ModelFactory] = Registry("model")


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: the factory takes ``num_classes`` and ``in_channels`` keywords."""

    def deco(factory: ModelFactory) -> ModelFactory:
        return MODELS.add(name, factory)

    return deco


def model_names() -> list[str]:
    return MODELS.names()


def model_descriptions() -> dict[str, str]:
    return MODELS.descriptions()


def check_model_name(name: str) -> None:
    MODELS.check(name)


def build_model(name: str, num_classes: int, in_channels: int) -> TaskModel:
    return MODELS.get(name)(num_classes=num_classes, in_channels=in_channels)
