"""DAAL: Dual Adversarial Network for Deep Active Learning (Wang et al.), strategy ``daal``.

``daal`` is the project's improved default; ``daal_paper`` (:class:`DAALPaperStrategy`) runs
every setting as the paper prints it (:class:`~daal_ray.acquisition.daal.fit.DAALPaperParams`).

ScoreNet rates every unlabeled sample from its task-model feature and, by default, the
model's confidence profile (``DAALParams.confidence_weight``); a VAE reconstructs the
``(1 - s) x`` uncertainty branch and the ``s x`` representativeness branch; uDis tells the
labeled inputs from the unlabeled ones (or, as printed, from the uncertainty
reconstructions) and rDis the unlabeled inputs from the representativeness "summary".
Trained by Alg. 1 on every rank of the experiment's Ray Train worker group; the trained
ScoreNet then scores the unlabeled pool through Ray Data and the top-K scores are
selected in one stage. By default that score is fused with the task model's margin and
ranked within each predicted class (``margin_weight``, ``class_balance``); ``daal_paper``
selects by ScoreNet's score alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from daal_ray.acquisition.base import FitContext, Strategy, register_strategy
from daal_ray.acquisition.daal.fit import (
    FEATURES_ALONE_HINT,
    DAALPaperParams,
    DAALParams,
    cdf_knots,
    daal_inputs,
    empirical_cdf,
    input_columns,
    score_features,
    train_daal,
)
from daal_ray.acquisition.daal.networks import Discriminator, FeatureVAE, ScoreNet
from daal_ray.acquisition.uncertainty import sample_margin
from daal_ray.runtime import derive_seed, world
from daal_ray.sampling import fit_features

__all__ = ["DAALPaperParams", "DAALPaperStrategy", "DAALParams", "DAALStrategy", "Discriminator", "FeatureVAE", "ScoreNet"]


def features_by_labeled(features: Any, rank: int = 0, world: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """This rank's strided shard of labeled and unlabeled features, in ``sample_id`` order.

    ``features`` is a Ray Dataset (or a dict of arrays) with ``sample_id``, ``labeled``
    and ``features`` columns.
    """
    if isinstance(features, Mapping):
        batches = [features]
    else:
        batches = list(features.select_columns(["sample_id", "labeled", "features"])
                       .iter_batches(batch_size=8192, batch_format="numpy"))
    ids = np.concatenate([np.asarray(b["sample_id"]) for b in batches])
    lab = np.concatenate([np.asarray(b["labeled"], dtype=bool) for b in batches])
    x = np.concatenate([np.asarray(b["features"], dtype=np.float32) for b in batches])
    order = np.argsort(ids, kind="stable")
    lab, x = lab[order], x[order]
    xl, xu = x[lab], x[~lab]
    return xl[rank::world], xu[rank::world]


def predicted_class(batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """The task model's most probable class per row of the batch's ``probs`` (for dense
    predictions, of the image's mean pixel probabilities)."""
    probs = np.asarray(batch["probs"])
    return probs.reshape(probs.shape[0], -1).argmax(axis=1)


def margin_uncertainty(batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """``1 - (p_(1) - p_(2))`` per row of the batch's ``probs``: 1 where the model hesitates
    between two classes, 0 where it is sure."""
    return 1.0 - sample_margin(batch["probs"])


@register_strategy
class DAALStrategy(Strategy):
    """DAAL's one-stage uncertainty + representativeness score from its trained ScoreNet."""

    name = "daal"
    description = ("DAAL: ScoreNet trained against dual discriminators (uncertainty + representativeness), its score "
                   "fused with the margin (margin_weight) and ranked within each predicted class (class_balance), top-K")
    Params = DAALParams
    needs = frozenset({"features", "probs"})  # the probabilities for the confidence profile
    needs_hint = f", or {FEATURES_ALONE_HINT}"
    trains = True

    def __init__(self, params: DAALParams, seed: int, cycle: int) -> None:
        super().__init__(params, seed, cycle)
        self.needs = frozenset(type(self).needs - {"probs"}) | frozenset(input_columns(params))

    def inputs(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        """DAAL's input rows of a batch of the pool predictor's output (:func:`daal_inputs`)."""
        return daal_inputs(batch, self.params)

    def _fit_rows(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        """DAAL's input rows, then what the selection score reads besides ScoreNet: each
        row's margin uncertainty (``margin_weight``) and predicted class (``class_balance``)."""
        x = self.inputs(batch)
        extra = ([margin_uncertainty(batch)] if self.params.margin_weight > 0 else []) + (
            [predicted_class(batch)] if self.params.class_balance else [])
        if not extra:
            return x
        return np.concatenate([x, np.stack(extra, axis=1).astype(np.float32)], axis=1)

    def fit(self, ctx: FitContext) -> None:
        rank, size = world()
        p = self.params
        # Every labeled row and a bounded, seeded sample of unlabeled ones, streamed: no
        # rank gathers the pool (pools within max_fit_unlabeled are read whole).
        xl, xu = fit_features(ctx.features, p.max_fit_unlabeled, self.fit_sample_key(), rank, size,
                              columns=input_columns(p), inputs=self._fit_rows)
        n_extra = int(p.margin_weight > 0) + int(p.class_balance)
        extra_u = xu[:, xu.shape[1] - n_extra:]
        if n_extra:
            xl, xu = xl[:, :-n_extra], xu[:, :-n_extra]
        ckpt = Path(ctx.run_dir) / "checkpoints" / f"cycle_{ctx.cycle:03d}" / "daal.pt" if ctx.run_dir else None
        nets, self.history = train_daal(xl, xu, p, seed=derive_seed(self.seed, self.cycle, 0xDAA1),
                                        device=ctx.device or torch.device("cpu"), checkpoint=ckpt,
                                        log_every=max(1, p.epochs // 5))
        self.feature_dim = xu.shape[1]
        self.score_state = {k: v.detach().cpu() for k, v in nets.score.state_dict().items()}
        self._net = None
        # The selection score's CDFs come from this rank's unlabeled fit sample (rank 0's
        # strategy selects): fixed after the fit, so the pool is still scored batch by batch.
        s_u = score_features(self._score_net(), xu, normalize=p.normalize)
        if p.margin_weight > 0:
            self.score_knots, self.margin_knots = cdf_knots(s_u), cdf_knots(extra_u[:, 0])
            s_u = self._fused(s_u, extra_u[:, 0])
        if p.class_balance:
            pred = extra_u[:, -1].astype(np.int64)
            self.class_knots = {int(c): cdf_knots(s_u[pred == c]) for c in np.unique(pred)}
            self.all_knots = cdf_knots(s_u)  # for a class the fit sample does not predict

    def fit_sample_key(self) -> int:
        """Hash key of this cycle's bounded unlabeled sample (one per seed and cycle)."""
        return derive_seed(self.seed, self.cycle, 0xF17)

    def _score_net(self) -> ScoreNet:
        net = getattr(self, "_net", None)
        if net is None:
            net = ScoreNet(self.feature_dim, self.params.score_hidden, self.params.dropout)
            net.load_state_dict(self.score_state)
            self._net = net.eval()
        return net

    def _fused(self, s: np.ndarray, uncertainty: np.ndarray) -> np.ndarray:
        w = self.params.margin_weight
        return (1.0 - w) * empirical_cdf(self.score_knots, s) + w * empirical_cdf(self.margin_knots, uncertainty)

    def score(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        p = self.params
        s = score_features(self._score_net(), self.inputs(batch), normalize=p.normalize)
        if p.margin_weight > 0:
            s = self._fused(s, margin_uncertainty(batch))
        if not p.class_balance:
            return s
        # Each sample's rank among the unlabeled samples of its predicted class: the top-K
        # then takes the same top share of every class, not a batch of one class.
        pred = predicted_class(batch)
        out = np.empty(s.shape, dtype=np.float64)
        for c in np.unique(pred):
            rows = pred == c
            out[rows] = empirical_cdf(self.class_knots.get(int(c), self.all_knots), s[rows])
        return out

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_net"] = None  # rebuilt once per worker process from score_state
        return state


@register_strategy
class DAALPaperStrategy(DAALStrategy):
    """DAAL exactly as the paper prints it (:class:`DAALPaperParams`): its input, losses and
    Alg. 1, then the one-stage top-K of the ScoreNet's scores."""

    name = "daal_paper"
    description = ("DAAL as the paper prints it: features alone, dropout 0.4, Alg. 1's updates in order, Eq. 4 "
                   "saturating and unweighted, top-K (daal is the project's improved default)")
    Params = DAALPaperParams
