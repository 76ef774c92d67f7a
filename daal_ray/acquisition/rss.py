"""Random subset selection (RSS): any strategy, restricted to a random subset of the pool.

Learning Loss (Yoo & Kweon 2019) and VAAL (Sinha et al. 2019) rank only a random subset
of the unlabeled pool (10,000 samples in the DAAL paper's baselines) rather than all of
it. :func:`rss_variant` derives that version of any registered strategy without copying
it: the derived class subclasses the strategy, adds the setting ``rss_subset`` to its
params (default 10,000) and overrides :meth:`Strategy.select` so that only the subset is
eligible; the wrapped strategy then selects inside it exactly as it would over the whole
pool (its top-K, or its own ``select``). The strategy is registered as ``<name>_rss``.

The subset is the ``rss_subset`` unlabeled ids with the smallest
:func:`~daal_ray.acquisition.random.hash_uniform` draws (seeded per experiment and
cycle; ties by the smaller id), so it depends on the ids and the seed only, never on
how the pool is split into blocks. A subset at least as large as the unlabeled pool is
the whole pool: the RSS version then selects what the wrapped strategy does.

To give another strategy an RSS version, one line after its class in its own module::

    rss_variant(VAALStrategy)           # registers "vaal_rss"

(likewise ``rss_variant(VAALTFStrategy)`` -> ``vaal_tf_rss`` and
``rss_variant(LearningLossStrategy)`` -> ``learning_loss_rss``). Registered here:
``entropy_rss``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import numpy as np

from daal_ray.acquisition.base import FitContext, Strategy, derive_variant
from daal_ray.acquisition.entropy import EntropyStrategy
from daal_ray.acquisition.random import hash_uniform
from daal_ray.errors import ConfigError
from daal_ray.runtime import derive_seed
from daal_ray.selection import topk_arrays

__all__ = ["DEFAULT_RSS_SUBSET", "RandomSubsetMixin", "random_subset", "restrict_features", "rss_variant"]

# The DAAL paper's RSS baselines rank a random 10,000 unlabeled samples.
DEFAULT_RSS_SUBSET = 10_000
_RSS_SALT = 0x525353  # "RSS": keeps the subset's draws apart from the random strategy's


def random_subset(unlabeled_ids: np.ndarray, size: int, key: int) -> np.ndarray:
    """The ``size`` ids of ``unlabeled_ids`` with the smallest ``hash_uniform(id, key)``, sorted.

    Depends on the set of ids and ``key`` only (not their order or grouping).
    """
    ids = np.unique(np.asarray(unlabeled_ids, dtype=np.int64))
    if size >= ids.size:
        return ids
    chosen, _ = topk_arrays(ids, 1.0 - hash_uniform(ids, key), size)
    return np.sort(chosen)


def _keep_rows(batch: dict[str, np.ndarray], subset: np.ndarray) -> dict[str, np.ndarray]:
    """Rows that are labeled or in ``subset`` (a sorted id array)."""
    keep = np.asarray(batch["labeled"], dtype=bool) | np.isin(np.asarray(batch["sample_id"]), subset,
                                                             assume_unique=False)
    return {k: np.asarray(v)[keep] for k, v in batch.items()}


def restrict_features(features: Any, subset: np.ndarray) -> Any:
    """``features`` (Ray Dataset, mapping or list of mappings) with only the labeled rows and
    the unlabeled rows whose id is in ``subset``; a Ray Dataset stays lazy."""
    if isinstance(features, Mapping):
        return _keep_rows(dict(features), subset)
    if isinstance(features, (list, tuple)):
        return [_keep_rows(dict(b), subset) for b in features]
    return features.map_batches(_keep_rows, fn_kwargs={"subset": subset}, batch_size=None, batch_format="numpy")


class RandomSubsetMixin:
    """Restricts the ``select`` of the strategy it precedes to a random unlabeled subset.

    Used through :func:`rss_variant`; the params must have an ``rss_subset`` field.
    """

    params: Any
    seed: int
    cycle: int

    def rss_subset(self, ctx: FitContext) -> np.ndarray:
        """The eligible unlabeled ids of this cycle, sorted."""
        if ctx.pool_ids is None or ctx.labeled_ids is None:
            raise ValueError("RSS needs FitContext.pool_ids and FitContext.labeled_ids")
        unlabeled = np.setdiff1d(np.asarray(ctx.pool_ids, np.int64), np.asarray(ctx.labeled_ids, np.int64))

        return random_subset(unlabeled, self.params.rss_subset, derive_seed(self.seed, self.cycle, _RSS_SALT))

    def select(self, ctx: FitContext, k: int) -> tuple[np.ndarray, np.ndarray, float]:
        subset = self.rss_subset(ctx)
        if subset.size < k:
            raise ConfigError(f"rss_subset = {self.params.rss_subset} leaves {subset.size} eligible samples, "
                              f"fewer than the {k} to select per cycle; raise AcquisitionConfig.params.rss_subset")
        labeled = np.asarray(ctx.labeled_ids, np.int64)
        inner = dataclasses.replace(ctx, features=restrict_features(ctx.features, subset),
                                    pool_ids=np.union1d(labeled, subset))
        return super().select(inner, k)  # type: ignore[misc]


def _check_rss(params: Any) -> None:
    if params.rss_subset < 1:
        raise ConfigError(f"{type(params).__name__}.rss_subset must be >= 1, got {params.rss_subset}")


def rss_variant(base: type[Strategy], name: Optional[str] = None, register: bool = True) -> type[Strategy]:
    """Derive (and register) the RSS version of ``base``, named ``<base.name>_rss``.

    Call it once, at import time of ``base``'s module, right after ``base``'s class. The
    derived class is ``base`` itself except that ``select`` sees only a random subset of
    ``params.rss_subset`` unlabeled samples (plus the labeled ones, for strategies that use
    them). ``fit`` still sees the whole pool.

    Args:
        base: a registered strategy class.
        name: registry name (default ``<base.name>_rss``).
        register: add the derived class to the strategy registry.
    """
    return derive_variant(
        base, RandomSubsetMixin, suffix="rss", tag="RSS", fields=[("rss_subset", int, DEFAULT_RSS_SUBSET)],
        validate=_check_rss, what=f"RSS: within a random unlabeled subset (rss_subset = {DEFAULT_RSS_SUBSET:,})",
        params_doc=f"{base.Params.__name__} plus ``rss_subset``: how many random unlabeled samples are eligible (RSS).",
        name=name, register=register, streams=False)


rss_variant(EntropyStrategy)
