"""Acquisition strategies behind one registry (``daal-ray strategies`` lists them)."""

# Importing the strategy modules registers their strategies.
from daal_ray.acquisition import (  # noqa: F401
    badge,
    bald,
    cluster_margin,
    coreset,
    daal,
    diverse,
    entropy,
    learning_loss,
    mc_dropout,
    power,
    random,
    rss,
    suggestive,
    typicality,
    uncertainty,
    vaal,
)
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
