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
selected in one stage.
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
    daal_inputs,
    input_columns,
    score_features,
    train_daal,
)
from daal_ray.acquisition.daal.networks import Discriminator, FeatureVAE, ScoreNet
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


@register_strategy
class DAALStrategy(Strategy):
    """DAAL's one-stage uncertainty + representativeness score from its trained ScoreNet."""

    name = "daal"
    description = "DAAL: ScoreNet trained against dual discriminators (uncertainty + representativeness), top-K"
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

    def fit(self, ctx: FitContext) -> None:
        rank, size = world()
        # Every labeled row and a bounded, seeded sample of unlabeled ones, streamed: no
        # rank gathers the pool (pools within max_fit_unlabeled are read whole).
        xl, xu = fit_features(ctx.features, self.params.max_fit_unlabeled, self.fit_sample_key(), rank, size,
                              columns=input_columns(self.params), inputs=self.inputs)
        ckpt = Path(ctx.run_dir) / "checkpoints" / f"cycle_{ctx.cycle:03d}" / "daal.pt" if ctx.run_dir else None
        nets, self.history = train_daal(xl, xu, self.params, seed=derive_seed(self.seed, self.cycle, 0xDAA1),
                                        device=ctx.device or torch.device("cpu"), checkpoint=ckpt,
                                        log_every=max(1, self.params.epochs // 5))
        self.feature_dim = xu.shape[1]
        self.score_state = {k: v.detach().cpu() for k, v in nets.score.state_dict().items()}
        self._net = None

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

    def score(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        return score_features(self._score_net(), self.inputs(batch), normalize=self.params.normalize)

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
