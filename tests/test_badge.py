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


def reference_kmeanspp(g: np.ndarray, k: int, seed: int, first: int) -> list[int]:
    """Textbook sequential k-means++ over the rows of ``g`` (float64, full distances), with
    the random stream d2_seeding documents: one torch generator seeded with ``seed``; per
    draw n float64 uniforms, and the centre is the Gumbel-max of log D^2 (a draw with
    probability proportional to D^2); all D^2 = 0: a uniform untaken point."""
    gen = torch.Generator().manual_seed(seed)
    d2 = ((g - g[first]) ** 2).sum(1)
    taken = np.zeros(len(g), bool)
    taken[first] = True
    picks = [first]
    while len(picks) < k:
        gumbel = -np.log(-np.log(torch.rand(len(g), generator=gen, dtype=torch.float64).clamp_(1e-300, 1 - 1e-16)
                                 .numpy()))
        with np.errstate(divide="ignore"):
            keys = np.log(d2) + gumbel
        keys[taken] = -np.inf
        i = int(np.argmax(keys)) if np.isfinite(keys).any() else int(np.argmax(np.where(taken, -np.inf, gumbel)))
        picks.append(i)
        taken[i] = True
        d2 = np.minimum(d2, ((g - g[i]) ** 2).sum(1))
    return picks


def test_seeding_batch_one_is_exact_sequential_kmeans_plus_plus():
    from daal_ray.acquisition.badge import _SALT
    from daal_ray.runtime import derive_seed

    p = pool(n=1000, n_labeled=30, seed=6)
    k = 300  # the default draws k // 128 = 2 centres per pass: not exact
    un = ~p["labeled"]
    order = np.argsort(p["sample_id"][un])
    ids = p["sample_id"][un][order]
    g = _explicit(p["features"][un][order], p["probs"][un][order])
    first = int(np.argmax(np.linalg.norm(g, axis=1)))
    want = ids[reference_kmeanspp(g, k, derive_seed(1, 2, _SALT), first)]
    exact, _, _ = make("badge", seeding_batch=1).select(ctx_of(p), k)
    np.testing.assert_array_equal(exact, want)
    batched, _, _ = make("badge").select(ctx_of(p), k)
    assert not np.array_equal(batched, want), "the default batched draw is an approximation"
    assert_valid_selection(batched, p, k)


def test_a_large_pool_is_seeded_per_predicted_class_in_proportion():
    """Beyond ``seeding_rows`` unlabeled samples (here 400 of 2,970) each predicted class,
    cut by k-means where larger, seeds its share of K: the picks per class follow the class
    sizes, each cell starts at its largest gradient (so the pool's largest is picked), and
    the batch keeps BADGE's preference for large gradients, which a uniform sampler of the
    same pool (300 seeded draws) never reaches."""
    from daal_ray.acquisition.badge import badge_cells

    p = pool(n=3000, n_labeled=30, seed=9)
    k = 150
    un = ~p["labeled"]
    cells = badge_cells(torch.as_tensor(p["features"][un]), p["probs"][un], 400, seed=0)
    yhat = p["probs"][un].argmax(1)
    assert len(np.unique(cells)) > len(np.unique(yhat)), "classes of more than 400 are cut further"
    assert all(len(np.unique(yhat[cells == c])) == 1 for c in np.unique(cells)), "a cell holds one predicted class"
    s = make("badge", seeding_rows=400)
    ids, _, _ = s.select(ctx_of(p), k)
    assert_valid_selection(ids, p, k)
    pos = {int(i): j for j, i in enumerate(p["sample_id"])}
    picked_class = p["probs"][[pos[int(i)] for i in ids]].argmax(1)
    sizes = np.bincount(yhat, minlength=5)
    np.testing.assert_allclose(np.bincount(picked_class, minlength=5), k * sizes / sizes.sum(), atol=2.01)
    norms = s.score({key: v[un] for key, v in p.items()})
    assert p["sample_id"][un][np.argmax(norms)] in ids
    rng = np.random.default_rng(0)
    uniform = [norms[rng.choice(un.sum(), k, replace=False)].mean() for _ in range(300)]
    assert s.score({key: v[[pos[int(i)] for i in ids]] for key, v in p.items()}).mean() > max(uniform)
    whole, _, _ = make("badge").select(ctx_of(p), k)
    assert not np.array_equal(np.sort(whole), np.sort(ids)), "one seeding over the pool draws another batch"
