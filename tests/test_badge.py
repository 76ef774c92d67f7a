"""BADGE: k-means++ seeding over last-layer gradient embeddings, distances factorised.

Known answers: the factorised squared distances equal those of the explicit
``(p - onehot(yhat)) (x) phi`` embeddings; the first pick is the sample of largest gradient
norm; confident samples (zero residual) share one point of the embedding space, the
origin, so at most one of them is picked;
the selection is seeded and valid.
"""

from __future__ import annotations

import numpy as np
import torch
from strategy_helpers import assert_valid_selection, ctx_of, make, pool, split

from daal_ray.acquisition.badge import badge_min_sq, gradient_residuals


def _explicit(phi: np.ndarray, probs: np.ndarray) -> np.ndarray:
    r = gradient_residuals(probs).astype(np.float64)
    return np.einsum("nc,nd->ncd", r, phi.astype(np.float64)).reshape(len(phi), -1)


def test_factorised_distances_equal_the_explicit_embedding():
    rng = np.random.default_rng(0)
    phi = rng.normal(size=(30, 7)).astype(np.float32)
    logits = rng.normal(size=(30, 4))
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    g = _explicit(phi, probs)
    centres = torch.tensor([3, 11, 25])
    got = badge_min_sq(torch.as_tensor(phi, dtype=torch.float64),
                       torch.as_tensor(gradient_residuals(probs), dtype=torch.float64), rows=8)(centres)
    want = ((g[:, None, :] - g[centres.numpy()][None]) ** 2).sum(-1).min(1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-9)


def test_residuals_are_the_gradient_at_the_predicted_class():
    r = gradient_residuals(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
    np.testing.assert_allclose(r, [[-0.3, 0.2, 0.1], [0.1, 0.1, -0.2]], atol=1e-7)


def test_first_pick_is_the_largest_gradient_and_confident_samples_are_one_point():
    p = pool(n=200, n_labeled=20, seed=3)
    confident = np.zeros(200, bool)
    confident[::2] = True
    p["probs"][confident] = np.eye(p["probs"].shape[1], dtype=np.float32)[0]  # zero residual
    s = make("badge")
    ids, scores, _ = s.select(ctx_of(p), 25)
    assert_valid_selection(ids, p, 25)
    un = ~p["labeled"]
    norms = s.score({k: v[un] for k, v in p.items()})
    assert ids[0] == p["sample_id"][un][np.argmax(norms)]
    picked_confident = np.isin(ids, p["sample_id"][confident])
    assert picked_confident.sum() <= 1, "zero-gradient samples are one point: D^2 = 0 after the first"
    np.testing.assert_allclose(scores[0], norms.max(), rtol=1e-5)


def test_badge_is_seeded_and_independent_of_the_block_layout():
    p = pool(n=300, seed=8)
    a, _, _ = make("badge").select(ctx_of(p), 15)
    b, _, _ = make("badge").select(ctx_of(p, split(p, 5)), 15)
    assert np.array_equal(a, b)
