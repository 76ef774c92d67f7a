"""Cluster-Margin (Citovsky et al., NeurIPS 2021, "Batch Active Learning at Scale").

Margin sampling made batch-aware by clusters of the pool:

1. once, at the first selection, the unlabeled pool's task features are clustered by
   hierarchical agglomerative clustering (HAC) with average linkage, cut at a distance
   threshold ``epsilon`` (the paper's) or into ``clusters`` clusters;
2. every selection takes the ``k_m = beta x K`` unlabeled samples of smallest margin
   (top-1 minus top-2 probability), exactly, through the same streaming top-K as
   ``margin``;
3. their clusters are visited round-robin, smallest cluster (fewest candidates) first, one
   random candidate of each per visit, until K are taken: a batch of low-margin samples
   spread over as many clusters as the candidates touch.

Scaling (the project's choice): HAC needs every pairwise distance of its points, O(m^2)
memory, so it never sees more than ``hac_points`` points. A pool with at most that many
unlabeled rows is clustered exactly as in the paper. A larger one is clustered in three
steps: a seeded uniform sample of ``sample_rows`` unlabeled rows (the exact top of a hash
of the ids, the same streaming merge as every top-K, so no layout or worker count changes
it) is cut by Lloyd's k-means into ``hac_points`` centroids; HAC with average linkage runs
on the centroids, each weighted by the sample rows it holds (the Lance-Williams update
of average linkage with those weights: a centroid counts as its rows would); every pool
row then takes the cluster of its nearest centroid. That assignment runs where the pool is
(a Ray Data ``map_batches`` over the shards), so only ``(sample_id, cluster)`` pairs reach
this process: memory is O(sample_rows d + k_m), never the pool's features.

Caching across cycles: the strategy is built afresh each cycle, so the clustering is kept
in the experiment's run directory (``cluster_margin/clusters.npz``: every unlabeled id of
the first selection with its cluster, 12 bytes a row), written atomically when it is made
and read by every later cycle, as the paper clusters once with the first model's
features. Candidates of later cycles are unlabeled rows of that pool, so all are in it.
Without a run directory (``daal-ray score --features``, benches), the clustering is
made for the call and only the candidates are assigned.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import numpy as np
import torch

from daal_ray.acquisition.base import FitContext, Strategy, register_strategy
from daal_ray.acquisition.uncertainty import sample_margin
from daal_ray.atomic_io import atomic_write_bytes
from daal_ray.errors import DataError, reraise_unwrapped
from daal_ray.runtime import derive_seed
from daal_ray.sampling import hash_uniform
from daal_ray.selection import gather_rows, iter_feature_batches, kmeans, topk_local
from daal_ray.settings import Config, check
from daal_ray.shards import labeled_flags

__all__ = ["ClusterMarginParams", "ClusterMarginStrategy", "assign_clusters", "average_linkage", "cut_dendrogram",
           "round_robin"]

logger = logging.getLogger(__name__)

CACHE_FILE = Path("cluster_margin") / "clusters.npz"
_SAMPLE_SALT, _KMEANS_SALT, _PICK_SALT = 0xC1A5, 0xC1A6, 0xC1A7


@dataclass(frozen=True)
class ClusterMarginParams(Config):
    """Cluster-Margin settings.

    Attributes:
        beta: the ``beta x K`` smallest-margin samples are the candidates (``k_m``).
        clusters: cut the dendrogram into this many clusters; 0 (default): as many as the
            batch, K, but at most half the points HAC runs on. Ignored when ``epsilon > 0``.
        epsilon: cut the dendrogram at this average-linkage distance (the paper's threshold,
            in the units of the task features); 0: cut by ``clusters``.
        hac_points: the most points HAC runs on (its memory is ``8 hac_points^2`` bytes);
            a larger unlabeled pool is first cut into this many k-means centroids.
        sample_rows: unlabeled rows the k-means runs on (a seeded uniform sample).
        kmeans_iters: Lloyd iterations of that k-means.
    """

    beta: float = 4.0
    clusters: int = 0
    epsilon: float = 0.0
    hac_points: int = 2048
    sample_rows: int = 65536
    kmeans_iters: int = 10

    def validate(self) -> None:
        name = type(self).__name__
        check(self.beta >= 1.0, f"{name}.beta must be >= 1 (candidates per pick), got {self.beta}")
        check(self.clusters >= 0, f"{name}.clusters must be >= 0 (0: as many as the batch), got {self.clusters}")
        check(self.epsilon >= 0.0, f"{name}.epsilon must be >= 0 (0: cut by clusters), got {self.epsilon}")
        check(self.hac_points >= 2, f"{name}.hac_points must be >= 2, got {self.hac_points}")
        check(self.clusters <= self.hac_points,
              f"{name}.clusters ({self.clusters}) cannot exceed hac_points ({self.hac_points})")
        check(self.sample_rows >= self.hac_points,
              f"{name}.sample_rows ({self.sample_rows}) must be >= hac_points ({self.hac_points})")
        check(self.kmeans_iters >= 0, f"{name}.kmeans_iters must be >= 0, got {self.kmeans_iters}")


# ====================================================================== HAC
def average_linkage(points: np.ndarray, weights: Optional[np.ndarray] = None) -> np.ndarray:
    """Average-linkage (UPGMA) HAC of ``points [m, d]`` (Euclidean), each point weighted.

    The nearest-neighbour-chain algorithm over the full ``m x m`` distance matrix (O(m^2)
    memory and time): it follows nearest neighbours until two are each other's, merges
    them, and updates the merged cluster's distances by Lance-Williams,
    ``d(a + b, c) = (w_a d(a, c) + w_b d(b, c)) / (w_a + w_b)``, ``w`` the clusters' weights
    (sizes). With unit weights this is scipy's ``linkage(method="average")``; a point of
    weight ``w`` counts as ``w`` coincident points.

    Returns:
        ``[m - 1, 3]`` merges ``(a, b, height)``, in the order they were made: clusters are
        named by their smallest point, so ``a < b`` and ``a`` names the merged cluster.
    """
    x = np.asarray(points, dtype=np.float64).reshape(len(points), -1)
    m = x.shape[0]
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1).copy()
    if w.shape != (m,) or (w <= 0).any():
        raise ValueError(f"weights must be {m} positive numbers")
    sq = (x * x).sum(1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0))
    np.fill_diagonal(d, np.inf)
    merges = np.empty((max(m - 1, 0), 3))
    active = np.ones(m, bool)
    chain: list[int] = []
    for t in range(m - 1):
        while True:
            if not chain:
                chain.append(int(np.argmax(active)))  # the first active cluster
            a = chain[-1]
            b = int(np.argmin(d[a]))
            # Ties go to the previous link, so the chain ends at a reciprocal pair, never cycles.
            if len(chain) > 1 and d[a, chain[-2]] <= d[a, b]:
                b = chain[-2]
                break
            chain.append(b)
        chain.pop()
        chain.pop()
        lo, hi = min(a, b), max(a, b)
        merges[t] = (lo, hi, d[a, b])
        row = (w[lo] * d[lo] + w[hi] * d[hi]) / (w[lo] + w[hi])
        d[lo], d[:, lo] = row, row
        d[hi], d[:, hi] = np.inf, np.inf
        d[lo, lo] = np.inf
        w[lo] += w[hi]
        active[hi] = False
    return merges


def cut_dendrogram(merges: np.ndarray, m: int, clusters: int = 0, threshold: float = 0.0) -> np.ndarray:
    """Flat clusters of the ``m`` points of an :func:`average_linkage` dendrogram.

    ``threshold > 0``: apply every merge of height at most ``threshold`` (the paper's
    ``epsilon``); else apply the ``m - clusters`` lowest merges (``clusters`` clusters).

    Returns:
        ``[m]`` int64 cluster labels ``0..C-1``, numbered by their smallest point.
    """
    merges = np.asarray(merges, dtype=np.float64).reshape(-1, 3)
    order = np.argsort(merges[:, 2], kind="stable")
    if threshold > 0:
        use = order[merges[order, 2] <= threshold]
    else:
        if not 1 <= clusters <= max(m, 1):
            raise ValueError(f"clusters must be in [1, {m}], got {clusters}")
        use = order[:m - clusters]
    parent = np.arange(m)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in merges[use, :2].astype(np.int64):
        ra, rb = find(int(a)), find(int(b))
        parent[max(ra, rb)] = min(ra, rb)  # the root is the cluster's smallest point
    roots = np.array([find(i) for i in range(m)], dtype=np.int64)
    return np.unique(roots, return_inverse=True)[1].astype(np.int64)


# ====================================================================== the batch
def round_robin(clusters: np.ndarray, ids: np.ndarray, key: int) -> np.ndarray:
    """Positions of ``ids`` in Cluster-Margin's pick order.

    Clusters are visited smallest first (fewest of these ids; ties: smaller label); each
    visit takes one not yet taken member at random, and the visits cycle until every
    member is taken. "At random" is by ``hash_uniform(id, key)``, so the order depends on
    the ids and the key only, not on the order they come in.
    """
    clusters = np.asarray(clusters, dtype=np.int64).reshape(-1)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if clusters.shape != ids.shape:
        raise ValueError(f"clusters {clusters.shape} and ids {ids.shape} must be of one length")
    labels, group, sizes = np.unique(clusters, return_inverse=True, return_counts=True)
    visit = np.empty(labels.size, np.int64)
    visit[np.lexsort((labels, sizes))] = np.arange(labels.size)
    within_order = np.lexsort((ids, hash_uniform(ids, key), group))  # by cluster, then at random
    starts = np.concatenate([[0], np.cumsum(sizes)])
    turn = np.empty(ids.size, np.int64)
    turn[within_order] = np.arange(ids.size) - starts[group[within_order]]
    return np.lexsort((visit[group], turn))


# ====================================================================== assignment
def assign_clusters(batch: Mapping[str, np.ndarray], centres: np.ndarray, centre_labels: np.ndarray,
                    ids: Optional[np.ndarray] = None, rows: int = 4096) -> dict[str, np.ndarray]:
    """Ray Data body: ``{sample_id, cluster}`` of the unlabeled rows of ``batch`` (those in the
    sorted ``ids``, when given), each the cluster of its nearest centre (Euclidean).

    Raises:
        DataError: a feature is NaN or infinite.
    """
    sid = np.asarray(batch["sample_id"], dtype=np.int64)
    keep = ~np.asarray(batch["labeled"]).astype(bool)
    if ids is not None:
        keep &= labeled_flags(sid, ids)
    x = np.asarray(batch["features"], dtype=np.float32).reshape(sid.size, -1)[keep]
    if not np.isfinite(x).all():
        bad = sid[keep][~np.isfinite(x).all(axis=1)]
        raise DataError(f"features of sample ids {bad[:5].tolist()} are NaN or infinite; check the task model")
    c = np.asarray(centres, dtype=np.float32)
    c_sq = (c * c).sum(1)
    near = np.empty(x.shape[0], np.int64)
    for i in range(0, x.shape[0], rows):  # bounded: rows x centres floats at a time
        near[i:i + rows] = np.argmin(c_sq - 2.0 * (x[i:i + rows] @ c.T), axis=1)
    return {"sample_id": sid[keep], "cluster": np.asarray(centre_labels, dtype=np.int32)[near]}


def _map_pool(features: Any, fn_kwargs: dict[str, Any], batch_size: int = 8192) -> Iterator[dict[str, np.ndarray]]:
    """:func:`assign_clusters` over every batch of the pool, where the pool lives (Ray Data
    workers for a Dataset, this process for arrays)."""
    columns = ("sample_id", "labeled", "features")
    if isinstance(features, (Mapping, list, tuple)):
        for batch in iter_feature_batches(features, columns, batch_size):
            yield assign_clusters(batch, **fn_kwargs)
        return
    mapped = features.select_columns(list(columns)).map_batches(assign_clusters, fn_kwargs=fn_kwargs,
                                                                batch_format="numpy")
    yield from reraise_unwrapped(mapped.iter_batches(batch_size=None, batch_format="numpy"))


def _collect(parts: Iterator[dict[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, clusters)`` sorted by id, from assignment batches."""
    ids, clusters = [], []
    for part in parts:
        ids.append(np.asarray(part["sample_id"], dtype=np.int64))
        clusters.append(np.asarray(part["cluster"], dtype=np.int32))
    out_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    out_c = np.concatenate(clusters) if clusters else np.zeros(0, np.int32)
    order = np.argsort(out_ids, kind="stable")
    return out_ids[order], out_c[order]


def _lookup(table_ids: np.ndarray, table_clusters: np.ndarray, ids: np.ndarray, where: str) -> np.ndarray:
    """The clusters of ``ids`` from a table sorted by id."""
    if table_ids.size == 0:
        missing = ids
    else:
        pos = np.minimum(np.searchsorted(table_ids, ids), table_ids.size - 1)
        missing = ids[table_ids[pos] != ids]
    if missing.size:
        raise DataError(f"sample ids {missing[:5].tolist()} are not in the clustering {where}; the pool changed "
                        f"since it was made: delete it to cluster the pool again")
    return np.asarray(table_clusters)[pos].astype(np.int64)


class _HashRank:
    """Scores a row by minus its hash draw: the exact top ``m`` of these is a seeded uniform
    sample of ``m`` unlabeled rows, found by the streaming merge where the pool lives."""

    def __init__(self, key: int) -> None:
        self.key = key

    def score(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        return -hash_uniform(np.asarray(batch["sample_id"], dtype=np.int64), self.key)


# ====================================================================== the strategy
@register_strategy
class ClusterMarginStrategy(Strategy):
    """Smallest-margin candidates, spread round-robin over HAC clusters of the pool."""

    name = "cluster_margin"
    description = ("Cluster-Margin: the beta x K smallest margins, taken round-robin over average-linkage HAC "
                   "clusters of the pool, smallest cluster first (Citovsky et al. 2021)")
    Params = ClusterMarginParams
    needs = frozenset({"features", "probs"})
    streams = True  # O(beta K + sample d) of the pool in this process
    multipass = True

    def score(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        """Minus the margin ``p_(1) - p_(2)``: the candidates are the top ``beta K`` of it."""
        return -sample_margin(batch["probs"])

    def select(self, ctx: FitContext, k: int) -> tuple[np.ndarray, np.ndarray, float]:
        """``k`` ids: the ``beta k`` smallest margins, round-robin over their clusters; the
        scores are the picks' minus margins."""
        m = max(k, int(math.ceil(self.params.beta * k)))
        if ctx.pool_ids is not None:
            m = min(m, ctx.num_unlabeled)
        cand, cand_scores, merge_s = super().select(ctx, m)
        if cand.size <= k:
            return cand, cand_scores, merge_s
        clusters, cluster_s = self.candidate_clusters(ctx, cand, k)
        t0 = time.perf_counter()
        pick = round_robin(clusters, cand, derive_seed(self.seed, self.cycle, _PICK_SALT))[:k]
        return cand[pick], cand_scores[pick], merge_s + cluster_s + time.perf_counter() - t0

    # -------------------------------------------------------------- clustering
    def _fingerprint(self) -> str:
        p = self.params
        return json.dumps({"clusters": p.clusters, "epsilon": p.epsilon, "hac_points": p.hac_points,
                           "sample_rows": p.sample_rows, "kmeans_iters": p.kmeans_iters, "seed": self.seed},
                          sort_keys=True)

    def _cut(self, merges: np.ndarray, m: int, k: int) -> np.ndarray:
        p = self.params
        if p.epsilon > 0:
            return cut_dendrogram(merges, m, threshold=p.epsilon)
        wanted = p.clusters if p.clusters else min(k, m // 2)  # auto: about one candidate cluster per pick
        return cut_dendrogram(merges, m, clusters=max(1, min(wanted, m)))

    def candidate_clusters(self, ctx: FitContext, cand: np.ndarray, k: int) -> tuple[np.ndarray, float]:
        """The cluster of each candidate id and the seconds spent clustering (not reading).

        Reads the run directory's clustering when it has one made with these params; else
        clusters the pool (see the module docstring) and, with a run directory, keeps it.
        """
        path = Path(ctx.run_dir) / CACHE_FILE if ctx.run_dir else None
        if path is not None and path.exists():
            with np.load(path) as saved:
                if str(saved["fingerprint"]) == self._fingerprint():
                    logger.info("cluster_margin: the clustering of cycle %d (%s)", int(saved["cycle"]), path)
                    return _lookup(saved["sample_id"], saved["cluster"], cand, f"in {path}"), 0.0
            logger.warning("cluster_margin: %s was made with other params; clustering the pool again", path)
        key = derive_seed(self.seed, self.cycle, _SAMPLE_SALT)
        p = self.params
        if ctx.scorer is not None:
            sample, _, _ = ctx.scorer(ctx.features, _HashRank(key), p.sample_rows)
        else:
            sample, _, _ = topk_local(ctx.features, _HashRank(key).score, p.sample_rows)
        sample = np.sort(sample)
        x = np.asarray(gather_rows(ctx.features, sample, ["features"])["features"], dtype=np.float32)
        x = x.reshape(sample.size, -1)
        t0 = time.perf_counter()
        if sample.size <= p.hac_points:
            # The whole unlabeled pool fits HAC: the paper's clustering, exactly.
            labels = self._cut(average_linkage(x), sample.size, k)
            seconds = time.perf_counter() - t0
            self._save(path, sample, labels)
            return _lookup(sample, labels, cand, "of this selection"), seconds
        xt = torch.as_tensor(x)
        centres, _, counts = kmeans(xt, p.hac_points, seed=derive_seed(self.seed, self.cycle, _KMEANS_SALT),
                                    iters=p.kmeans_iters)
        full = counts > 0
        centres, counts = centres[full].numpy(), counts[full].numpy()
        centre_labels = self._cut(average_linkage(centres, counts), centres.shape[0], k)
        seconds = time.perf_counter() - t0
        del x, xt
        logger.info("cluster_margin: %d sample rows -> %d centroids -> %d clusters in %.1fs", sample.size,
                    centres.shape[0], int(centre_labels.max()) + 1, seconds)
        if path is not None:
            ids, clusters = _collect(_map_pool(ctx.features, {"centres": centres, "centre_labels": centre_labels}))
            self._save(path, ids, clusters)
            return _lookup(ids, clusters, cand, f"in {path}"), seconds
        wanted = np.sort(cand)
        ids, clusters = _collect(_map_pool(ctx.features, {"centres": centres, "centre_labels": centre_labels,
                                                          "ids": wanted}))
        return _lookup(ids, clusters, cand, "of this selection"), seconds

    def _save(self, path: Optional[Path], ids: np.ndarray, clusters: np.ndarray) -> None:
        if path is None:
            return
        if ids.size and (np.diff(ids) == 0).any():
            raise DataError(f"sample ids {ids[1:][np.diff(ids) == 0][:5].tolist()} appear in more than one row of "
                            f"the pool; every sample needs one row")
        buf = io.BytesIO()
        np.savez(buf, sample_id=ids.astype(np.int64), cluster=clusters.astype(np.int32),
                 fingerprint=np.array(self._fingerprint()), cycle=np.array(self.cycle))
        atomic_write_bytes(path, buf.getvalue())
        logger.info("cluster_margin: %d rows in %d clusters kept in %s for the later cycles", ids.size,
                    int(clusters.max()) + 1 if clusters.size else 0, path)
