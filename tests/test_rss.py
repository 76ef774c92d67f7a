"""RSS (a strategy run on a random subset of the unlabeled pool): the subset depends on
the ids only, the wrapped strategy selects inside it, any strategy can be wrapped, and the
Ray Dataset paths (lazy RSS filter, Ray Data scoring, streamed gathering for core-set) pick
what the in-memory paths pick."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from strategy_helpers import assert_valid_selection, ctx_of, make, pool, split

from daal_ray.acquisition import get_strategy_class
from daal_ray.acquisition.coreset import CoresetStrategy
from daal_ray.acquisition.entropy import predictive_entropy
from daal_ray.acquisition.rss import random_subset, rss_variant
from daal_ray.config import AcquisitionConfig
from daal_ray.errors import ConfigError


def test_random_subset_depends_on_the_ids_only():
    ids = np.arange(1000, dtype=np.int64) * 2
    a = random_subset(ids, 100, key=11)
    b = random_subset(np.random.default_rng(0).permutation(ids), 100, key=11)
    assert a.size == 100 and np.array_equal(a, b) and np.isin(a, ids).all()
    assert not np.array_equal(a, random_subset(ids, 100, key=12))
    assert np.array_equal(random_subset(ids, 5000, key=11), ids)


def test_entropy_rss_selects_the_top_k_inside_its_subset_only():
    p = pool(n=400, n_labeled=40, seed=2)
    s = make("entropy_rss", rss_subset=50)
    ctx = ctx_of(p)
    subset = s.rss_subset(ctx)
    assert subset.size == 50 and not np.isin(subset, p["sample_id"][p["labeled"]]).any()
    ids, _, _ = s.select(ctx, 10)
    assert_valid_selection(ids, p, 10)
    assert np.isin(ids, subset).all()
    inside = np.isin(p["sample_id"], subset)
    h = predictive_entropy(p["probs"][inside])
    expected = p["sample_id"][inside][np.lexsort((p["sample_id"][inside], -h))][:10]
    assert np.array_equal(ids, expected)
    # the whole pool's top-10 is not inside a 50-of-360 subset: RSS really restricted it
    assert not np.array_equal(ids, make("entropy").select(ctx, 10)[0])
    # any block layout gives the same subset and picks
    assert np.array_equal(make("entropy_rss", rss_subset=50).select(ctx_of(p, split(p, 9)), 10)[0], ids)


def test_rss_with_a_subset_as_large_as_the_pool_is_the_wrapped_strategy():
    p = pool(n=100, n_labeled=10)
    assert np.array_equal(make("entropy_rss", rss_subset=10_000).select(ctx_of(p), 9)[0],
                          make("entropy").select(ctx_of(p), 9)[0])


def test_rss_params_and_a_subset_smaller_than_k():
    assert make("entropy_rss").params.rss_subset == 10_000  # the paper's
    with pytest.raises(ConfigError, match="rss_subset"):
        AcquisitionConfig(strategy="entropy_rss", params={"rss_subset": 0})
    with pytest.raises(ConfigError, match="raise AcquisitionConfig.params.rss_subset"):
        make("entropy_rss", rss_subset=5).select(ctx_of(pool()), 6)


def test_rss_variant_wraps_any_strategy_and_keeps_its_params():
    cls = rss_variant(CoresetStrategy, register=False)
    assert cls.name == "coreset_rss" and issubclass(cls, CoresetStrategy)
    params = cls.Params.from_dict({"chunk_elems": 16, "rss_subset": 30})
    assert params.chunk_elems == 16 and params.rss_subset == 30
    s = cls(params, seed=0, cycle=1)
    p = pool(n=150, n_labeled=15)
    ids, _, _ = s.select(ctx_of(p), 8)
    assert_valid_selection(ids, p, 8)
    assert np.isin(ids, s.rss_subset(ctx_of(p))).all()
    # strategies cross into Ray workers pickled by reference to their class
    again = pickle.loads(pickle.dumps(make("entropy_rss", rss_subset=7)))
    assert type(again) is get_strategy_class("entropy_rss") and again.params.rss_subset == 7


# --------------------------------------------------------------------------- on a Ray Dataset
@pytest.mark.ray
def test_rss_and_coreset_select_on_a_ray_dataset(ray_session):
    """The Ray Dataset paths (lazy RSS filter, Ray Data scoring, streamed gathering) pick
    what the in-memory paths pick."""
    import ray.data

    p = pool(n=300, n_labeled=30, seed=4)
    rows = [{k: v[i] for k, v in p.items()} for i in range(len(p["sample_id"]))]
    ds = ray.data.from_items(rows, override_num_blocks=4)
    for name, params in (("entropy_rss", {"rss_subset": 40}), ("coreset", {})):
        expected = make(name, **params).select(ctx_of(p), 12)[0]
        got = make(name, **params).select(ctx_of(p, ds), 12)[0]
        assert np.array_equal(got, expected), name
