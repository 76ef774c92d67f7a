"""Learning Loss (Yoo & Kweon 2019), strategies ``learning_loss`` and ``ll_rd``.

A loss-prediction module reads several intermediate feature maps of the task model
(global average pooling, a fully connected layer and a ReLU per map; the results
concatenated and mapped by one more linear layer to a scalar) and is trained **jointly
with the task model** to predict each sample's task loss. Its objective is the pairwise
margin ranking loss: the batch is split into pairs ``(i, n - 1 - i)`` and for each pair the
predicted losses must be ordered like the true ones by at least ``margin``. The total loss
is ``mean task loss + weight x ranking loss``; after ``stop_grad_fraction`` of the epochs the
module's gradient no longer flows into the backbone (the paper stops it at epoch 120 of
200, i.e. 0.6 of training; the fraction scales it to the configured epochs). The unlabeled
samples with the highest predicted loss are selected.

The module is a :class:`~daal_ray.models.JointHead` that the strategy hands the task-model
training through :meth:`Strategy.task_head`: it is trained by the same optimiser under
DDP, saved beside the model in the cycle checkpoint (``loss_module.pt``), and the pool
predictor loads it and emits its output as the ``pred_loss`` column that ``score`` reads.

``learning_loss`` ranks the whole unlabeled pool ("LL w/o RSS" in the DAAL paper);
``learning_loss_rss`` is the original LL, ranking a random subset of ``rss_subset``
(default 10,000) unlabeled samples (:mod:`daal_ray.acquisition.rss`). The DAAL paper's
Sec. 4.5 hybrids build on it: ``ll_coreset`` ("LL + Core-set", two stages: core-set picks
a representative subset, LL the top-K inside it; :class:`LLCoresetStrategy`) and
``ll_rd`` ("LL + RD": DAAL's representativeness discriminator added to LL without RSS,
in one stage; :class:`LLRDStrategy`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from daal_ray.acquisition.base import FitContext, Strategy, register_strategy
from daal_ray.acquisition.daal import features_by_labeled
from daal_ray.acquisition.daal.fit import DAALParams, score_features, train_daal
from daal_ray.acquisition.daal.networks import ScoreNet
from daal_ray.acquisition.rss import restrict_features, rss_variant
from daal_ray.errors import ConfigError, DataError
from daal_ray.models import JointHead
from daal_ray.runtime import derive_seed, world
from daal_ray.selection import gather_features, iter_feature_batches, k_center_greedy, topk_arrays
from daal_ray.settings import Config, check

logger = logging.getLogger(__name__)

__all__ = ["LearningLossParams", "LearningLossStrategy", "LLCoresetParams", "LLCoresetStrategy", "LLRDParams",
           "LLRDStrategy", "LossPredictionModule", "loss_ranking_loss"]


@dataclass(frozen=True)
class LearningLossParams(Config):
    """Learning Loss settings (paper values: hidden 128, margin 1, weight 1, gradient stop
    at epoch 120 of 200).

    Attributes:
        hidden: width of each tap's fully connected layer.
        margin: the ranking loss's margin.
        weight: weight (lambda) of the ranking loss in the total loss.
        stop_grad_fraction: fraction of the task model's epochs after which the module's
            gradient stops at the taps (1.0 = never stop).
    """

    hidden: int = 128
    margin: float = 1.0
    weight: float = 1.0
    stop_grad_fraction: float = 0.6

    def validate(self) -> None:
        check(self.hidden >= 1, f"learning_loss hidden must be >= 1, got {self.hidden}")
        check(self.margin >= 0, f"learning_loss margin must be >= 0, got {self.margin}")
        check(self.weight >= 0, f"learning_loss weight must be >= 0, got {self.weight}")
        check(0.0 <= self.stop_grad_fraction <= 1.0,
               f"learning_loss stop_grad_fraction must be in [0, 1], got {self.stop_grad_fraction}")

    def ll_params(self) -> "LearningLossParams":
        """Just the Learning Loss fields (what the loss-prediction module reads), also from a
        subclass's params."""
        return LearningLossParams(**{f.name: getattr(self, f.name) for f in dataclasses.fields(LearningLossParams)})


def loss_ranking_loss(pred: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """The pairwise margin ranking loss of Learning Loss (Yoo & Kweon 2019, Eq. 2).

    The batch is split into pairs ``(i, n - 1 - i)``, ``i < n // 2``; each contributes
    ``max(0, margin - sign(l_i - l_j) * (p_i - p_j))`` where ``sign`` is +1 when
    ``l_i > l_j`` and -1 otherwise. Returns the mean over pairs; the target losses are
    not differentiated (they are a fixed teacher signal).

    Args:
        pred: predicted losses ``[n]``.
        target: true losses ``[n]``.
        margin: the required gap between the predictions of a pair.
    """
    if pred.shape != target.shape or pred.dim() != 1:
        raise ValueError(f"pred and target must both be [n]; got {tuple(pred.shape)} and {tuple(target.shape)}")
    half = pred.shape[0] // 2
    if half == 0:
        return pred.sum() * 0.0
    dp = (pred - pred.flip(0))[:half]
    dl = (target - target.flip(0))[:half].detach()
    sign = torch.where(dl > 0, 1.0, -1.0).to(dp.dtype)
    return torch.clamp(margin - sign * dp, min=0.0).mean()


class LossPredictionModule(JointHead):
    """GAP + FC + ReLU on each tap, concatenated, FC to one predicted loss per sample.

    Args:
        tap_channels: channel count of each tap (the task model's ``tap_channels``).
        p: the strategy's settings.
    """

    output_column = "pred_loss"
    checkpoint_file = "loss_module.pt"

    def __init__(self, tap_channels: Sequence[int], p: LearningLossParams) -> None:
        super().__init__()
        if not tap_channels:
            raise ConfigError("Learning Loss needs a task model that exposes its intermediate maps (tap_channels is "
                              "empty); set TrainConfig.model to small_cnn or wrn28_2")
        self.p = p
        self.branches = nn.ModuleList(nn.Sequential(nn.Linear(c, p.hidden), nn.ReLU(inplace=True))
                                      for c in tap_channels)
        self.out = nn.Linear(p.hidden * len(tap_channels), 1)

    def forward(self, taps: list[torch.Tensor]) -> torch.Tensor:
        if len(taps) != len(self.branches):
            raise ValueError(f"expected {len(self.branches)} taps, got {len(taps)}")
        h = [b(t.flatten(2).mean(2)) for b, t in zip(self.branches, taps)]  # GAP over any spatial size
        return self.out(torch.cat(h, 1)).squeeze(1)

    def loss(self, output: torch.Tensor, sample_loss: torch.Tensor, epoch: int, epochs: int) -> torch.Tensor:
        return self.p.weight * loss_ranking_loss(output, sample_loss, self.p.margin)

    def detach_taps(self, epoch: int, epochs: int) -> bool:
        return epoch >= stop_epoch(self.p.stop_grad_fraction, epochs)


def stop_epoch(fraction: float, epochs: int) -> int:
    """First epoch (from 0) whose taps are detached: ``round(fraction x epochs)``."""
    return int(round(fraction * epochs))


@register_strategy
class LearningLossStrategy(Strategy):
    """The unlabeled samples with the highest predicted loss (no random subset)."""

    name = "learning_loss"
    description = "Learning Loss: loss-prediction module trained with the task model, highest predicted loss"
    Params = LearningLossParams
    needs = frozenset({"pred_loss"})

    def task_head(self, model: Any) -> Optional[JointHead]:
        return LossPredictionModule(model.tap_channels, self.params.ll_params())

    def score(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.asarray(batch["pred_loss"], dtype=np.float64)


rss_variant(LearningLossStrategy)  # registers "learning_loss_rss" (the original LL)


# ====================================================================== LL + Core-set
@dataclass(frozen=True)
class LLCoresetParams(LearningLossParams):
    """LL + Core-set settings: Learning Loss's, plus the size of the core-set stage.

    Attributes:
        subset_factor: core-set picks ``ceil(subset_factor x K)`` unlabeled samples (capped
            at the unlabeled pool); LL then takes the top K of them. The paper does not
            state the subset size; 2 keeps both stages meaningful (1 = pure core-set, a
            large factor tends to LL w/o RSS).
        chunk_elems: tile size of k-center's first distance pass (as ``coreset``).
    """

    subset_factor: float = 2.0
    chunk_elems: int = 1 << 22

    def validate(self) -> None:
        super().validate()
        check(self.subset_factor >= 1.0, f"ll_coreset subset_factor must be >= 1, got {self.subset_factor}")
        check(self.chunk_elems >= 1, f"ll_coreset chunk_elems must be >= 1, got {self.chunk_elems}")


@register_strategy
class LLCoresetStrategy(LearningLossStrategy):
    """LL + Core-set (DAAL paper Sec. 4.5), two stages: greedy k-center on the task
    features picks a representative subset of the unlabeled pool (labeled samples are the
    first centres, as in ``coreset``), then the K of them with the highest predicted loss
    are selected."""

    name = "ll_coreset"
    streams = False  # reads the whole pool's features
    description = "LL + Core-set: k-center greedy picks subset_factor x K samples, then the top-K predicted loss"
    Params = LLCoresetParams
    needs = frozenset({"features", "pred_loss"})

    def select(self, ctx: FitContext, k: int) -> tuple[np.ndarray, np.ndarray, float]:
        """``k`` ids: the top predicted losses within the core-set subset; scores are the
        predicted losses. The selection time covers both stages' selection proper."""
        features = ctx.features
        if hasattr(features, "materialize"):
            features = features.materialize()  # both stages read it: run the inference once
        n_unlabeled = ctx.num_unlabeled
        m = min(n_unlabeled, max(k, math.ceil(self.params.subset_factor * k)))
        _, xl, ids_u, xu = gather_features(features, ctx.num_labeled, n_unlabeled)
        t0 = time.perf_counter()
        pos, _ = k_center_greedy(xu, xl, m, device=ctx.device if ctx.device is not None else torch.device("cpu"),
                                 chunk_elems=self.params.chunk_elems)
        subset = np.sort(ids_u[pos])
        elapsed = time.perf_counter() - t0
        pred = np.full(subset.size, np.nan)
        for batch in iter_feature_batches(restrict_features(features, subset), ("sample_id", "labeled", "pred_loss")):
            rows = ~np.asarray(batch["labeled"], dtype=bool)
            at = np.searchsorted(subset, np.asarray(batch["sample_id"])[rows])
            pred[at] = np.asarray(batch["pred_loss"], dtype=np.float64)[rows]
        if np.isnan(pred).any():
            raise DataError(f"no predicted loss for sample ids {subset[np.isnan(pred)][:5].tolist()} of the "
                            f"core-set subset; the features do not match the pool state")
        t0 = time.perf_counter()
        ids, scores = topk_arrays(subset, pred, k)
        return ids, scores, elapsed + time.perf_counter() - t0


# ====================================================================== LL + RD
@dataclass(frozen=True)
class LLRDParams(LearningLossParams):
    """LL + RD settings: Learning Loss's, plus the representativeness game and the mix.

    Attributes:
        rd_weight: weight ``w`` of the representativeness score in
            ``(1 - w) x normalised predicted loss + w x representativeness``.
        rd: DAAL settings of the representativeness game (``use_udis`` must be false:
            the uncertainty half is Learning Loss's; ``confidence_weight`` must be 0: the
            game reads the task features alone).
    """

    rd_weight: float = 0.5
    rd: dict = field(default_factory=dict)

    def validate(self) -> None:
        super().validate()
        check(0.0 <= self.rd_weight <= 1.0, f"ll_rd rd_weight must be in [0, 1], got {self.rd_weight}")
        rd = self.rd_params()
        check(not rd.use_udis and rd.use_rdis, "ll_rd rd must keep use_udis false and use_rdis true")
        check(rd.confidence_weight == 0, "ll_rd rd must keep confidence_weight 0: the representativeness game "
                                         "reads the task features alone")

    def rd_params(self) -> DAALParams:
        """The DAALParams of the representativeness game (uDis off, the features alone and
        ScoreNet's score alone, unless given)."""
        return DAALParams.from_dict({"use_udis": False, "confidence_weight": 0.0, "margin_weight": 0.0,
                                     "class_balance": False, **self.rd},
                                    where="AcquisitionConfig.params.rd (ll_rd)")



@register_strategy
class LLRDStrategy(LearningLossStrategy):
    """LL + RD (DAAL paper Sec. 4.5): Learning Loss plus DAAL's representativeness discriminator, one stage.

    The paper adds "our representativeness discriminator" to LL without RSS to form a
    one-stage method; it does not spell out how the two criteria meet. Our reading: the
    representativeness half of DAAL's game (ScoreNet, VAE and rDis, with the sparsity
    terms; uDis off) is trained on the task features of the pool, which gives every
    unlabeled sample a representativeness score ``r`` in [0, 1] (the ScoreNet output,
    high when the sample summarises the unlabeled pool well). Learning Loss gives the
    uncertainty. Both are put on one scale and mixed:
    ``score = (1 - w) x (pred_loss - lo) / (hi - lo) + w x r``, with ``lo``/``hi`` the
    minimum and maximum predicted loss over the unlabeled pool (so each term spans
    [0, 1]) and ``w = rd_weight`` (default 0.5: the two criteria count equally). The
    top-K of one score are selected, with no subset stage.
    """

    name = "ll_rd"
    description = "LL + RD: predicted loss mixed with DAAL's representativeness score (rDis game), one stage"
    Params = LLRDParams
    needs = frozenset({"features", "pred_loss"})
    trains = True

    def fit(self, ctx: FitContext) -> None:
        rank, size = world()
        xl, xu = features_by_labeled(ctx.features, rank, size)
        pred = _unlabeled_column(ctx.features, "pred_loss")  # every rank reads the whole column
        self.loss_range = (float(pred.min()), float(pred.max())) if pred.size else (0.0, 1.0)
        rd = self.params.rd_params()
        ckpt = Path(ctx.run_dir) / "checkpoints" / f"cycle_{ctx.cycle:03d}" / "ll_rd.pt" if ctx.run_dir else None
        nets, self.history = train_daal(xl, xu, rd, seed=derive_seed(self.seed, self.cycle, 0x11D),
                                        device=ctx.device or torch.device("cpu"), checkpoint=ckpt)
        self.feature_dim = int(xu.shape[1])
        self.score_state = {k: v.detach().cpu() for k, v in nets.score.state_dict().items()}
        self._net = None

    def _score_net(self) -> Any:
        net = getattr(self, "_net", None)
        if net is None:
            rd = self.params.rd_params()
            net = ScoreNet(self.feature_dim, rd.score_hidden, rd.dropout)
            net.load_state_dict(self.score_state)
            self._net = net.eval()
        return net

    def score(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        lo, hi = self.loss_range
        loss = (np.asarray(batch["pred_loss"], dtype=np.float64) - lo) / max(hi - lo, 1e-12)
        rep = score_features(self._score_net(), batch["features"], normalize=self.params.rd_params().normalize)
        w = self.params.rd_weight
        return (1.0 - w) * loss + w * rep

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_net"] = None  # rebuilt once per worker process from score_state
        return state


def _unlabeled_column(features: Any, column: str) -> np.ndarray:
    """``column`` of the unlabeled rows of a Ray Dataset (or dict of arrays)."""
    if isinstance(features, Mapping):
        batches = [features]
    else:
        batches = list(features.select_columns(["labeled", column]).iter_batches(batch_size=8192,
                                                                                 batch_format="numpy"))
    if not batches:
        return np.zeros(0)
    lab = np.concatenate([np.asarray(b["labeled"], dtype=bool) for b in batches])
    col = np.concatenate([np.asarray(b[column], dtype=np.float64) for b in batches])
    return col[~lab]
