"""Acquisition strategies behind one registry (``daal-ray strategies`` lists them)."""

from daal_ray.acquisition import coreset, daal, entropy, learning_loss, mc_dropout, random, rss, suggestive, vaal  # noqa: F401  (registration)  # noqa: F401  (registration)  # noqa: F401  (registration)
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
