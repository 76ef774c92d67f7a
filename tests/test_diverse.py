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
from strategy_helpers import assert_valid_selection, ctx_of, make, pool, split

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
    k = 6
    plain, _, _ = make("entropy").select(ctx_of(p), k)
    diverse, _, _ = make("entropy_diverse", beta=40.0).select(ctx_of(p), k)  # every unlabeled row a candidate
    assert _clusters_of(plain, p) == {0}, "the plain top-K should come from the most uncertain cluster"
    assert_valid_selection(diverse, p, k)
    # One pick in each of the 6 clusters. A uniform draw of 6 of the same candidates (300
    # seeded draws) rarely does that (6! / 6^6 = 1.5%), and its closest pair is nearly
    # always two samples of one cluster.
    assert len(_clusters_of(diverse, p)) == 6
    pos = {int(i): j for j, i in enumerate(p["sample_id"])}

    def closest_pair(ids: np.ndarray) -> float:
        x = p["features"][[pos[int(i)] for i in ids]].astype(np.float64)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        return float(d[np.triu_indices(len(ids), 1)].min())

    rng = np.random.default_rng(0)
    unlabeled = p["sample_id"][~p["labeled"]]
    draws = [rng.choice(unlabeled, k, replace=False) for _ in range(300)]
    coverage = np.array([len(_clusters_of(d, p)) for d in draws])
    assert (coverage == 6).mean() < 0.05 and coverage.mean() < 4.5
    assert closest_pair(diverse) > 20 * np.median([closest_pair(d) for d in draws])
    # The candidates are the plain top beta x K; the diverse batch is drawn from them only.
    few, _, _ = make("entropy_diverse", beta=25.0).select(ctx_of(p), 8)
    cand, _, _ = make("entropy").select(ctx_of(p), 200)
    assert np.isin(few, cand).all()
    # The first pick is the best-scored candidate.
    assert diverse[0] == plain[0] == few[0]


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


def test_score_weighting_draws_the_high_scores_far_more_often_than_uniform():
    """Unstructured features, 60 of 600 samples near-uniform softmax (entropy ~1.6), the
    rest confident (~0.1): every unlabeled sample is a candidate, so the draw is D^2 alone
    (``none``) or D^2 x score (``score``). Uniform draws of 100 take ~10 of the 60."""
    rng = np.random.default_rng(2)
    n, k = 600, 100
    high = np.zeros(n, bool)
    high[rng.choice(n, 60, replace=False)] = True
    logits = rng.normal(size=(n, 5)) * 0.05 + np.where(high[:, None], 0.0, 1.0) * np.eye(5)[rng.integers(0, 5, n)] * 6
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labeled = np.zeros(n, bool)
    labeled[rng.choice(np.flatnonzero(~high), 10, replace=False)] = True
    p = {"sample_id": np.arange(n, dtype=np.int64) * 3 + 1, "labeled": labeled,
         "features": rng.normal(size=(n, 16)).astype(np.float32), "probs": probs.astype(np.float32)}
    weighted, scores, _ = make("entropy_diverse", beta=6.0, weighting="score").select(ctx_of(p), k)
    plain, _, _ = make("entropy_diverse", beta=6.0).select(ctx_of(p), k)
    assert_valid_selection(weighted, p, k)
    np.testing.assert_allclose(scores, make("entropy").score({"probs": p["probs"][(weighted - 1) // 3]}), rtol=1e-6)
    hits = {name: int(np.isin(ids, p["sample_id"][high]).sum()) for name, ids in (("score", weighted), ("none", plain))}
    unlabeled = p["sample_id"][~labeled]
    uniform = [int(np.isin(rng.choice(unlabeled, k, replace=False), p["sample_id"][high]).sum()) for _ in range(300)]
    assert hits["score"] >= 40 and hits["score"] > 2 * max(uniform), (hits, max(uniform))
    assert hits["none"] <= max(uniform), "without the weighting the score plays no part in the draw"


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
            if name == "entropy_diverse":
                # Its diagnostic score is the entropy itself, and entropy finds the model's
                # errors better than chance (a uniform scorer: rank correlation 0, AUROC 0.5).
                assert r["spearman_entropy"] == pytest.approx(1.0, abs=1e-9), r
                assert r["auroc_wrong"] > 0.6, r


def test_seeding_batch_one_is_exact_sequential_kmeans_plus_plus():
    """The candidates' k-means++ with ``seeding_batch=1`` equals a textbook k-means++ on the
    same L2-normalised features, from the best-scored candidate, with the same draws.
    (Unclustered features: within a tight cluster float32 distances would be too coarse
    for the draws of a float64 reference to be compared one for one.)"""
    from test_badge import reference_kmeanspp

    from daal_ray.acquisition.diverse import _SALT
    from daal_ray.runtime import derive_seed

    p = pool(n=1500, d=8, seed=5)
    k = 300  # the default draws k // 128 = 2 centres per pass: not exact
    cand, _, _ = make("entropy").select(ctx_of(p), 600)
    pos = {int(i): j for j, i in enumerate(p["sample_id"])}
    x = p["features"][[pos[int(i)] for i in cand]].astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    want = cand[reference_kmeanspp(x, k, derive_seed(1, 2, _SALT), first=0)]
    exact, _, _ = make("entropy_diverse", beta=2.0, seeding_batch=1).select(ctx_of(p), k)
    np.testing.assert_array_equal(exact, want)
    batched, _, _ = make("entropy_diverse", beta=2.0).select(ctx_of(p), k)
    assert not np.array_equal(batched, want), "the default batched draw is an approximation"


def test_seeding_in_cells_still_takes_one_sample_per_cluster():
    """8 tight clusters of 150 cut into 2 k-means cells: each cell seeds its share of K = 8
    (proportional to its size), one pick per cluster, as one seeding over all does. A
    uniform draw of 8 covers all 8 clusters in 8! / 8^8 = 0.24% of draws."""
    import torch

    from daal_ray.selection import sharded_d2_seeding

    rng = np.random.default_rng(7)
    cluster = np.repeat(np.arange(8), 150)
    x = rng.normal(size=(8, 16))[cluster] * 10 + 0.05 * rng.normal(size=(1200, 16))
    xt = torch.as_tensor(x, dtype=torch.float32)
    whole = sharded_d2_seeding(xt, 8, seed=3, cell_rows=0)
    cells = sharded_d2_seeding(xt, 8, seed=3, cell_rows=600)
    assert set(cluster[whole]) == set(cluster[cells]) == set(range(8))
    assert not np.array_equal(np.sort(whole), np.sort(cells)), "the cells seed on their own"
    uniform = [len(set(cluster[rng.choice(1200, 8, replace=False)])) for _ in range(300)]
    assert np.mean(np.array(uniform) == 8) < 0.02
