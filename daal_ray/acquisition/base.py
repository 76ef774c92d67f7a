"""The strategy protocol and registry.

A strategy turns one batch of the pool's inference output into one score per sample;
higher scores are picked first, through the same exact streaming top-K for every
strategy. Strategies that learn something from the pool (DAAL's networks) do it in
``fit``; the cycle loop never special-cases a strategy.

The inference output a strategy may read is a dict of NumPy arrays: ``sample_id``
``[n]`` (int64), ``features`` ``[n, d]`` (the task model's penultimate layer) and
``probs`` ``[n, num_classes]`` (softmax). A strategy whose ``needs`` is empty is scored
on ids alone and the inference pass is skipped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional

import numpy as np

from daal_ray.config import AcquisitionConfig, _Config
from daal_ray.registry import Registry


@dataclass(frozen=True)
class NoParams(_Config):
    """A strategy without settings."""


@dataclass
class FitContext:
    """What ``Strategy.fit`` may use: the pool's inference output and who is labeled.

    Attributes:
        features: a Ray Dataset (or, in unit tests, a dict of arrays) of the whole pool's
            inference output, with a boolean ``labeled`` column.
        num_labeled: how many samples are labeled.
        cycle: the cycle whose model produced the features.
        run_dir: the experiment's directory (for checkpoints).
        device: the torch device of this rank.
        config: the experiment's :class:`~daal_ray.config.ExperimentConfig` (strategies that
            read images open its dataset with :func:`daal_ray.driver.open_dataset`).
        labeled_ids: the labeled sample ids, sorted (int64).
        extra: room for strategy-specific inputs.
    """

    features: Any
    num_labeled: int
    cycle: int
    run_dir: Optional[str] = None
    device: Any = None
    config: Any = None
    labeled_ids: Optional[np.ndarray] = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class Strategy:
    """Base class of acquisition strategies.

    Subclasses set ``name``, ``description`` and, if they take settings, ``Params`` (a
    frozen config dataclass), and implement :meth:`score`. Instances are pickled into Ray
    Data workers, so they hold plain data (NumPy arrays, state_dicts), not open resources.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Params: ClassVar[type[_Config]] = NoParams
    needs: ClassVar[frozenset[str]] = frozenset({"features", "probs"})
    # True if ``fit`` trains on the features: it then runs on every rank of the worker group.
    trains: ClassVar[bool] = False

    def __init__(self, params: _Config, seed: int, cycle: int) -> None:
        self.params = params
        self.seed = seed
        self.cycle = cycle

    def fit(self, ctx: FitContext) -> None:
        """Learn from the pool before scoring (default: nothing to learn)."""

    def score(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        """One float score per row of ``batch``; higher = more worth labeling."""
        raise NotImplementedError


STRATEGIES: Registry[type[Strategy]] = Registry("strategy", "strategies")


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator adding ``cls`` to the registry under ``cls.name``."""
    return STRATEGIES.add(cls.name, cls, cls.description)


def strategy_names() -> list[str]:
    return STRATEGIES.names()


def strategy_descriptions() -> dict[str, str]:
    return STRATEGIES.descriptions()


def get_strategy_class(name: str) -> type[Strategy]:
    return STRATEGIES.get(name)


def build_strategy(config: AcquisitionConfig, seed: int, cycle: int) -> Strategy:
    """A fresh strategy for one cycle, its params validated."""
    cls = get_strategy_class(config.strategy)
    params = cls.Params.from_dict(config.params, where=f"AcquisitionConfig.params ({config.strategy})")
    return cls(params, seed=seed, cycle=cycle)
