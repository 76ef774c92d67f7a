"""Cluster-Margin: the beta x K smallest margins, round-robin over average-linkage HAC
clusters of the pool, smallest cluster first.

Known answers: the HAC equals scipy's average linkage (and a weighted point counts as that
many coincident points); the round-robin visits clusters smallest first, one member each;
on a pool whose smallest margins sit in a few clusters, the batch covers every cluster its
candidates touch (far more than margin's top-K and than a uniform choice among the same
candidates over many seeded draws) while its mean margin stays far below what a uniform
sampler of the pool gets; the k-means-then-HAC path for large pools finds the same
clusters; the clustering is kept in the run directory and reused by later cycles.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from strategy_helpers import assert_valid_selection, ctx_of, make, split

from daal_ray.acquisition import build_strategy, strategy_names
from daal_ray.acquisition.cluster_margin import CACHE_FILE, average_linkage, cut_dendrogram, round_robin
from daal_ray.acquisition.uncertainty import sample_margin
from daal_ray.config import AcquisitionConfig
from daal_ray.errors import ConfigError

BLOBS, PER = 30, 40


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """The two labelings group the points alike (labels may differ)."""
    pairs = np.unique(np.stack([a, b], 1), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def margin_pool(seed: int = 0) -> dict[str, np.ndarray]:
    """30 tight, far-apart blobs of 40 samples. Blobs 0-2 hold the 120 smallest margins
    (U(0, 0.02)); blobs 3-14 hold 3 samples each with the next smallest (U(0.03, 0.06));
    every other sample's margin is U(0.3, 0.9). 10 labeled samples, all of high margin."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(BLOBS, 16)) * 10
    blob = np.repeat(np.arange(BLOBS), PER)
    x = centres[blob] + 0.05 * rng.normal(size=(blob.size, 16))
    margin = rng.uniform(0.3, 0.9, blob.size)
    margin[blob < 3] = rng.uniform(0.0, 0.02, 3 * PER)
    for b in range(3, 15):
        margin[np.flatnonzero(blob == b)[:3]] = rng.uniform(0.03, 0.06, 3)
    # Three classes: p1 - p2 = margin, the third gets what is left.
    p2 = (1.0 - margin) / 2.5
    probs = np.stack([p2 + margin, p2, 1.0 - 2 * p2 - margin], 1)
    labeled = np.zeros(blob.size, bool)
    labeled[rng.choice(np.flatnonzero(margin > 0.3), 10, replace=False)] = True
    ids = rng.permutation(blob.size).astype(np.int64) * 5 + 3
    return {"sample_id": ids, "labeled": labeled, "features": x.astype(np.float32), "probs": probs.astype(np.float32),
            "blob": blob}


def _blobs_of(ids: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    pos = {int(i): j for j, i in enumerate(p["sample_id"])}
    return p["blob"][[pos[int(i)] for i in ids]]


def _margins_of(ids: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    pos = {int(i): j for j, i in enumerate(p["sample_id"])}
    return sample_margin(p["probs"][[pos[int(i)] for i in ids]])


def _cols(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in p.items() if k != "blob"}


# -------------------------------------------------------------------------- HAC
@pytest.mark.parametrize("seed", [0, 1])
def test_average_linkage_equals_scipys(seed):
    x = np.random.default_rng(seed).normal(size=(60, 5))
    ours = average_linkage(x)
    ref = linkage(x, method="average")
    np.testing.assert_allclose(np.sort(ours[:, 2]), np.sort(ref[:, 2]), rtol=1e-9)
    for c in (2, 5, 17, 60):
        assert _same_partition(cut_dendrogram(ours, 60, clusters=c), fcluster(ref, c, "maxclust"))
    t = float(np.median(ref[:, 2]))
    assert _same_partition(cut_dendrogram(ours, 60, threshold=t), fcluster(ref, t, "distance"))


def test_a_weighted_point_counts_as_that_many_coincident_points():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(25, 4))
    w = rng.integers(1, 6, 25)
    repeated = np.repeat(x, w, axis=0)
    ref = linkage(repeated, method="average")
    ours = average_linkage(x, w)
    first = np.concatenate([[0], np.cumsum(w)[:-1]])  # one copy of each point
    for c in (3, 8, 14):
        assert _same_partition(cut_dendrogram(ours, 25, clusters=c), fcluster(ref, c, "maxclust")[first])
    # Unweighted, the same points cluster differently: the weights are used.
    assert not all(_same_partition(cut_dendrogram(average_linkage(x), 25, clusters=c), cut_dendrogram(ours, 25, clusters=c))
                   for c in (3, 8, 14))


# -------------------------------------------------------------------------- round-robin
def test_round_robin_visits_the_smallest_cluster_first_one_member_each():
    clusters = np.array([5, 9, 5, 7, 9, 5])
    ids = np.array([10, 11, 12, 13, 14, 15])
    order = round_robin(clusters, ids, key=4)
    got = clusters[order].tolist()
    assert got[:3] == [7, 9, 5], "first round: sizes 1, 2, 3"
    assert got[3:5] == [9, 5] and got[5] == 5
    assert sorted(order.tolist()) == list(range(6))
    # The member of a visit is random: other keys pick other members first, and the order
    # depends on the ids, not on where they stand.
    firsts = {int(ids[round_robin(clusters, ids, key=k)[2]]) for k in range(40)}
    assert firsts == {10, 12, 15}
    perm = np.array([3, 0, 5, 1, 4, 2])
    assert np.array_equal(ids[perm][round_robin(clusters[perm], ids[perm], key=4)], ids[order])


# -------------------------------------------------------------------------- the batch
@pytest.mark.parametrize("params", [{}, {"hac_points": 64, "sample_rows": 600}], ids=["exact-hac", "kmeans-then-hac"])
def test_batch_covers_the_candidates_clusters_with_low_margins(params):
    p = margin_pool()
    k = 24
    cm = make("cluster_margin", beta=6.5, clusters=BLOBS, **params)
    ids, scores, _ = cm.select(ctx_of(_cols(p)), k)
    assert_valid_selection(ids, p, k)
    np.testing.assert_allclose(scores, -_margins_of(ids, p), atol=1e-6)
    plain, _, _ = make("margin").select(ctx_of(_cols(p)), k)
    cand, _, _ = make("margin").select(ctx_of(_cols(p)), int(6.5 * k))
    assert set(_blobs_of(plain, p)) <= {0, 1, 2}, "margin's top-K sits in the three low-margin blobs"
    cand_blobs = set(_blobs_of(cand, p))
    assert cand_blobs == set(range(15))
    # Every cluster among the candidates, small ones first: the 12 three-member blobs and
    # the 3 large ones each at least once.
    got = _blobs_of(ids, p)
    assert set(got) == cand_blobs and np.isin(ids, cand).all()
    assert set(got[:12]) == set(range(3, 15)), "the smallest clusters come first"
    # Against uniform draws on the same data (fixed seeds): among the same candidates they
    # cover far fewer clusters; over the pool their margins are far higher.
    rng = np.random.default_rng(0)
    unlabeled = p["sample_id"][~p["labeled"]]
    among = [len(set(_blobs_of(rng.choice(cand, k, replace=False), p))) for _ in range(300)]
    pooled = [_margins_of(rng.choice(unlabeled, k, replace=False), p).mean() for _ in range(300)]
    assert len(set(got)) >= 5 * len(set(_blobs_of(plain, p)))
    assert len(set(got)) > max(among), (len(set(got)), max(among))
    assert _margins_of(ids, p).mean() < 0.25 * min(pooled), (_margins_of(ids, p).mean(), min(pooled))


def test_cluster_margin_is_seeded_and_independent_of_the_block_layout():
    p = _cols(margin_pool(seed=2))
    params = {"beta": 6.5, "clusters": BLOBS, "hac_points": 64, "sample_rows": 600}
    a, sa, _ = make("cluster_margin", **params).select(ctx_of(p), 20)
    b, sb, _ = make("cluster_margin", **params).select(ctx_of(p, split(p, 7)), 20)
    assert np.array_equal(a, b) and np.array_equal(sa, sb)
    other = build_strategy(AcquisitionConfig("cluster_margin", params), seed=9, cycle=2)
    c, _, _ = other.select(ctx_of(p), 20)
    assert not np.array_equal(a, c), "another seed draws other members of the clusters"


def test_the_clustering_is_kept_in_the_run_directory_and_reused(tmp_path):
    p = margin_pool(seed=4)
    params = {"beta": 6.5, "clusters": BLOBS}
    first = build_strategy(AcquisitionConfig("cluster_margin", params), seed=1, cycle=1)
    first.select(ctx_of(_cols(p), run_dir=str(tmp_path)), 24)
    saved = np.load(tmp_path / CACHE_FILE)
    unl = ~p["labeled"]
    assert np.array_equal(saved["sample_id"], np.sort(p["sample_id"][unl]))
    order = np.argsort(p["sample_id"][unl])
    assert _same_partition(saved["cluster"], p["blob"][unl][order]), "the saved clusters are the blobs"
    # A later cycle's features come from another model: here, noise with no blobs at all.
    # Its candidates still take the clusters of the first selection.
    later = dict(_cols(p), features=np.random.default_rng(0).normal(size=p["features"].shape).astype(np.float32))
    second = build_strategy(AcquisitionConfig("cluster_margin", params), seed=1, cycle=2)
    cand, _, _ = make("margin").select(ctx_of(later), 156)
    got, _ = second.candidate_clusters(ctx_of(later, run_dir=str(tmp_path)), cand, 24)
    assert _same_partition(got, _blobs_of(cand, p))
    fresh, _ = second.candidate_clusters(ctx_of(later), cand, 24)
    assert not _same_partition(fresh, _blobs_of(cand, p)), "without the kept clustering the noise is clustered"


def test_registered_described_and_params_validated():
    assert "cluster_margin" in strategy_names()
    for bad, match in (({"beta": 0.5}, "beta must be >= 1"), ({"clusters": -1}, "clusters must be >= 0"),
                       ({"hac_points": 8, "clusters": 9}, "cannot exceed hac_points"),
                       ({"hac_points": 64, "sample_rows": 32}, "must be >= hac_points")):
        with pytest.raises(ConfigError, match=match):
            make("cluster_margin", **bad)


@pytest.mark.ray
def test_cluster_margin_through_the_cycle_loop(ray_session, tiny_config, tmp_path):
    """Two selecting cycles on digits, the features a Ray Dataset: the first clusters the
    pool (k-means then HAC, with a small ``hac_points``, and the assignment pass on Ray Data
    workers) and keeps it in the run directory; the second reuses it. Every cycle adds K
    new unlabeled ids."""
    from strategy_helpers import check_invariants, state_of

    from daal_ray.experiment import run_experiment

    params = {"hac_points": 64, "sample_rows": 512}
    cfg = tiny_config("cluster_margin")
    cfg = cfg.replace(acquisition=AcquisitionConfig("cluster_margin", params))
    run_experiment(cfg, tmp_path)
    state = state_of(tmp_path, cfg)
    _, k, rounds = cfg.schedule(len(state))
    assert rounds == 2
    check_invariants(state, k)
    saved = np.load(tmp_path / cfg.name / CACHE_FILE)
    assert int(saved["cycle"]) == 0, "made at the first selection, reused by the second"
    first_unlabeled = np.setdiff1d(state.sample_ids, state.ids_of_cycle(0))
    assert np.array_equal(saved["sample_id"], first_unlabeled)
    assert 2 <= np.unique(saved["cluster"]).size <= 64
