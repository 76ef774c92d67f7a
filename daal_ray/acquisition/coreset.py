"""Core-set (Sener & Savarese 2018): greedy k-center over the task model's features.

The labeled samples are the initial centres; each pick is the unlabeled sample farthest
(Euclidean, in the penultimate features) from its nearest centre, which then becomes a
centre. Among equal distances the smaller ``sample_id`` wins. The pool's features are
streamed once from the Ray Dataset into preallocated arrays and the greedy runs on the
experiment's device (the GPU when ``ScaleConfig.use_gpu``); distances are computed in
tiles and one vector at a time, so memory is O(N + K) beyond the features and no N x N
matrix is ever formed (:func:`daal_ray.selection.k_center_greedy`). This is the paper's
greedy 2-approximation; the robust (outlier-tolerant MIP) variant is not implemented.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from daal_ray.acquisition.base import FitContext, Strategy, register_strategy
from daal_ray.selection import gather_features, k_center_greedy
from daal_ray.settings import Config, check

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoresetParams(Config):
    """Core-set settings.

    Attributes:
        chunk_elems: tile size (point-centre pairs) of the first distance pass; bounds
            its memory at ``4 * chunk_elems`` bytes.
    """

    chunk_elems: int = 1 << 22

    def validate(self) -> None:
        check(self.chunk_elems >= 1, f"CoresetParams.chunk_elems must be >= 1, got {self.chunk_elems}")


@register_strategy
class CoresetStrategy(Strategy):
    """Greedy k-center over the task model's features; labeled samples are the first centres."""

    name = "coreset"
    streams = False  # reads the whole pool's features
    description = "core-set: greedy k-center on task features, labeled samples as initial centres (Sener & Savarese)"
    Params = CoresetParams
    needs = frozenset({"features"})

    def score(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError("core-set is not a per-sample score; it selects with k-center greedy (select)")

    def select(self, ctx: FitContext, k: int) -> tuple[np.ndarray, np.ndarray, float]:
        """``k`` ids by greedy k-center; the scores are each pick's distance to its nearest
        centre when it was picked (non-increasing)."""
        _, xl, ids_u, xu = gather_features(ctx.features, ctx.num_labeled, ctx.num_unlabeled)
        device = ctx.device if ctx.device is not None else torch.device("cpu")
        t0 = time.perf_counter()
        pos, dist = k_center_greedy(xu, xl, k, device=device, chunk_elems=self.params.chunk_elems)
        elapsed = time.perf_counter() - t0
        logger.debug("coreset: %d picks from %d unlabeled, %d centres in %.2fs", k, xu.shape[0], xl.shape[0], elapsed)
        return ids_u[pos], dist, elapsed
