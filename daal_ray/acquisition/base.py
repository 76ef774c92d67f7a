"""The strategy protocol and registry.

A strategy turns one batch of the pool's inference output into one score per sample;
higher scores are picked first, through the same exact streaming top-K for every
strategy that does not override ``select`` (core-set and Suggestive Annotation do). The
top-K runs where the pool is: the cycle loop hands the strategy a ``scorer`` (the Ray Data
pass of :mod:`daal_ray.scoring`) in its :class:`FitContext`; a pool held in memory (unit
tests, benches) is scored here, batch by batch, through the same merge.
Strategies that learn something from the pool (DAAL's networks) do it in ``fit``; the
cycle loop calls ``fit`` and ``select`` and never special-cases a strategy.

The inference output a strategy may read is a dict of NumPy arrays: ``sample_id``
``[n]`` (int64), ``features`` ``[n, d]`` (the task model's penultimate layer) and
``probs`` ``[n, num_classes]`` (softmax). A strategy whose ``needs`` is empty is scored
on ids alone and the inference pass is skipped.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Optional, Protocol

import numpy as np

from daal_ray.registry import Registry
from daal_ray.selection import topk_local
from daal_ray.settings import Config


@dataclass(frozen=True)
class NoParams(Config):
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
            read images open its dataset with :func:`daal_ray.data.open_dataset`).
        labeled_ids: the labeled sample ids, sorted (int64).
        extra: room for strategy-specific inputs.
        pool_ids: every sample id of the pool, sorted (int64); with ``labeled_ids`` it
            gives the unlabeled ids without reading the features.
        labeled_labels: the labels of ``labeled_ids``, aligned (classification only).
        scorer: ``scorer(features, strategy, k) -> (ids, scores, merge_seconds)``, the exact
            top ``k`` of ``strategy.score`` over ``features`` where they live (a Ray Data pass
            in the cycle loop, :func:`daal_ray.scoring.select_topk`); ``None`` scores them
            in this process. A strategy that narrows the pool (RSS) passes its subset.
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
    scorer: Optional[Callable[[Any, "Strategy", int], tuple[np.ndarray, np.ndarray, float]]] = None

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
    Params: ClassVar[type[Config]] = NoParams
    needs: ClassVar[frozenset[str]] = frozenset({"features", "probs"})
    # Appended to the error for a pool that lacks a column in ``needs`` (how else to run).
    needs_hint: ClassVar[str] = ""
    # True if ``fit`` trains on the features: it then runs on every rank of the worker group.
    trains: ClassVar[bool] = False
    # True if ``select`` holds O(K d) of the pool, never O(N d): it can then select from a pool
    # of shards of any size (``daal-ray score``). The default top-K does; greedy selections over
    # the whole pool's features (core-set, max-cover) do not.
    streams: ClassVar[bool] = True
    # True if ``select`` reads the features more than once (a top-K, then the candidates' rows):
    # the cycle loop then computes them once and keeps them, instead of running the predictor twice.
    multipass: ClassVar[bool] = False

    def __init__(self, params: Config, seed: int, cycle: int) -> None:
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

    def diagnostic_score(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        """The score the informativeness diagnostics read (:mod:`daal_ray.diagnostics`):
        :meth:`score`, unless the selection adds noise to it (``*_power``)."""
        return self.score(batch)

    def predictor_options(self) -> dict[str, Any]:
        """Keyword options for the pool predictor (:class:`daal_ray.scoring.PoolPredictor`).

        Default: none. MC dropout asks for several stochastic passes through the head.
        """
        return {}

    def select(self, ctx: FitContext, k: int) -> tuple[np.ndarray, np.ndarray, float]:
        """Choose ``k`` unlabeled ids from ``ctx.features``.

        The default is the exact streaming top-K of :meth:`score`, through ``ctx.scorer``
        when the context has one. Strategies whose selection is not a top-K
        (core-set's k-center greedy, Suggestive Annotation's max-cover) override this, so
        the cycle loop calls one method for every strategy.

        Returns:
            ``(ids, scores, selection_seconds)``: the chosen ids in pick order, a score per
            id, and the seconds spent on the selection proper (merging or greedy steps).
        """
        if ctx.scorer is not None:
            return ctx.scorer(ctx.features, self, k)
        return topk_local(ctx.features, self.score, k)


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


class StrategyChoice(Protocol):
    """What :func:`build_strategy` reads: an :class:`~daal_ray.config.AcquisitionConfig`."""

    strategy: str
    params: Mapping[str, Any]


def publish_variant(cls: type, module: str) -> type:
    """Make the generated class ``cls`` importable as ``module.<name>``, so Ray workers
    unpickle its instances by reference."""
    cls.__module__ = module
    cls.__qualname__ = cls.__name__
    setattr(sys.modules[module], cls.__name__, cls)
    return cls


def derive_variant(base: type[Strategy], mixin: type, *, suffix: str, tag: str, fields: list[tuple[str, Any, Any]],
                   validate: Callable[[Any], None], what: str, params_doc: str, name: Optional[str] = None,
                   register: bool = True, scorers_only: bool = False, **attrs: Any) -> type[Strategy]:
    """A strategy derived from ``base``: ``mixin`` overrides part of it, its params are
    ``base.Params`` plus ``fields``; registered as ``<base.name>_<suffix>`` (or ``name``).

    How RSS, diverse and power versions of a strategy are made without copying it.

    Args:
        base: the strategy to derive from.
        mixin: class placed before ``base``, overriding what the variant changes.
        suffix: the registry-name suffix (``rss``, ``diverse``, ``power``).
        tag: the class-name suffix (``RSS``, ``Diverse``, ``Power``).
        fields: ``(name, type, default)`` of the added params.
        validate: checks of the added params, after ``base.Params.validate``.
        what: what the variant does, appended to the base's description.
        params_doc: docstring of the derived params.
        name: registry name (default ``<base.name>_<suffix>``).
        register: add the variant to the registry.
        scorers_only: the variant changes how a top-K of scores is taken, so ``base`` must
            select by that top-K (not by a method of its own).
        attrs: class attributes of the variant (``needs``, ``streams``, ...).

    Raises:
        TypeError: ``scorers_only`` and ``base`` selects by its own method.
    """
    if scorers_only and base.select is not Strategy.select:
        raise TypeError(f"{base.__name__} selects by its own method; only per-sample scorers get a {suffix} version")
    base_params = base.Params

    def check_all(self: Any) -> None:
        base_params.validate(self)
        validate(self)

    # Named after the strategy, not its params: strategies that share a Params class (vaal,
    # vaal_tf) get distinct derived ones, each importable by its own name.
    params = dataclasses.make_dataclass(
        f"{base.__name__}{tag}Params", [(f, t, dataclasses.field(default=d)) for f, t, d in fields],
        bases=(base_params,), frozen=True, namespace={"validate": check_all, "__doc__": params_doc})
    publish_variant(params, base.__module__)
    cls = type(f"{base.__name__}{tag}", (mixin, base), {
        "name": name or f"{base.name}_{suffix}", "description": f"{base.description}; {what}", "Params": params,
        "__doc__": f"{(base.__doc__ or base.name).strip().splitlines()[0]} {what[0].upper() + what[1:]}.", **attrs})
    publish_variant(cls, base.__module__)
    return register_strategy(cls) if register else cls


def build_strategy(config: StrategyChoice, seed: int, cycle: int) -> Strategy:
    """A fresh strategy for one cycle from an :class:`~daal_ray.config.AcquisitionConfig`,
    its params validated."""
    cls = get_strategy_class(config.strategy)
    params = cls.Params.from_dict(config.params, where=f"AcquisitionConfig.params ({config.strategy})")
    return cls(params, seed=seed, cycle=cycle)
