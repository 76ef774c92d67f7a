"""DAAL's bounded fit sample (daal_ray.sampling): known answers.

* The bottom-k sample is exactly the m smallest hashes, whatever the batching.
* The fit features are the whole pool's split when the pool is within the cap, and every
  labeled row plus the bounded unlabeled sample otherwise; the ids-only pass (for the
  image path) picks the same rows.
* ``max_fit_unlabeled`` is validated.
"""

from __future__ import annotations

import numpy as np
import pytest
from shard_helpers import feature_pool

from daal_ray.acquisition.daal import DAALParams, features_by_labeled
from daal_ray.acquisition.random import hash_uniform
from daal_ray.errors import ConfigError
from daal_ray.sampling import BottomKSample, fit_features, fit_sample_ids


def test_bottom_k_sample_is_the_m_smallest_hashes_whatever_the_batching():
    rng = np.random.default_rng(3)
    ids = rng.permutation(np.arange(5000, dtype=np.int64) * 7)
    x = ids[:, None].astype(np.float32) * np.ones((1, 3), np.float32)  # a row's features name its id
    key = 1234
    expected = np.sort(ids[np.argsort(hash_uniform(ids, key), kind="stable")[:300]])
    for n_batches in (1, 7, 200):
        s = BottomKSample(300, key)
        for part in np.array_split(np.arange(ids.size), n_batches):
            s.push(ids[part], x[part])
        got_ids, got_x = s.result()
        np.testing.assert_array_equal(got_ids, expected)
        np.testing.assert_array_equal(got_x[:, 0], expected.astype(np.float32))
    # Another key, another sample.
    s = BottomKSample(300, key + 1)
    s.push(ids, x)
    assert not np.array_equal(s.result()[0], expected)


def test_fit_features_is_the_whole_pool_split_when_within_the_cap():
    pool = feature_pool(700, 6, 60, seed=1)
    batches = [{k: v[i:i + 97] for k, v in pool.items()} for i in range(0, 700, 97)]
    for rank, world in ((0, 1), (0, 2), (1, 2)):
        xl, xu = fit_features(batches, max_unlabeled=640, key=5, rank=rank, world=world)
        el, eu = features_by_labeled(pool, rank, world)
        np.testing.assert_array_equal(xl, el)
        np.testing.assert_array_equal(xu, eu)


def test_fit_features_keeps_every_labeled_row_and_the_bounded_sample():
    pool = feature_pool(700, 6, 60, seed=1)
    xl, xu = fit_features(pool, max_unlabeled=100, key=5)
    un = ~pool["labeled"]
    chosen = np.sort(pool["sample_id"][un][np.argsort(hash_uniform(pool["sample_id"][un], 5))[:100]])
    by_id = dict(zip(pool["sample_id"].tolist(), range(700)))
    np.testing.assert_array_equal(xu, pool["features"][[by_id[i] for i in chosen.tolist()]])
    assert xl.shape == (60, 6)
    # The ids-only pass picks the same rows (labeled plus sample), for the image path.
    ids = fit_sample_ids(pool, np.sort(pool["sample_id"][pool["labeled"]]), 100, key=5)
    np.testing.assert_array_equal(ids, np.union1d(pool["sample_id"][pool["labeled"]], chosen))


def test_max_fit_unlabeled_is_validated():
    with pytest.raises(ConfigError, match="max_fit_unlabeled"):
        DAALParams(max_fit_unlabeled=-1)
