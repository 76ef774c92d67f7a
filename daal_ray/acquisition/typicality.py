"""Typicality: the most typical sample of each uncovered cluster (TypiClust, Hacohen et al. 2022).

When the labeled set is small the model's uncertainty is least reliable: it rates the
hard, atypical samples highest, and a batch of them teaches the model little about the
bulk of each class. TypiClust picks *typical* samples spread over the data instead:

1. the pool's task features (unit norm: directions) are clustered by k-means into
   ``min(labeled + K, max_clusters)`` clusters;
2. each sample's typicality is the inverse of its mean distance to its ``neighbors``
   nearest samples in the pool (a k-NN density);
3. K times, the cluster with the fewest labeled members (then the largest) gives its most
   typical unlabeled sample, which then counts as a labeled member. Clusters of fewer than
   ``min_cluster_size`` samples give none while larger ones have some left: k-means gives
   scattered outliers clusters of their own, which are uncovered and would otherwise be
   picked first.

Typicality, the k-means and the k-NN read the whole pool's features (``streams = False``,
like core-set): O(N d) memory and O(N^2 d / chunk) time, meant for the pools whose first
cycles it serves. :func:`typicality` and :func:`typical_per_cluster` are the two steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from sklearn.cluster import KMeans

from daal_ray.acquisition.base import FitContext, Strategy, register_strategy
from daal_ray.runtime import derive_seed
from daal_ray.selection import gather_features
from daal_ray.settings import Config, check

__all__ = ["TypicalityParams", "TypicalityStrategy", "typical_per_cluster", "typicality"]


@dataclass(frozen=True)
class TypicalityParams(Config):
    """Typicality settings.

    Attributes:
        neighbors: the k of the k-NN density (TypiClust: 20).
        max_clusters: at most this many k-means clusters (0 = ``labeled + K``).
        min_cluster_size: clusters smaller than this are picked from only when no larger
            one has an unlabeled sample left (TypiClust: 5).
        kmeans_iters: Lloyd iterations of the k-means (one initialisation, seeded per cycle).
    """

    neighbors: int = 20
    max_clusters: int = 0
    min_cluster_size: int = 5
    kmeans_iters: int = 100

    def validate(self) -> None:
        check(self.neighbors >= 1, f"TypicalityParams.neighbors must be >= 1, got {self.neighbors}")
        check(self.max_clusters >= 0, f"TypicalityParams.max_clusters must be >= 0 (0 = labeled + K), "
                                      f"got {self.max_clusters}")
        check(self.min_cluster_size >= 1, f"TypicalityParams.min_cluster_size must be >= 1, "
                                          f"got {self.min_cluster_size}")
        check(self.kmeans_iters >= 1, f"TypicalityParams.kmeans_iters must be >= 1, got {self.kmeans_iters}")


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm (an all-zero row stays zero), float32."""
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def typicality(x: np.ndarray, neighbors: int, rows: int = 1024) -> np.ndarray:
    """``1 / mean distance to the k nearest other rows`` of each row of ``x [n, d]``
    (``k = min(neighbors, n - 1)``), computed in row chunks: no ``n x n`` matrix is held.
    Higher = in a denser part of the data."""
    t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    n = t.shape[0]
    k = min(neighbors, n - 1)
    if k < 1:
        return np.ones(n)
    sq = (t * t).sum(1)
    out = np.empty(n)
    for i in range(0, n, rows):
        d2 = (sq[i:i + rows, None] + sq[None] - 2.0 * t[i:i + rows] @ t.T).clamp_min_(0.0)
        d2[torch.arange(d2.shape[0]), torch.arange(i, i + d2.shape[0])] = float("inf")  # not its own neighbour
        near = torch.topk(d2, k, dim=1, largest=False).values.sqrt()
        out[i:i + rows] = 1.0 / near.mean(1).double().clamp_min(1e-12).numpy()
    return out


def typical_per_cluster(clusters: np.ndarray, labeled: np.ndarray, typ: np.ndarray, k: int,
                        min_size: int = 1) -> np.ndarray:
    """Positions of ``k`` unlabeled rows: each pick is the most typical unlabeled row of the
    cluster with the fewest labeled (and already picked) rows, the larger cluster first
    among equals, then the smaller cluster number. Clusters of fewer than ``min_size`` rows
    come after every larger one that has an unlabeled row left.

    Args:
        clusters: ``[n]`` cluster of each row.
        labeled: ``[n]`` bool, the rows already labeled.
        typ: ``[n]`` typicality of each row.
        k: how many to pick, at most the unlabeled count.
    """
    clusters = np.asarray(clusters, dtype=np.int64)
    labeled = np.asarray(labeled, dtype=bool)
    if k > int((~labeled).sum()):
        raise ValueError(f"k={k} is more than the {int((~labeled).sum())} unlabeled rows")
    m = int(clusters.max()) + 1 if clusters.size else 0
    covered = np.bincount(clusters[labeled], minlength=m)
    size = np.bincount(clusters, minlength=m)
    # Each cluster's unlabeled rows, most typical first (ties: the smaller position).
    free = np.flatnonzero(~labeled)
    order = free[np.lexsort((free, -typ[free], clusters[free]))]
    starts = np.searchsorted(clusters[order], np.arange(m + 1))
    nxt = starts[:-1].copy()
    picks = np.empty(k, dtype=np.int64)
    small = size < min_size
    for j in range(k):
        open_ = np.flatnonzero(nxt < starts[1:])
        c = int(open_[np.lexsort((open_, -size[open_], covered[open_], small[open_]))[0]])
        picks[j] = order[nxt[c]]
        nxt[c] += 1
        covered[c] += 1
    return picks


@register_strategy
class TypicalityStrategy(Strategy):
    """TypiClust: per uncovered k-means cluster of the task features, its most typical sample."""

    name = "typicality"
    description = ("typicality (TypiClust): k-means on task features, the most typical (k-NN density) sample of "
                   "each cluster with the fewest labeled samples (Hacohen et al. 2022)")
    Params = TypicalityParams
    needs = frozenset({"features"})
    streams = False  # clusters the whole pool's features

    def score(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError("typicality is not a per-sample score; it selects per cluster (select)")

    def select(self, ctx: FitContext, k: int) -> tuple[np.ndarray, np.ndarray, float]:
        """``k`` ids, one per uncovered cluster; the scores are the picks' typicality."""
        _, xl, ids_u, xu = gather_features(ctx.features, ctx.num_labeled, ctx.num_unlabeled)
        t0 = time.perf_counter()
        x = unit_rows(np.concatenate([xl, xu]))
        labeled = np.arange(x.shape[0]) < xl.shape[0]
        p = self.params
        n_clusters = min(x.shape[0], xl.shape[0] + k, p.max_clusters or x.shape[0])
        clusters = KMeans(n_clusters=n_clusters, n_init=1, max_iter=p.kmeans_iters,
                          random_state=derive_seed(self.seed, self.cycle, 0x7C) % 2**31).fit_predict(x)
        typ = typicality(x, p.neighbors)
        pos = typical_per_cluster(clusters, labeled, typ, k, p.min_cluster_size)
        return ids_u[pos - xl.shape[0]], typ[pos], time.perf_counter() - t0
