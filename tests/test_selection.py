"""Exact streaming top-K against a full sort by (score desc, sample_id asc); k-center greedy
(farthest-first, ties, against a brute-force k-center), its tiled distances, and
gather_features' checks; k-means++ D^2 seeding (one pick per separated cluster, the D^2
probabilities, seeded, no repeats) and the candidate-row gathering."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from strategy_helpers import brute_force_k_center, pool

from daal_ray.errors import DataError
from daal_ray.selection import (
    StreamingTopK,
    d2_seeding,
    euclidean_min_sq,
    gather_features,
    gather_rows,
    gather_unlabeled,
    k_center_greedy,
    merge_topk,
    min_sq_distances,
    topk_arrays,
    topk_batch,
)


def topk_stream(batches, k, **keys):
    """The exact merge's ids and scores (its timing is not under test here)."""
    ids, scores, _ = merge_topk(batches, k, **keys)
    return ids, scores


N = 1500


def _data(seed: int, n: int = N, levels: int = 5):
    """Unique non-contiguous ids in random order, scores from a small set (many ties)."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(10**9, size=n, replace=False).astype(np.int64)
    scores = rng.integers(0, levels, size=n).astype(np.float64) * 0.5 - 1.0
    return ids, scores


def _reference(ids, scores, k):
    order = np.lexsort((ids, -scores))[: max(k, 0)]
    return ids[order], scores[order]


def _random_batches(ids, scores, seed, shuffle_batches=False):
    """Split into many random-size batches (some empty), optionally in random order."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(ids.size)
    ids, scores = ids[perm], scores[perm]
    cuts = np.sort(rng.integers(0, ids.size + 1, size=40))
    bounds = np.concatenate([[0], cuts, [ids.size]])
    batches = [{"sample_id": ids[a:b], "score": scores[a:b]} for a, b in zip(bounds[:-1], bounds[1:])]
    batches.insert(len(batches) // 2, {"sample_id": ids[:0], "score": scores[:0]})  # an empty block
    if shuffle_batches:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _assert_result(got, want):
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert got[0].dtype == np.int64 and got[1].dtype == np.float64


KS = [0, 1, 2, 7, 100, 333, N - 1, N, N + 5]


def test_data_has_many_ties():
    ids, scores = _data(0)
    assert np.unique(scores).size == 5
    # The k-th place of most ks falls inside a large tie group.
    assert np.bincount((scores * 2 + 2).astype(int)).min() > 200


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("seed", [0, 1])
def test_topk_arrays_matches_full_sort(k, seed):
    ids, scores = _data(seed)
    _assert_result(topk_arrays(ids, scores, k), _reference(ids, scores, k))


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_matches_full_sort(k, seed):
    ids, scores = _data(seed)
    batches = _random_batches(ids, scores, seed=100 + seed)
    assert len(batches) > 20 and any(b["sample_id"].size == 0 for b in batches)
    merger = StreamingTopK(k)
    for b in batches:
        merger.push(b["sample_id"], b["score"])
    _assert_result(merger.result(), _reference(ids, scores, k))
    assert merger.seen == N


@pytest.mark.parametrize("k", KS)
def test_topk_stream_matches_full_sort(k):
    ids, scores = _data(3)
    _assert_result(topk_stream(_random_batches(ids, scores, seed=7), k), _reference(ids, scores, k))


@pytest.mark.parametrize("k", [1, 50, 400, N])
def test_result_independent_of_split_and_order(k):
    ids, scores = _data(4)
    results = [topk_stream(_random_batches(ids, scores, seed=s, shuffle_batches=True), k) for s in range(6)]
    results.append(topk_stream([{"sample_id": ids, "score": scores}], k))  # one batch
    results.append(topk_stream(({"sample_id": ids[i:i + 1], "score": scores[i:i + 1]} for i in range(N)), k))
    for r in results[1:]:
        _assert_result(r, results[0])
    _assert_result(results[0], _reference(ids, scores, k))


def test_ties_broken_by_smallest_id():
    ids = np.array([50, 10, 40, 20, 30], dtype=np.int64)
    scores = np.ones(5)
    got, _ = topk_arrays(ids, scores, 3)
    np.testing.assert_array_equal(got, [10, 20, 30])
    got, _ = topk_stream([{"sample_id": ids[:2], "score": scores[:2]},
                          {"sample_id": ids[2:], "score": scores[2:]}], 2)
    np.testing.assert_array_equal(got, [10, 20])


def test_k_zero_and_negative_give_empty():
    ids, scores = _data(5, n=20)
    for k in (0, -3):
        got_ids, got_scores = topk_arrays(ids, scores, k)
        assert got_ids.size == 0 and got_scores.size == 0
    got_ids, _ = topk_stream([{"sample_id": ids, "score": scores}], 0)
    assert got_ids.size == 0


def test_streaming_refuses_negative_k():
    with pytest.raises(ValueError):
        StreamingTopK(-1)


def test_empty_stream():
    got_ids, got_scores = topk_stream([], 5)
    assert got_ids.size == 0 and got_scores.size == 0


def test_result_is_a_copy():
    merger = StreamingTopK(3)
    merger.push(np.array([1, 2, 3]), np.array([3.0, 2.0, 1.0]))
    ids, _ = merger.result()
    ids[:] = -1
    np.testing.assert_array_equal(merger.result()[0], [1, 2, 3])


def test_custom_keys():
    batches = [{"id": np.array([5, 6]), "s": np.array([0.1, 0.9])}]
    got, _ = topk_stream(batches, 1, id_key="id", score_key="s")
    np.testing.assert_array_equal(got, [6])


# --------------------------------------------------------------------------- bad scores
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_score_raises_naming_ids(bad):
    ids = np.array([11, 22, 12345, 33], dtype=np.int64)
    scores = np.array([0.1, 0.2, bad, 0.3])
    with pytest.raises(DataError, match="12345"):
        topk_arrays(ids, scores, 2)
    merger = StreamingTopK(2)
    merger.push(ids[:2], scores[:2])
    with pytest.raises(DataError, match="12345"):
        merger.push(ids[2:], scores[2:])
    with pytest.raises(DataError, match="12345"):
        topk_stream([{"sample_id": ids[:1], "score": scores[:1]}, {"sample_id": ids[1:], "score": scores[1:]}], 1)
    with pytest.raises(DataError, match="12345"):
        topk_batch({"sample_id": ids, "score": scores}, 2)


def test_non_finite_refused_even_with_k_zero():
    with pytest.raises(DataError, match="777"):
        topk_arrays(np.array([777]), np.array([np.nan]), 0)


def test_mismatched_lengths_raise():
    with pytest.raises(DataError):
        topk_arrays(np.array([1, 2, 3]), np.array([0.1, 0.2]), 1)


# --------------------------------------------------------------------------- topk_batch
@pytest.mark.parametrize("k", [0, 1, 30, N + 1])
def test_topk_batch_per_block_then_merge(k):
    ids, scores = _data(6)
    batches = _random_batches(ids, scores, seed=8)
    reduced = [topk_batch(b, k) for b in batches]
    for b, r in zip(batches, reduced):
        assert set(r) == {"sample_id", "score"}
        _assert_result((r["sample_id"], r["score"]), _reference(b["sample_id"], b["score"], k))
        assert r["sample_id"].size == min(k, b["sample_id"].size)
    # The Ray Data pattern: per-block top-K, then an exact merge of the reduced blocks.
    _assert_result(topk_stream(reduced, k), _reference(ids, scores, k))


# --------------------------------------------------------------------------- k-center
def test_k_center_picks_the_farthest_point_first():
    xl = np.zeros((1, 2), np.float32)  # one labeled centre at the origin
    xu = np.array([[1, 0], [0, 5], [3, 0], [0, -4.9]], np.float32)
    pos, dist = k_center_greedy(xu, xl, 2)
    assert pos[0] == 1 and dist[0] == pytest.approx(5.0)
    # then farthest from {origin, (0, 5)}: (0, -4.9) at 4.9
    assert pos[1] == 3 and dist[1] == pytest.approx(4.9, rel=1e-6)


def test_k_center_ties_go_to_the_smaller_position_and_never_repeat():
    xl = np.zeros((1, 2))
    xu = np.array([[0, 2], [2, 0], [-2, 0], [0, -2]], np.float64)
    assert k_center_greedy(xu, xl, 1, dtype=torch.float64)[0].tolist() == [0]
    same = np.ones((5, 3))  # all duplicates: every distance 0 after the first pick
    pos, _ = k_center_greedy(same, np.zeros((0, 3)), 5, dtype=torch.float64)
    assert sorted(pos.tolist()) == [0, 1, 2, 3, 4] and pos[0] == 0


@pytest.mark.parametrize("seed", range(4))
def test_k_center_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    xu, xl = rng.normal(size=(120, 6)), rng.normal(size=(rng.integers(0, 15), 6))
    k = 25
    pos, dist = k_center_greedy(xu, xl, k, dtype=torch.float64, chunk_elems=37)  # many small tiles
    assert pos.tolist() == brute_force_k_center(xu, xl, k)
    assert np.all(np.diff(dist) <= 1e-12), "pick distances must not increase"
    pos32, _ = k_center_greedy(xu.astype(np.float32), xl.astype(np.float32), k)
    assert pos32.tolist() == pos.tolist()


def test_min_sq_distances_tiles_equal_dense():
    rng = np.random.default_rng(5)
    p, c = torch.as_tensor(rng.normal(size=(50, 4))), torch.as_tensor(rng.normal(size=(23, 4)))
    dense = ((p[:, None] - c[None]) ** 2).sum(-1).min(1).values
    for chunk in (1, 7, 100, 10_000):
        assert torch.allclose(min_sq_distances(p, c, chunk), dense, atol=1e-10)


# --------------------------------------------------------------------------- gather_features
def test_gather_features_checks_counts_and_values():
    p = pool(n=40, n_labeled=4)
    with pytest.raises(DataError, match="expected"):
        gather_features(p, 5, 35)
    bad = dict(p, features=p["features"].copy())
    bad["features"][np.flatnonzero(~p["labeled"])[0], 1] = np.nan
    with pytest.raises(DataError, match="NaN"):
        gather_features(bad, 4, 36)


# --------------------------------------------------------------------------- D^2 seeding
def _clusters(n_per: int = 50, k: int = 6, d: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 20
    x = np.concatenate([c + 0.01 * rng.normal(size=(n_per, d)) for c in centres])
    return torch.as_tensor(x, dtype=torch.float64), np.repeat(np.arange(k), n_per)


def test_d2_seeding_takes_one_point_per_well_separated_cluster():
    x, cluster = _clusters()
    pos = d2_seeding(len(x), 6, euclidean_min_sq(x), seed=4, first=0, batch=1)
    assert pos[0] == 0 and np.unique(pos).size == 6
    assert sorted(cluster[pos]) == list(range(6))


@pytest.mark.parametrize("seed", range(5))
def test_batched_d2_seeding_still_covers_every_cluster(seed):
    # Draws within a batch share one D^2 (two may land in one cluster), but a covered
    # cluster's mass collapses before the next batch, so 12 draws in batches of 3 reach all 6.
    x, cluster = _clusters(seed=seed)
    pos = d2_seeding(len(x), 12, euclidean_min_sq(x), seed=seed, first=0, batch=3)
    assert np.unique(pos).size == 12 and set(cluster[pos]) == set(range(6))


def test_d2_seeding_is_seeded_and_never_repeats_even_among_duplicates():
    x = torch.zeros(40, 3, dtype=torch.float64)
    x[:5] = torch.arange(5, dtype=torch.float64)[:, None]
    pos = d2_seeding(40, 30, euclidean_min_sq(x), seed=1, first=0, batch=4)
    assert np.unique(pos).size == 30
    again = d2_seeding(40, 30, euclidean_min_sq(x), seed=1, first=0, batch=4)
    assert np.array_equal(pos, again)
    assert not np.array_equal(pos, d2_seeding(40, 30, euclidean_min_sq(x), seed=2, first=0, batch=4))
    with pytest.raises(ValueError):
        d2_seeding(40, 41, euclidean_min_sq(x), seed=1)


def test_d2_seeding_draws_proportionally_to_squared_distance():
    # One centre at 0; candidates at distances 1, 2 and 3: P = 1:4:9 for the second pick.
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0]], dtype=torch.float64)
    second = [d2_seeding(4, 2, euclidean_min_sq(x), seed=s, first=0)[1] for s in range(1500)]
    freq = np.bincount(second, minlength=4)[1:] / len(second)
    np.testing.assert_allclose(freq, np.array([1, 4, 9]) / 14, atol=0.03)


@pytest.mark.parametrize("seed", range(4))
def test_d2_seeding_takes_every_distinct_point_before_duplicates_of_a_centre(seed):
    # 3 distinct points and 20 copies of the first centre, k = 6 in batches of 5: the
    # distinct points are always taken; the rest are drawn among the copies.
    x = torch.zeros(23, 2, dtype=torch.float64)
    x[20:] = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]], dtype=torch.float64)
    pos = d2_seeding(23, 6, euclidean_min_sq(x), seed=seed, first=0, batch=5)
    assert np.unique(pos).size == 6 and {20, 21, 22} <= set(pos.tolist())


def test_gather_rows_returns_the_candidates_in_their_order_and_names_strangers():
    ids = np.array([5, 9, 2, 7], np.int64)
    batches = [{"sample_id": np.array([2, 9]), "labeled": np.array([False, False]), "features": np.eye(2)},
               {"sample_id": np.array([5, 7, 3]), "labeled": np.array([False, False, True]),
                "features": np.arange(6.0).reshape(3, 2)}]
    got = gather_rows(batches, ids, ["features"])["features"]
    np.testing.assert_array_equal(got, [[0, 1], [0, 1], [1, 0], [2, 3]])
    with pytest.raises(DataError, match=r"\[3\]"):
        gather_rows(batches, np.array([3]), ["features"])  # labeled, not a candidate
    twice = batches + [{"sample_id": np.array([9]), "labeled": np.array([False]), "features": np.eye(2)[:1]}]
    with pytest.raises(DataError, match=r"\[9\] appear in more than one row"):
        gather_rows(twice, ids, ["features"])


def test_gather_unlabeled_sorts_by_id_and_checks_the_count():
    batches = [{"sample_id": np.array([8, 1]), "labeled": np.array([False, True]), "probs": np.array([[1.0], [2.0]])},
               {"sample_id": np.array([4]), "labeled": np.array([False]), "probs": np.array([[3.0]])}]
    ids, cols = gather_unlabeled(batches, 2, ["probs"])
    assert ids.tolist() == [4, 8] and cols["probs"].ravel().tolist() == [3.0, 1.0]
    with pytest.raises(DataError, match="expected 3"):
        gather_unlabeled(batches, 3, ["probs"])


@pytest.mark.parametrize("rows", [1, 7, 1 << 13])
def test_euclidean_min_sq_equals_the_brute_force_nearest_centre_distance(rows):
    rng = np.random.default_rng(5)
    x = torch.as_tensor(rng.normal(size=(53, 9)), dtype=torch.float64)
    centres = torch.as_tensor([3, 17, 40, 41])
    brute = ((x[:, None, :] - x[centres][None]) ** 2).sum(-1).min(dim=1).values
    got = euclidean_min_sq(x, rows=rows)(centres)
    assert torch.allclose(got, brute, atol=1e-10)
    assert torch.all(got >= 0) and torch.all(got[centres] < 1e-10)  # clamped: never a negative distance
