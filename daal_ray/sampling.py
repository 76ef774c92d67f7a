"""Seeded, order-free sampling of a pool: the bounded sample a strategy fits on.

A strategy that trains on the pool (DAAL) fits on every labeled row plus a bounded uniform
sample of unlabeled rows: the ``m`` unlabeled ids of smallest ``hash_uniform(sample_id,
key)``, kept in a streaming bottom-``m`` buffer (:class:`BottomKSample`). The sample
depends only on the ids and the key, never on how the pool is split into blocks, and
costs O(m d) memory. It can be chosen from the ids alone (:func:`fit_sample_ids`), so only
its rows' features travel to the fitting process.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from daal_ray.errors import DataError, reraise_unwrapped
from daal_ray.selection import iter_feature_batches

logger = logging.getLogger(__name__)

__all__ = ["BottomKSample", "fit_features", "fit_sample_ids", "hash_uniform"]


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


class BottomKSample:
    """The ``m`` rows of smallest ``hash_uniform(sample_id, key)`` seen so far.

    A uniform sample without replacement that depends only on the ids and the key: any
    split of the stream into batches gives the same rows. Memory O(m d): candidates are
    appended while their hash is below the current m-th smallest, and the buffer is cut
    back to m whenever it reaches 2m.
    """

    def __init__(self, m: int, key: int) -> None:
        if m < 1:
            raise ValueError(f"m must be >= 1, got {m}")
        self.m, self.key = m, key
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._held = 0
        self._threshold = np.inf
        self.seen = 0

    def push(self, ids: np.ndarray, x: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        self.seen += ids.size
        u = hash_uniform(ids, self.key)
        keep = u <= self._threshold
        if not keep.any():
            return
        self._parts.append((u[keep], ids[keep], np.asarray(x)[keep].astype(np.float32, copy=True)))
        self._held += int(keep.sum())
        if self._held >= 2 * self.m:
            self._compact()

    def _compact(self) -> None:
        u = np.concatenate([p[0] for p in self._parts])
        ids = np.concatenate([p[1] for p in self._parts])
        x = np.concatenate([p[2] for p in self._parts])
        if u.size > self.m:
            order = np.lexsort((ids, u))[: self.m]  # ties in the hash (~never) go to the smaller id
            u, ids, x = u[order], ids[order], x[order]
            self._threshold = float(u.max())
        self._parts = [(u, ids, x)]
        self._held = u.size

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, features)`` of the sample, sorted by ``sample_id``."""
        if not self._parts:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        self._compact()
        _, ids, x = self._parts[0]
        order = np.argsort(ids, kind="stable")
        return ids[order], x[order]


def fit_features(features: Any, max_unlabeled: int, key: int, rank: int = 0, world: int = 1,
                 batch_size: int = 8192, columns: Sequence[str] = ("features",),
                 inputs: Optional[Callable[[Mapping[str, np.ndarray]], np.ndarray]] = None,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """This rank's strided shard of every labeled feature and of a bounded unlabeled sample.

    One streaming pass over ``features`` (a Ray Dataset, a dict of arrays or a list of
    them, with ``sample_id``, ``labeled`` and ``columns``): labeled rows are all kept;
    unlabeled rows are sampled by :class:`BottomKSample` (``max_unlabeled``; 0 keeps all).
    Both come back sorted by ``sample_id`` and strided by rank, so when the pool has at
    most ``max_unlabeled`` unlabeled rows the result is exactly the whole pool's split.
    ``inputs`` maps a batch of ``columns`` to the rows kept (default: its ``features``),
    so a fit that reads more than the features still holds one array per row.

    Returns:
        ``(labeled_features, unlabeled_features)``, float32, this rank's rows.

    Raises:
        DataError: a feature is NaN or infinite.
    """
    lab_ids: list[np.ndarray] = []
    lab_x: list[np.ndarray] = []
    un_ids: list[np.ndarray] = []
    un_x: list[np.ndarray] = []
    sample = BottomKSample(max_unlabeled, key) if max_unlabeled > 0 else None
    wanted = ("sample_id", "labeled", *columns)
    for batch in reraise_unwrapped(iter_feature_batches(features, wanted, batch_size)):
        ids = np.asarray(batch["sample_id"], dtype=np.int64)
        lab = np.asarray(batch["labeled"], dtype=bool)
        x = np.asarray(batch["features"] if inputs is None else inputs(batch), dtype=np.float32)
        x = x.reshape(x.shape[0], -1)
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            raise DataError(f"features of sample ids {ids[~finite][:5].tolist()} are NaN or infinite; "
                            f"check the task model of this cycle")
        lab_ids.append(ids[lab])
        lab_x.append(x[lab].copy())
        if sample is not None:
            sample.push(ids[~lab], x[~lab])
        else:
            un_ids.append(ids[~lab])
            un_x.append(x[~lab].copy())
    dim = next((a.shape[1] for a in lab_x + un_x if a.size), 0)

    def _sorted(ids_parts: list[np.ndarray], x_parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if not ids_parts:
            return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
        ids, x = np.concatenate(ids_parts), np.concatenate(x_parts)
        order = np.argsort(ids, kind="stable")
        return ids[order], x[order]

    _, xl = _sorted(lab_ids, lab_x)
    if sample is not None:
        _, xu = sample.result()
        logger.debug("fit sample: %d of %d unlabeled rows (max_fit_unlabeled=%d), %d labeled", len(xu), sample.seen,
                    max_unlabeled, len(xl))
    else:
        _, xu = _sorted(un_ids, un_x)
    return xl[rank::world], xu[rank::world]


def fit_sample_ids(pool_ids: Any, labeled_ids: np.ndarray, max_unlabeled: int, key: int) -> np.ndarray:
    """The ids a fit reads from an id pool: every labeled id plus the bounded unlabeled
    sample :func:`fit_features` would keep, found from the ids alone (so features are
    extracted for those rows only)."""
    sample = BottomKSample(max_unlabeled, key) if max_unlabeled > 0 else None
    unl: list[np.ndarray] = []
    for batch in reraise_unwrapped(iter_feature_batches(pool_ids, ("sample_id", "labeled"), 65536)):
        ids = np.asarray(batch["sample_id"], dtype=np.int64)[~np.asarray(batch["labeled"], dtype=bool)]
        if sample is not None:
            sample.push(ids, np.zeros((ids.size, 0), np.float32))
        else:
            unl.append(ids)
    chosen = sample.result()[0] if sample is not None else np.concatenate(unl or [np.zeros(0, np.int64)])
    return np.union1d(np.asarray(labeled_ids, dtype=np.int64), chosen)
