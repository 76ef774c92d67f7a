"""Task models behind a registry; each exposes its penultimate features."""

from daal_ray.models import segmentation, small, wrn  # noqa: F401  (registration)
from daal_ray.models.base import (
    JointHead,
    TaskModel,
    build_model,
    check_model_name,
    model_descriptions,
    model_names,
    register_model,
)

__all__ = ["JointHead", "TaskModel", "build_model", "check_model_name", "model_descriptions", "model_names", "register_model"]
