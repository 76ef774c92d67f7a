"""Batch-redundancy diagnostics (daal_ray.diagnostics) against hand-computed answers and
brute force: the mean pairwise cosine from streaming sums, the class entropy, and a
batch's redundancy computed over chunks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from daal_ray.config import resolve_config
from daal_ray.data import open_dataset
from daal_ray.diagnostics import batch_redundancy, class_entropy, mean_pairwise_cosine
from daal_ray.models import build_model


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
    assert got["batch_cosine"] == pytest.approx(_brute_cosine(feats), abs=1e-9)
    labels = ds.targets("train", ids)
    p = np.bincount(labels, minlength=10) / labels.size
    p = p[p > 0]
    assert got["batch_class_entropy"] == pytest.approx(float(-(p * np.log(p)).sum() / np.log(10)))
