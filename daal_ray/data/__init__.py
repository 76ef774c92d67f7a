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
from daal_ray.data import cifar, cityscapes, digits, imagefolder  # noqa: F401  (registration)
from daal_ray.data import manifest  # noqa: F401  (registration: labeling projects)

__all__ = [
    "PoolDataset",
    "check_dataset_name",
    "dataset_descriptions",
    "dataset_names",
    "get_dataset",
    "get_dataset_class",
    "register_dataset",
]
