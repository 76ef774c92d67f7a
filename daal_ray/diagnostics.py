"""Per-cycle diagnostics of a selection, recorded in its results row.

Two questions, for every strategy and cycle:

* **Is the batch redundant?** (the paper's overlapping problem) :func:`batch_redundancy`:
  the mean pairwise cosine similarity of the batch's task-model features and the entropy of
  its classes.
* **Does the score carry information, and about what?** :func:`cycle_informativeness`,
  with the simulated oracle: the AUROC of the strategy's score for "the current model
  misclassifies this unlabeled sample" (0.5 = none), its rank correlation with the model's
  per-sample loss and with the predictive entropy, and how far the batch lies from the
  labeled set.

:mod:`daal_ray.report` draws and tabulates them.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score

from daal_ray.acquisition import Strategy
from daal_ray.acquisition.entropy import predictive_entropy
from daal_ray.acquisition.rss import random_subset
from daal_ray.config import ExperimentConfig
from daal_ray.data import PoolDataset
from daal_ray.models import build_model
from daal_ray.results import INFORMATIVENESS_COLUMNS
from daal_ray.runtime import derive_seed
from daal_ray.scoring import PoolPredictor, predictor_kwargs
from daal_ray.selection import min_sq_distances
from daal_ray.training import load_state_dict

logger = logging.getLogger(__name__)

__all__ = ["DIAGNOSTIC_SAMPLE", "auroc", "average_ranks", "batch_redundancy",
           "class_entropy", "cycle_informativeness", "distribution_entropy", "informativeness", "mean_pairwise_cosine",
           "spearman"]


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


# ====================================================================== informativeness
# Unlabeled (and labeled) samples the per-cycle informativeness diagnostics read at most: a
# bounded, seeded sample, so the diagnostics cost O(sample) whatever the pool's size.
DIAGNOSTIC_SAMPLE = 4096


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x``, ties given their average rank (:func:`scipy.stats.rankdata`)."""
    return stats.rankdata(np.asarray(x, dtype=np.float64), method="average")


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positive``
    (:func:`sklearn.metrics.roc_auc_score`; tied scores count half): the chance that a
    random positive outscores a random negative. NaN without both classes."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    if pos.all() or not pos.any():
        return float("nan")
    return float(roc_auc_score(pos, s))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (:func:`scipy.stats.spearmanr`, ties averaged); NaN when
    either side is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def informativeness(scores: Optional[np.ndarray], probs: np.ndarray, labels: Optional[np.ndarray],
                    entropy: Optional[np.ndarray] = None) -> dict[str, float]:
    """What a strategy's scores say about the current model, on unlabeled samples whose
    oracle labels are known (the simulated oracle).

    ``probs`` are the predictions the errors and losses are judged on: the model's own
    deterministic predictions, the ones its reported accuracy is measured with, whatever
    the strategy scored with (:func:`cycle_informativeness` passes those for MC dropout
    and BALD too, whose scores come from dropout passes).

    Returns:
        ``auroc_wrong``: AUROC of the score for "the model misclassifies this sample" (0.5 =
        no information); ``spearman_loss`` and ``spearman_entropy``: rank correlation of
        the score with the sample's cross-entropy loss and with the predictive entropy. NaN
        where the strategy has no per-sample score (core-set) or there are no labels
        (dense targets). ``entropy`` overrides the entropy computed from ``probs`` (the
        mean pixel entropy of dense predictions).
    """
    nan = float("nan")
    out = {"auroc_wrong": nan, "spearman_loss": nan, "spearman_entropy": nan}
    if scores is None or len(scores) == 0:
        return out
    p = np.asarray(probs, dtype=np.float64).reshape(len(scores), -1)
    out["spearman_entropy"] = spearman(scores, predictive_entropy(p) if entropy is None else entropy)
    if labels is not None:
        y = np.asarray(labels, dtype=np.int64)
        out["auroc_wrong"] = auroc(scores, p.argmax(axis=1) != y)
        out["spearman_loss"] = spearman(scores, -np.log(np.clip(p[np.arange(y.size), y], 1e-12, 1.0)))
    return out


def deterministic_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """:func:`~daal_ray.scoring.predictor_kwargs` without MC dropout passes: the model's own
    predictions."""
    return {k: v for k, v in kwargs.items() if not k.startswith("mc_")}


def _predict(predictor: PoolPredictor, ids: np.ndarray, step: int) -> dict[str, np.ndarray]:
    """The pool predictor's output for ``ids`` (all unlabeled), in chunks of ``step``."""
    parts = [predictor({"sample_id": ids[i:i + step], "labeled": np.zeros(min(step, ids.size - i), bool)})
             for i in range(0, ids.size, step)]
    return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]} if parts else {}


def cycle_informativeness(cfg: ExperimentConfig, dataset: PoolDataset, strategy: Strategy, pool_ids: np.ndarray,
                          labeled: np.ndarray, batch: np.ndarray, checkpoint: str | Path,
                          sample: int = DIAGNOSTIC_SAMPLE) -> dict[str, float]:
    """The informativeness diagnostics of one cycle's selection, for its results row.

    The cycle's own pool predictor (:func:`daal_ray.scoring.predictor_kwargs`: the model,
    a strategy's joint head, MC dropout's passes) runs here on a seeded uniform sample of
    at most ``sample`` unlabeled ids, the fitted ``strategy`` scores them, and the
    simulated oracle's labels say which the model gets wrong (:func:`informativeness`):
    the model's own deterministic predictions, also where the strategy's predictor runs MC
    dropout passes (those only make its score).
    ``batch_labeled_distance`` is the mean Euclidean distance, in the model's features, from
    each selected sample to its nearest labeled one (at most ``sample`` labeled ids, a
    seeded sample). Memory and time are O(sample), whatever the pool's size.
    """
    threads = torch.get_num_threads()  # the predictor sets its own; the caller's training must keep its count
    try:
        return _informativeness(cfg, dataset, strategy, pool_ids, labeled, batch, checkpoint, sample)
    except Exception as exc:  # a diagnostic never stops a run: the cycle would fail the same way on retry
        logger.warning("%s cycle %d: informativeness diagnostics failed (%s: %s); recorded as NaN", cfg.name,
                       strategy.cycle, type(exc).__name__, exc)
        return {c: float("nan") for c in INFORMATIVENESS_COLUMNS}
    finally:
        torch.set_num_threads(threads)


def _informativeness(cfg: ExperimentConfig, dataset: PoolDataset, strategy: Strategy, pool_ids: np.ndarray,
                     labeled: np.ndarray, batch: np.ndarray, checkpoint: str | Path, sample: int) -> dict[str, float]:
    key = derive_seed(cfg.seed, strategy.cycle, 0xD1A6)
    unlabeled = np.setdiff1d(np.asarray(pool_ids, np.int64), np.asarray(labeled, np.int64))
    ids = random_subset(unlabeled, sample, key)
    kwargs = predictor_kwargs(
        data=cfg.data, model_name=cfg.train.model, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
        checkpoint=str(checkpoint), scale=cfg.scale, acquisition=cfg.acquisition, strategy=strategy)
    predictor = PoolPredictor(**kwargs)
    step = cfg.scale.inference_batch_size
    out = _predict(predictor, ids, step)
    try:
        scores = np.asarray(strategy.diagnostic_score(out), dtype=np.float64).reshape(-1) if ids.size else None
    except NotImplementedError:  # selects without a per-sample score (core-set)
        scores = None
    labels = dataset.targets("train", ids) if dataset.task == "classification" and ids.size else None
    judged, entropy = out.get("probs", np.zeros((0, 1))), out.get("entropy")
    if predictor.mc_passes > 0 and ids.size:
        # MC dropout's probs are the mean of its passes; the errors are judged on the model's
        # own (deterministic) predictions, the ones its accuracy is measured with, as for
        # every other strategy.
        plain = _predict(PoolPredictor(**deterministic_kwargs(kwargs)), ids, step)
        judged, entropy = plain["probs"], None
    row = informativeness(scores, judged, labels, entropy)
    centres = _predict(predictor, random_subset(np.asarray(labeled, np.int64), sample, key), step)
    picked = _predict(predictor, np.asarray(batch, np.int64), step)
    if centres and picked:
        d = min_sq_distances(torch.as_tensor(picked["features"]).flatten(1).double(),
                             torch.as_tensor(centres["features"]).flatten(1).double())
        row["batch_labeled_distance"] = float(d.sqrt().mean())
    else:
        row["batch_labeled_distance"] = float("nan")
    return row
