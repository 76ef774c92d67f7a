"""Random sampling: the baseline every strategy must beat."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from daal_ray.acquisition.base import Strategy, register_strategy


def hash_uniform(ids: np.ndarray, key: int) -> np.ndarray:
    """A uniform [0, 1) draw per id from a SplitMix64 hash of ``(key, id)``.

    The draw depends only on the id and the key, never on the order or grouping of the
    ids, so scoring a pool in any number of blocks picks the same samples.
    """
    with np.errstate(over="ignore"):
        z = np.asarray(ids, dtype=np.int64).astype(np.uint64) + np.uint64(key % 2**64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


@register_strategy
class RandomStrategy(Strategy):
    """Uniformly random unlabeled samples (seeded per experiment and cycle)."""

    name = "random"
    description = "uniformly random unlabeled samples, seeded per experiment and cycle"
    needs = frozenset()

    def score(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        return hash_uniform(batch["sample_id"], key=self.seed * 1_000_003 + self.cycle)
