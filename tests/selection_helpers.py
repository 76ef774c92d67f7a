"""Helpers shared by the strategy tests: run a strategy's own selection on an in-memory
batch and check the selection invariants (K unique ids, all unlabeled)."""

from __future__ import annotations

import numpy as np

from daal_ray.acquisition.base import FitContext


def fit_context(batch, cycle=1) -> FitContext:
    lab = np.asarray(batch["labeled"], dtype=bool)
    ids = np.asarray(batch["sample_id"], dtype=np.int64)
    return FitContext(features=batch, num_labeled=int(lab.sum()), cycle=cycle, labeled_ids=np.sort(ids[lab]),
                      pool_ids=np.sort(ids))


def select(strategy, batch, k):
    """The strategy's own ``select`` (top-K of ``score`` unless it overrides it)."""
    ids, scores, _ = strategy.select(fit_context(batch), k)
    assert scores.shape == ids.shape
    return ids


def check_selection(ids, batch, k):
    assert ids.size == k and np.unique(ids).size == k
    unlabeled = np.asarray(batch["sample_id"])[~np.asarray(batch["labeled"], dtype=bool)]
    assert np.isin(ids, unlabeled).all()
