"""Task-model protocol and registry.

Every task model maps images to logits and exposes its penultimate layer:
``forward_features(x) -> (features [n, feature_dim], logits [n, num_classes])``. Those
features are what acquisition strategies consume.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from daal_ray.errors import ConfigError


class TaskModel(nn.Module):
    """Base class: subclasses implement ``forward_features`` and set ``feature_dim``."""

    feature_dim: int

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]


ModelFactory = Callable[..., TaskModel]
_REGISTRY: dict[str, ModelFactory] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: the factory takes ``num_classes`` and ``in_channels`` keywords."""

    def deco(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = factory
        _DESCRIPTIONS[name] = (factory.__doc__ or "").strip().splitlines()[0]
        return factory

    return deco


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def model_descriptions() -> dict[str, str]:
    return {k: _DESCRIPTIONS[k] for k in sorted(_DESCRIPTIONS)}


def check_model_name(name: str) -> None:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(model_names())}")


def build_model(name: str, num_classes: int, in_channels: int) -> TaskModel:
    check_model_name(name)
    return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels)
