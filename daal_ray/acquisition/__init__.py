"""Acquisition strategies behind one registry (``daal-ray strategies`` lists them)."""

from daal_ray.acquisition.base import (
    FitContext,
    NoParams,
    Strategy,
    build_strategy,
    get_strategy_class,
    register_strategy,
    strategy_descriptions,
    strategy_names,
)
from daal_ray.acquisition import daal, entropy, random  # noqa: F401  (registration)
from daal_ray.acquisition import learning_loss, vaal  # noqa: F401  (registration)
from daal_ray.acquisition import coreset, mc_dropout, rss, suggestive  # noqa: F401  (registration)

__all__ = [
    "FitContext",
    "NoParams",
    "Strategy",
    "build_strategy",
    "get_strategy_class",
    "register_strategy",
    "strategy_descriptions",
    "strategy_names",
]
