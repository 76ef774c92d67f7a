"""Training DAAL (paper Alg. 1) on task-model features, on every rank of a worker group.

Per batch ``(x_l, x_u)`` three updates, each touching only its own parameter group:

1. ``{ScoreNet, encoder}`` <- L_recon + L_prior + L_sparsity
2. ``{decoder}``           <- L_recon + L_GAN (generator side)
3. ``{uDis, rDis}``        <- maximise L_GAN

By default the three updates take their gradients from one forward pass (each group's
gradient of its own loss only, at the batch's starting weights), then step
(``updates="simultaneous"``); ``updates="sequential"`` recomputes the forward pass before
each update, as Alg. 1 reads. Each group's gradients are averaged over the ranks (the
all-reduce DDP would do) before its own Adam steps. All ranks start from the same seed,
so their weights stay identical. A checkpoint of every network and optimiser is written
after each epoch, and training resumes from it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Mapping, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import daal_ray.acquisition.daal.losses as L
from daal_ray.acquisition.daal.networks import Discriminator, FeatureVAE, ScoreNet
from daal_ray.atomic_io import atomic_write
from daal_ray.errors import DataError
from daal_ray.runtime import allreduce_grads, apply_update
from daal_ray.runtime import world as rank_and_world
from daal_ray.settings import Config, check

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DAALParams(Config):
    """DAAL settings; paper values where it states them (Adam 5e-4, batch 128, sigma 0.2),
    documented choices elsewhere, and measured departures from it where the paper's value
    leaves the score without information (each says why, with its measurement).

    Attributes:
        epochs: passes over the unlabeled features per cycle (paper: 150 on CIFAR, 100 on
            Cityscapes; the default suits small pools, raise it for large ones).
        batch_size: global batch of unlabeled (and of labeled) features, split over ranks.
        lr: Adam learning rate of every network.
        sigma: fraction selected in a batch (Eqs. 6-7).
        score_hidden, disc_hidden: the 4 hidden widths of ScoreNet and of the discriminators.
        vae_hidden: the 6 hidden widths of the encoder (mirrored by the decoder).
        latent_dim: VAE latent size.
        dropout: dropout of ScoreNet (paper: 0.4 in ScoreNet and VAE). Default 0: with 0.4
            the length loss holds the *training-mode* mean score at sigma while the
            evaluation-mode scores that select drift to a near-constant (std ~1e-7 on digits:
            the ranking is numerical noise) and carry less information (AUROC for "the model
            is wrong" 0.52 against 0.65, bench/daal_informativeness.py in BENCHMARKS.md).
        vae_dropout: dropout of the VAE's encoder and decoder. The paper puts 0.4 after each
            of their 12 hidden layers; at the training lengths measured here (up to 600
            steps) that leaves the posterior collapsed (KL ~0.1, one reconstruction for
            every sample), so the discriminators have nothing to rate; set 0.4 for the
            paper's value.
        use_udis, use_rdis: the two adversarial branches (paper Sec. 4.6 ablations).
        use_length_loss, use_dpp_loss: the two sparsity terms.
        normalize: scale features to unit L2 norm before DAAL sees them (keeps the DPP
            kernel's determinants well scaled).
        rater_adversarial: also train {ScoreNet, encoder} to fool the discriminators (the
            generator GAN term added to update 1). Alg. 1 line 14 omits it; the paper's text
            and conclusion train the rater "through the adversarial learning between the
            informativeness rater and discriminators". Default on (see ``weighted_gan``).
        weighted_gan: weigh each sample's fake term in Eq. 4 by its branch weight, ``1 - s``
            for uDis and ``s`` for rDis, in all three updates. This is how the scores reach
            the adversarial games: with the weights only scaling the encoder's input, the
            encoder can undo the scale and the scores get no consistent direction (measured
            in BENCHMARKS.md). Weighted, a sample whose uncertainty reconstruction uDis still
            tells from the labeled set gains score, and one whose summary rDis tells from the
            unlabeled originals loses it: Sec. 3.1's "multi-player competition". Both off
            (``rater_adversarial=False, weighted_gan=False``) is Alg. 1 as printed.
        gan_form: generator loss, ``non_saturating`` (default) or Eq. 4's ``saturating`` form.
        udis_fake: what uDis tells from the labeled features: the uncertainty branch's
            ``reconstruction`` (paper) or the unlabeled ``features`` themselves (default). A
            reconstruction is told from a real feature by being a reconstruction, whatever
            the sample: uDis then rates every sample alike and the weighted game hands the
            scores no uncertainty signal (on digits the score ranked the model's errors
            *below* its correct predictions, AUROC 0.52 and Spearman -0.06 with the loss).
            Judging the unlabeled features against the labeled ones (VAAL's
            discriminator, on features) scores a sample by how unlike the labeled set it
            is; the reconstructions still train the VAE through Eq. 3's feature matching.
        updates: ``simultaneous`` (default): the three updates of a batch take their
            gradients from one forward pass at the batch's starting weights, then step;
            ``sequential``: each update recomputes the forward pass after the previous one
            stepped (Alg. 1 read literally). Same selection quality, 1.5x fewer
            milliseconds per step (BENCHMARKS.md).
        dpp_jitter: added to the DPP subset kernel's diagonal.
        dpp_per_item: divide the DPP loss by the subset size ``sigma * n``. Eq. 7's log-ratio
            is a sum over the subset (~120 per batch of 128 at sigma 0.2, against ~1 for the
            other terms, which are batch means), so unscaled it decides the scores alone by
            sharpening whatever ranking the networks start with (BENCHMARKS.md).
        w_recon, w_prior, w_gan, w_length, w_dpp: loss weights (paper: all 1). Defaults
            differ in two: ``w_gan`` 5, so the adversarial judgement (not the reconstruction
            terms) orders the scores (1: AUROC 0.57, Spearman with the loss +0.15; 5: 0.65,
            +0.32), and ``w_dpp`` 0.1 (the DPP term splits the batch into a high- and a
            low-score half by whatever ranking the networks start with: at 1 the score's
            AUROC is 0.51). Measured in BENCHMARKS.md, each against the defaults with that
            one setting at the paper's value.
        w_feature_recon: weight of a Gaussian log-likelihood of ``x_u`` under each branch's
            reconstruction (per-dimension variance 1/d), added to Eq. 3's feature matching
            (paper: none; 0 turns it off). Feature matching alone gives the encoder no stable target while
            the discriminators move: the posterior collapses to the prior, every sample
            gets the same reconstruction and the discriminators see no difference between
            samples to rate (measured in BENCHMARKS.md).
        confidence_weight: DAAL's input is the task model's feature (unit norm with
            ``normalize``) followed by this weight times the model's class probabilities
            sorted in decreasing order: its confidence profile, which does not depend on
            which class is predicted. 0 gives the paper's input, the features alone. The
            features carry the model's uncertainty only weakly, so uDis's "unlike the
            labeled set" found the model's errors little better than chance: on digits'
            first cycle (5 seeds, ``bench/daal_informativeness.py``) the score's AUROC for
            "the model is wrong" was 0.64 with the features alone and 0.91 with the profile
            at weight 1 (0.94 at 3). The labeled samples are the ones the model was trained
            on, so their profiles are confident; uDis then tells an unlabeled sample from
            them by its uncertainty too, which is what the paper's uncertainty branch is for
            (task-aware inputs, as TA-VAAL gives VAAL its loss predictions). Weight 1 puts
            the profile (norm at most 1) at the features' scale; the whole input is then
            scaled to unit norm with ``normalize``, as the features were before.
        profile_size: the profile keeps the largest ``profile_size`` probabilities (all of
            them with fewer classes), so DAAL's input grows by at most this many columns
            however many classes the task has (1,000 classes would otherwise add 1,000
            columns to every network's first layer and to the fit's sample); the tail of a
            sorted profile is near zero and carries little.
        margin_weight: the selection score is ``(1 - w) F_daal(s) + w F_margin(1 - margin)``,
            each term the empirical CDF of its quantity over the fit's unlabeled sample (a
            rank in [0, 1], fixed after the fit, so scoring stays one pass per batch); 0 (the
            paper) selects by ScoreNet's score ``s`` alone, 1 by the margin alone. The margin
            is ``p_(1) - p_(2)`` of the task model's softmax. 0.8 by default: ScoreNet's
            score alone trailed entropy and margin on digits and on the natural-image check
            (5 paired seeds each, BENCHMARKS.md); with 0.8 and ``class_balance`` it is level
            with them or ahead (digits; two disjoint CIFAR-10 splits, 10 paired seeds).
        class_balance: select by each sample's rank (the empirical CDF of its score, fused
            with the margin if ``margin_weight``) among the fit sample's unlabeled samples
            of the same predicted class, instead of by the score itself: the top-K then
            takes about the same top share of every predicted class, in proportion to the
            class's share of the unlabeled pool, instead of one dense region of one class.
            On by default (ScoreNet's own batches were the least class-balanced of any
            strategy's); ``daal_paper`` turns both off.
        max_fit_unlabeled: most unlabeled features the fit reads (0 = all): every labeled
            feature plus a uniform sample of this many unlabeled ones, the smallest
            ``hash_uniform(sample_id)`` values (deterministic per seed and cycle, streamed
            in O(max_fit_unlabeled x d) memory; :func:`daal_ray.sampling.fit_features`).
            100,000 by default: 51 MB of 128-d features, and one epoch (with the labeled
            ones) took 66 s on one CPU thread in the 10-million-sample run of BENCHMARKS.md,
            where the whole pool would be 5 GB on every rank. Pools with fewer unlabeled samples are read whole, exactly as before.
        checkpoint_every_s: the fit's resume point (every network and optimiser) is written
            after an epoch once this many seconds have passed since the last one, and after
            the last epoch; 0 writes one after every epoch. A crash loses at most this much
            of the fit (on digits an epoch is a quarter of a second and a write, with its
            fsync, cost about as much).
    """

    epochs: int = 30
    batch_size: int = 128
    lr: float = 5e-4
    sigma: float = 0.2
    score_hidden: tuple[int, ...] = (256, 128, 64, 32)
    disc_hidden: tuple[int, ...] = (256, 128, 64, 32)
    vae_hidden: tuple[int, ...] = (256, 256, 128, 128, 64, 64)
    latent_dim: int = 32
    dropout: float = 0.0
    vae_dropout: float = 0.0
    use_udis: bool = True
    use_rdis: bool = True
    use_length_loss: bool = True
    use_dpp_loss: bool = True
    normalize: bool = True
    rater_adversarial: bool = True
    weighted_gan: bool = True
    gan_form: Literal["non_saturating", "saturating"] = "non_saturating"
    udis_fake: Literal["reconstruction", "features"] = "features"
    updates: Literal["simultaneous", "sequential"] = "simultaneous"
    dpp_jitter: float = 1e-4
    dpp_per_item: bool = True
    w_recon: float = 1.0
    w_prior: float = 1.0
    w_gan: float = 5.0
    w_length: float = 1.0
    w_dpp: float = 0.1
    w_feature_recon: float = 1.0
    confidence_weight: float = 1.0
    profile_size: int = 16
    margin_weight: float = 0.8
    class_balance: bool = True
    max_fit_unlabeled: int = 100_000
    checkpoint_every_s: float = 30.0

    RUN_LENGTH_PARAMS: ClassVar[frozenset[str]] = frozenset({"checkpoint_every_s"})

    def validate(self) -> None:
        check(self.epochs >= 1, f"daal epochs must be >= 1, got {self.epochs}")
        check(self.batch_size >= 2, f"daal batch_size must be >= 2, got {self.batch_size}")
        check(self.lr > 0, "daal lr must be > 0")
        check(0.0 < self.sigma < 1.0, f"daal sigma must be in (0, 1), got {self.sigma}")
        check(0.0 <= self.dropout < 1.0, f"daal dropout must be in [0, 1), got {self.dropout}")
        check(0.0 <= self.vae_dropout < 1.0, f"daal vae_dropout must be in [0, 1), got {self.vae_dropout}")
        check(self.use_udis or self.use_rdis, "daal needs at least one discriminator (use_udis or use_rdis)")
        check(len(self.score_hidden) == 4, "daal score_hidden takes 4 widths (ScoreNet is a 5-layer MLP)")
        check(len(self.disc_hidden) == 4, "daal disc_hidden takes 4 widths (the discriminators are 5-layer MLPs)")
        check(len(self.vae_hidden) == 6, "daal vae_hidden takes 6 widths (encoder and decoder are 7-layer MLPs)")
        check(self.latent_dim >= 1, "daal latent_dim must be >= 1")
        check(math.isfinite(self.confidence_weight) and self.confidence_weight >= 0,
              f"daal confidence_weight must be a finite number >= 0 (0 = the features alone), "
              f"got {self.confidence_weight}")
        check(self.profile_size >= 1, f"daal profile_size must be >= 1, got {self.profile_size}")
        check(0.0 <= self.margin_weight <= 1.0, f"daal margin_weight must be in [0, 1], got {self.margin_weight}")
        check(self.max_fit_unlabeled >= 0, f"daal max_fit_unlabeled must be >= 0 (0 = all), got {self.max_fit_unlabeled}")
        check(self.checkpoint_every_s >= 0, f"daal checkpoint_every_s must be >= 0, got {self.checkpoint_every_s}")


@dataclass(frozen=True)
class DAALPaperParams(DAALParams):
    """DAAL's settings as the paper prints them (strategy ``daal_paper``): the defaults of
    :class:`DAALParams` where the paper states a value and the project kept it (Adam 5e-4,
    batch 128, sigma 0.2, all loss weights 1 but the departures below), and the paper's
    value wherever the project's default departs from it:

    * input: the task model's features alone (``confidence_weight=0``), not scaled to unit
      norm (``normalize=False``);
    * dropout 0.4 after every MLP layer of ScoreNet and of the VAE (``dropout``,
      ``vae_dropout``);
    * Alg. 1's three updates in order, each recomputing the forward pass
      (``updates="sequential"``); the rater trained by L_recon + L_prior + L_sparsity only
      (``rater_adversarial=False``); unweighted fakes in Eq. 4 (``weighted_gan=False``), in
      its saturating form (``gan_form="saturating"``);
    * uDis tells the labeled features from the uncertainty branch's reconstructions
      (``udis_fake="reconstruction"``);
    * Eq. 3's feature matching alone (``w_feature_recon=0``), Eq. 7's DPP term summed over
      the subset (``dpp_per_item=False``), ``w_gan`` and ``w_dpp`` 1;
    * the top-K of ScoreNet's score alone (``margin_weight=0``, ``class_balance=False``).

    Where the paper is silent the project's choices stay (MLP widths, latent size, the DPP
    jitter, the sigmoid score, ``max_fit_unlabeled``, which reads every unlabeled feature
    of pools up to 100,000). Selection is the one-stage top-K, as for ``daal``.
    """

    dropout: float = 0.4
    vae_dropout: float = 0.4
    normalize: bool = False
    rater_adversarial: bool = False
    weighted_gan: bool = False
    gan_form: Literal["non_saturating", "saturating"] = "saturating"
    udis_fake: Literal["reconstruction", "features"] = "reconstruction"
    updates: Literal["simultaneous", "sequential"] = "sequential"
    dpp_per_item: bool = False
    w_gan: float = 1.0
    w_dpp: float = 1.0
    w_feature_recon: float = 0.0
    confidence_weight: float = 0.0
    margin_weight: float = 0.0
    class_balance: bool = False


class DAALNets(nn.Module):
    """ScoreNet, the VAE and the two discriminators, with their three parameter groups."""

    def __init__(self, feature_dim: int, p: DAALParams) -> None:
        super().__init__()
        self.score = ScoreNet(feature_dim, p.score_hidden, p.dropout)
        self.vae = FeatureVAE(feature_dim, p.vae_hidden, p.latent_dim, p.vae_dropout)
        self.udis = Discriminator(feature_dim, p.disc_hidden)
        self.rdis = Discriminator(feature_dim, p.disc_hidden)

    def groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "rater": list(self.score.parameters()) + list(self.vae.encoder.parameters()),
            "decoder": list(self.vae.decoder.parameters()),
            "discriminators": list(self.udis.parameters()) + list(self.rdis.parameters()),
        }


def normalize_features(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=1, eps=1e-8)


# How to run DAAL on a pool without the model's probabilities (both errors that need it say so).
FEATURES_ALONE_HINT = "give daal confidence_weight=0, margin_weight=0 and class_balance=false to read the features alone"


def input_columns(p: DAALParams) -> tuple[str, ...]:
    """The inference-output columns DAAL reads: its input (:func:`daal_inputs`) and, with
    ``margin_weight`` or ``class_balance``, the probabilities for the margin and the class."""
    uses_probs = p.confidence_weight > 0 or p.margin_weight > 0 or p.class_balance
    return ("features", "probs") if uses_probs else ("features",)


# Points of the empirical CDFs the fused score maps each term through (fit-time quantiles).
CDF_POINTS = 1025


def cdf_knots(values: np.ndarray) -> np.ndarray:
    """Quantiles of ``values`` at :data:`CDF_POINTS` evenly spaced levels: the knots of its
    empirical CDF (:func:`empirical_cdf`)."""
    return np.quantile(np.asarray(values, dtype=np.float64), np.linspace(0.0, 1.0, CDF_POINTS))


def empirical_cdf(knots: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The share of the fit sample at or below each of ``values`` (linear between knots), in [0, 1]."""
    levels = np.linspace(0.0, 1.0, knots.size)
    # Flat runs of knots (many equal values) take the run's top level, as a CDF does.
    uniq, last = np.unique(knots[::-1], return_index=True)
    return np.interp(np.asarray(values, dtype=np.float64), uniq, levels[::-1][last], left=0.0, right=1.0)


def daal_inputs(batch: Mapping[str, np.ndarray], p: DAALParams) -> np.ndarray:
    """DAAL's input rows ``[n, d (+ min(C, profile_size))]`` from a batch of the pool
    predictor's output: the features, and with ``confidence_weight`` the features at unit
    norm followed by the weighted largest class probabilities, in decreasing order
    (``DAALParams.confidence_weight``, ``profile_size``).

    Raises:
        DataError: the batch has no ``probs`` column while ``confidence_weight`` needs it.
    """
    x = np.asarray(batch["features"], dtype=np.float32)
    x = x.reshape(x.shape[0], -1)
    if p.confidence_weight <= 0:
        return x
    if "probs" not in batch:
        raise DataError(f"DAAL's input needs the task model's class probabilities (a 'probs' column) with "
                        f"confidence_weight > 0; {FEATURES_ALONE_HINT}")
    probs = np.asarray(batch["probs"], dtype=np.float32)
    profile = -np.sort(-probs.reshape(probs.shape[0], -1), axis=1)[:, :p.profile_size]
    if p.normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)
    return np.concatenate([x, np.float32(p.confidence_weight) * profile], axis=1)


@dataclass
class StepLosses:
    recon: float
    prior: float
    length: float
    dpp: float
    gan: float
    mean_score: float

    def __str__(self) -> str:
        return ", ".join(f"{k} {getattr(self, k):.4g}" for k in self.__dataclass_fields__)


def optimizers(nets: DAALNets, p: DAALParams, device: torch.device) -> dict[str, torch.optim.Optimizer]:
    """One Adam per parameter group. On CPU and CUDA the fused kernel (one pass over each
    group's parameters, instead of a dozen small ops per tensor): the same update up to
    rounding, and 10-12% less time per DAAL step on CPU (BENCHMARKS.md)."""
    fused = device.type in ("cpu", "cuda")
    return {k: torch.optim.Adam(v, lr=p.lr, fused=fused) for k, v in nets.groups().items()}


def _rater_forward(nets: DAALNets, x_u: torch.Tensor):
    """ScoreNet -> weighted branches -> encoder -> decoder (Alg. 1 lines 10-12). Both
    branches go through the VAE as one batch (half the small-layer calls)."""
    s = nets.score(x_u)
    n = x_u.shape[0]
    unc_in = (1.0 - s).unsqueeze(1) * x_u  # uncertainty branch, weight 1 - s
    rep_in = s.unsqueeze(1) * x_u  # representativeness branch, weight s
    mu, lv = nets.vae.encode(torch.cat([unc_in, rep_in]))
    recon = nets.vae.decode(nets.vae.reparameterize(mu, lv))
    return s, (mu[:n], lv[:n], mu[n:], lv[n:]), recon[:n], recon[n:]


def _branch_weights(p: DAALParams, s: torch.Tensor, detach: bool) -> Optional[list[torch.Tensor]]:
    """Per-sample weights of each enabled discriminator's fakes (``weighted_gan``), or None."""
    if not p.weighted_gan:
        return None
    s = s.detach() if detach else s
    return ([1.0 - s] if p.use_udis else []) + ([s] if p.use_rdis else [])


def _adversarial_terms(nets: DAALNets, p: DAALParams, x_l, x_u, x_hat, x_tilde):
    """Discriminator outputs on (real, fake) per enabled branch, and hidden activations.
    Each discriminator sees its inputs as one batch."""
    real_logits, fake_logits, real_hidden, fake_hidden = [], [], [], []
    if p.use_udis:
        nl, nu = x_l.shape[0], x_u.shape[0]
        logits, hidden = nets.udis(torch.cat([x_l, x_u, x_hat]))
        lr_, lu, lf = logits[:nl], logits[nl:nl + nu], logits[nl + nu:]
        hu, hf = hidden[nl:nl + nu], hidden[nl + nu:]
        lf = lu if p.udis_fake == "features" else lf
        real_logits.append(lr_), fake_logits.append(lf), real_hidden.append(hu), fake_hidden.append(hf)
    if p.use_rdis:
        nu = x_u.shape[0]
        logits, hidden = nets.rdis(torch.cat([x_u, x_tilde]))
        real_logits.append(logits[:nu]), fake_logits.append(logits[nu:])
        real_hidden.append(hidden[:nu]), fake_hidden.append(hidden[nu:])
    return real_logits, fake_logits, real_hidden, fake_hidden


def _recon(p: DAALParams, real_hidden, fake_hidden, x_u, x_hat, x_tilde) -> torch.Tensor:
    """Eq. 3's feature matching plus, if ``w_feature_recon``, the plain squared error of the
    enabled branches' reconstructions."""
    loss = L.recon_loss(real_hidden, fake_hidden)
    if p.w_feature_recon:
        fakes = ([x_hat] if p.use_udis else []) + ([x_tilde] if p.use_rdis else [])
        # A Gaussian likelihood with per-dimension variance 1/d: the mean square of a
        # unit-norm feature's coordinates, so the term's scale does not shrink with d.
        d = x_u.shape[1]
        loss = loss + p.w_feature_recon * sum(0.5 * d * (x_u - f).pow(2).sum(dim=1).mean() for f in fakes)
    return loss


def _rater_loss(p: DAALParams, recon: torch.Tensor, s: torch.Tensor, moments, x_u: torch.Tensor):
    """Update 1's non-adversarial loss, L_recon + L_prior + L_sparsity, with its parts
    ``(loss, prior, length, dpp)``."""
    mu_h, lv_h, mu_t, lv_t = moments
    prior = L.prior_loss(mu_h, lv_h) + L.prior_loss(mu_t, lv_t)
    length = L.length_loss(s, p.sigma) if p.use_length_loss else s.new_zeros(())
    dpp = L.dpp_loss(s, x_u, p.sigma, p.dpp_jitter) if p.use_dpp_loss else s.new_zeros(())
    if p.dpp_per_item:
        dpp = dpp / L.subset_size(s.shape[0], p.sigma)
    return p.w_recon * recon + p.w_prior * prior + p.w_length * length + p.w_dpp * dpp, prior, length, dpp


def _judged(p: DAALParams, fake_logits: list[torch.Tensor]) -> list[torch.Tensor]:
    """The fake logits as the rater's adversarial term reads them. Weighted, the rater plays
    through its weights only: the discriminators judge the reconstructions as they stand
    (constants), and the scores move weight onto the samples that fool each one. Letting
    this term into the encoder too would let it fool uDis by mapping every sample onto the
    labeled set, which erases the signal."""
    return [f.detach() for f in fake_logits] if p.weighted_gan else fake_logits


def _step_grads(loss: torch.Tensor, params: list[nn.Parameter], retain: bool) -> None:
    """Set ``params``' gradients to those of ``loss`` (zeros where it does not reach)."""
    grads = torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True)
    for param, g in zip(params, grads):
        param.grad = g if g is not None else torch.zeros_like(param)


def _simultaneous_step(nets: DAALNets, opts: dict[str, torch.optim.Optimizer], p: DAALParams, x_l: torch.Tensor,
                       x_u: torch.Tensor) -> StepLosses:
    """Alg. 1's three updates from ONE forward pass: each group's gradient of its own loss
    at the batch's starting weights, then the three optimiser steps (the simultaneous
    gradient step of most GAN training, instead of recomputing the forward pass between
    updates)."""
    groups = nets.groups()
    saturating = p.gan_form == "saturating"
    s, moments, x_hat, x_tilde = _rater_forward(nets, x_u)
    real_logits, fake_logits, rh, fh = _adversarial_terms(nets, p, x_l, x_u, x_hat, x_tilde)
    recon = _recon(p, rh, fh, x_u, x_hat, x_tilde)
    rater, prior, length, dpp = _rater_loss(p, recon, s, moments, x_u)
    if p.rater_adversarial:
        rater = rater + p.w_gan * L.generator_gan_loss(_judged(p, fake_logits), saturating=saturating,
                                                       fake_weights=_branch_weights(p, s, detach=False))
    decoder = p.w_recon * recon + p.w_gan * L.generator_gan_loss(
        fake_logits, saturating=saturating, fake_weights=_branch_weights(p, s, detach=True))
    gan = L.gan_loss(real_logits, fake_logits, fake_weights=_branch_weights(p, s, detach=True))
    _step_grads(rater, groups["rater"], retain=True)
    _step_grads(decoder, groups["decoder"], retain=True)
    _step_grads(-p.w_gan * gan, groups["discriminators"], retain=False)
    for name in ("rater", "decoder", "discriminators"):
        allreduce_grads(groups[name])
        opts[name].step()
    return StepLosses(*(float(t.detach()) for t in (recon, prior, length, dpp, gan, s.mean())))


def daal_step(nets: DAALNets, opts: dict[str, torch.optim.Optimizer], p: DAALParams, x_l: torch.Tensor,
              x_u: torch.Tensor) -> StepLosses:
    """One batch of Alg. 1: the three updates, in order (``p.updates``: simultaneous from
    one forward pass, or each recomputing it as printed)."""
    if p.updates == "simultaneous":
        return _simultaneous_step(nets, opts, p, x_l, x_u)
    groups = nets.groups()
    saturating = p.gan_form == "saturating"

    # 1. {ScoreNet, encoder} <- L_recon + L_prior + L_sparsity
    s, moments, x_hat, x_tilde = _rater_forward(nets, x_u)
    _, fake_logits, rh, fh = _adversarial_terms(nets, p, x_l, x_u, x_hat, x_tilde)
    recon = _recon(p, rh, fh, x_u, x_hat, x_tilde)
    rater, prior, length, dpp = _rater_loss(p, recon, s, moments, x_u)
    if p.rater_adversarial:
        rater = rater + p.w_gan * L.generator_gan_loss(_judged(p, fake_logits), saturating=saturating,
                                                       fake_weights=_branch_weights(p, s, detach=False))
    apply_update(rater, groups["rater"], opts["rater"])

    # 2. {decoder} <- L_recon + L_GAN (the decoder tries to fool both discriminators)
    s, _, x_hat, x_tilde = _rater_forward(nets, x_u)
    _, fake_logits, rh, fh = _adversarial_terms(nets, p, x_l, x_u, x_hat, x_tilde)
    gen = L.generator_gan_loss(fake_logits, saturating=saturating, fake_weights=_branch_weights(p, s, detach=True))
    apply_update(p.w_recon * _recon(p, rh, fh, x_u, x_hat, x_tilde) + p.w_gan * gen, groups["decoder"], opts["decoder"])

    # 3. {uDis, rDis} <- maximise L_GAN on real vs the (fixed) reconstructions
    with torch.no_grad():
        s, _, x_hat, x_tilde = _rater_forward(nets, x_u)
    real_logits, fake_logits, _, _ = _adversarial_terms(nets, p, x_l, x_u, x_hat, x_tilde)
    gan = L.gan_loss(real_logits, fake_logits, fake_weights=_branch_weights(p, s, detach=True))
    apply_update(-p.w_gan * gan, groups["discriminators"], opts["discriminators"])

    return StepLosses(*(float(t.detach()) for t in (recon, prior, length, dpp, gan, s.mean())))


def train_daal(x_labeled: np.ndarray, x_unlabeled: np.ndarray, p: DAALParams, *, seed: int,
               device: torch.device = torch.device("cpu"), checkpoint: Optional[Path] = None,
               log_every: int = 0) -> tuple[DAALNets, list[StepLosses]]:
    """Train DAAL on this rank's shard of labeled and unlabeled features.

    Every rank must pass the same global sizes' worth of work: the number of steps per
    epoch is derived from the global unlabeled count, which the caller makes equal by
    giving each rank a strided shard. Returns the nets and the per-epoch mean losses.

    Args:
        checkpoint: file to resume from and write after every epoch (rank 0 writes).
    """
    rank, world = rank_and_world()
    if x_unlabeled.shape[0] == 0 or x_labeled.shape[0] == 0:
        raise ValueError("DAAL needs labeled and unlabeled features on every rank")
    torch.manual_seed(seed)
    feature_dim = x_unlabeled.shape[1]
    nets = DAALNets(feature_dim, p).to(device)
    opts = optimizers(nets, p, device)
    xl = torch.as_tensor(x_labeled, dtype=torch.float32, device=device)
    xu = torch.as_tensor(x_unlabeled, dtype=torch.float32, device=device)
    if p.normalize:
        xl, xu = normalize_features(xl), normalize_features(xu)
    per_rank = max(2, p.batch_size // world)
    global_u = torch.tensor([xu.shape[0]], device=device)
    if world > 1:
        dist.all_reduce(global_u)
    steps = max(1, math.ceil(int(global_u.item()) / (per_rank * world)))
    start_epoch, history = 0, []
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        nets.load_state_dict(state["nets"])
        for k, o in opts.items():
            o.load_state_dict(state["opts"][k])
        start_epoch = int(state["epoch"])
        logger.info("DAAL: resumed from %s at epoch %d", checkpoint, start_epoch)
    rng = np.random.default_rng(seed + 7919 * rank + start_epoch)
    last_save = time.monotonic()
    nets.train()
    for epoch in range(start_epoch, p.epochs):
        order = rng.permutation(xu.shape[0])
        order = np.resize(order, steps * per_rank)  # wraps around so every rank takes `steps` batches
        epoch_losses = []
        for b in range(steps):
            u_idx = torch.as_tensor(order[b * per_rank : (b + 1) * per_rank], device=device)
            l_idx = torch.as_tensor(rng.integers(0, xl.shape[0], size=per_rank), device=device)
            epoch_losses.append(daal_step(nets, opts, p, xl[l_idx], xu[u_idx]))
        mean = StepLosses(*[float(np.mean([getattr(s, f) for s in epoch_losses])) for f in StepLosses.__dataclass_fields__])
        history.append(mean)
        if log_every and (epoch + 1) % log_every == 0 and rank == 0:
            logger.debug("DAAL epoch %d/%d: %s", epoch + 1, p.epochs, mean)
        due = time.monotonic() - last_save >= p.checkpoint_every_s or epoch + 1 == p.epochs
        if checkpoint is not None and rank == 0 and due:
            save_state(checkpoint, {"nets": nets.state_dict(), "opts": {k: o.state_dict() for k, o in opts.items()},
                               "epoch": epoch + 1})
            last_save = time.monotonic()
    nets.eval()
    return nets, history


@torch.inference_mode()
def score_features(score_net: ScoreNet, features: np.ndarray, normalize: bool = True) -> np.ndarray:
    """ScoreNet scores (dropout off) of ``features [n, d]``."""
    score_net.eval()
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    if normalize:
        x = normalize_features(x)
    return score_net(x).double().numpy()


def save_state(path: Path, state: dict) -> None:
    """``torch.save`` of ``state`` to ``path``, atomically and durably (the fit's resume point)."""
    with atomic_write(path) as fh:
        torch.save(state, fh)
