"""Margin and least-confidence sampling: the two other classic softmax-uncertainty scores.

* ``margin`` (Scheffer et al. 2001; Roth & Small 2006): the samples whose two most probable
  classes are closest, score ``-(p_(1) - p_(2))``. Bahri et al. (2022) found it matches or
  beats every newer method they tried on many benchmarks: the baseline a new strategy must
  at least equal.
* ``least_confidence`` (Lewis & Gale 1994): the samples whose most probable class is least
  probable, score ``1 - p_(1)``.

Both read the ``probs`` column only. For segmentation the score is that of the image's
mean pixel probabilities (the predictor's ``probs`` column), the reduction entropy's
``probs`` fallback uses too.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from daal_ray.acquisition.base import Strategy, register_strategy

__all__ = ["LeastConfidenceStrategy", "MarginStrategy", "sample_margin", "top_two"]


def top_two(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The largest and second-largest probability of each row of ``probs [n, C]`` (float64);
    the second is 0 for a single class."""
    p = np.asarray(probs, dtype=np.float64).reshape(len(probs), -1)
    if p.shape[1] == 1:
        return p[:, 0], np.zeros(p.shape[0])
    part = np.partition(p, p.shape[1] - 2, axis=1)
    return part[:, -1], part[:, -2]


def sample_margin(probs: np.ndarray) -> np.ndarray:
    """``p_(1) - p_(2)`` per row of ``probs [n, C]``: small = the model hesitates between two classes."""
    first, second = top_two(probs)
    return first - second


@register_strategy
class MarginStrategy(Strategy):
    """The samples with the smallest gap between the two most probable classes."""

    name = "margin"
    description = "smallest margin between the task model's two most probable classes (Scheffer et al. 2001)"
    needs = frozenset({"probs"})

    def score(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        return -sample_margin(batch["probs"])


@register_strategy
class LeastConfidenceStrategy(Strategy):
    """The samples whose most probable class has the lowest probability."""

    name = "least_confidence"
    description = "lowest top-1 probability of the task model's softmax (Lewis & Gale 1994)"
    needs = frozenset({"probs"})

    def score(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        return 1.0 - top_two(batch["probs"])[0]
