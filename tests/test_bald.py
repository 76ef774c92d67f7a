"""BALD and its batch-aware stochastic version (``bald``, ``bald_power``): known answers.

* The mutual information ``H(mean p) - mean H(p)`` of hand-made passes equals its value
  worked out by hand; identical passes give exactly 0, and rounding never gives less.
* On a pool where one subset's passes disagree (each pass confident) and another's are
  equally unsure in every pass, entropy picks from both and BALD only the first; a uniform
  draw gets a fifth of them.
* The pool predictor's ``expected_entropy`` equals the mean per-pass entropy (scipy)
  of the model's own passes, rebuilt here mask by mask, for a classifier and a
  segmentation model; other strategies' output carries no such column.
* ``bald_power`` draws a batch that is not the top-K but lies on the high-BALD samples,
  the same for any block layout and on a rerun.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from strategy_helpers import assert_valid_selection, ctx_of, make, pool, split

from daal_ray.acquisition import build_strategy, strategy_descriptions, strategy_names
from daal_ray.acquisition.bald import EXPECTED_ENTROPY, BALDStrategy, mutual_information
from daal_ray.acquisition.mc_dropout import MCDropoutStrategy
from daal_ray.config import AcquisitionConfig, DataConfig
from daal_ray.data import get_dataset
from daal_ray.data.cityscapes import write_fixture
from daal_ray.errors import ConfigError, DataError
from daal_ray.models import build_model
from daal_ray.runtime import derive_seed
from daal_ray.scoring import PoolPredictor, _check_needs, predictor_columns, reduce_passes


def _h(*p: float) -> float:
    """Shannon entropy (nats) written out: -sum p log p."""
    return -sum(x * np.log(x) for x in p if x > 0)


def _batch_of(passes: list[np.ndarray], **extra: np.ndarray) -> dict[str, np.ndarray]:
    """The predictor's columns for per-pass probabilities, reduced as the predictor does."""
    mean, h, eh = reduce_passes((torch.as_tensor(p, dtype=torch.float64) for p in passes), expected_entropy=True)
    return {"probs": mean.float().numpy(), "entropy": h.numpy(), EXPECTED_ENTROPY: eh.numpy(), **extra}


# ---------------------------------------------------------------------- the score by hand
def test_mutual_information_by_hand():
    # Two passes of four samples (two classes); rows: sample.
    first = np.array([[1.0, 0.0], [0.5, 0.5], [0.8, 0.2], [0.9, 0.1]])
    second = np.array([[0.0, 1.0], [0.5, 0.5], [0.2, 0.8], [0.7, 0.3]])
    want = [
        np.log(2) - 0.0,  # certain passes that disagree: all of H(mean) is about the weights
        0.0,  # the same uniform pass twice: all of it is noise in the sample
        np.log(2) - _h(0.8, 0.2),
        _h(0.8, 0.2) - (_h(0.9, 0.1) + _h(0.7, 0.3)) / 2,
    ]
    batch = _batch_of([first, second], sample_id=np.arange(4))
    np.testing.assert_allclose(batch["entropy"], [np.log(2), np.log(2), np.log(2), _h(0.8, 0.2)], rtol=1e-12)
    bald = make("bald").score(batch)
    np.testing.assert_allclose(bald, want, rtol=1e-9, atol=1e-9)  # atol: the clip of p = 0 at 1e-12
    assert bald[1] == 0.0, "identical passes: exactly zero"
    # MC dropout's entropy ties the first three samples; BALD orders them by disagreement.
    np.testing.assert_allclose(make("mc_dropout").score(batch)[:3], np.log(2), rtol=1e-12)
    assert list(np.argsort(-bald)) == [0, 2, 3, 1]
    # Without an entropy column the entropy of the mean comes from probs.
    no_h = {k: v for k, v in batch.items() if k != "entropy"}
    np.testing.assert_allclose(mutual_information(no_h), want, rtol=1e-6, atol=1e-6)


def test_three_classes_three_passes_by_hand():
    passes = [np.array([[0.6, 0.3, 0.1]]), np.array([[0.1, 0.6, 0.3]]), np.array([[0.3, 0.1, 0.6]])]
    # The mean is uniform; every pass has the same entropy.
    want = np.log(3) - _h(0.6, 0.3, 0.1)
    np.testing.assert_allclose(make("bald").score(_batch_of(passes)), [want], rtol=1e-12)


def test_rounding_never_gives_a_negative_score_and_a_missing_column_is_named():
    h = np.array([0.5, 1.0, 0.3])
    got = mutual_information({"entropy": h, EXPECTED_ENTROPY: h + np.array([1e-16, 0.0, -0.1])})
    np.testing.assert_allclose(got, [0.0, 0.0, 0.1], atol=1e-15)
    assert (got >= 0).all()
    with pytest.raises(DataError, match="expected_entropy.*predictor_options"):
        mutual_information({"probs": np.full((2, 2), 0.5)})


# ---------------------------------------------------------------------- selection on a known pool
def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def known_pool():
    """400 samples, 10 passes, 5 classes: 80 whose passes each put 0.9+ on one of three
    classes, drawn per pass (they disagree); 80 whose passes are all the same spread-out
    softmax (aleatoric); 240 confident in every pass. Returns the pool and the groups."""
    rng = np.random.default_rng(0)
    n, c, t = 400, 5, 10
    group = rng.permutation(np.repeat([0, 1, 2], [80, 80, 240]))
    passes = np.empty((t, n, c))
    for i in range(n):
        if group[i] == 0:
            classes = rng.choice(c, 3, replace=False)
            z = np.zeros((t, c))
            z[np.arange(t), classes[rng.integers(0, 3, t)]] = 5.0
        elif group[i] == 1:
            z = np.tile(rng.normal(size=c) * 1.6, (t, 1)) + rng.normal(size=(t, c)) * 0.05
        else:
            z = np.zeros((t, c))
            z[:, rng.integers(c)] = 6.0
            z = z + rng.normal(size=(t, c)) * 0.3
        passes[:, i] = _softmax(z)
    p = pool(n=n, n_labeled=40, classes=c, seed=4)
    p.update(_batch_of(list(passes)))
    return p, group


def test_entropy_picks_both_kinds_and_bald_only_the_disagreeing(known_pool):
    p, group = known_pool
    unlabeled = ~p["labeled"]
    of = {g: set(p["sample_id"][(group == g) & unlabeled].tolist()) for g in range(3)}
    k = 40
    bald, _, _ = make("bald").select(ctx_of(p), k)
    entropy, _, _ = make("entropy").select(ctx_of(p), k)
    assert_valid_selection(bald, p, k)
    assert len(set(bald.tolist()) & of[0]) == k
    picked = [len(set(entropy.tolist()) & of[g]) for g in range(3)]
    assert picked[0] >= 10 and picked[1] >= 10 and picked[2] == 0, picked
    # The same for another block layout.
    np.testing.assert_array_equal(make("bald").select(ctx_of(p, split(p, 7)), k)[0], bald)
    # A uniform draw of 40 gets about a fifth of the disagreeing ones, never near 40.
    pool_ids = p["sample_id"][unlabeled]
    uniform = [len(set(np.random.default_rng(s).choice(pool_ids, k, replace=False).tolist()) & of[0])
               for s in range(1000)]
    assert max(uniform) <= 20, max(uniform)


# ---------------------------------------------------------------------- the predictor's columns
def _own_passes(model, x: torch.Tensor, ids: np.ndarray, options: dict) -> np.ndarray:
    """The model's T dropout passes ``[T, n, C, ...]``, masks drawn as the predictor draws them."""
    gen = torch.Generator()
    gen.manual_seed(derive_seed(options["mc_seed"], int(ids[0]), len(ids)))
    keep = 1.0 - options["mc_dropout"]
    with torch.no_grad():
        head_in, _, _ = model.forward_head_input(x)
        out = []
        for _ in range(options["mc_passes"]):
            mask = torch.rand(head_in.shape, generator=gen) < keep
            out.append(torch.softmax(model.classify(head_in * mask / keep), dim=1).double().numpy())
    return np.stack(out)


def test_predictor_expected_entropy_is_the_mean_entropy_of_the_models_own_passes(digits_predictor):
    build = digits_predictor
    model = build.model
    strategy = make("bald", passes=6, dropout=0.5)
    options = strategy.predictor_options()
    predictor = build(**options)
    ids = predictor.dataset.sample_ids("train")[:80]
    out = predictor({"sample_id": ids, "labeled": np.zeros(ids.size, bool)})
    passes = _own_passes(model, predictor.dataset.images("train", ids), ids, options)
    per_pass = stats.entropy(passes, axis=2)  # [T, n]
    mean = passes.mean(0)
    np.testing.assert_allclose(out[EXPECTED_ENTROPY], per_pass.mean(0), rtol=1e-6)
    np.testing.assert_allclose(out["entropy"], stats.entropy(mean, axis=1), rtol=1e-6)
    np.testing.assert_allclose(out["probs"], mean, rtol=1e-5, atol=1e-7)
    want = stats.entropy(mean, axis=1) - per_pass.mean(0)
    score = strategy.score(out)
    np.testing.assert_allclose(score, want, rtol=1e-5, atol=1e-9)
    # An untrained model's passes are near uniform, so the information is small but never 0.
    assert (score > 1e-5).all()
    # BALD and MC dropout of one run see the same masks: the same mean softmax.
    mc = build(**make("mc_dropout", passes=6, dropout=0.5).predictor_options())(
        {"sample_id": ids, "labeled": np.zeros(ids.size, bool)})
    np.testing.assert_array_equal(mc["probs"], out["probs"])
    # Strategies that do not ask pay nothing: no per-pass entropy in their output.
    assert EXPECTED_ENTROPY not in mc and "entropy" not in mc
    assert EXPECTED_ENTROPY not in build()({"sample_id": ids, "labeled": np.zeros(ids.size, bool)})


def test_dropout_off_gives_exactly_zero(digits_predictor):
    build = digits_predictor
    strategy = make("bald", passes=5, dropout=0.0)
    predictor = build(**strategy.predictor_options())
    ids = predictor.dataset.sample_ids("train")[:100]
    out = predictor({"sample_id": ids, "labeled": np.zeros(ids.size, bool)})
    assert np.array_equal(out["entropy"], out[EXPECTED_ENTROPY])
    assert np.all(strategy.score(out) == 0.0)
    assert out["entropy"].min() > 0.5  # an untrained model: the entropy itself is far from 0


def test_segmentation_scores_the_mean_pixel_mutual_information(tmp_path):
    root = write_fixture(tmp_path / "cs", per_city=2, val_per_city=1, height=16, width=32)
    data = DataConfig(name="cityscapes", root=str(root), image_size=16)
    torch.manual_seed(0)
    model = build_model("seg_small", num_classes=19, in_channels=3)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    strategy = make("bald", passes=4, dropout=0.5)
    options = strategy.predictor_options()
    predictor = PoolPredictor(data.to_dict(), "seg_small", 19, 3, str(tmp_path / "model.pt"), **options)
    ids = get_dataset(data).sample_ids("train")
    out = predictor({"sample_id": ids, "labeled": np.zeros(ids.size, bool)})
    passes = _own_passes(model.eval(), predictor.dataset.images("train", ids), ids, options)  # [T, n, C, H, W]
    assert passes.ndim == 5
    per_pass = stats.entropy(passes, axis=2).reshape(passes.shape[0], ids.size, -1).mean(2)  # pixel means
    mean = passes.mean(0)
    np.testing.assert_allclose(out[EXPECTED_ENTROPY], per_pass.mean(0), rtol=1e-6)
    np.testing.assert_allclose(out["entropy"], stats.entropy(mean, axis=1).reshape(ids.size, -1).mean(1), rtol=1e-6)
    assert out[EXPECTED_ENTROPY].shape == (ids.size,)
    assert (strategy.score(out) > 0).all()
    off = make("bald", passes=4, dropout=0.0)
    out0 = PoolPredictor(data.to_dict(), "seg_small", 19, 3, str(tmp_path / "model.pt"), **off.predictor_options())(
        {"sample_id": ids, "labeled": np.zeros(ids.size, bool)})
    assert np.all(off.score(out0) == 0.0)


def test_the_predictor_refuses_expected_entropy_without_passes(digits_predictor):
    build = digits_predictor
    with pytest.raises(ConfigError, match="mc_passes >= 1"):
        build(mc_expected_entropy=True)


def test_bald_reads_columns_only_its_predictor_emits():
    bald = make("bald")
    assert bald.needs <= predictor_columns(bald.predictor_options())
    assert not bald.needs <= predictor_columns(make("mc_dropout").predictor_options())
    # Precomputed feature shards carry no passes: the error says where BALD can run.
    with pytest.raises(ConfigError, match="expected_entropy.*dropout passes"):
        _check_needs(bald, {"features", "probs"}, "the shards of pool/")


# ---------------------------------------------------------------------- registry, params, seeds
def test_bald_is_registered_with_mc_dropouts_params_and_seeds():
    assert {"bald", "bald_power"} <= set(strategy_names())
    for name in ("bald", "bald_power"):
        assert "BALD" in strategy_descriptions()[name] and "\n" not in strategy_descriptions()[name]
    assert "BatchBALD" in strategy_descriptions()["bald_power"]
    bald = make("bald", passes=7, dropout=0.3)
    mc = make("mc_dropout", passes=7, dropout=0.3)
    assert bald.predictor_options() == {**mc.predictor_options(), "mc_expected_entropy": True}
    other = build_strategy(AcquisitionConfig(strategy="bald", params={"passes": 7, "dropout": 0.3}), seed=1, cycle=3)
    assert other.predictor_options()["mc_seed"] != bald.predictor_options()["mc_seed"]
    assert isinstance(bald, BALDStrategy) and isinstance(bald, MCDropoutStrategy)
    assert (bald.params.passes, bald.params.dropout) == (7, 0.3)
    with pytest.raises(ConfigError, match=r"BALDParams\.dropout must be in \[0, 1\)"):
        make("bald", dropout=1.0)
    with pytest.raises(ConfigError, match=r"BALDParams\.passes must be >= 1"):
        make("bald", passes=0)
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        make("bald_power", temperature=0.0)


# ---------------------------------------------------------------------- bald_power
def test_bald_power_draws_off_the_top_k_but_on_high_bald_samples(known_pool):
    p, group = known_pool
    unlabeled = ~p["labeled"]
    disagreeing = set(p["sample_id"][(group == 0) & unlabeled].tolist())
    k = 40
    top, _, _ = make("bald").select(ctx_of(p), k)
    drawn, _, _ = make("bald_power").select(ctx_of(p), k)
    assert_valid_selection(drawn, p, k)
    assert len(set(drawn.tolist()) ^ set(top.tolist())) >= 10, "a draw, not the top-K"
    assert len(set(drawn.tolist()) & disagreeing) >= 36  # a uniform draw: at most 20 (above)
    # Seeded: the same draw on a rerun and for any block layout; another cycle draws anew.
    np.testing.assert_array_equal(make("bald_power").select(ctx_of(p), k)[0], drawn)
    np.testing.assert_array_equal(make("bald_power").select(ctx_of(p, split(p, 9)), k)[0], drawn)
    again = build_strategy(AcquisitionConfig(strategy="bald_power"), seed=1, cycle=3).select(ctx_of(p), k)[0]
    assert not np.array_equal(np.sort(again), np.sort(drawn))
    # The diagnostics read BALD itself, without the draw's noise.
    np.testing.assert_array_equal(make("bald_power").diagnostic_score(p), make("bald").score(p))


@pytest.mark.ray
def test_id_shards_score_bald_through_ray_like_the_in_process_predictor(ray_session, tmp_path):
    """The Ray Data path (actors running the predictor, BALD and each batch's top-K) emits
    the column BALD needs and selects what the in-process predictor and merge select. The
    masks are seeded per batch, so the pool is one shard read as one batch, as here."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from daal_ray.config import ScaleConfig
    from daal_ray.scoring import select_from_images, select_topk

    data = DataConfig()
    torch.manual_seed(0)
    torch.save(build_model("small_cnn", num_classes=10, in_channels=1).state_dict(), tmp_path / "model.pt")
    ids = np.random.default_rng(0).permutation(get_dataset(data).sample_ids("train"))
    labeled = np.sort(ids[::10])
    (tmp_path / "refs").mkdir()
    pq.write_table(pa.table({"sample_id": ids}), tmp_path / "refs" / "part-0.parquet")
    strategy = make("bald", passes=4, dropout=0.5)
    got = select_from_images(tmp_path / "refs", strategy, 30, labeled, data=data, model_name="small_cnn",
                             num_classes=10, in_channels=1, checkpoint=str(tmp_path / "model.pt"),
                             scale=ScaleConfig(inference_batch_size=4096))
    predictor = PoolPredictor(data.to_dict(), "small_cnn", 10, 1, str(tmp_path / "model.pt"),
                              **strategy.predictor_options())
    unlabeled = ids[~np.isin(ids, labeled)]
    out = predictor({"sample_id": unlabeled, "labeled": np.zeros(unlabeled.size, bool)})
    want_ids, want_scores, _ = select_topk(out, strategy, 30)
    np.testing.assert_array_equal(got.ids, want_ids)
    np.testing.assert_allclose(got.scores, want_scores, rtol=1e-6)
    assert (got.scores > 0).all()
