"""Typicality (TypiClust): known answers for its density, its per-cluster picks, and its
selection on a pool of dense clusters and scattered outliers, against a uniform sampler."""

from __future__ import annotations

import numpy as np
import pytest

from daal_ray.acquisition import FitContext, get_strategy_class
from daal_ray.acquisition.typicality import TypicalityParams, TypicalityStrategy, typical_per_cluster, typicality
from daal_ray.errors import ConfigError


def test_typicality_is_the_inverse_mean_distance_to_the_nearest_others():
    x = np.random.default_rng(0).normal(size=(300, 5)).astype(np.float32)
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    expected = 1.0 / np.sort(d, axis=1)[:, :20].mean(1)
    np.testing.assert_allclose(typicality(x, 20, rows=64), expected, rtol=1e-4)  # chunked as one
    line = np.array([[0.0], [1.0], [3.0]], np.float32)
    np.testing.assert_allclose(typicality(line, 1), [1.0, 1.0, 0.5])


def test_each_pick_is_the_most_typical_of_the_least_covered_largest_cluster():
    clusters = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    labeled = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0], bool)
    typ = np.array([9, 1, 2, 5, 3, 1, 4, 2, 3], float)
    # Uncovered: cluster 2 (4 rows) before cluster 1 (2 rows); then every cluster has one, and
    # the largest, 2, gives its next; then cluster 0 (3 rows) before cluster 1.
    np.testing.assert_array_equal(typical_per_cluster(clusters, labeled, typ, 4), [6, 3, 8, 2])
    # Clusters under 3 rows (cluster 1) wait until the larger ones have nothing left.
    np.testing.assert_array_equal(typical_per_cluster(clusters, labeled, typ, 7, min_size=3), [6, 8, 2, 7, 1, 5, 3])
    with pytest.raises(ValueError, match="unlabeled"):
        typical_per_cluster(clusters, labeled, typ, 9)


def _clusters_and_outliers(seed: int = 0, dim: int = 16, per_cluster: int = 100, n_outliers: int = 60):
    """Four tight clusters around orthogonal unit directions and outliers spread on the sphere;
    the first 20 rows of cluster 0 are labeled. Returns the table and each row's group
    (0-3: its cluster, 4: outlier)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:4]
    x = np.concatenate([c + 0.08 * rng.normal(size=(per_cluster, dim)) for c in centres]
                       + [rng.normal(size=(n_outliers, dim))]).astype(np.float32)
    group = np.repeat([0, 1, 2, 3, 4], [per_cluster] * 4 + [n_outliers])
    labeled = np.zeros(group.size, bool)
    labeled[:20] = True
    table = {"sample_id": np.arange(group.size, dtype=np.int64) * 3 + 2, "labeled": labeled, "features": x}
    return table, group


def _select(table, k, **params):
    strategy = TypicalityStrategy(TypicalityParams(**params), seed=0, cycle=0)
    n_lab = int(table["labeled"].sum())
    ctx = FitContext(features=table, num_labeled=n_lab, cycle=0, pool_ids=table["sample_id"])
    ids, scores, _ = strategy.select(ctx, k)
    assert ids.size == k and np.unique(ids).size == k and not np.isin(ids, table["sample_id"][table["labeled"]]).any()
    return (ids - 2) // 3, scores


def test_typicality_picks_the_core_of_every_uncovered_cluster_and_no_outlier():
    """With four clusters, the three picks are one from each cluster without a labeled
    sample, each from its cluster's dense core; a uniform draw of three lands so in about
    one draw in five, and with an outlier in 40%."""
    table, group = _clusters_and_outliers()
    pos, _ = _select(table, 3, max_clusters=4)
    assert sorted(group[pos]) == [1, 2, 3]
    x = table["features"]
    for p in pos:
        members = np.flatnonzero(group == group[p])
        dist = np.linalg.norm(x[members] - x[members].mean(0), axis=1)
        assert np.linalg.norm(x[p] - x[members].mean(0)) <= np.quantile(dist, 0.25)
    rng = np.random.default_rng(1)
    unlabeled = np.flatnonzero(~table["labeled"])
    draws = [np.sort(group[rng.choice(unlabeled, 3, replace=False)]) for _ in range(2000)]
    assert np.mean([list(d) == [1, 2, 3] for d in draws]) < 0.3


def test_a_larger_typicality_batch_leaves_out_the_outliers_a_uniform_one_takes():
    table, group = _clusters_and_outliers()
    pos, scores = _select(table, 40)
    assert np.mean(group[pos] == 4) <= 0.05  # uniform: 60 of 440 unlabeled, 14%
    assert set(group[pos]) >= {1, 2, 3} and np.all(np.diff(np.sort(scores)) >= 0)
    assert get_strategy_class("typicality") is TypicalityStrategy


def test_typicality_params_are_checked():
    for bad in ({"neighbors": 0}, {"max_clusters": -1}, {"min_cluster_size": 0}, {"kmeans_iters": 0}):
        with pytest.raises(ConfigError):
            TypicalityParams(**bad)
