"""BADGE (Ash et al. 2020, "Deep Batch Active Learning by Diverse, Uncertain Gradient Lower Bounds").

Each unlabeled sample is represented by the gradient of the cross-entropy loss, at the
model's own prediction ``yhat``, with respect to the last layer's weights:
``g_i = (p_i - onehot(yhat_i)) (x) phi_i``, the outer product of the softmax residual and the
penultimate features. Its norm is large where the model is uncertain, its direction says
what the sample would teach; k-means++ seeding over the ``g_i`` picks a batch that is
uncertain and diverse at once.

The ``N x (C d)`` embedding is never built: inner products factorise,
``g_i . g_j = (phi_i . phi_j) (r_i . r_j)`` with ``r = p - onehot(yhat)``, so a squared
distance costs ``O(d + C)`` and the seeding reads only the ``N x d`` features and ``N x C``
residuals (:func:`badge_min_sq`). Centres are drawn a batch at a time
(:func:`daal_ray.selection.d2_seeding`), one matrix product per batch; the first is the
sample of largest gradient norm, as in the reference implementation.

Batched seeding is an approximation of BADGE's k-means++: the ``K // 128`` centres of one
draw (for K >= 256; below that one at a time) are sampled with the distances of the pass
before them, so two of them can land close together. ``seeding_batch=1`` is exact
sequential k-means++ (one distance pass per centre: 128 times the passes at K = 50,000).

A pool of more than ``seeding_rows`` unlabeled samples (262,144) is seeded in cells: one
per predicted class, a class of more than ``seeding_rows`` samples cut further by k-means
on its features, each cell seeding its share of K (proportional to its size) from its
largest gradient (:func:`daal_ray.selection.seed_in_cells`). The class is the natural cut
of the gradient space: the residual ``p - onehot(yhat)`` is negative at the predicted class
only, so two samples predicted differently have residuals pointing apart and their
embeddings are far apart anyway. The work falls by the number of cells (10 classes: 10
times fewer distance computations), at the price of no D^2 spreading across a cell
boundary; ``seeding_rows=0`` seeds the whole pool at once.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch

from daal_ray.acquisition.base import FitContext, Strategy, register_strategy
from daal_ray.runtime import derive_seed
from daal_ray.selection import d2_seeding, gather_unlabeled, kmeans, seed_in_cells
from daal_ray.settings import Config, check

__all__ = ["BadgeParams", "BadgeStrategy", "badge_cells", "badge_min_sq", "gradient_residuals"]

_SALT = 0xBAD6E


@dataclass(frozen=True)
class BadgeParams(Config):
    """BADGE settings.

    Attributes:
        rows: rows per chunk of the distance pass (bounds its memory at ``rows x batch``).
        seeding_batch: centres drawn per distance pass of the k-means++ seeding; 0 (the
            default) draws ``K // 128`` at a time (at least 1), an approximation; 1 is exact
            sequential k-means++ (:func:`daal_ray.selection.d2_seeding`).
        seeding_rows: beyond this many unlabeled samples the seeding runs in cells of at
            most about this many (predicted classes, cut by k-means where larger); 0: never.
    """

    rows: int = 1 << 13
    seeding_batch: int = 0
    seeding_rows: int = 1 << 18

    def validate(self) -> None:
        check(self.rows >= 1, f"BadgeParams.rows must be >= 1, got {self.rows}")
        check(self.seeding_batch >= 0, f"BadgeParams.seeding_batch must be >= 0 (0: K // 128), got {self.seeding_batch}")
        check(self.seeding_rows >= 0, f"BadgeParams.seeding_rows must be >= 0 (0: never in cells), got {self.seeding_rows}")


def gradient_residuals(probs: np.ndarray) -> np.ndarray:
    """``p - onehot(argmax p)`` per row of ``probs [n, C]``: the loss gradient at the logits
    for the model's own prediction (float32)."""
    p = np.asarray(probs, dtype=np.float32).reshape(len(probs), -1).copy()
    p[np.arange(p.shape[0]), p.argmax(axis=1)] -= 1.0
    return p


def badge_min_sq(phi: torch.Tensor, r: torch.Tensor, rows: int = 1 << 13) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f(centres) -> [n]``: each sample's squared distance, in gradient-embedding space, to
    its nearest centre, from the factorised inner products (no ``n x C d`` embedding).

    ``|g_i - g_c|^2 = |g_i|^2 + min_c (|g_c|^2 - 2 (phi_i . phi_c)(r_i . r_c))``: per chunk of
    ``rows`` samples, two matrix products and ONE fused multiply-add over the
    ``rows x centres`` block before its row minimum; the sample's own norm is added to the
    minimum, not to the block. A chunk small enough to stay in cache is what makes this
    pass compute-bound rather than memory-bound (3.3x faster than four passes over a
    32k-row block, BENCHMARKS.md).
    """
    sq = (phi * phi).sum(1) * (r * r).sum(1)

    def min_sq(centres: torch.Tensor) -> torch.Tensor:
        pc, rc, sc = phi[centres], r[centres] * -2.0, sq[centres][None]
        out = torch.empty(phi.shape[0], dtype=phi.dtype, device=phi.device)
        for i in range(0, phi.shape[0], rows):
            block = phi[i:i + rows] @ pc.T
            torch.addcmul(sc, block, r[i:i + rows] @ rc.T, out=block)
            out[i:i + rows] = torch.amin(block, dim=1)
        return out.add_(sq).clamp_min_(0)

    return min_sq


def badge_cells(phi: torch.Tensor, probs: np.ndarray, cell_rows: int, seed: int) -> np.ndarray:
    """``[n]`` cell of each sample: its predicted class, and within a class of more than
    ``cell_rows`` samples its k-means cell on the features (``ceil(size / cell_rows)`` cells)."""
    yhat = np.asarray(probs).reshape(len(probs), -1).argmax(axis=1).astype(np.int64)
    cells = yhat * 0
    for c in np.unique(yhat):
        at = np.flatnonzero(yhat == c)
        if at.size > cell_rows:
            idx = torch.as_tensor(at, device=phi.device)
            _, assign, _ = kmeans(phi[idx], math.ceil(at.size / cell_rows), seed=seed + int(c), iters=5)
            cells[at] = assign.cpu().numpy()
    return yhat * (int(cells.max()) + 1) + cells


@register_strategy
class BadgeStrategy(Strategy):
    """k-means++ seeding over last-layer gradient embeddings (uncertain and diverse at once)."""

    name = "badge"
    description = ("BADGE: k-means++ over last-layer gradient embeddings, distances factorised (Ash et al. 2020); "
                   "centres drawn K/128 per distance pass (seeding_batch=1: exact k-means++), per predicted class "
                   "beyond seeding_rows samples")
    Params = BadgeParams
    needs = frozenset({"features", "probs"})
    streams = False  # reads the whole pool's features

    def score(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        """The gradient-embedding norm ``|phi| |p - onehot(yhat)|`` (the uncertainty half of BADGE;
        the selection also spreads the batch)."""
        phi = np.asarray(batch["features"], dtype=np.float64).reshape(len(batch["sample_id"]), -1)
        r = gradient_residuals(batch["probs"]).astype(np.float64)
        return np.linalg.norm(phi, axis=1) * np.linalg.norm(r, axis=1)

    def select(self, ctx: FitContext, k: int) -> tuple[np.ndarray, np.ndarray, float]:
        """``k`` ids by D^2 seeding over the gradient embeddings of the unlabeled pool (``seeding_batch``
        centres per distance pass); the scores are the picks' gradient norms."""
        ids, cols = gather_unlabeled(ctx.features, ctx.num_unlabeled, ("features", "probs"))
        phi, probs = cols["features"], cols["probs"]
        device = ctx.device if ctx.device is not None else torch.device("cpu")
        t0 = time.perf_counter()
        phi_t = torch.as_tensor(phi, device=device)
        r_t = torch.as_tensor(gradient_residuals(probs), device=device)
        norms = (phi_t.norm(dim=1) * r_t.norm(dim=1)).double()
        seed, rows, cap = derive_seed(self.seed, self.cycle, _SALT), self.params.rows, self.params.seeding_rows
        if cap <= 0 or ids.size <= cap:
            pos = d2_seeding(ids.size, k, badge_min_sq(phi_t, r_t, rows), seed=seed, first=int(torch.argmax(norms)),
                             batch=self.params.seeding_batch, device=device)
        else:
            norms_np = norms.cpu().numpy()
            pos = seed_in_cells(badge_cells(phi_t, probs, cap, seed), k,
                                lambda idx: badge_min_sq(phi_t[idx.to(device)], r_t[idx.to(device)], rows), seed=seed,
                                first_of=lambda at: int(np.argmax(norms_np[at])), batch=self.params.seeding_batch,
                                device=device)
        return ids[pos], norms.cpu().numpy()[pos], time.perf_counter() - t0
