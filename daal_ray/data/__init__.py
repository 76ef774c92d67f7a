"""Datasets behind a registry; each sample carries a stable int64 ``sample_id``."""

from daal_ray.data import (  # noqa: F401  (registration)
    cifar,
    cityscapes,
    digits,
    imagefolder,
    manifest,  # noqa: F401  (registration: labeling projects)
)
from daal_ray.data.base import (
    PoolDataset,
    check_dataset_name,
    dataset_descriptions,
    dataset_names,
    get_dataset,
    get_dataset_class,
    open_dataset,
    register_dataset,
)

__all__ = [
    "PoolDataset",
    "check_dataset_name",
    "dataset_descriptions",
    "dataset_names",
    "get_dataset",
    "get_dataset_class",
    "open_dataset",
    "register_dataset",
]
