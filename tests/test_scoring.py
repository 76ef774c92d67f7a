"""Scoring pools from parquet shards (daal_ray.scoring): known answers.

* The distributed top-K over 50 shards and many Ray Data batches equals a full sort of the
  pool under the documented order (score descending, then sample_id ascending), with
  heavy ties.
* Precomputed-feature shards scored through Ray Data equal in-process scoring, DAAL's fit
  included (on its bounded, hash-chosen sample); id shards through the task model equal
  the in-process predictor.
* A sample id in two batches is caught where the per-batch top-Ks are merged.
* Bad shards stop the Ray pipeline with a DataError naming the shard.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from shard_helpers import feature_pool, write_shards

from daal_ray.acquisition import build_strategy
from daal_ray.acquisition.base import FitContext
from daal_ray.acquisition.daal import DAALParams, DAALStrategy
from daal_ray.acquisition.entropy import predictive_entropy
from daal_ray.cli import main
from daal_ray.config import AcquisitionConfig, DataConfig, ScaleConfig
from daal_ray.data import get_dataset
from daal_ray.errors import ConfigError, DataError
from daal_ray.models import build_model
from daal_ray.scoring import (
    FOOTER_ACTORS_ENV,
    PoolPredictor,
    footer_readers,
    merge_scored,
    read_shards,
    select_from_features,
    select_from_images,
    select_topk,
)


# ---------------------------------------------------------------------- helpers
def _full_sort(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((ids, -scores))[:k]
    return ids[order], scores[order]


# ---------------------------------------------------------------------- Ray
def _footer_reader_actors() -> set[str]:
    import ray

    return {a for a, info in ray._private.state.actors().items() if "FooterReader" in info["ActorClassName"]}


@pytest.mark.ray
def test_a_read_of_a_few_shards_starts_one_footer_reader_not_32(ray_session, tmp_path, monkeypatch):
    """Ray Data starts 32 footer-reading actors per parquet read by default, whatever the
    number of files; three shards get one. A value the user set in the environment wins."""
    folder = tmp_path / "ids"
    folder.mkdir()
    for i in range(3):
        pq.write_table(pa.table({"sample_id": np.arange(10 * i, 10 * i + 10, dtype=np.int64)}), folder / f"{i}.parquet")
    paths = sorted(str(f) for f in folder.iterdir())
    before = _footer_reader_actors()
    rows = read_shards(paths).take_all()
    assert sorted(r["sample_id"] for r in rows) == list(range(30))
    assert len(_footer_reader_actors() - before) == 1
    monkeypatch.setenv(FOOTER_ACTORS_ENV, "2")
    before = _footer_reader_actors()
    assert len(read_shards(paths).take_all()) == 30
    assert len(_footer_reader_actors() - before) == 2


def test_footer_readers_grow_with_the_shards_up_to_rays_default():
    assert [footer_readers(n) for n in (1, 100, 101, 1000, 3199, 10**6)] == [1, 1, 2, 10, 32, 32]


@pytest.mark.ray
def test_topk_over_50_shards_equals_a_full_sort_with_ties(ray_session, tmp_path):
    pool = feature_pool(6000, 4, 500, seed=2, distinct_probs=6)
    write_shards(pool, tmp_path / "pool", 50, label=True)  # labeled rows: those with a label
    un = ~pool["labeled"]
    scores = predictive_entropy(pool["probs"][un])
    k = 2500
    want_ids, want_scores = _full_sort(pool["sample_id"][un], scores, k)
    # Ties everywhere, and the K-th score's tie group continues past K: the cut is by id.
    assert np.unique(scores).size <= 6 and np.sum(scores == want_scores[-1]) > np.sum(want_scores == want_scores[-1])
    # Through the command line: batches of 64 rows.
    out = tmp_path / "picks.parquet"
    assert main(["score", "--features", str(tmp_path / "pool"), "--strategy", "entropy", "--k", str(k),
                 "--batch-size", "64", "--inference-actors", "2", "--out", str(out)]) == 0
    got = pq.read_table(out)
    np.testing.assert_array_equal(got["sample_id"].to_numpy(), want_ids)
    np.testing.assert_allclose(got["score"].to_numpy(), want_scores, rtol=1e-12)
    np.testing.assert_array_equal(got["rank"].to_numpy(), np.arange(k))


@pytest.mark.ray
def test_feature_shards_score_like_in_process_daal(ray_session, tmp_path):
    pool = feature_pool(900, 8, 80, seed=4)
    params = DAALParams(epochs=1, batch_size=32, max_fit_unlabeled=300,
                        score_hidden=(16, 16, 8, 8), disc_hidden=(16, 16, 8, 8), vae_hidden=(16, 16, 8, 8, 8, 8),
                        latent_dim=4)
    ref = DAALStrategy(params, seed=3, cycle=2)
    ref.fit(FitContext(features=pool, num_labeled=80, cycle=2))
    want_ids, want_scores, _ = select_topk(pool, ref, 50)

    scale = ScaleConfig(inference_batch_size=50, inference_actors=1)
    labeled = pool["sample_id"][pool["labeled"]]
    write_shards(pool, tmp_path / "ids", 9)  # with probs: DAAL's input has the confidence profile
    got = select_from_features(tmp_path / "ids", DAALStrategy(params, seed=3, cycle=2), 50, labeled_ids=labeled,
                               scale=scale)
    np.testing.assert_array_equal(got.ids, want_ids)
    np.testing.assert_allclose(got.scores, want_scores, rtol=1e-5)


@pytest.mark.ray
def test_id_shards_through_the_task_model_equal_the_in_process_predictor(ray_session, tmp_path):
    import torch


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


@pytest.mark.ray
def test_bad_shards_stop_the_ray_pipeline_with_the_error_naming_the_shard(ray_session, tmp_path):
    pool = feature_pool(400, 4, 20, seed=5)
    entropy = build_strategy(AcquisitionConfig(strategy="entropy"), seed=0, cycle=0)
    nan = dict(pool, features=pool["features"].copy())
    nan["features"][203, 1] = np.nan
    write_shards(nan, tmp_path / "nan", 2)
    with pytest.raises(DataError, match=rf"part-001\.parquet: features is NaN or infinite in 1 row\(s\), e.g. "
                                        rf"sample ids \[{pool['sample_id'][203]}\]"):
        select_from_features(tmp_path / "nan", entropy, 5, scale=ScaleConfig(inference_batch_size=1000))
    # Refused before anything runs.
    write_shards(pool, tmp_path / "plain", 2, probs=False)
    with pytest.raises(ConfigError, match="'entropy' reads probs"):
        select_from_features(tmp_path / "plain", entropy, 5)
    with pytest.raises(ConfigError, match="selects by its own method"):
        select_from_features(tmp_path / "plain", build_strategy(AcquisitionConfig(strategy="coreset"), seed=0, cycle=0), 5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no parquet shards"):
        select_from_features(tmp_path / "empty", entropy, 5)
    with pytest.raises(DataError, match="does not exist"):
        select_from_features(tmp_path / "nowhere", entropy, 5)


# ---------------------------------------------------------------------- merging
def test_a_task_worker_reloads_a_checkpoint_replaced_within_the_file_systems_time_resolution(tmp_path):
    """A task worker keeps one cycle's predictor; a model retrained to the same path (a
    redone cycle) within one timestamp tick, of the same size, is still loaded anew."""
    import os

    import torch

    from daal_ray.atomic_io import atomic_write
    from daal_ray.scoring import _predict_in_task

    checkpoint = tmp_path / "model.pt"
    kwargs = {"data": DataConfig().to_dict(), "model_name": "small_cnn", "num_classes": 10, "in_channels": 1,
              "checkpoint": str(checkpoint)}
    batch = {"sample_id": get_dataset(DataConfig()).sample_ids("train")[:16], "labeled": np.zeros(16, bool)}
    for seed in (0, 1):  # the model of the first run of the cycle, then the retrained one
        torch.manual_seed(seed)
        with atomic_write(checkpoint) as fh:
            torch.save(build_model("small_cnn", num_classes=10, in_channels=1).state_dict(), fh)
        if seed == 0:
            stamp = os.stat(checkpoint)
            before = _predict_in_task(dict(batch), **kwargs)["probs"]
    os.utime(checkpoint, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert os.stat(checkpoint).st_size == stamp.st_size
    after = _predict_in_task(dict(batch), **kwargs)["probs"]
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, PoolPredictor(**kwargs)(dict(batch))["probs"], rtol=1e-6)


def test_a_sample_id_in_two_batches_is_caught_where_it_reaches_the_merged_top_k():
    class Reduced:  # stands in for the Ray Dataset of per-batch top-Ks
        def __init__(self, batches):
            self.batches = batches

        def iter_batches(self, batch_size=None, batch_format="numpy"):
            return iter(self.batches)

    ok = [{"sample_id": np.array([3, 1]), "score": np.array([0.5, 0.5])},
          {"sample_id": np.array([2, 7]), "score": np.array([0.9, 0.1])}]
    ids, scores, _ = merge_scored(Reduced(ok), 3)
    assert ids.tolist() == [2, 1, 3] and scores.tolist() == [0.9, 0.5, 0.5]
    dup = ok + [{"sample_id": np.array([1]), "score": np.array([0.2])}]
    with pytest.raises(DataError, match=r"sample ids \[1\] appear in more than one row"):
        merge_scored(Reduced(dup), 3)


@pytest.mark.ray
@pytest.mark.parametrize("name", ["entropy_diverse", "entropy_power"])
def test_batch_aware_and_stochastic_selections_from_shards_equal_in_process(ray_session, tmp_path, name):
    """Through `daal-ray score --features`: the top beta x K (or the Gumbel keys' top K) over
    the shards, the candidates' rows read back in a second pass, the same batch as in process."""
    pool = feature_pool(1200, 6, 100, seed=7)
    write_shards(pool, tmp_path / "pool", 8, label=True)
    strategy = build_strategy(AcquisitionConfig(strategy=name), seed=2, cycle=3)
    want, _, _ = strategy.select(FitContext(features=pool, num_labeled=100, cycle=3), 30)
    out = tmp_path / "picks.csv"
    assert main(["score", "--features", str(tmp_path / "pool"), "--strategy", name, "--k", "30", "--seed", "2",
                 "--cycle", "3", "--batch-size", "100", "--out", str(out)]) == 0
    got = np.loadtxt(out, delimiter=",", skiprows=1, usecols=1, dtype=np.int64)
    np.testing.assert_array_equal(got, want)
    assert not np.isin(got, pool["sample_id"][pool["labeled"]]).any()


def test_whole_pool_selections_are_refused_on_shards(tmp_path):
    pool = feature_pool(50, 4, 5)
    write_shards(pool, tmp_path / "pool", 2)
    for name in ("badge", "coreset"):
        with pytest.raises(ConfigError, match="cannot score a pool from storage"):
            select_from_features(tmp_path / "pool", build_strategy(AcquisitionConfig(strategy=name), seed=0, cycle=0),
                                 5)
