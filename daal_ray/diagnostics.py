"""Per-cycle diagnostics of a selected batch, recorded in its results row.

:func:`batch_redundancy` measures how redundant a batch is (the paper's overlapping
problem): the mean pairwise cosine similarity of its task-model features and the entropy
of its classes. :mod:`daal_ray.report` draws and tabulates them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from daal_ray.config import ExperimentConfig
from daal_ray.data import PoolDataset
from daal_ray.models import build_model
from daal_ray.training import load_state_dict

__all__ = ["batch_redundancy", "class_entropy", "distribution_entropy", "mean_pairwise_cosine"]


def mean_pairwise_cosine(sum_unit: np.ndarray, sum_sq_norm: float, k: int) -> float:
    """Mean cosine similarity over the ``k (k - 1)`` ordered pairs of distinct rows, from
    streaming sums: ``sum_unit`` = the sum of the unit-normalised rows, ``sum_sq_norm`` =
    the sum of their squared norms (1 per row, 0 for an all-zero row).

    Uses ``sum_{i != j} u_i . u_j = |sum_i u_i|^2 - sum_i |u_i|^2``: no ``k x k`` matrix.
    NaN for fewer than two rows.
    """
    if k < 2:
        return float("nan")
    return float((np.dot(sum_unit, sum_unit) - sum_sq_norm) / (k * (k - 1)))


def class_entropy(labels: np.ndarray, num_classes: int) -> float:
    """Entropy of the class histogram of ``labels``, divided by ``log(num_classes)``: 1 = the
    batch spreads evenly over every class, 0 = one class only. NaN without labels."""
    labels = np.asarray(labels).reshape(-1)
    if labels.size == 0 or num_classes < 2:
        return float("nan")
    p = np.bincount(labels.astype(np.int64), minlength=num_classes) / labels.size
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / math.log(num_classes))


def distribution_entropy(p: np.ndarray) -> float:
    """Entropy of a class distribution ``p`` (renormalised), divided by ``log(len(p))``;
    NaN if it has no mass."""
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    num_classes, total = p.size, p.sum()
    if num_classes < 2 or not total > 0:
        return float("nan")
    p = p[p > 0] / total
    return float(-(p * np.log(p)).sum() / math.log(num_classes))


def batch_redundancy(cfg: ExperimentConfig, dataset: PoolDataset, ids: np.ndarray, checkpoint: str | Path,
                     device: Optional[torch.device] = None) -> dict[str, float]:
    """Redundancy of one selected batch, for its results row.

    The features are the cycle model's (the checkpoint the strategy scored with), computed
    here for the ``K`` selected ids only, in chunks of ``scale.inference_batch_size``, so
    every strategy gets them, random included (it skips the pool-wide inference) and no
    second pass over the pool is made. Memory is O(chunk + feature width).

    Returns:
        ``batch_cosine``: mean pairwise cosine similarity of the features (1 = identical
        directions; higher = more redundant); ``batch_class_entropy``: normalised entropy
        of the batch's oracle classes (for dense targets, of the batch's mean class
        composition: the per-image shares of non-void pixels, averaged over the batch).
    """
    ids = np.asarray(ids, dtype=np.int64)
    device = device or torch.device("cpu")
    model = build_model(cfg.train.model, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
    model.load_state_dict(load_state_dict(checkpoint))
    model.to(device).eval()
    sum_unit: Optional[np.ndarray] = None
    sum_sq = 0.0
    step = cfg.scale.inference_batch_size
    with torch.inference_mode():
        for start in range(0, ids.size, step):
            feats, _ = model.forward_features(dataset.images("train", ids[start:start + step]).to(device))
            f = feats.double().flatten(1)
            u = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
            part = u.sum(0).cpu().numpy()
            sum_unit = part if sum_unit is None else sum_unit + part
            sum_sq += float((u * u).sum())
    cosine = mean_pairwise_cosine(sum_unit, sum_sq, ids.size) if sum_unit is not None else float("nan")
    if dataset.task == "classification":
        entropy = class_entropy(dataset.targets("train", ids), dataset.num_classes)
    else:  # dense targets: the batch's mean class composition (each image's non-void pixels)
        entropy = distribution_entropy(dataset.class_frequencies("train", ids).mean(0)) if ids.size else float("nan")
    return {"batch_cosine": cosine, "batch_class_entropy": entropy}
