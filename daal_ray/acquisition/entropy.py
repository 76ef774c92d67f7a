"""Entropy sampling (Shannon 1948; the paper's 'Entropy' baseline)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from daal_ray.acquisition.base import Strategy, register_strategy


def sample_entropy(batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """Per-sample predictive entropy of a batch of inference output: its ``entropy`` column
    when the predictor reduced dense (per-pixel) predictions to one, else computed from ``probs``."""
    if "entropy" in batch:
        return np.asarray(batch["entropy"], dtype=np.float64).reshape(-1)
    return predictive_entropy(batch["probs"])


def predictive_entropy(probs: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """``-sum_c p_c log p_c`` per row of ``probs [n, C]`` (or ``[n, C, ...]``, pixels summed to a mean)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1.0)
    h = -(p * np.log(p)).sum(axis=1)
    return h.reshape(h.shape[0], -1).mean(axis=1)


@register_strategy
class EntropyStrategy(Strategy):
    """The samples whose predicted class distribution has the highest entropy (for
    segmentation: the highest mean pixel entropy, the predictor's ``entropy`` column)."""

    name = "entropy"
    description = "highest predictive entropy of the task model's softmax"
    needs = frozenset({"probs"})

    def score(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        return sample_entropy(batch)
