"""DAAL's losses (paper Sec. 3.2, Eqs. 1 and 3-7), each a pure function of tensors.

Discriminator outputs are taken as logits and every log is computed through
``logsigmoid`` / ``slogdet``, so no loss overflows or takes the log of zero.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def prior_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Eq. 1's prior term: ``KL(q(e|x) || N(0, I))`` of a diagonal Gaussian encoder.

    ``KL = -1/2 * sum_j (1 + logvar_j - mu_j^2 - exp(logvar_j))``, summed over latent
    dimensions and averaged over the batch. Zero exactly when ``mu = 0`` and ``logvar = 0``.
    """
    return (-0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()


def recon_loss(real_hidden: Sequence[torch.Tensor], fake_hidden: Sequence[torch.Tensor]) -> torch.Tensor:
    """Eq. 3: feature matching in each discriminator's last hidden layer (Larsen et al.).

    ``L_recon = E[-log p(phi(x_u) | e_hat)] + E[-log p(varphi(x_u) | e_tilde)]`` with a
    unit-variance Gaussian likelihood over the hidden activations, i.e. up to a constant
    ``sum over discriminators of 1/2 * mean_batch ||phi(x) - phi(x_rec)||^2``.

    Args:
        real_hidden: last-hidden activations of the original features, one tensor
            ``[n, h]`` per discriminator (uDis, rDis).
        fake_hidden: the same for the reconstructions (``x_hat`` for uDis, ``x_tilde`` for rDis).
    """
    if len(real_hidden) != len(fake_hidden) or not real_hidden:
        raise ValueError("recon_loss needs one (real, fake) pair per discriminator")
    return sum(0.5 * (r - f).pow(2).sum(dim=1).mean() for r, f in zip(real_hidden, fake_hidden))


def _mean(values: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
    """Plain mean, or the mean weighted by ``weights`` (normalised to sum to one)."""
    if weights is None:
        return values.mean()
    return (weights * values).sum() / weights.sum().clamp_min(1e-12)


def gan_loss(real_logits: Sequence[torch.Tensor], fake_logits: Sequence[torch.Tensor],
             fake_weights: Optional[Sequence[Optional[torch.Tensor]]] = None) -> torch.Tensor:
    """Eq. 4: ``sum_D E[log D(real)] + E[log(1 - D(fake))]`` over the discriminators.

    For uDis real = labeled features ``x_l`` and fake = ``x_hat_u``; for rDis real = the
    unlabeled features ``x_u`` and fake = ``x_tilde_u``. The discriminators *maximise* this
    value (0 for a perfect discriminator, ``2 log 1/2`` per discriminator at chance).
    Inputs are logits: ``log D = logsigmoid(z)`` and ``log(1 - D) = logsigmoid(-z)``.

    Args:
        fake_weights: optional per-sample weights of each discriminator's fakes (the
            expectation over fakes becomes a weighted mean); None weighs them equally.
    """
    if len(real_logits) != len(fake_logits) or not real_logits:
        raise ValueError("gan_loss needs one (real, fake) pair per discriminator")
    weights = list(fake_weights) if fake_weights is not None else [None] * len(fake_logits)
    if len(weights) != len(fake_logits):
        raise ValueError("gan_loss needs one weight vector (or None) per discriminator")
    return sum(F.logsigmoid(r).mean() + _mean(F.logsigmoid(-f), w) for r, f, w in zip(real_logits, fake_logits, weights))


def generator_gan_loss(fake_logits: Sequence[torch.Tensor], saturating: bool = False,
                       fake_weights: Optional[Sequence[Optional[torch.Tensor]]] = None) -> torch.Tensor:
    """What the generator side minimises against the discriminators.

    ``saturating=True`` is Eq. 4's own min-max term, ``sum E[log(1 - D(fake))]``;
    the default is the usual non-saturating form ``-sum E[log D(fake)]``, which has the
    same fixed point and stronger gradients while the discriminators win.

    Args:
        fake_weights: optional per-sample weights, as in :func:`gan_loss`. When they are
            the ScoreNet's branch weights and carry gradient, this term is what moves the
            scores: a sample whose uncertainty reconstruction does not fool uDis gains score
            (its weight ``1 - s`` shrinks), one whose summary does not fool rDis loses it.
    """
    weights = list(fake_weights) if fake_weights is not None else [None] * len(fake_logits)
    if len(weights) != len(fake_logits):
        raise ValueError("generator_gan_loss needs one weight vector (or None) per discriminator")
    if saturating:
        return sum(_mean(F.logsigmoid(-f), w) for f, w in zip(fake_logits, weights))
    return sum(_mean(-F.logsigmoid(f), w) for f, w in zip(fake_logits, weights))


def length_loss(scores: torch.Tensor, sigma: float) -> torch.Tensor:
    """Eq. 6, length regulariser: ``|| sigma - mean(s) ||_2`` (a scalar, so ``|sigma - mean(s)|``)."""
    return (sigma - scores.mean()).abs()


def subset_size(n: int, sigma: float) -> int:
    """Size of the DPP subset: the top ``sigma * n`` scores, at least 1 and at most ``n``."""
    return max(1, min(n, int(round(sigma * n))))


def dpp_loss(scores: torch.Tensor, features: torch.Tensor, sigma: float, jitter: float = 1e-4) -> torch.Tensor:
    """Eqs. 5-7, determinantal point process loss: ``-log( det(D_S) / det(D + I) )``.

    ``D_ij = s_i s_j x_i . x_j`` over the batch and ``S`` holds the ``sigma * n`` highest
    scores. A diverse, highly scored subset has a large ``det(D_S)``. ``jitter * I`` is
    added to ``D_S`` so its log-determinant stays finite when the subset's features are
    linearly dependent (more of them than feature dimensions, or duplicates); the
    normaliser ``det(D + I)`` is always >= 1.

    Args:
        scores: ``[n]`` scores in [0, 1].
        features: ``[n, d]`` features (the caller normalises them; unit norm keeps the
            determinants well scaled).
        sigma: the selected fraction (paper: 0.2).
    Returns:
        A scalar tensor, differentiable in ``scores`` and ``features``.
    """
    n = scores.shape[0]
    if features.shape[0] != n:
        raise ValueError(f"scores [{n}] and features {list(features.shape)} disagree")
    weighted = scores.unsqueeze(1) * features  # row i = s_i x_i, so D = W W^T
    k = subset_size(n, sigma)
    top = torch.topk(scores.detach(), k).indices
    w_s = weighted[top]
    d_s = w_s @ w_s.T + jitter * torch.eye(k, dtype=w_s.dtype, device=w_s.device)
    # det(I_n + W W^T) = det(I_d + W^T W) (Sylvester): factor the smaller of the two.
    gram = weighted @ weighted.T if n <= weighted.shape[1] else weighted.T @ weighted
    norm = gram + torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return _logdet_spd(norm) - _logdet_spd(d_s)


def _logdet_spd(a: torch.Tensor) -> torch.Tensor:
    """log det of a symmetric positive-definite matrix through its Cholesky factor."""
    chol = torch.linalg.cholesky(a)
    return 2.0 * torch.log(torch.diagonal(chol)).sum()
