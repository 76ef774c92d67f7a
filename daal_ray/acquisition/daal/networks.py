"""DAAL's networks (paper Sec. 3.1): ScoreNet, the feature VAE, and the discriminators.

All are MLPs over task-model features. The paper fixes the depths (ScoreNet 5 layers,
encoder and decoder 7 layers each, discriminators = ScoreNet without dropout), Xavier
initialisation and dropout 0.4 in the informativeness rater (ScoreNet and VAE); it leaves
the widths and the latent size open, so they are constructor arguments. Dropout follows
each hidden layer; the output layers (the score, the latent moments, the reconstruction)
have none, since dropping an output unit would zero a score or a feature outright.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def _mlp(widths: Sequence[int], dropout: float, negative_slope: float = 0.0) -> nn.Sequential:
    """Linear layers between consecutive ``widths``; ReLU (leaky if ``negative_slope``) and
    dropout after each but the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.LeakyReLU(negative_slope, inplace=True) if negative_slope else nn.ReLU(inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    for m in layers:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return nn.Sequential(*layers)


def _check_widths(hidden: Sequence[int], n: int, who: str) -> None:
    if len(hidden) != n or any(h < 1 for h in hidden):
        raise ValueError(f"{who} takes {n} positive hidden widths (the paper's depth), got {list(hidden)}")


class ScoreNet(nn.Module):
    """The image selector: a 5-layer MLP mapping a feature to a score in [0, 1] (sigmoid).

    Args:
        feature_dim: width of the task model's features.
        hidden: the 4 hidden widths.
        dropout: applied after each hidden layer (paper: 0.4).
    """

    def __init__(self, feature_dim: int, hidden: Sequence[int] = (256, 128, 64, 32), dropout: float = 0.4) -> None:
        super().__init__()
        _check_widths(hidden, 4, "ScoreNet")
        self.net = _mlp([feature_dim, *hidden, 1], dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores ``[n]`` of features ``[n, feature_dim]``."""
        return torch.sigmoid(self.net(x)).squeeze(1)


class FeatureVAE(nn.Module):
    """The VAE of the informativeness rater: 7-layer MLP ``encoder`` and ``decoder``.

    The encoder's last layer emits the mean and log-variance of the latent Gaussian.

    Args:
        feature_dim: width of the features it reconstructs.
        hidden: the 6 hidden widths of the encoder (the decoder mirrors them).
        latent_dim: size of the latent code.
        dropout: applied after each hidden layer (paper: 0.4).
    """

    def __init__(self, feature_dim: int, hidden: Sequence[int] = (256, 256, 128, 128, 64, 64),
                 latent_dim: int = 32, dropout: float = 0.4) -> None:
        super().__init__()
        _check_widths(hidden, 6, "FeatureVAE")
        self.latent_dim = latent_dim
        self.encoder = _mlp([feature_dim, *hidden, 2 * latent_dim], dropout)
        self.decoder = _mlp([latent_dim, *reversed(hidden), feature_dim], dropout)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)``, each ``[n, latent_dim]``."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)  # keeps exp(logvar) finite

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def decode(self, e: torch.Tensor) -> torch.Tensor:
        return self.decoder(e)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(reconstruction, mu, logvar)``."""
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


class Discriminator(nn.Module):
    """uDis / rDis: ScoreNet's 5-layer architecture without dropout.

    ``forward`` returns the logit of "real" ``[n]`` and the last hidden layer ``[n, h]``,
    whose activations the reconstruction loss (Eq. 3) matches.

    Args:
        negative_slope: slope of the leaky ReLUs (0 gives plain ReLUs). The paper does not
            name the activation; a discriminator's plain ReLUs go silent on the region its
            fakes occupy, and the feature-matching loss then has no gradient to reconstruct
            through (the VAE's posterior collapses: measured in BENCHMARKS.md), so the
            default is the usual GAN discriminator's 0.2.
    """

    def __init__(self, feature_dim: int, hidden: Sequence[int] = (256, 128, 64, 32),
                 negative_slope: float = 0.2) -> None:
        super().__init__()
        _check_widths(hidden, 4, "Discriminator")
        body = _mlp([feature_dim, *hidden, 1], dropout=0.0, negative_slope=negative_slope)
        self.body = body[:-1]  # the four hidden layers with their ReLUs
        self.out = body[-1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.out(h).squeeze(1), h
