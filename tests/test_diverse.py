"""Batch-aware selection (``<name>_diverse``): the top beta x K by score, then K of them by
k-means++ D^2 seeding on the task features.

Known answer: on a pool whose highest scores all sit in one tight cluster, the plain
top-K takes the whole batch from that cluster while the diverse version spreads it over
the clusters among its candidates; it stays among the candidates, is seeded, and is
independent of how the pool is split into blocks.
"""

from __future__ import annotations

import numpy as np
import pytest
from strategy_helpers import assert_valid_selection, ctx_of, make, split

from daal_ray.acquisition import strategy_names
from daal_ray.acquisition.coreset import CoresetStrategy
from daal_ray.acquisition.diverse import diverse_variant
from daal_ray.errors import ConfigError


def clustered_pool(clusters: int = 6, per: int = 40, d: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """``clusters`` tight clusters; cluster 0 holds the most uncertain samples (near-uniform
    softmax), the others are progressively more confident; a few labeled rows elsewhere."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)) * 10
    feats, probs, cluster = [], [], []
    for c in range(clusters):
        feats.append(centres[c] + 0.05 * rng.normal(size=(per, d)))
        sharp = 0.2 + 1.5 * c  # cluster 0: flattest softmax = highest entropy
        logits = rng.normal(size=(per, 5)) * 0.05 + np.eye(5)[c % 5] * sharp
        probs.append(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
        cluster.append(np.full(per, c))
    n = clusters * per
    ids = rng.permutation(n).astype(np.int64) * 2 + 11
    labeled = np.zeros(n, bool)
    labeled[rng.choice(n, 10, replace=False)] = True
    return {"sample_id": ids, "labeled": labeled, "features": np.concatenate(feats).astype(np.float32),
            "probs": np.concatenate(probs).astype(np.float32), "cluster": np.concatenate(cluster)}


def _clusters_of(ids: np.ndarray, p: dict[str, np.ndarray]) -> set[int]:
    pos = {int(i): j for j, i in enumerate(p["sample_id"])}
    return {int(p["cluster"][pos[int(i)]]) for i in ids}


def test_diverse_spreads_a_batch_that_top_k_takes_from_one_cluster():
    p = clustered_pool()
    k = 8
    plain, _, _ = make("entropy").select(ctx_of(p), k)
    diverse, _, _ = make("entropy_diverse", beta=25.0).select(ctx_of(p), k)
    assert _clusters_of(plain, p) == {0}, "the plain top-K should come from the most uncertain cluster"
    assert len(_clusters_of(diverse, p)) >= 4
    assert_valid_selection(diverse, p, k)
    # The candidates are the plain top beta x K; the diverse batch is drawn from them only.
    cand, _, _ = make("entropy").select(ctx_of(p), 200)
    assert np.isin(diverse, cand).all()
    # The first pick is the best-scored candidate.
    assert diverse[0] == plain[0]


def test_diverse_is_seeded_and_independent_of_the_block_layout():
    p = clustered_pool(seed=3)
    a, sa, _ = make("entropy_diverse").select(ctx_of(p), 10)
    b, sb, _ = make("entropy_diverse").select(ctx_of(p, split(p, 7)), 10)
    assert np.array_equal(a, b) and np.array_equal(sa, sb)
    other = make("entropy_diverse").__class__(make("entropy_diverse").params, seed=9, cycle=2)
    c, _, _ = other.select(ctx_of(p), 10)
    assert not np.array_equal(a, c), "another seed draws another batch"


def test_beta_one_is_the_plain_top_k():
    p = clustered_pool(seed=1)
    plain, _, _ = make("entropy").select(ctx_of(p), 12)
    same, _, _ = make("entropy_diverse", beta=1.0).select(ctx_of(p), 12)
    assert np.array_equal(np.sort(plain), np.sort(same))


def test_score_weighting_stays_among_the_candidates():
    p = clustered_pool(seed=2)
    ids, scores, _ = make("entropy_diverse", weighting="score").select(ctx_of(p), 9)
    assert_valid_selection(ids, p, 9)
    assert np.all(np.isfinite(scores))


def test_variants_are_registered_and_params_validated():
    for name in ("daal_diverse", "entropy_diverse", "learning_loss_diverse", "mc_dropout_diverse"):
        assert name in strategy_names()
    with pytest.raises(ConfigError, match="beta must be >= 1"):
        make("entropy_diverse", beta=0.5)
    with pytest.raises(ConfigError):
        make("entropy_diverse", weighting="loud")
    with pytest.raises(TypeError, match="selects by its own method"):
        diverse_variant(CoresetStrategy, register=False)


@pytest.mark.ray
def test_new_strategies_through_the_cycle_loop(ray_session, tiny_config, tmp_path):
    """entropy_diverse, daal_power and badge through the real cycle loop on digits: every
    cycle adds K new unlabeled ids, and every selecting cycle records its diagnostics."""
    from strategy_helpers import check_invariants, state_of

    from daal_ray.config import AcquisitionConfig
    from daal_ray.experiment import run_experiment

    for name, params in (("entropy_diverse", {}), ("daal_power", {"epochs": 2}), ("badge", {})):
        cfg = tiny_config(name, final_fraction=0.10)  # one selecting cycle each
        cfg = cfg.replace(acquisition=AcquisitionConfig(name, params))
        table = run_experiment(cfg, tmp_path / name)
        state = state_of(tmp_path / name, cfg)
        _, k, rounds = cfg.schedule(len(state))
        check_invariants(state, k)
        assert len(state.history) == rounds + 1
        selecting = [r for r in table.to_pylist() if r["num_selected"]]
        assert len(selecting) == rounds
        for r in selecting:
            assert 0.0 <= r["auroc_wrong"] <= 1.0 and -1.0 <= r["spearman_entropy"] <= 1.0, (name, r)
            assert r["batch_labeled_distance"] > 0 and 0.0 < r["batch_cosine"] <= 1.0 + 1e-9, (name, r)
