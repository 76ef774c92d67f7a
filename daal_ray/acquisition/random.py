"""Random sampling: the baseline every strategy must beat."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from daal_ray.acquisition.base import Strategy, register_strategy
from daal_ray.sampling import hash_uniform

__all__ = ["RandomStrategy", "hash_uniform"]


@register_strategy
class RandomStrategy(Strategy):
    """Uniformly random unlabeled samples (seeded per experiment and cycle)."""

    name = "random"
    description = "uniformly random unlabeled samples, seeded per experiment and cycle"
    needs = frozenset()

    def score(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        return hash_uniform(batch["sample_id"], key=self.seed * 1_000_003 + self.cycle)
