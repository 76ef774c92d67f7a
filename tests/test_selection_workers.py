"""The same seed selects the same batch whether the pool is scored by one Ray Data worker
or by two (and as in one process): the batch-aware selections read their candidates
through the exact streaming merge, which does not depend on which worker scores which
block, or in what order the blocks arrive."""

from __future__ import annotations

import numpy as np
import pytest
from shard_helpers import feature_pool, write_shards

from daal_ray.acquisition import build_strategy
from daal_ray.acquisition.base import FitContext, Strategy
from daal_ray.config import AcquisitionConfig, ScaleConfig
from daal_ray.scoring import select_from_features

TINY_DAAL = dict(epochs=2, batch_size=32, score_hidden=(16, 16, 8, 8), disc_hidden=(16, 16, 8, 8),
                 vae_hidden=(16, 16, 8, 8, 8, 8), latent_dim=4)
# cluster_margin with a small HAC, so the 2,700 unlabeled rows take its k-means-then-HAC path
# (the sample, the centroids, and the assignment pass on the Ray Data workers).
CASES = {"entropy_diverse": {}, "daal_diverse": TINY_DAAL, "entropy_power": {},
         "cluster_margin": {"hac_points": 128, "sample_rows": 1024, "clusters": 40}}


def _limited_to(workers: int):
    """Ray Data of this process limited to ``workers`` concurrent CPU tasks."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    previous = ctx.execution_options.resource_limits
    ctx.execution_options.resource_limits = ray.data.ExecutionResources(cpu=workers)
    return ctx, previous


@pytest.mark.ray
@pytest.mark.parametrize("name", sorted(CASES))
def test_one_and_two_ray_data_workers_select_the_same_batch(ray_session, tmp_path, name):
    pool = feature_pool(3000, 8, 300, seed=11)
    write_shards(pool, tmp_path / "pool", 12)
    labeled = pool["sample_id"][pool["labeled"]]
    scale = ScaleConfig(inference_batch_size=128)
    picks = {}
    for workers in (1, 2):
        ctx, previous = _limited_to(workers)
        try:
            strategy = build_strategy(AcquisitionConfig(strategy=name, params=CASES[name]), seed=5, cycle=1)
            picks[workers] = select_from_features(tmp_path / "pool", strategy, 100, labeled_ids=labeled,
                                                  scale=scale).ids
        finally:
            ctx.execution_options.resource_limits = previous
    assert picks[1].size == 100 and np.unique(picks[1]).size == 100
    assert not np.isin(picks[1], labeled).any()
    np.testing.assert_array_equal(picks[1], picks[2])
    strategy = build_strategy(AcquisitionConfig(strategy=name, params=CASES[name]), seed=5, cycle=1)
    if not strategy.trains:  # no fit: the in-process selection is the same batch too
        ctx = FitContext(features=pool, num_labeled=300, cycle=1)
        want, _, _ = strategy.select(ctx, 100)
        np.testing.assert_array_equal(picks[1], want)
        if type(strategy).select is not Strategy.select:  # batch-aware: not merely the top-K of its score
            top, _, _ = Strategy.select(strategy, ctx, 100)
            assert np.intersect1d(top, want).size < 100
