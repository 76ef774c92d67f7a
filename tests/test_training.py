"""Training-image augmentation (TrainConfig.augment): the standard crop-and-flip recipe.

Known answers: every augmented image is a 4-pixel shift of the zero-padded original,
possibly mirrored; about half are mirrored; a seed repeats the draw; ``none`` is the
identity; dense targets are refused (their masks would not move with the images).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from daal_ray.config import TrainConfig
from daal_ray.errors import ConfigError
from daal_ray.training import augment_batch, fit_task_model


def _windows(img: torch.Tensor, pad: int = 4) -> list[torch.Tensor]:
    h, w = img.shape[-2:]
    padded = torch.nn.functional.pad(img, (pad, pad, pad, pad))
    return [padded[:, dy:dy + h, dx:dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]


def test_crop_flip_is_a_padded_shift_or_its_mirror():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 12, 12)
    out = augment_batch(x, "crop_flip")
    assert out.shape == x.shape
    flipped = 0
    for i in range(len(x)):
        plain = [w for w in _windows(x[i]) if torch.equal(w, out[i])]
        mirror = [w for w in _windows(x[i]) if torch.equal(w.flip(2), out[i])]
        assert plain or mirror, f"image {i} is no shift of its padded original"
        flipped += bool(mirror) and not plain
    assert 16 <= flipped <= 48  # about half of 64
    assert not torch.equal(out, x)
    assert augment_batch(x, "none") is x


def test_crop_flip_repeats_under_a_seed():
    x = torch.rand(8, 1, 8, 8)
    torch.manual_seed(3)
    a = augment_batch(x, "crop_flip")
    torch.manual_seed(3)
    b = augment_batch(x, "crop_flip")
    assert torch.equal(a, b)


def test_augment_is_validated_and_refused_for_dense_targets():
    with pytest.raises(ConfigError, match="augment"):
        TrainConfig(augment="rotate")

    class Dense:  # the refusal comes before anything is read or trained
        task = "segmentation"

    with pytest.raises(ConfigError, match="dense targets"):
        fit_task_model(Dense(), np.arange(4), None, TrainConfig(model="seg_small", epochs=1, augment="crop_flip"),
                       seed=0, device=torch.device("cpu"))
