"""Suggestive Annotation: max-cover on constructed clusters, uncertain-then-representative
picks on a two-class pool with a known boundary, and, through the real cycle loop on
digits (Ray), Suggestive Annotation and MC dropout keep the pool's invariants."""

from __future__ import annotations

import numpy as np
import pytest
from strategy_helpers import assert_valid_selection, check_invariants, ctx_of, make, split, state_of

from daal_ray.acquisition.suggestive import ensemble_variance, max_cover_greedy
from daal_ray.errors import DataError
from daal_ray.experiment import run_experiment


def test_max_cover_prefers_coverage_over_redundancy():
    # cluster A: 4 nearly parallel rows, cluster B: 3, and a lone row C; all mutually orthogonal
    a = np.array([[1, 0, 0]] * 4) + np.array([[0, 0, 0], [0, .01, 0], [0, 0, .01], [0, .01, .01]])
    b = np.array([[0, 1, 0]] * 3) + np.array([[.01, 0, 0], [0, 0, 0], [0, 0, .01]])
    x = np.vstack([a, b, [[0, 0, 1]]])
    pos, gains = max_cover_greedy(x, 3, neighbours=100)
    assert pos[0] in range(4) and pos[1] in range(4, 7) and pos[2] == 7
    assert gains[0] > gains[1] > gains[2] > 0
    assert pos[0] == 3  # the A row also nearest to B and C (their tiny similarities count when dense)
    # a sparse neighbourhood drops those tiny similarities but still covers each cluster once
    sparse = max_cover_greedy(x, 3, neighbours=4)[0]
    assert sparse[0] in range(4) and sparse[1] in range(4, 7) and sparse[2] == 7


def test_max_cover_ties_go_to_the_smaller_position():
    x = np.eye(4)  # every row covers only itself: all gains equal
    assert max_cover_greedy(x, 4, neighbours=4)[0].tolist() == [0, 1, 2, 3]


def _two_class_pool():
    """Labeled: two classes around (-2, 0) and (2, 0). Unlabeled: far, confident rows and two
    groups on the decision boundary x = 0 (at y = +3 and y = -3)."""
    rng = np.random.default_rng(0)
    xl = np.vstack([rng.normal([-2, 0], 0.7, (12, 2)), rng.normal([2, 0], 0.7, (12, 2))])
    yl = np.r_[np.zeros(12), np.ones(12)].astype(np.int64)
    far = np.vstack([rng.normal([-8, 0], 0.3, (20, 2)), rng.normal([8, 0], 0.3, (20, 2))])
    top = rng.normal([0, 3], 0.05, (5, 2))
    bottom = rng.normal([0, -3], 0.05, (5, 2))
    xu = np.vstack([far, top, bottom])
    x = np.vstack([xl, xu]).astype(np.float32)
    n_l = len(xl)
    ids = np.arange(len(x), dtype=np.int64) + 100
    labeled = np.arange(len(x)) < n_l
    p = {"sample_id": ids, "labeled": labeled, "features": x}
    boundary_top, boundary_bottom = ids[n_l + 40:n_l + 45], ids[n_l + 45:]
    return p, yl, boundary_top, boundary_bottom


def test_suggestive_picks_uncertain_then_representative():
    p, yl, top, bottom = _two_class_pool()
    s = make("suggestive", candidates=10, neighbours=64)
    ctx = ctx_of(p, labeled_labels=yl)
    s.fit(ctx)
    unc = s.score({"sample_id": p["sample_id"], "features": p["features"]})
    boundary = np.isin(p["sample_id"], np.r_[top, bottom])
    far = ~p["labeled"] & ~boundary
    assert unc[boundary].min() > unc[far].max(), "the bootstrapped heads disagree most on the boundary"
    ids, gains, _ = s.select(ctx, 2)
    assert_valid_selection(ids, p, 2)
    # candidates = the 10 boundary rows; max-cover takes one from each boundary group
    assert len(set(ids) & set(top)) == 1 and len(set(ids) & set(bottom)) == 1
    # the same on another block layout
    s2 = make("suggestive", candidates=10, neighbours=64)
    ctx2 = ctx_of(p, split(p, 5), labeled_labels=yl)
    s2.fit(ctx2)
    assert np.array_equal(s2.select(ctx2, 2)[0], ids)


def test_ensemble_variance_is_zero_for_identical_members():
    w = np.random.default_rng(0).normal(size=(1, 3, 4)).astype(np.float32)
    v = ensemble_variance(np.ones((5, 3), np.float32), np.repeat(w, 3, 0), np.zeros((3, 4), np.float32))
    assert np.allclose(v, 0.0)


def test_suggestive_needs_labels():
    p, _, _, _ = _two_class_pool()
    with pytest.raises(DataError, match="labels"):
        make("suggestive").fit(ctx_of(p))


# --------------------------------------------------------------------------- through the cycle loop (Ray)
@pytest.mark.ray
@pytest.mark.parametrize("strategy", ["suggestive", "mc_dropout"])
def test_suggestive_and_mc_dropout_through_the_cycle_loop(ray_session, tiny_config, tmp_path, strategy):
    cfg = tiny_config(strategy, final_fraction=0.10)
    run_experiment(cfg, tmp_path)
    state = state_of(tmp_path, cfg)
    _, k, _ = cfg.schedule(len(state))
    assert len(state.history) == 2
    check_invariants(state, k)
