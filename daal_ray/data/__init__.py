"""Datasets behind a registry; each sample carries a stable int64 ``sample_id``."""

from daal_ray.data.base import (
    PoolDataset,
    check_dataset_name,
    dataset_descriptions,
    dataset_names,
    get_dataset,
    get_dataset_class,
    register_dataset,
)
from daal_ray.data import cifar, digits, imagefolder  # noqa: F401  (registration)

__all__ = [
    "PoolDataset",
    "check_dataset_name",
    "dataset_descriptions",
    "dataset_names",
    "get_dataset",
    "get_dataset_class",
    "register_dataset",
]
