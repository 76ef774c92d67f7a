"""Exact top-K selection over a stream of scored batches, in O(K + batch) memory.

The order is total and independent of how the pool is split into blocks: a higher score
wins, and among equal scores the smaller ``sample_id`` wins. Each Ray Data block can be
reduced to its own top-K (:func:`topk_batch`) and the reduced blocks merged here; the
result equals a full sort of the pool, which no process ever performs.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from daal_ray.errors import DataError


def _check_scores(ids: np.ndarray, scores: np.ndarray) -> None:
    if ids.shape != scores.shape or ids.ndim != 1:
        raise DataError(f"sample ids {ids.shape} and scores {scores.shape} must be 1-d and of one length")
    bad = ~np.isfinite(scores)
    if bad.any():
        raise DataError(f"{int(bad.sum())} score(s) are NaN or infinite, e.g. sample ids {ids[bad][:5].tolist()}; "
                        f"check the features and the strategy's networks")


def topk_arrays(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` of one in-memory batch by (score desc, sample_id asc), in that order."""
    ids = np.asarray(ids, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    _check_scores(ids, scores)
    if k <= 0:
        return ids[:0], scores[:0]
    if ids.size > k:
        # Partition to the k-th largest score, keep everything strictly above it and the
        # smallest ids among the ties at it: exact, and O(n) rather than a sort.
        kth = -np.partition(-scores, k - 1)[k - 1]
        above = scores > kth
        need = k - int(above.sum())
        tie_ids = ids[scores == kth]
        if tie_ids.size > need:
            tie_ids = np.partition(tie_ids, need - 1)[:need] if need > 0 else tie_ids[:0]
        keep = above | (np.isin(ids, tie_ids) & (scores == kth))
        ids, scores = ids[keep], scores[keep]
    order = np.lexsort((ids, -scores))
    return ids[order], scores[order]


class StreamingTopK:
    """Merge scored batches into the exact top ``k``; memory O(k + largest batch)."""

    def __init__(self, k: int) -> None:
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        self.k = k
        self.ids = np.zeros(0, dtype=np.int64)
        self.scores = np.zeros(0, dtype=np.float64)
        self.seen = 0

    def push(self, ids: np.ndarray, scores: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float64)
        _check_scores(ids, scores)
        self.seen += ids.size
        self.ids, self.scores = topk_arrays(np.concatenate([self.ids, ids]), np.concatenate([self.scores, scores]), self.k)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Ids and scores of the top ``k`` so far, best first."""
        return self.ids.copy(), self.scores.copy()


def topk_stream(batches: Iterable[Mapping[str, np.ndarray]], k: int, id_key: str = "sample_id",
                score_key: str = "score") -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``k`` of a stream of ``{sample_id, score}`` batches."""
    merger = StreamingTopK(k)
    for batch in batches:
        merger.push(batch[id_key], batch[score_key])
    return merger.result()


def topk_batch(batch: Mapping[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches`` body: reduce one block to its own top ``k``."""
    ids, scores = topk_arrays(batch["sample_id"], batch["score"], k)
    return {"sample_id": ids, "score": scores}
