"""VAAL: Variational Adversarial Active Learning (Sinha et al. 2019), strategies ``vaal``
and ``vaal_tf``.

A VAE and a discriminator play a two-player game: the discriminator learns to tell the
latent codes (means) of labeled samples from those of unlabeled ones, while the VAE learns
to reconstruct both and to fool the discriminator into calling every code "labeled". The
score of an unlabeled sample is the discriminator's probability that it is *unlabeled*;
the highest are picked.

- ``vaal`` plays the game on images (a convolutional VAE), as in the original paper. The
  VAE reads the images through the experiment's dataset, so no inference pass is needed.
- ``vaal_tf`` plays it on the task model's penultimate features (an MLP VAE): the DAAL
  paper's "VAAL + TF" (Sec. 4.5).
- ``vaal_rss`` and ``vaal_tf_rss`` rank only a random subset of ``rss_subset`` (default
  10,000) unlabeled samples (:mod:`daal_ray.acquisition.rss`); the game itself still
  trains on the whole pool.

Both train in ``fit`` on every rank of the experiment's worker group: each rank takes a
strided shard of the labeled and unlabeled samples, gradients are averaged over ranks
(the all-reduce DDP would do) and every rank starts from the same seed, so the weights stay
identical on all ranks. Scoring runs in Ray Data workers from the trained state_dicts.

Choices where the paper is silent or the official code differs from the paper:

- Loss: the standard per-sample ELBO, summed squared error over pixels (or features) plus
  ``beta`` x KL summed over latent dimensions, both averaged over the batch. The official
  code adds a per-element mean squared error to a KL summed over the whole batch, which
  makes the effective ``beta`` grow with the batch size.
- Image size: the conv VAE halves the image ``len(conv_widths)`` times; images are resized
  (bilinear) to ``image_size`` or, when 0, to their native side rounded up to a multiple
  of ``2 ** len(conv_widths)`` (digits 8x8 stay 8x8 and end at 1x1; CIFAR 32x32 ends at 4x4).
- Widths: smaller than the official (128..1024 channels) so that a cycle on CPU stays
  quick; the latent size (32), Adam 5e-4, two VAE steps per discriminator step, beta 1 and
  adversary weight 1 are the official defaults.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from daal_ray.acquisition.base import FitContext, Strategy, register_strategy
from daal_ray.acquisition.daal import features_by_labeled
from daal_ray.acquisition.rss import rss_variant
from daal_ray.data import open_dataset
from daal_ray.runtime import apply_update, derive_seed, world
from daal_ray.settings import Config, check

logger = logging.getLogger(__name__)

__all__ = ["ConvVAE", "LatentDiscriminator", "MLPVAE", "VAALParams", "VAALImageStrategy", "VAALFeatureStrategy",
           "train_vaal", "unlabeled_probability"]


@dataclass(frozen=True)
class VAALParams(Config):
    """VAAL settings (official defaults where stated: Adam 5e-4, latent 32, beta 1,
    adversary weight 1, two VAE steps per discriminator step).

    Attributes:
        epochs: passes over the unlabeled samples per cycle (the official code trains
            for a fixed number of iterations; small pools need few passes).
        batch_size: global batch of unlabeled (and of labeled) samples, split over ranks.
        lr: Adam learning rate of the VAE and the discriminator.
        latent_dim: size of the latent code the discriminator sees.
        beta: weight of the KL term.
        adversary_weight: weight of the VAE's "fool the discriminator" term.
        vae_steps, disc_steps: updates of the VAE, then of the discriminator, per batch
            (all on the same batch; the official code draws a fresh batch for each).
        disc_hidden: hidden widths of the discriminator MLP (official: 512, 512).
        conv_widths: channels of the image VAE's stride-2 conv layers (``vaal``).
        image_size: side the images are resized to (``vaal``); 0 = the native side
            rounded up to a multiple of ``2 ** len(conv_widths)``.
        mlp_hidden: hidden widths of the feature VAE's encoder, mirrored by its decoder
            (``vaal_tf``).
        normalize: scale features to unit L2 norm first (``vaal_tf``; as DAAL does).
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 5e-4
    latent_dim: int = 32
    beta: float = 1.0
    adversary_weight: float = 1.0
    vae_steps: int = 2
    disc_steps: int = 1
    disc_hidden: tuple[int, ...] = (512, 512)
    conv_widths: tuple[int, ...] = (32, 64, 128)
    image_size: int = 0
    mlp_hidden: tuple[int, ...] = (256, 128)
    normalize: bool = True

    def validate(self) -> None:
        check(self.epochs >= 1, f"vaal epochs must be >= 1, got {self.epochs}")
        check(self.batch_size >= 2, f"vaal batch_size must be >= 2, got {self.batch_size}")
        check(self.lr > 0, "vaal lr must be > 0")
        check(self.latent_dim >= 1, "vaal latent_dim must be >= 1")
        check(self.beta >= 0 and self.adversary_weight >= 0, "vaal beta and adversary_weight must be >= 0")
        check(self.vae_steps >= 1 and self.disc_steps >= 1, "vaal vae_steps and disc_steps must be >= 1")
        check(len(self.conv_widths) >= 1 and all(w >= 1 for w in self.conv_widths),
               "vaal conv_widths takes one or more positive channel counts")
        check(all(w >= 1 for w in self.disc_hidden + self.mlp_hidden), "vaal hidden widths must be positive")
        step = 2 ** len(self.conv_widths)
        check(self.image_size == 0 or self.image_size % step == 0,
               f"vaal image_size must be 0 or a multiple of 2 ** len(conv_widths) = {step}, got {self.image_size}")


# ====================================================================== networks
def kl_to_prior(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per sample ``[n]``."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)


class _VAE(nn.Module):
    """Shared reparameterisation and forward of the two VAEs."""

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(reconstruction, mu, logvar)``; sampled ``z`` in training, ``mu`` in eval."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return self.decode(z), mu, logvar


class ConvVAE(_VAE):
    """Convolutional VAE for ``[n, C, S, S]`` images, ``S`` a multiple of ``2 ** len(widths)``.

    Encoder: stride-2 4x4 convs (BN, ReLU) then linear layers to the latent mean and
    log-variance; the decoder mirrors it with transposed convs.
    """

    def __init__(self, in_channels: int, image_size: int, widths: Sequence[int] = (32, 64, 128),
                 latent_dim: int = 32) -> None:
        super().__init__()
        step = 2 ** len(widths)
        if image_size % step:
            raise ValueError(f"ConvVAE image_size {image_size} must be a multiple of {step}")
        self.image_size, self.side = image_size, image_size // step
        enc: list[nn.Module] = []
        c = in_channels
        for w in widths:
            enc += [nn.Conv2d(c, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        flat = c * self.side * self.side
        self.fc_mu, self.fc_logvar = nn.Linear(flat, latent_dim), nn.Linear(flat, latent_dim)
        self.fc_dec = nn.Linear(latent_dim, flat)
        self.top = c
        dec: list[nn.Module] = []
        for w in reversed(widths[:-1]):
            dec += [nn.ConvTranspose2d(c, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        dec.append(nn.ConvTranspose2d(c, in_channels, 4, 2, 1))
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_logvar(h).clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.fc_dec(z).view(-1, self.top, self.side, self.side))


def _mlp(widths: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class MLPVAE(_VAE):
    """VAE over feature vectors ``[n, d]`` (VAAL + TF)."""

    def __init__(self, feature_dim: int, hidden: Sequence[int] = (256, 128), latent_dim: int = 32) -> None:
        super().__init__()
        self.encoder = _mlp([feature_dim, *hidden, 2 * latent_dim])
        self.decoder = _mlp([latent_dim, *reversed(hidden), feature_dim])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


class LatentDiscriminator(nn.Module):
    """MLP on latent means; ``forward`` returns the logit of "labeled" ``[n]``."""

    def __init__(self, latent_dim: int = 32, hidden: Sequence[int] = (512, 512)) -> None:
        super().__init__()
        self.net = _mlp([latent_dim, *hidden, 1])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(1)


# ====================================================================== the game
@dataclass
class VAALLosses:
    """Per-epoch mean losses."""

    recon: float
    kl: float
    adversarial: float
    discriminator: float


def vaal_step(vae: _VAE, dis: LatentDiscriminator, opts: tuple[torch.optim.Optimizer, torch.optim.Optimizer],
              p: VAALParams, x_l: torch.Tensor, x_u: torch.Tensor) -> VAALLosses:
    """One batch: ``p.vae_steps`` VAE updates, then ``p.disc_steps`` discriminator updates."""
    opt_vae, opt_dis = opts
    vae_params, dis_params = list(vae.parameters()), list(dis.parameters())
    n_l = x_l.shape[0]
    x = torch.cat([x_l, x_u])
    for _ in range(p.vae_steps):
        recon, mu, logvar = vae(x)
        rec = (recon - x).pow(2).flatten(1).sum(1).mean()
        kl = kl_to_prior(mu, logvar).mean()
        logits = dis(mu)
        # The VAE wins when the discriminator calls labeled and unlabeled codes alike "labeled".
        adv = (F.binary_cross_entropy_with_logits(logits[:n_l], torch.ones_like(logits[:n_l]))
               + F.binary_cross_entropy_with_logits(logits[n_l:], torch.ones_like(logits[n_l:])))
        apply_update(rec + p.beta * kl + p.adversary_weight * adv, vae_params, opt_vae)
    with torch.no_grad():
        mu = vae.encode(x)[0]
    for _ in range(p.disc_steps):
        logits = dis(mu)
        d_loss = (F.binary_cross_entropy_with_logits(logits[:n_l], torch.ones_like(logits[:n_l]))
                  + F.binary_cross_entropy_with_logits(logits[n_l:], torch.zeros_like(logits[n_l:])))
        apply_update(d_loss, dis_params, opt_dis)
    return VAALLosses(float(rec.detach()), float(kl.detach()), float(adv.detach()), float(d_loss.detach()))


Fetch = Callable[[np.ndarray], torch.Tensor]


def train_vaal(vae: _VAE, dis: LatentDiscriminator, fetch_labeled: Fetch, n_labeled: int, fetch_unlabeled: Fetch,
               n_unlabeled: int, p: VAALParams, *, seed: int, device: torch.device = torch.device("cpu"),
               ) -> list[VAALLosses]:
    """Train ``vae`` and ``dis`` in place on this rank's shard; returns per-epoch mean losses.

    ``fetch_*(rows)`` returns the samples at positions ``rows`` of this rank's shard as a
    tensor on ``device``. Every rank runs the same number of steps per epoch, derived from
    the global unlabeled count, and draws ``batch_size // world`` samples of each kind.
    """
    rank, size = world()
    if n_labeled == 0 or n_unlabeled == 0:
        raise ValueError("VAAL needs labeled and unlabeled samples on every rank")
    per_rank = max(2, p.batch_size // size)
    global_u = torch.tensor([n_unlabeled], device=device)
    if size > 1:
        dist.all_reduce(global_u)
    steps = max(1, math.ceil(int(global_u.item()) / (per_rank * size)))
    opts = (torch.optim.Adam(vae.parameters(), lr=p.lr), torch.optim.Adam(dis.parameters(), lr=p.lr))
    rng = np.random.default_rng(seed + 7919 * rank)
    vae.train(), dis.train()
    history: list[VAALLosses] = []
    for epoch in range(p.epochs):
        order = np.resize(rng.permutation(n_unlabeled), steps * per_rank)  # wraps: every rank takes `steps` batches
        losses = []
        for b in range(steps):
            u_rows = order[b * per_rank : (b + 1) * per_rank]
            l_rows = rng.integers(0, n_labeled, size=per_rank)
            losses.append(vaal_step(vae, dis, opts, p, fetch_labeled(l_rows), fetch_unlabeled(u_rows)))
        history.append(VAALLosses(*[float(np.mean([getattr(s, f) for s in losses]))
                                    for f in VAALLosses.__dataclass_fields__]))
        if rank == 0:
            logger.debug("VAAL epoch %d/%d: %s", epoch + 1, p.epochs, history[-1])
    vae.eval(), dis.eval()
    return history


@torch.inference_mode()
def unlabeled_probability(vae: _VAE, dis: LatentDiscriminator, x: torch.Tensor) -> np.ndarray:
    """The discriminator's probability that each sample of ``x`` is unlabeled ``[n]``."""
    vae.eval(), dis.eval()
    return torch.sigmoid(-dis(vae.encode(x)[0])).double().cpu().numpy()


# ====================================================================== strategies
def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


class _VAALBase(Strategy):
    """Shared fit bookkeeping and lazy per-process rebuilding of the trained nets."""

    Params = VAALParams
    trains = True

    def _build(self) -> tuple[_VAE, LatentDiscriminator]:
        raise NotImplementedError

    def _nets(self) -> tuple[_VAE, LatentDiscriminator]:
        nets = getattr(self, "_cached", None)
        if nets is None:
            vae, dis = self._build()
            vae.load_state_dict(self.vae_state)
            dis.load_state_dict(self.dis_state)
            nets = self._cached = (vae.eval(), dis.eval())
        return nets

    def _train(self, fetch_l: Fetch, n_l: int, fetch_u: Fetch, n_u: int, ctx: FitContext) -> None:
        seed = derive_seed(self.seed, self.cycle, 0x7AA1)
        torch.manual_seed(seed)  # identical initial weights on every rank
        device = ctx.device or torch.device("cpu")
        vae, dis = (m.to(device) for m in self._build())
        self.history = train_vaal(vae, dis, fetch_l, n_l, fetch_u, n_u, self.params, seed=seed, device=device)
        self.vae_state, self.dis_state = _state(vae), _state(dis)
        self._cached = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cached"] = None  # rebuilt once per worker process from the state_dicts
        return state


def vaal_image_size(native: int, p: VAALParams) -> int:
    """The side the conv VAE works at for images of side ``native``."""
    step = 2 ** len(p.conv_widths)
    return p.image_size or step * math.ceil(native / step)


def _resize(x: torch.Tensor, side: int) -> torch.Tensor:
    if x.shape[-1] == side and x.shape[-2] == side:
        return x
    return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)


@register_strategy
class VAALImageStrategy(_VAALBase):
    """VAAL on images: conv VAE + latent discriminator; score = P(unlabeled)."""

    name = "vaal"
    description = "VAAL: conv VAE vs discriminator on images, highest P(unlabeled) first"
    needs = frozenset()  # reads images itself; no task-model inference pass

    def fit(self, ctx: FitContext) -> None:
        if ctx.config is None or ctx.labeled_ids is None:
            raise ValueError("vaal needs FitContext.config and FitContext.labeled_ids")
        rank, size = world()
        self.data = ctx.config.data
        dataset = open_dataset(self.data)
        pool = np.sort(dataset.sample_ids("train"))
        labeled = np.sort(np.asarray(ctx.labeled_ids, dtype=np.int64))
        unlabeled = np.setdiff1d(pool, labeled, assume_unique=True)
        probe = dataset.images("train", pool[:1])
        self.in_channels = int(probe.shape[1])
        self.side = vaal_image_size(max(int(probe.shape[-1]), int(probe.shape[-2])), self.params)
        device = ctx.device or torch.device("cpu")
        lab_shard, unl_shard = labeled[rank::size], unlabeled[rank::size]

        def fetch(ids: np.ndarray) -> Fetch:
            return lambda rows: _resize(dataset.images("train", ids[rows]), self.side).to(device)

        self._train(fetch(lab_shard), lab_shard.size, fetch(unl_shard), unl_shard.size, ctx)

    def _build(self) -> tuple[_VAE, LatentDiscriminator]:
        p = self.params
        return (ConvVAE(self.in_channels, self.side, p.conv_widths, p.latent_dim),
                LatentDiscriminator(p.latent_dim, p.disc_hidden))

    def score(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        x = open_dataset(self.data).images("train", np.asarray(batch["sample_id"], dtype=np.int64))
        return unlabeled_probability(*self._nets(), _resize(x, self.side))


rss_variant(VAALImageStrategy)  # registers "vaal_rss"


@register_strategy
class VAALFeatureStrategy(_VAALBase):
    """VAAL + TF (DAAL paper Sec. 4.5): the VAAL game on the task model's features."""

    name = "vaal_tf"
    description = "VAAL on task-model features (MLP VAE vs discriminator), highest P(unlabeled) first"
    needs = frozenset({"features"})

    def _prep(self, x: Any) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        return F.normalize(t, dim=1, eps=1e-8) if self.params.normalize else t

    def fit(self, ctx: FitContext) -> None:
        rank, size = world()
        xl, xu = features_by_labeled(ctx.features, rank, size)
        self.feature_dim = int(xu.shape[1])
        device = ctx.device or torch.device("cpu")
        tl, tu = self._prep(xl).to(device), self._prep(xu).to(device)
        self._train(lambda rows: tl[torch.as_tensor(rows)], len(tl), lambda rows: tu[torch.as_tensor(rows)], len(tu),
                    ctx)

    def _build(self) -> tuple[_VAE, LatentDiscriminator]:
        p = self.params
        return MLPVAE(self.feature_dim, p.mlp_hidden, p.latent_dim), LatentDiscriminator(p.latent_dim, p.disc_hidden)

    def score(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        return unlabeled_probability(*self._nets(), self._prep(batch["features"]))


rss_variant(VAALFeatureStrategy)  # registers "vaal_tf_rss"
