"""Diagnostics (daal_ray.diagnostics) against hand-computed answers and brute force: the
mean pairwise cosine from streaming sums, the class entropy, a batch's redundancy
computed over chunks; AUROC, ranks and Spearman's rho, and a cycle's informativeness
through the cycle's own predictor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from daal_ray.acquisition import build_strategy
from daal_ray.config import AcquisitionConfig, resolve_config
from daal_ray.data import open_dataset
from daal_ray.diagnostics import (
    auroc,
    average_ranks,
    batch_redundancy,
    class_entropy,
    cycle_informativeness,
    informativeness,
    mean_pairwise_cosine,
    spearman,
)
from daal_ray.models import build_model
from daal_ray.training import fit_task_model


def _brute_cosine(f: np.ndarray) -> float:
    u = f / np.linalg.norm(f, axis=1, keepdims=True)
    s = u @ u.T
    k = len(f)
    return float((s.sum() - np.trace(s)) / (k * (k - 1)))


def test_mean_pairwise_cosine_from_streaming_sums():
    f = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    u = f / np.linalg.norm(f, axis=1, keepdims=True)
    # pairs: 0, 1/sqrt(2), 1/sqrt(2) -> mean sqrt(2) / 3
    assert mean_pairwise_cosine(u.sum(0), float((u * u).sum()), 3) == pytest.approx(math.sqrt(2) / 3)
    assert _brute_cosine(f) == pytest.approx(math.sqrt(2) / 3)
    assert math.isnan(mean_pairwise_cosine(u[0], 1.0, 1))


def test_class_entropy_known_answers():
    assert class_entropy(np.array([0, 0, 1, 1]), 2) == pytest.approx(1.0)
    assert class_entropy(np.array([3, 3, 3]), 10) == pytest.approx(0.0)
    assert class_entropy(np.array([0, 1, 2, 3]), 10) == pytest.approx(math.log(4) / math.log(10))
    assert math.isnan(class_entropy(np.array([], dtype=np.int64), 10))


def test_batch_redundancy_matches_brute_force_over_chunks(tmp_path, tiny_config):
    cfg = resolve_config(tiny_config())
    cfg = cfg.replace(scale=cfg.scale.replace(inference_batch_size=4))  # 11 ids -> 3 chunks
    ds = open_dataset(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg.train.model, num_classes=ds.num_classes, in_channels=ds.in_channels).eval()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    ids = ds.sample_ids("train")[[3, 1, 4, 15, 9, 26, 5, 35, 8, 97, 93]]
    got = batch_redundancy(cfg, ds, ids, tmp_path / "model.pt")
    with torch.no_grad():
        feats = model.forward_features(ds.images("train", ids))[0].double().numpy()
    # The features are float32, and the model's kernels may sum in another order for a chunk
    # of 4 than for all 11 at once (~1e-9 apart here): equal to float32 precision. A chunk
    # lost or counted twice moves the mean by far more (its pairs are a third of them).
    assert got["batch_cosine"] == pytest.approx(_brute_cosine(feats), abs=1e-6)
    labels = ds.targets("train", ids)
    p = np.bincount(labels, minlength=10) / labels.size
    p = p[p > 0]
    assert got["batch_class_entropy"] == pytest.approx(float(-(p * np.log(p)).sum() / np.log(10)))


# --------------------------------------------------------------------------- informativeness
def test_auroc_and_spearman_known_answers():
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True])) == pytest.approx(0.75)
    assert auroc(np.array([1.0, 1.0, 1.0]), np.array([True, False, False])) == pytest.approx(0.5)  # ties: half
    assert np.isnan(auroc(np.array([0.3, 0.2]), np.array([True, True])))
    assert spearman(np.arange(6.0), np.arange(6.0) ** 3) == pytest.approx(1.0)
    assert spearman(np.arange(6.0), -np.arange(6.0)) == pytest.approx(-1.0)
    assert np.isnan(spearman(np.ones(4), np.arange(4.0)))
    np.testing.assert_allclose(average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)


def test_informativeness_on_a_hand_made_case():
    # 4 samples, 2 classes; the model is wrong on the two it is least sure of (ids 2 and 3).
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.55, 0.45], [0.4, 0.6]])
    labels = np.array([0, 0, 1, 0])
    entropy_like = np.array([0.1, 0.2, 0.9, 0.8])  # a score that finds both errors
    out = informativeness(entropy_like, probs, labels)
    assert out["auroc_wrong"] == pytest.approx(1.0)
    loss = -np.log([0.9, 0.8, 0.45, 0.4])
    assert out["spearman_loss"] == pytest.approx(stats.spearmanr(entropy_like, loss).statistic)
    assert out["spearman_entropy"] == pytest.approx(1.0)  # same order as the binary entropy
    blind = informativeness(np.array([0.9, 0.8, 0.1, 0.2]), probs, labels)
    assert blind["auroc_wrong"] == pytest.approx(0.0)
    none = informativeness(None, probs, labels)
    assert all(np.isnan(v) for v in none.values())
    dense = informativeness(entropy_like, probs, None)
    assert np.isnan(dense["auroc_wrong"]) and np.isfinite(dense["spearman_entropy"])


def test_cycle_informativeness_through_the_cycles_predictor(tmp_path, tiny_config):
    """On digits with a briefly trained model: entropy's score ranks exactly like the
    predictive entropy, finds the model's errors better than chance, random's does not
    rank like entropy, and the batch distance equals a brute-force nearest labeled one."""
    cfg = resolve_config(tiny_config("entropy"))
    ds = open_dataset(cfg.data)
    ids = ds.sample_ids("train")
    labeled, rest = ids[:300], ids[300:]
    model, _ = fit_task_model(ds, labeled, ds.targets("train", labeled), cfg.train.replace(epochs=3), seed=0,
                              device=torch.device("cpu"))
    model.eval()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    batch = rest[[5, 40, 77]]
    entropy = build_strategy(cfg.acquisition, seed=0, cycle=1)
    got = cycle_informativeness(cfg, ds, entropy, ids, labeled, batch, tmp_path / "model.pt", sample=500)
    assert got["spearman_entropy"] == pytest.approx(1.0)
    assert got["auroc_wrong"] > 0.7
    assert got["spearman_loss"] > 0.3
    with torch.no_grad():
        fb = model.forward_features(ds.images("train", batch))[0].double()
        fl = model.forward_features(ds.images("train", labeled))[0].double()
    brute = torch.cdist(fb, fl).min(dim=1).values.mean().item()
    assert got["batch_labeled_distance"] == pytest.approx(brute, rel=1e-6)
    random = build_strategy(AcquisitionConfig("random"), seed=0, cycle=1)
    other = cycle_informativeness(cfg, ds, random, ids, labeled, batch, tmp_path / "model.pt", sample=500)
    assert abs(other["spearman_entropy"]) < 0.2 and abs(other["auroc_wrong"] - 0.5) < 0.15
    coreset = build_strategy(AcquisitionConfig("coreset"), seed=0, cycle=1)
    assert math.isnan(cycle_informativeness(cfg, ds, coreset, ids, labeled, batch, tmp_path / "model.pt",
                                            sample=200)["auroc_wrong"])


def test_a_failing_diagnostic_is_nan_and_leaves_the_threads_alone(tmp_path, tiny_config):
    cfg = resolve_config(tiny_config("entropy"))
    ds = open_dataset(cfg.data)
    torch.save(build_model(cfg.train.model, num_classes=ds.num_classes, in_channels=ds.in_channels).state_dict(),
               tmp_path / "model.pt")
    broken = build_strategy(cfg.acquisition, seed=0, cycle=1)
    broken.score = lambda batch: (_ for _ in ()).throw(RuntimeError("scorer broke"))
    ids = ds.sample_ids("train")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = cycle_informativeness(cfg, ds, broken, ids, ids[:50], ids[60:63], tmp_path / "model.pt", sample=100)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert set(got) == {"auroc_wrong", "spearman_loss", "spearman_entropy", "batch_labeled_distance"}
    assert all(math.isnan(v) for v in got.values())


def test_mc_dropout_is_judged_on_the_models_own_errors(tmp_path, tiny_config):
    """MC dropout scores with the mean of its dropout passes, but "the model is wrong" is
    the deterministic model's error (the one its accuracy is measured with), as for every
    other strategy: the recorded AUROC equals one computed by hand against those errors, and
    not the one against the MC mean's own errors (which differ on this model)."""
    from sklearn.metrics import roc_auc_score

    from daal_ray.acquisition.rss import random_subset
    from daal_ray.runtime import derive_seed
    from daal_ray.scoring import PoolPredictor, predictor_kwargs

    cfg = resolve_config(tiny_config("mc_dropout"))
    # one inference batch holds the whole sample, so the dropout masks (seeded per batch)
    # are the ones the diagnostics drew
    cfg = cfg.replace(acquisition=AcquisitionConfig("mc_dropout", {"passes": 3, "dropout": 0.7}),
                      scale=cfg.scale.replace(inference_batch_size=1024))
    ds = open_dataset(cfg.data)
    ids = ds.sample_ids("train")
    labeled = ids[:150]
    model, _ = fit_task_model(ds, labeled, ds.targets("train", labeled), cfg.train.replace(epochs=2), seed=0,
                              device=torch.device("cpu"))
    torch.save(model.eval().state_dict(), tmp_path / "model.pt")
    mc = build_strategy(cfg.acquisition, seed=0, cycle=1)
    got = cycle_informativeness(cfg, ds, mc, ids, labeled, ids[200:203], tmp_path / "model.pt", sample=600)

    sample = random_subset(np.setdiff1d(ids, labeled), 600, derive_seed(cfg.seed, 1, 0xD1A6))
    kwargs = predictor_kwargs(data=cfg.data, model_name=cfg.train.model, num_classes=ds.num_classes,
                              in_channels=ds.in_channels, checkpoint=str(tmp_path / "model.pt"), scale=cfg.scale,
                              acquisition=cfg.acquisition, strategy=mc)
    mean = PoolPredictor(**kwargs)({"sample_id": sample, "labeled": np.zeros(sample.size, bool)})
    scores = mc.diagnostic_score(mean)
    with torch.no_grad():
        own = model.forward_features(ds.images("train", sample))[1].argmax(1).numpy()
    y = ds.targets("train", sample)
    own_wrong, mean_wrong = own != y, mean["probs"].argmax(1) != y
    assert (own_wrong != mean_wrong).sum() >= 5, "the test needs MC means that err elsewhere than the model"
    assert got["auroc_wrong"] == pytest.approx(roc_auc_score(own_wrong, scores), abs=1e-9)
    assert abs(got["auroc_wrong"] - roc_auc_score(mean_wrong, scores)) > 1e-6
