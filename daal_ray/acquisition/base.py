"""The strategy protocol and registry.

A strategy turns one batch of the pool's inference output into one score per sample;
higher scores are picked first, through the same exact streaming top-K for every
strategy that does not override ``select`` (core-set and Suggestive Annotation do).
Strategies that learn something from the pool (DAAL's networks) do it in ``fit``; the
cycle loop calls ``fit`` and ``select`` and never special-cases a strategy.

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
        pool_ids: every sample id of the pool, sorted (int64); with ``labeled_ids`` it
            gives the unlabeled ids without reading the features.
        labeled_labels: the labels of ``labeled_ids``, aligned (classification only).
    """

    features: Any
    num_labeled: int
    cycle: int
    run_dir: Optional[str] = None
    device: Any = None
    config: Any = None
    labeled_ids: Optional[np.ndarray] = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    pool_ids: Optional[np.ndarray] = None
    labeled_labels: Optional[np.ndarray] = None

    @property
    def num_unlabeled(self) -> int:
        """Unlabeled samples in the pool (needs ``pool_ids``)."""
        if self.pool_ids is None:
            raise ValueError("FitContext.pool_ids is needed to count the unlabeled samples")
        return int(len(self.pool_ids)) - int(self.num_labeled)


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

    def task_head(self, model: Any) -> Optional[Any]:
        """A :class:`~daal_ray.models.JointHead` to train jointly with the task ``model``.

        Called with every freshly built task model: by the task-model training (the head
        is trained with the model, by DDP, and saved in the cycle checkpoint) and by the
        pool predictor (which loads the saved head and emits its ``output_column``).
        Default: no head.
        """
        return None

    def fit(self, ctx: FitContext) -> None:
        """Learn from the pool before scoring (default: nothing to learn)."""

    def score(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        """One float score per row of ``batch``; higher = more worth labeling."""
        raise NotImplementedError

    def predictor_options(self) -> dict[str, Any]:
        """Keyword options for the pool predictor (:class:`daal_ray.inference.PoolPredictor`).

        Default: none. MC dropout asks for several stochastic passes through the head.
        """
        return {}

    def select(self, ctx: FitContext, k: int) -> tuple[np.ndarray, np.ndarray, float]:
        """Choose ``k`` unlabeled ids from ``ctx.features``.

        The default is the exact streaming top-K of :meth:`score`
        (:func:`daal_ray.inference.select_topk`). Strategies whose selection is not a top-K
        (core-set's k-center greedy, Suggestive Annotation's max-cover) override this, so
        the cycle loop calls one method for every strategy.

        Returns:
            ``(ids, scores, selection_seconds)``: the chosen ids in pick order, a score per
            id, and the seconds spent on the selection proper (merging or greedy steps).
        """
        from daal_ray.inference import select_topk

        return select_topk(ctx.features, self, k, ctx.config.scale if ctx.config is not None else None)


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
