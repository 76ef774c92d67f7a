"""Task-model protocol and registry.

Every task model maps images to logits and exposes its penultimate layer:
``forward_features(x) -> (features [n, feature_dim], logits [n, num_classes])``. Those
features are what acquisition strategies consume. Models also expose their intermediate
feature maps, ``forward_taps(x) -> (taps, features, logits)`` with one ``[n, c_i, h_i, w_i]``
map per block (channel counts in ``tap_channels``), for modules trained on them jointly
with the task model (:class:`JointHead`, e.g. Learning Loss's loss-prediction module).
"""

from __future__ import annotations

from typing import Callable, ClassVar

import torch
from torch import nn

from daal_ray.registry import Registry


class TaskModel(nn.Module):
    """Base class: subclasses implement ``forward_features`` and set ``feature_dim``.

    Models that support joint heads also implement ``forward_taps`` and set
    ``tap_channels`` (the channel count of each tap, in order).
    """

    feature_dim: int
    tap_channels: tuple[int, ...] = ()
    # What the logits score: one class per image, or one per pixel (PoolDataset.task).
    task: ClassVar[str] = "classification"

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward_taps(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """``(taps, features, logits)``: the block outputs ``[n, c_i, h_i, w_i]`` in order, then
        what ``forward_features`` returns."""
        raise NotImplementedError(f"{type(self).__name__} does not expose intermediate feature maps "
                                  f"(forward_taps); pick a model that does, e.g. small_cnn or wrn28_2")

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from the head's input (``forward_head_input(x)[0]``): the classifier head
        alone, so that ``classify(forward_head_input(x)[0]) == forward_head_input(x)[2]``
        (MC dropout reruns it)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its classifier head (classify)")

    def forward_head_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(head input, features, logits)``: what :meth:`classify` reads, then what
        ``forward_features`` returns. For a classifier the head reads the penultimate
        features themselves (the default); a segmentation model's head reads a feature map."""
        features, logits = self.forward_features(x)
        return features, features, logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]


class JointHead(nn.Module):
    """A module a strategy trains jointly with the task model on its intermediate maps.

    The training loop calls it on the model's taps (detached when :meth:`detach_taps`
    says so), adds :meth:`loss` to the task loss, saves its state_dict next to the model
    as ``checkpoint_file`` and the pool predictor emits its output as the column
    ``output_column``. See :meth:`daal_ray.acquisition.base.Strategy.task_head`.
    """

    output_column: ClassVar[str] = "head"
    checkpoint_file: ClassVar[str] = "head.pt"

    def forward(self, taps: list[torch.Tensor]) -> torch.Tensor:
        """One value ``[n]`` per sample from the taps."""
        raise NotImplementedError

    def loss(self, output: torch.Tensor, sample_loss: torch.Tensor, epoch: int, epochs: int) -> torch.Tensor:
        """The head's loss for one batch, added to the mean task loss.

        Args:
            output: this head's ``forward`` output ``[n]``.
            sample_loss: the task loss of each sample ``[n]`` (not detached).
            epoch, epochs: the current epoch (from 0) and the number of epochs.
        """
        raise NotImplementedError

    def detach_taps(self, epoch: int, epochs: int) -> bool:
        """Whether the head's gradient stops at the taps during ``epoch`` (default: never)."""
        return False


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
