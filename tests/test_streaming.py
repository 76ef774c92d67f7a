"""Scoring pools from parquet shards (daal_ray.streaming): known answers.

* The distributed top-K over 50 shards and many Ray Data batches equals a full sort of the
  pool under the documented order (score descending, then sample_id ascending), with
  heavy ties.
* Precomputed-feature shards scored through Ray Data equal in-process scoring, DAAL's fit
  included (on its bounded, hash-chosen sample); id shards through the task model equal
  the in-process predictor.
* DAAL's bounded fit sample is exactly the m smallest hashes, whatever the batching, and
  is the whole pool's split when the pool is within the cap.
* Bad shards stop with a DataError naming the shard.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from daal_ray.acquisition import build_strategy
from daal_ray.acquisition.daal import DAALParams, DAALStrategy, features_by_labeled
from daal_ray.acquisition.entropy import predictive_entropy
from daal_ray.acquisition.random import hash_uniform
from daal_ray.config import AcquisitionConfig, ScaleConfig
from daal_ray.errors import ConfigError, DataError
from daal_ray.streaming import (
    BottomKSample,
    fit_features,
    fit_sample_ids,
    labeled_flags,
    select_from_features,
)


# ---------------------------------------------------------------------- helpers
def _pool(n: int, dim: int, n_labeled: int, seed: int = 0, distinct_probs: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.permutation(np.arange(n, dtype=np.int64) * 3 + 11)  # ids are not positions, rows not in id order
    x = rng.standard_normal((n, dim)).astype(np.float32)
    if distinct_probs:
        table = rng.dirichlet(np.ones(5), size=distinct_probs).astype(np.float32)
        probs = table[rng.integers(0, distinct_probs, n)]  # few distinct rows: heavy ties in entropy
    else:
        probs = rng.dirichlet(np.ones(5), size=n).astype(np.float32)
    labeled = np.zeros(n, bool)
    labeled[rng.choice(n, n_labeled, replace=False)] = True
    return {"sample_id": ids, "labeled": labeled, "features": x, "probs": probs}


def _write_shards(pool: dict[str, np.ndarray], folder, n_shards: int, *, label: bool = False,
                  probs: bool = True) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, rows in enumerate(np.array_split(np.arange(pool["sample_id"].size), n_shards)):
        cols = {"sample_id": pa.array(pool["sample_id"][rows]),
                "features": pa.FixedSizeListArray.from_arrays(pa.array(pool["features"][rows].reshape(-1)),
                                                              pool["features"].shape[1])}
        if probs:
            cols["probs"] = pa.array(list(pool["probs"][rows]), type=pa.list_(pa.float32()))
        if label:
            cols["label"] = pa.array(np.where(pool["labeled"][rows], 1, 0), mask=~pool["labeled"][rows])
        path = folder / f"part-{i:03d}.parquet"
        pq.write_table(pa.table(cols), path)
        paths.append(str(path))
    return paths


def _full_sort(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((ids, -scores))[:k]
    return ids[order], scores[order]


# ---------------------------------------------------------------------- pure
def test_labeled_flags_by_binary_search():
    assert labeled_flags(np.array([5, 1, 9, 4]), np.array([1, 4, 7])).tolist() == [False, True, False, True]
    assert labeled_flags(np.array([5, 1]), None).tolist() == [False, False]
    assert labeled_flags(np.array([5, 1]), np.zeros(0, np.int64)).tolist() == [False, False]


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
    pool = _pool(700, 6, 60, seed=1)
    batches = [{k: v[i:i + 97] for k, v in pool.items()} for i in range(0, 700, 97)]
    for rank, world in ((0, 1), (0, 2), (1, 2)):
        xl, xu = fit_features(batches, max_unlabeled=640, key=5, rank=rank, world=world)
        el, eu = features_by_labeled(pool, rank, world)
        np.testing.assert_array_equal(xl, el)
        np.testing.assert_array_equal(xu, eu)


def test_fit_features_keeps_every_labeled_row_and_the_bounded_sample():
    pool = _pool(700, 6, 60, seed=1)
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


# ---------------------------------------------------------------------- Ray
@pytest.mark.ray
def test_topk_over_50_shards_equals_a_full_sort_with_ties(ray_session, tmp_path):
    pool = _pool(6000, 4, 500, seed=2, distinct_probs=6)
    _write_shards(pool, tmp_path / "pool", 50, label=True)  # labeled rows: those with a label
    un = ~pool["labeled"]
    scores = predictive_entropy(pool["probs"][un])
    k = 2500
    want_ids, want_scores = _full_sort(pool["sample_id"][un], scores, k)
    # Ties everywhere, and the K-th score's tie group continues past K: the cut is by id.
    assert np.unique(scores).size <= 6 and np.sum(scores == want_scores[-1]) > np.sum(want_scores == want_scores[-1])
    # Through the command line: 2 scoring actors, batches of 64 rows.
    from daal_ray.cli import main

    out = tmp_path / "picks.parquet"
    assert main(["score", "--features", str(tmp_path / "pool"), "--strategy", "entropy", "--k", str(k),
                 "--batch-size", "64", "--inference-actors", "2", "--out", str(out)]) == 0
    got = pq.read_table(out)
    np.testing.assert_array_equal(got["sample_id"].to_numpy(), want_ids)
    np.testing.assert_allclose(got["score"].to_numpy(), want_scores, rtol=1e-12)
    np.testing.assert_array_equal(got["rank"].to_numpy(), np.arange(k))


@pytest.mark.ray
def test_feature_shards_score_like_in_process_daal(ray_session, tmp_path):
    from daal_ray.acquisition.base import FitContext
    from daal_ray.inference import select_topk

    pool = _pool(900, 8, 80, seed=4)
    params = DAALParams(epochs=1, batch_size=32, max_fit_unlabeled=300,
                        score_hidden=(16, 16, 8, 8), disc_hidden=(16, 16, 8, 8), vae_hidden=(16, 16, 8, 8, 8, 8),
                        latent_dim=4)
    ref = DAALStrategy(params, seed=3, cycle=2)
    ref.fit(FitContext(features=pool, num_labeled=80, cycle=2))
    want_ids, want_scores, _ = select_topk(pool, ref, 50)

    scale = ScaleConfig(inference_batch_size=50, inference_actors=1)
    labeled = pool["sample_id"][pool["labeled"]]
    _write_shards(pool, tmp_path / "ids", 9, probs=False)
    got = select_from_features(tmp_path / "ids", DAALStrategy(params, seed=3, cycle=2), 50, labeled_ids=labeled,
                               scale=scale)
    np.testing.assert_array_equal(got.ids, want_ids)
    np.testing.assert_allclose(got.scores, want_scores, rtol=1e-5)


@pytest.mark.ray
def test_id_shards_through_the_task_model_equal_the_in_process_predictor(ray_session, tmp_path):
    import torch

    from daal_ray.config import DataConfig
    from daal_ray.data import get_dataset
    from daal_ray.inference import PoolPredictor, select_topk
    from daal_ray.models import build_model
    from daal_ray.streaming import select_from_images

    data = DataConfig()
    ds = get_dataset(data)
    torch.manual_seed(0)
    torch.save(build_model("small_cnn", num_classes=10, in_channels=1).state_dict(), tmp_path / "model.pt")
    ids = ds.sample_ids("train")
    labeled = ids[::10]
    folder = tmp_path / "refs"
    folder.mkdir()
    for i, part in enumerate(np.array_split(np.random.default_rng(0).permutation(ids), 6)):
        pq.write_table(pa.table({"sample_id": part}), folder / f"part-{i}.parquet")
    strategy = build_strategy(AcquisitionConfig(strategy="entropy"), seed=0, cycle=0)
    got = select_from_images(folder, strategy, 40, labeled, data=data, model_name="small_cnn", num_classes=10,
                             in_channels=1, checkpoint=str(tmp_path / "model.pt"),
                             scale=ScaleConfig(inference_batch_size=128))
    predictor = PoolPredictor(data.to_dict(), "small_cnn", 10, 1, str(tmp_path / "model.pt"))
    out = predictor({"sample_id": ids, "labeled": np.isin(ids, labeled)})
    want_ids, want_scores, _ = select_topk(out, strategy, 40)
    np.testing.assert_array_equal(got.ids, want_ids)
    np.testing.assert_allclose(got.scores, want_scores, rtol=1e-5)


def _batch(pool: dict[str, np.ndarray], rows: slice, shard: str = "s/b.parquet", **override) -> pa.Table:
    """One batch as Ray Data hands it to the per-batch check: shard columns plus ``path``."""
    n = pool["sample_id"][rows].size
    cols = {"sample_id": pa.array(pool["sample_id"][rows]),
            "features": pa.array(list(pool["features"][rows]), type=pa.list_(pa.float32())),
            "path": pa.array([shard] * n)}
    cols.update(override)
    return pa.table(cols)


def test_bad_batches_stop_with_an_error_naming_the_shard():
    from daal_ray.shards import prepare_feature_batch

    pool = _pool(100, 4, 0, seed=5)
    check = dict(dim=4, labeled_ids=None, use_label=False, probs=False)
    out = prepare_feature_batch(_batch(pool, slice(0, 50)), **check)
    np.testing.assert_array_equal(out["features"], pool["features"][:50])
    ragged = [list(v) for v in pool["features"][:50]]
    ragged[7] = ragged[7][:2]
    with pytest.raises(DataError, match=rf"shard s/b\.parquet: features has ragged rows \(lengths \[2\] where 4 was "
                                        rf"expected\), e.g. sample ids \[{pool['sample_id'][7]}\]"):
        prepare_feature_batch(_batch(pool, slice(0, 50), features=pa.array(ragged, type=pa.list_(pa.float32()))),
                              **check)
    with pytest.raises(DataError, match=r"features is null in 1 row"):
        prepare_feature_batch(_batch(pool, slice(0, 3), features=pa.array([[1.0] * 4, None, [2.0] * 4],
                                                                           type=pa.list_(pa.float32()))), **check)
    dup = pool["sample_id"][:50].copy()
    dup[10] = dup[11]
    with pytest.raises(DataError, match=rf"shard s/b\.parquet: duplicate sample ids \[{dup[11]}\]"):
        prepare_feature_batch(_batch(pool, slice(0, 50), sample_id=pa.array(dup)), **check)
    with pytest.raises(DataError, match=r"sample_id is null in 1 row"):
        prepare_feature_batch(_batch(pool, slice(0, 2), sample_id=pa.array([1, None], type=pa.int64())), **check)
    with pytest.raises(DataError, match=r"lengths \[4\] where 8 was expected"):  # not the shards' width
        prepare_feature_batch(_batch(pool, slice(0, 5)), **{**check, "dim": 8})


def test_a_sample_id_in_two_batches_is_caught_where_it_reaches_the_merged_top_k():
    from daal_ray.streaming import merge_topk

    class Reduced:  # stands in for the Ray Dataset of per-batch top-Ks
        def __init__(self, batches):
            self.batches = batches

        def iter_batches(self, batch_size=None, batch_format="numpy"):
            return iter(self.batches)

    ok = [{"sample_id": np.array([3, 1]), "score": np.array([0.5, 0.5])},
          {"sample_id": np.array([2, 7]), "score": np.array([0.9, 0.1])}]
    ids, scores, _ = merge_topk(Reduced(ok), 3)
    assert ids.tolist() == [2, 1, 3] and scores.tolist() == [0.9, 0.5, 0.5]
    dup = ok + [{"sample_id": np.array([1]), "score": np.array([0.2])}]
    with pytest.raises(DataError, match=r"sample ids \[1\] appear in more than one row"):
        merge_topk(Reduced(dup), 3)


def test_bad_shard_schemas_are_named(tmp_path):
    from daal_ray.shards import inspect_feature_shards

    pool = _pool(100, 4, 0, seed=5)
    good = _write_shards(pool, tmp_path / "good", 2, probs=False)
    assert inspect_feature_shards(good).dim == 4 and inspect_feature_shards(good).num_rows == 100
    pq.write_table(pa.table({"sample_id": pool["sample_id"][:5]}), tmp_path / "nofeat.parquet")
    with pytest.raises(DataError, match=r"nofeat\.parquet lacks column\(s\) features"):
        inspect_feature_shards(good + [str(tmp_path / "nofeat.parquet")])
    pq.write_table(pa.table({"sample_id": pool["sample_id"][:5].astype(float), "features": pa.array(
        list(pool["features"][:5]), type=pa.list_(pa.float32()))}), tmp_path / "floatid.parquet")
    with pytest.raises(DataError, match=r"floatid\.parquet: sample_id must be an integer column"):
        inspect_feature_shards([str(tmp_path / "floatid.parquet")])
    wide = _write_shards(_pool(10, 6, 0), tmp_path / "wide", 1, probs=False)
    with pytest.raises(DataError, match=r"part-000\.parquet has 6-d features, the shards before it 4-d"):
        inspect_feature_shards(good + wide)
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"junk\.parquet is not a readable parquet file"):
        inspect_feature_shards([str(tmp_path / "junk.parquet")])


@pytest.mark.ray
def test_bad_shards_stop_the_ray_pipeline_with_the_error_naming_the_shard(ray_session, tmp_path):
    pool = _pool(400, 4, 20, seed=5)
    entropy = build_strategy(AcquisitionConfig(strategy="entropy"), seed=0, cycle=0)
    nan = dict(pool, features=pool["features"].copy())
    nan["features"][203, 1] = np.nan
    _write_shards(nan, tmp_path / "nan", 2)
    with pytest.raises(DataError, match=rf"part-001\.parquet: features is NaN or infinite in 1 row\(s\), e.g. "
                                        rf"sample ids \[{pool['sample_id'][203]}\]"):
        select_from_features(tmp_path / "nan", entropy, 5, scale=ScaleConfig(inference_batch_size=1000))
    # Refused before anything runs.
    _write_shards(pool, tmp_path / "plain", 2, probs=False)
    with pytest.raises(ConfigError, match="'entropy' reads probs"):
        select_from_features(tmp_path / "plain", entropy, 5)
    with pytest.raises(ConfigError, match="selects by its own method"):
        select_from_features(tmp_path / "plain", build_strategy(AcquisitionConfig(strategy="coreset"), seed=0, cycle=0), 5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no parquet shards"):
        select_from_features(tmp_path / "empty", entropy, 5)
    with pytest.raises(DataError, match="does not exist"):
        select_from_features(tmp_path / "nowhere", entropy, 5)


def test_cli_score_refuses_bad_arguments(tmp_path):
    from daal_ray.cli import main

    pool = _pool(50, 4, 5, seed=6)
    _write_shards(pool, tmp_path / "pool", 1, probs=False)
    base = ["score", "--features", str(tmp_path / "pool"), "--k", "3"]
    assert main(base + ["--out", str(tmp_path / "x.txt")]) == 2
    assert main(base + ["--out", str(tmp_path / "x.csv"), "--params", "[1]"]) == 2
    assert main(base + ["--out", str(tmp_path / "x.csv"), "--labeled-ids", str(tmp_path / "none.npy")]) == 2
    (tmp_path / "ids.txt").write_text("1\nnot-an-id\n")
    assert main(base + ["--out", str(tmp_path / "x.csv"), "--labeled-ids", str(tmp_path / "ids.txt")]) == 2
