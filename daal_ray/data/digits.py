"""scikit-learn's bundled 8x8 handwritten digits: the embedded default dataset.

1,797 grayscale images of 10 classes. There is no official split: a stratified
``test_fraction`` is held out with ``DataConfig.split_seed`` (default 0), so every
experiment seed is scored on the same test set. ``sample_id`` is the row in scikit-learn's
order.
"""

from __future__ import annotations

import numpy as np

from daal_ray.data.base import InMemoryDataset, register_dataset
from daal_ray.settings import DataConfig, TrainConfig


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of a stratified train/test split, each sorted."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        pos = np.flatnonzero(labels == c)
        rng.shuffle(pos)
        n_test = int(round(test_fraction * len(pos)))
        test.append(pos[:n_test])
        train.append(pos[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@register_dataset("digits")
class DigitsDataset(InMemoryDataset):
    """scikit-learn's 8x8 digits (1,797 images, 10 classes), embedded; no download."""

    name = "digits"
    num_classes = 10
    in_channels = 1
    default_model = "small_cnn"
    # Pixel values are 0..16; scaled to [0, 1] then standardised with the pool's statistics.
    mean = (0.305,)
    std = (0.378,)

    def __init__(self, config: DataConfig) -> None:
        from sklearn.datasets import load_digits  # noqa: PLC0415  (scikit-learn is heavy and only the digits dataset needs it)

        bunch = load_digits()
        x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
        y = bunch.target.astype(np.int64)
        ids = np.arange(len(y), dtype=np.int64)
        tr, te = stratified_split(y, config.test_fraction, config.split_seed)
        super().__init__({"train": (ids[tr], x[tr], y[tr]), "test": (ids[te], x[te], y[te])})

    @classmethod
    def default_train(cls) -> TrainConfig:
        return TrainConfig(model="small_cnn", epochs=20, batch_size=32, optimizer="adam", lr=2e-3,
                           weight_decay=5e-4, schedule="cosine")
