"""The dataset protocol and its registry.

A dataset serves two splits, ``train`` (the active-learning pool) and ``test``. Every
sample has a stable int64 ``sample_id`` within its split; rows are always addressed by id,
never by position, so a pool can be sharded, shuffled and resumed freely.
"""

from __future__ import annotations

import abc
import functools
import json
from typing import Callable, Literal

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from daal_ray.errors import DataError
from daal_ray.registry import Registry
from daal_ray.settings import DataConfig, TrainConfig

Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = ("train", "test")


def id_rows(sorted_ids: np.ndarray, ids: np.ndarray, where: str, split: str) -> np.ndarray:
    """Positions of ``ids`` in ``sorted_ids`` (a split's ids, sorted); ``DataError`` naming
    up to five ids that are not there (``where``: the dataset, for the message)."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0:
        return np.zeros(0, dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), max(len(sorted_ids) - 1, 0))
    if sorted_ids.size == 0 or np.any(sorted_ids[pos] != ids):
        bad = ids if sorted_ids.size == 0 else ids[sorted_ids[pos] != ids]
        raise DataError(f"{where}: sample ids {bad[:5].tolist()} are not in split {split}")
    return pos


class PoolDataset(abc.ABC):
    """One dataset: ids, images and targets of its ``train`` and ``test`` splits.

    Subclasses set the class attributes and implement the three abstract methods.
    ``images`` returns normalised float tensors ``[n, C, H, W]``; ``targets`` returns one
    int64 class per sample for classification, an int64 mask ``[n, H, W]`` per sample for
    segmentation (255 = void, ignored by the loss and the metric).
    """

    name: str = ""
    task: Literal["classification", "segmentation"] = "classification"
    num_classes: int = 0
    in_channels: int = 3
    default_model: str = "small_cnn"

    @abc.abstractmethod
    def sample_ids(self, split: Split) -> np.ndarray:
        """All ids of ``split``, int64, in a fixed order."""

    @abc.abstractmethod
    def images(self, split: Split, ids: np.ndarray) -> torch.Tensor:
        """Normalised images of ``ids``, float32 ``[n, C, H, W]``, in the order of ``ids``."""

    @abc.abstractmethod
    def targets(self, split: Split, ids: np.ndarray) -> np.ndarray:
        """Ground-truth targets of ``ids`` (the simulated oracle and the test metric)."""

    @classmethod
    def default_train(cls) -> TrainConfig:
        """The training recipe used when the user does not override it."""
        return TrainConfig(model=cls.default_model)

    def class_frequencies(self, split: Split, ids: np.ndarray, chunk: int = 64) -> np.ndarray:
        """Each sample's class composition, float64 ``[n, num_classes]``, rows summing to 1.

        A one-hot row per label for classification; for segmentation the share of the
        image's non-void pixels (255 is void) in each class, a row of zeros if all are void.
        Targets are read ``chunk`` samples at a time.
        """
        ids = np.asarray(ids, dtype=np.int64)
        c = self.num_classes
        out = np.zeros((ids.size, c), dtype=np.float64)
        for start in range(0, ids.size, chunk):
            t = np.asarray(self.targets(split, ids[start:start + chunk]), dtype=np.int64)
            t = t.reshape(t.shape[0], -1)
            keep = t != 255 if self.task == "segmentation" else np.ones(t.shape, dtype=bool)
            rows = np.broadcast_to(np.arange(t.shape[0])[:, None], t.shape)
            counts = np.bincount((rows * c + t)[keep], minlength=t.shape[0] * c).reshape(t.shape[0], c)
            out[start:start + t.shape[0]] = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        return out

    def torch_dataset(self, split: Split, ids: np.ndarray, targets: np.ndarray | None = None) -> TorchDataset:
        """A map-style torch dataset over ``ids`` yielding ``(image, target)``.

        ``targets`` overrides the dataset's own (labels a person gave).
        """
        ids = np.asarray(ids, dtype=np.int64)
        if targets is None:
            targets = self.targets(split, ids)
        return _IdDataset(self, split, ids, np.asarray(targets))

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


class _IdDataset(TorchDataset):
    """Loads images in batches through ``PoolDataset.images``; targets are given."""

    def __init__(self, source: PoolDataset, split: Split, ids: np.ndarray, targets: np.ndarray) -> None:
        if len(ids) != len(targets):
            raise DataError(f"{len(ids)} ids but {len(targets)} targets")
        self.source, self.split, self.ids, self.targets = source, split, ids, targets

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        x = self.source.images(self.split, self.ids[i : i + 1])[0]
        return x, torch.as_tensor(self.targets[i])

    def __getitems__(self, idx: list[int]):
        # Batched fetch: one call per batch instead of one per sample.
        idx_arr = np.asarray(idx)
        x = self.source.images(self.split, self.ids[idx_arr])
        y = torch.as_tensor(self.targets[idx_arr])
        return [(x[j], y[j]) for j in range(len(idx_arr))]


class InMemoryDataset(PoolDataset):
    """A dataset whose splits fit in memory as uint8/float arrays plus labels."""

    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __init__(self, arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        # arrays[split] = (ids int64 [n], images [n, C, H, W] (uint8 or float), labels int64 [n])
        self._ids: dict[str, np.ndarray] = {}
        self._pos: dict[str, dict] = {}
        self._x: dict[str, np.ndarray] = {}
        self._y: dict[str, np.ndarray] = {}
        for split, (ids, x, y) in arrays.items():
            ids = np.asarray(ids, dtype=np.int64)
            if len(np.unique(ids)) != len(ids):
                raise DataError(f"dataset {self.name}: duplicate sample ids in split {split}")
            if not (len(ids) == len(x) == len(y)):
                raise DataError(f"dataset {self.name}: split {split} has {len(ids)} ids, {len(x)} images, {len(y)} labels")
            if len(ids) == 0:
                raise DataError(f"dataset {self.name}: split {split} is empty")
            if np.issubdtype(np.asarray(x).dtype, np.floating):
                finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
                if not finite.all():
                    raise DataError(f"dataset {self.name}: split {split} has NaN or infinite pixel values, "
                                    f"e.g. sample ids {ids[~finite][:5].tolist()}")
            y = np.asarray(y, dtype=np.int64)
            bad = (y < 0) | (y >= self.num_classes)
            if bad.any():
                raise DataError(f"dataset {self.name}: split {split} has labels outside [0, {self.num_classes}), "
                                f"e.g. sample ids {ids[bad][:5].tolist()}")
            order = np.argsort(ids, kind="stable")
            self._ids[split] = ids
            self._pos[split] = (ids[order], order)
            self._x[split] = x
            self._y[split] = y
        m = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        s = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        self._norm = (torch.from_numpy(m), torch.from_numpy(s))

    def _rows(self, split: str, ids: np.ndarray) -> np.ndarray:
        self._check_split(split)
        ids = np.asarray(ids, dtype=np.int64)
        sorted_ids, order = self._pos[split]
        pos = np.searchsorted(sorted_ids, ids)
        pos = np.minimum(pos, len(sorted_ids) - 1)
        if ids.size and np.any(sorted_ids[pos] != ids):
            bad = ids[sorted_ids[pos] != ids][:5].tolist()
            raise DataError(f"dataset {self.name}: sample ids {bad} are not in split {split}")
        return order[pos]

    def sample_ids(self, split: Split) -> np.ndarray:
        self._check_split(split)
        return self._ids[split].copy()

    def images(self, split: Split, ids: np.ndarray) -> torch.Tensor:
        x = self._x[split][self._rows(split, ids)]
        t = torch.from_numpy(np.ascontiguousarray(x)).float()
        if x.dtype == np.uint8:
            t = t / 255.0
        mean, std = self._norm
        return (t - mean) / std

    def targets(self, split: Split, ids: np.ndarray) -> np.ndarray:
        return self._y[split][self._rows(split, ids)].copy()


DATASETS: Registry[Callable[[DataConfig], PoolDataset]] = Registry("dataset")


def register_dataset(name: str, description: str = "") -> Callable:
    """Class or factory decorator: ``@register_dataset("digits")``; the factory takes a DataConfig."""

    def deco(factory: Callable[[DataConfig], PoolDataset]):
        return DATASETS.add(name, factory, description)

    return deco


def dataset_names() -> list[str]:
    return DATASETS.names()


def dataset_descriptions() -> dict[str, str]:
    return DATASETS.descriptions()


def check_dataset_name(name: str) -> None:
    DATASETS.check(name)


def get_dataset_class(name: str) -> type[PoolDataset]:
    """The registered class of ``name`` (no data is read)."""
    return DATASETS.get(name)  # type: ignore[return-value]


def get_dataset(config: DataConfig) -> PoolDataset:
    """Build the dataset ``config.name`` (``DataError`` if its files are missing or bad)."""
    return DATASETS.get(config.name)(config)


@functools.lru_cache(maxsize=1)
def _open_dataset(data_json: str) -> PoolDataset:
    return get_dataset(DataConfig.from_dict(json.loads(data_json)))


def open_dataset(config: DataConfig) -> PoolDataset:
    """The dataset of ``config``, opened once per process for consecutive users of it
    (preflight, each experiment of a group, each worker, strategies that read images), so
    a large image folder is not scanned again for every experiment."""
    return _open_dataset(config.to_json())
