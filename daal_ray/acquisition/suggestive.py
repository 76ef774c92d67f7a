"""Suggestive Annotation (Yang et al. 2017): uncertain first, then representative.

Two stages, both on the task model's penultimate features:

1. **Uncertainty.** An ensemble of ``ensemble_size`` softmax-regression heads is fit on
   bootstrap resamples of the labeled features and their labels (the paper bootstraps
   whole FCNs; heads on the shared features keep the cost of a cycle small). A sample's
   uncertainty is the variance of the members' class probabilities, averaged over the
   classes. For segmentation (dense targets, no per-image label) each head predicts an
   image's class composition, the share of its non-void pixels in each class
   (:meth:`~daal_ray.data.base.PoolDataset.class_frequencies`, read from the labeled
   masks), with a soft-target cross-entropy; the uncertainty is the members'
   disagreement about that composition. The ``candidates`` most uncertain unlabeled
   samples (default 2K) are kept, through the same exact streaming top-K as every
   score-based strategy.
2. **Representativeness.** From the candidates, K are picked by greedy max-cover
   (facility location): maximise ``sum_x max_{s in S} sim(s, x)`` over the candidates
   ``x``, with ``sim`` the cosine similarity of features (negative similarity counts as
   0). The paper measures coverage of the whole unlabeled set; covering the candidates
   keeps the cost O(C * neighbours) per pick, independent of the pool size. Each
   candidate's similarities are kept for its ``neighbours`` most similar candidates
   (itself included); with ``neighbours >= C`` the greedy is exact. Ties go to the
   smaller ``sample_id``.

The ensemble is fit on every rank (``trains``), from the features Ray Data produced once;
scoring runs in Ray Data like entropy; only the candidates' features are gathered for the
greedy, so the driver holds O(C * d) features, not the pool's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from daal_ray.acquisition.base import FitContext, Strategy, register_strategy
from daal_ray.data import open_dataset
from daal_ray.errors import DataError
from daal_ray.runtime import derive_seed
from daal_ray.selection import iter_feature_batches
from daal_ray.settings import Config, check

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SuggestiveParams(Config):
    """Suggestive Annotation settings.

    Attributes:
        ensemble_size: bootstrapped heads in the uncertainty ensemble.
        epochs: full-batch Adam steps per head.
        lr: Adam learning rate of the heads.
        weight_decay: L2 penalty of the heads.
        candidates: how many most uncertain samples go to the max-cover stage; 0 = 2 K.
        neighbours: similarities kept per candidate in the max-cover stage (exact when
            it is at least the number of candidates).
    """

    ensemble_size: int = 5
    epochs: int = 200
    lr: float = 0.05
    weight_decay: float = 1e-4
    candidates: int = 0
    neighbours: int = 256

    def validate(self) -> None:
        check(self.ensemble_size >= 2, f"SuggestiveParams.ensemble_size must be >= 2, got {self.ensemble_size}")
        check(self.epochs >= 1, f"SuggestiveParams.epochs must be >= 1, got {self.epochs}")
        check(self.lr > 0, f"SuggestiveParams.lr must be > 0, got {self.lr}")
        check(self.weight_decay >= 0, f"SuggestiveParams.weight_decay must be >= 0, got {self.weight_decay}")
        check(self.candidates >= 0, f"SuggestiveParams.candidates must be >= 0, got {self.candidates}")
        check(self.neighbours >= 1, f"SuggestiveParams.neighbours must be >= 1, got {self.neighbours}")


def fit_bootstrap_heads(x: np.ndarray, y: np.ndarray, num_classes: int, params: SuggestiveParams, seed: int,
                        device: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Fit ``params.ensemble_size`` softmax-regression heads, each on a bootstrap resample.

    ``y`` is one class per row ``[n]`` (int) or a target distribution per row ``[n, C]``
    (float, soft-target cross-entropy). Returns ``(weights [E, d, C], biases [E, C])`` as
    float32 NumPy arrays. The heads start at zero and differ only through their resamples,
    so the ensemble is deterministic.
    """
    n, d = x.shape
    rng = np.random.default_rng(seed)
    idx = torch.as_tensor(rng.integers(0, n, size=(params.ensemble_size, n)), device=device)
    xt = torch.as_tensor(x, dtype=torch.float32, device=device)
    soft = np.ndim(y) == 2
    yt = torch.as_tensor(y, dtype=torch.float32 if soft else torch.int64, device=device)
    xb, yb = xt[idx], yt[idx]  # [E, n, d], [E, n]
    w = torch.zeros(params.ensemble_size, d, num_classes, device=device, requires_grad=True)
    b = torch.zeros(params.ensemble_size, num_classes, device=device, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=params.lr, weight_decay=params.weight_decay)
    for _ in range(params.epochs):
        opt.zero_grad(set_to_none=True)
        logits = torch.bmm(xb, w) + b[:, None, :]
        target = yb.reshape(-1, num_classes) if soft else yb.reshape(-1)
        loss = F.cross_entropy(logits.reshape(-1, num_classes), target) * params.ensemble_size
        loss.backward()
        opt.step()
    return w.detach().cpu().numpy(), b.detach().cpu().numpy()


def ensemble_variance(x: np.ndarray, weights: np.ndarray, biases: np.ndarray) -> np.ndarray:
    """Per-row variance of the heads' class probabilities across members, averaged over classes."""
    logits = np.einsum("nd,edc->enc", np.asarray(x, np.float32), weights) + biases[:, None, :]
    logits -= logits.max(axis=2, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=2, keepdims=True)
    return p.astype(np.float64).var(axis=0).mean(axis=1)


def max_cover_greedy(x: np.ndarray, k: int, neighbours: int, device: Any = None,
                     chunk_rows: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Greedy max-cover (facility location) of the rows of ``x`` under cosine similarity.

    Picks ``k`` rows maximising ``sum_x max_{s in S} max(0, cos(s, x))``; each step takes
    the row with the largest coverage gain, ties to the smaller position. Each row keeps
    its ``neighbours`` most similar rows (exact when ``neighbours >= len(x)``).

    Returns:
        ``(positions [k] int64, gains [k] float64)`` in pick order.
    """
    xt = torch.as_tensor(np.asarray(x, np.float32), device=device)
    c = xt.shape[0]
    if not 0 <= k <= c:
        raise ValueError(f"k must be in [0, {c}] (the candidates), got {k}")
    xt = xt / xt.norm(dim=1, keepdim=True).clamp_min(1e-12)
    m = min(neighbours, c)
    sims = torch.empty(c, m, device=xt.device)
    nbrs = torch.empty(c, m, dtype=torch.int64, device=xt.device)
    for i in range(0, c, chunk_rows):
        s = (xt[i:i + chunk_rows] @ xt.T).clamp_min_(0.0)
        if m == c:
            sims[i:i + chunk_rows] = s
            nbrs[i:i + chunk_rows] = torch.arange(c, device=xt.device)
        else:
            top = torch.topk(s, m, dim=1)
            sims[i:i + chunk_rows], nbrs[i:i + chunk_rows] = top.values, top.indices
    cover = torch.zeros(c, device=xt.device)
    chosen = torch.zeros(c, dtype=torch.bool, device=xt.device)
    picks = torch.empty(k, dtype=torch.int64, device=xt.device)
    gains_out = torch.empty(k, device=xt.device)
    for t in range(k):
        gains = (sims - cover[nbrs]).clamp_min_(0.0).sum(dim=1)
        gains[chosen] = -1.0
        i = torch.argmax(gains)  # first maximum: the smaller position (smaller sample_id)
        picks[t], gains_out[t] = i, gains[i]
        chosen[i] = True
        cover[nbrs[i]] = torch.maximum(cover[nbrs[i]], sims[i])
    return picks.cpu().numpy(), gains_out.double().cpu().numpy()


@register_strategy
class SuggestiveStrategy(Strategy):
    """Bootstrapped-ensemble uncertainty, then greedy max-cover representativeness (Yang et al. 2017)."""

    name = "suggestive"
    streams = False  # reads the whole pool's features
    description = ("suggestive annotation: most uncertain 2K under a bootstrapped head ensemble, then K by "
                   "greedy max-cover of cosine similarity (Yang et al.)")
    Params = SuggestiveParams
    needs = frozenset({"features"})
    trains = True

    def fit(self, ctx: FitContext) -> None:
        """Fit the bootstrapped heads on the labeled features (streamed; only labeled rows kept).

        The targets are ``ctx.labeled_labels``; without them (dense targets) each labeled
        image's class composition, read from its mask through the experiment's dataset."""
        if ctx.labeled_ids is None or (ctx.labeled_labels is None and ctx.config is None):
            raise DataError("suggestive annotation needs the labeled ids and their labels (or, for segmentation, "
                            "the experiment's config to read their masks)")
        ids_parts, x_parts = [], []
        for batch in iter_feature_batches(ctx.features, ("sample_id", "labeled", "features")):
            lab = np.asarray(batch["labeled"], dtype=bool)
            ids_parts.append(np.asarray(batch["sample_id"])[lab])
            x_parts.append(np.asarray(batch["features"], np.float32).reshape(lab.size, -1)[lab])
        ids, x = np.concatenate(ids_parts), np.concatenate(x_parts)
        labeled_ids = np.asarray(ctx.labeled_ids, np.int64)
        pos = np.searchsorted(labeled_ids, ids)
        if ids.size != labeled_ids.size or not np.array_equal(labeled_ids[np.minimum(pos, labeled_ids.size - 1)], ids):
            raise DataError("the labeled rows of the features do not match the labeled ids of the pool state")
        if ctx.labeled_labels is not None:
            y = np.asarray(ctx.labeled_labels, np.int64)[pos]
            num_classes = int(y.max()) + 1
        else:
            y = open_dataset(ctx.config.data).class_frequencies("train", ids)
            num_classes = y.shape[1]
        # Standardised with the labeled statistics, which scoring reuses.
        self.mean = x.mean(axis=0)
        self.std = x.std(axis=0) + 1e-6
        self.weights, self.biases = fit_bootstrap_heads(
            (x - self.mean) / self.std, y, num_classes, self.params, seed=derive_seed(self.seed, self.cycle, 0x5A),
            device=ctx.device)

    def score(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        x = np.asarray(batch["features"], np.float32).reshape(len(batch["sample_id"]), -1)
        return ensemble_variance((x - self.mean) / self.std, self.weights, self.biases)

    def select(self, ctx: FitContext, k: int) -> tuple[np.ndarray, np.ndarray, float]:
        """Top ``candidates`` by uncertainty, then ``k`` of them by greedy max-cover; the
        scores are the coverage gains in pick order."""
        n_cand = max(k, self.params.candidates or 2 * k)
        cand_ids, _, merge_s = super().select(ctx, n_cand)
        t0 = time.perf_counter()
        cand_ids = np.sort(cand_ids)
        x = np.zeros((cand_ids.size, 0), np.float32)
        got = np.zeros(cand_ids.size, bool)
        for batch in iter_feature_batches(ctx.features, ("sample_id", "labeled", "features")):
            bid = np.asarray(batch["sample_id"])
            rows = np.isin(bid, cand_ids) & ~np.asarray(batch["labeled"], bool)
            if not rows.any():
                continue
            f = np.asarray(batch["features"], np.float32).reshape(bid.size, -1)
            if x.shape[1] == 0:
                x = np.zeros((cand_ids.size, f.shape[1]), np.float32)
            pos = np.searchsorted(cand_ids, bid[rows])
            x[pos], got[pos] = f[rows], True
        if not got.all():
            raise DataError(f"{int((~got).sum())} candidate(s) were not found in the features")
        pos, gains = max_cover_greedy(x, k, self.params.neighbours, device=ctx.device)
        return cand_ids[pos], gains, merge_s + time.perf_counter() - t0


__all__ = ["SuggestiveParams", "SuggestiveStrategy", "ensemble_variance", "fit_bootstrap_heads", "max_cover_greedy"]
