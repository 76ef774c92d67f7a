"""Core-set (k-center greedy on task features): the strategy's selection equals a
brute-force k-center on a shuffled, blocked pool, and, through the real cycle loop on
digits (Ray), its first batch is the brute-force k-center of cycle 0's features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from strategy_helpers import (
    assert_valid_selection,
    brute_force_k_center,
    check_invariants,
    ctx_of,
    make,
    pool,
    split,
    state_of,
)

from daal_ray.data import get_dataset
from daal_ray.experiment import run_experiment
from daal_ray.models import build_model
from daal_ray.training import load_state_dict


def test_coreset_select_equals_brute_force_on_a_shuffled_blocked_pool():
    p = pool(n=200, d=5, n_labeled=20, seed=3)
    k = 15
    order = np.argsort(p["sample_id"])
    lab, xs, ids = p["labeled"][order], p["features"][order], p["sample_id"][order]
    expected = ids[~lab][brute_force_k_center(xs[~lab], xs[lab], k)]
    for features in (p, split(p, 6)):
        got, dist, _ = make("coreset", chunk_elems=64).select(ctx_of(p, features), k)
        assert_valid_selection(got, p, k)
        assert got.tolist() == expected.tolist()


# --------------------------------------------------------------------------- through the cycle loop (Ray)
@pytest.mark.ray
def test_coreset_through_the_cycle_loop(ray_session, tiny_config, tmp_path):
    """Two cycles on digits; the first batch is the brute-force k-center of cycle 0's features."""
    cfg = tiny_config("coreset")
    run_experiment(cfg, tmp_path)
    state = state_of(tmp_path, cfg)
    _, k, rounds = cfg.schedule(len(state))
    assert rounds == 2 and len(state.history) == 3
    check_invariants(state, k)
    ds = get_dataset(cfg.data)
    model = build_model(cfg.train.model, num_classes=10, in_channels=1)
    model.load_state_dict(load_state_dict(tmp_path / cfg.name / "checkpoints" / "cycle_000" / "model.pt"))
    model.eval()
    lab0 = state.labeled_cycle == 0
    with torch.no_grad():
        feats = model.forward_features(ds.images("train", state.sample_ids))[0].double().numpy()
    picks = brute_force_k_center(feats[~lab0], feats[lab0], k)
    assert np.array_equal(np.sort(state.ids_of_cycle(1)), np.sort(state.sample_ids[~lab0][picks]))
