"""Batch-aware selection for any per-sample scorer: ``<name>_diverse``.

A top-K of per-sample scores picks near-duplicates: the highest scores of a cycle sit in
one dense region of the feature space, and K of them teach the model what one of them
would (the paper's overlapping problem; ``batch_cosine`` in the results shows it). The
diverse version of a strategy keeps its score and changes only the batch:

1. the top ``M = beta x K`` unlabeled samples by the strategy's score, exactly, through the
   same streaming top-K as the plain strategy (so any pool size, in the cycle loop and in
   ``daal-ray score --features``);
2. their task features (L2-normalised: directions, as ``batch_cosine`` measures them) are
   gathered, O(M d) memory, never O(N d);
3. K of them by k-means++ D^2 seeding (:func:`daal_ray.selection.d2_seeding`), starting from
   the best-scored candidate; with ``weighting = "score"`` each draw is also proportional to
   the candidate's score. Seeded per experiment and cycle, so a rerun picks the same batch.

Two approximations of k-means++ keep large batches affordable, each with a param:

* ``seeding_batch``: the seeding draws ``K // 128`` centres per distance pass (for K >= 256;
  below that one at a time), each draw with the distances of the pass before it, so two
  centres of one draw may land close together. ``seeding_batch=1`` is exact sequential
  k-means++ (one pass per centre).
* ``seeding_rows``: beyond this many candidates (default 262,144, i.e. K > 65,536 at
  beta = 4) the candidates are cut into spatial cells of about that many rows by k-means
  and each cell seeds its share of K (:func:`daal_ray.selection.sharded_d2_seeding`):
  time linear in K instead of quadratic (K = 500,000 from 2,000,000 candidates would be
  256 TFLOP in one seeding), at the price of no D^2 spreading across a cell boundary.
  ``seeding_rows=0`` always seeds all candidates at once.

:func:`diverse_variant` derives the version of any registered scorer, like
:func:`daal_ray.acquisition.rss.rss_variant`; ``daal_diverse``, ``entropy_diverse``,
``mc_dropout_diverse`` and ``learning_loss_diverse`` are registered.
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal, Optional

import numpy as np
import torch

from daal_ray.acquisition.base import FitContext, Strategy, derive_variant
from daal_ray.acquisition.daal import DAALStrategy
from daal_ray.acquisition.entropy import EntropyStrategy
from daal_ray.acquisition.learning_loss import LearningLossStrategy
from daal_ray.acquisition.mc_dropout import MCDropoutStrategy
from daal_ray.errors import ConfigError
from daal_ray.runtime import derive_seed
from daal_ray.selection import gather_rows, sharded_d2_seeding
from daal_ray.settings import check

__all__ = ["DEFAULT_BETA", "DiverseMixin", "diverse_variant"]

# Candidates per selected sample. 4 keeps the batch among the best-scored fifth of what a
# plain top-K would look at for K up to a quarter of the pool, and leaves k-means++ room to
# spread (BENCHMARKS.md: batch-aware selection).
DEFAULT_BETA = 4.0
# Candidates one seeding covers before they are cut into cells: the 1,000,000-row benchmark
# (200,000 candidates) seeds in one piece, the 10,000,000-row one in cells (BENCHMARKS.md).
DEFAULT_SEEDING_ROWS = 1 << 18
_SALT = 0xD1CE


class DiverseMixin:
    """Turns the ``select`` of the scorer it precedes into top-``beta K`` then D^2 seeding.

    Used through :func:`diverse_variant`; the params must have ``beta`` and ``weighting``.
    """

    params: Any
    seed: int
    cycle: int

    def select(self, ctx: FitContext, k: int) -> tuple[np.ndarray, np.ndarray, float]:
        n_unlabeled = ctx.num_unlabeled if ctx.pool_ids is not None else None
        m = max(k, int(math.ceil(self.params.beta * k)))
        if n_unlabeled is not None:
            m = min(m, n_unlabeled)
        cand, cand_scores, merge_s = super().select(ctx, m)  # type: ignore[misc]
        t0 = time.perf_counter()
        if cand.size <= k:
            return cand, cand_scores, merge_s
        x = gather_rows(ctx.features, cand, ["features"])["features"]
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32).reshape(cand.size, -1))
        xt.div_(xt.norm(dim=1, keepdim=True).clamp_min(1e-12))  # in place: no second copy of the candidates
        log_w = None
        if self.params.weighting == "score":
            if (cand_scores < 0).any():
                raise ConfigError(f"{self.name}: weighting='score' needs non-negative scores, and "
                                  f"{int((cand_scores < 0).sum())} candidates score below 0; use weighting='none'")
            log_w = torch.log(torch.as_tensor(cand_scores, dtype=torch.float64).clamp_min(1e-300))
        pos = sharded_d2_seeding(xt, k, seed=derive_seed(self.seed, self.cycle, _SALT), cell_rows=self.params.seeding_rows,
                                 log_weights=log_w, batch=self.params.seeding_batch)
        return cand[pos], cand_scores[pos], merge_s + time.perf_counter() - t0


def _check_diverse(params: Any) -> None:
    name = type(params).__name__
    check(params.beta >= 1.0, f"{name}.beta must be >= 1 (candidates per pick), got {params.beta}")
    check(params.seeding_batch >= 0, f"{name}.seeding_batch must be >= 0 (0: K // 128), got {params.seeding_batch}")
    check(params.seeding_rows >= 0, f"{name}.seeding_rows must be >= 0 (0: never in cells), got {params.seeding_rows}")


def diverse_variant(base: type[Strategy], name: Optional[str] = None, register: bool = True) -> type[Strategy]:
    """Derive (and register) the batch-aware version of the per-sample scorer ``base``,
    named ``<base.name>_diverse``; call it once, at import time.

    Raises:
        TypeError: ``base`` selects by its own method, not by a top-K of its scores.
    """
    return derive_variant(
        base, DiverseMixin, suffix="diverse", tag="Diverse",
        fields=[("beta", float, DEFAULT_BETA), ("weighting", Literal["none", "score"], "none"),
                ("seeding_batch", int, 0), ("seeding_rows", int, DEFAULT_SEEDING_ROWS)],
        validate=_check_diverse,
        what="diverse: the top beta x K by score, then K of them by k-means++ on task features (centres drawn K/128 "
             "per distance pass, seeding_batch=1: exact; above seeding_rows candidates, seeded in spatial cells)",
        params_doc=f"{base.Params.__name__} plus ``beta`` (the top beta x K by score are the candidates), "
                   f"``weighting`` (``score``: D^2 draws also proportional to the score), ``seeding_batch`` "
                   f"(centres per distance pass; 0: K // 128; 1: exact k-means++) and ``seeding_rows`` (beyond "
                   f"this many candidates the seeding runs in spatial cells of about this size; 0: never).",
        name=name, register=register, scorers_only=True, needs=frozenset(base.needs) | {"features"}, streams=True, multipass=True)


for _base in (DAALStrategy, EntropyStrategy, MCDropoutStrategy, LearningLossStrategy):
    diverse_variant(_base)
