"""Helpers shared by the baseline strategies' tests (core-set, RSS, MC dropout, Suggestive
Annotation), the registry and default select hook's, the k-center tests and the CIFAR job
scripts': a synthetic pool, its block layouts, a fit context, a brute-force k-center, and
the invariants of a run's pool state after the cycle loop."""

from __future__ import annotations

import numpy as np

from daal_ray.acquisition import FitContext, build_strategy
from daal_ray.config import AcquisitionConfig
from daal_ray.pool import PoolState
from daal_ray.rundir import STATE_FILE


def brute_force_k_center(xu: np.ndarray, xl: np.ndarray, k: int) -> list[int]:
    """Textbook k-center greedy with the full distance matrix (float64)."""
    xu, xl = np.asarray(xu, np.float64), np.asarray(xl, np.float64)
    centres = list(xl)
    picks: list[int] = []
    for _ in range(k):
        d = np.full(len(xu), np.inf) if not centres else np.sqrt(
            ((xu[:, None, :] - np.asarray(centres)[None, :, :]) ** 2).sum(-1)).min(1)
        d[picks] = -1.0
        i = int(np.argmax(d))  # first maximum = smaller position
        picks.append(i)
        centres.append(xu[i])
    return picks


def pool(n: int = 300, d: int = 8, n_labeled: int = 30, classes: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """A synthetic pool's inference output, ids shuffled and not contiguous."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(np.arange(n, dtype=np.int64) * 3 + 7)
    labeled = np.zeros(n, bool)
    labeled[rng.choice(n, n_labeled, replace=False)] = True
    logits = rng.normal(size=(n, classes)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return {"sample_id": ids, "labeled": labeled, "features": rng.normal(size=(n, d)).astype(np.float32),
            "probs": probs.astype(np.float32)}


def split(batch: dict[str, np.ndarray], parts: int) -> list[dict[str, np.ndarray]]:
    """The pool as ``parts`` uneven blocks (a different block layout)."""
    cuts = np.sort(np.random.default_rng(parts).choice(np.arange(1, len(batch["sample_id"])), parts - 1, replace=False))
    return [{k: v[a:b] for k, v in batch.items()} for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(batch["sample_id"])])]


def ctx_of(p: dict[str, np.ndarray], features=None, **kw) -> FitContext:
    lab = p["labeled"]
    return FitContext(features=p if features is None else features, num_labeled=int(lab.sum()), cycle=0,
                      labeled_ids=np.sort(p["sample_id"][lab]), pool_ids=np.sort(p["sample_id"]), **kw)


def make(name: str, **params):
    return build_strategy(AcquisitionConfig(strategy=name, params=params), seed=1, cycle=2)


def assert_valid_selection(ids: np.ndarray, p: dict[str, np.ndarray], k: int) -> None:
    assert ids.size == k and np.unique(ids).size == k
    assert np.isin(ids, p["sample_id"][~p["labeled"]]).all(), "selected a labeled or unknown id"


def state_of(run_root, cfg) -> PoolState:
    """The pool state an experiment named ``cfg.name`` left under ``run_root``."""
    return PoolState.load(run_root / cfg.name / STATE_FILE)


def check_invariants(state: PoolState, k: int) -> None:
    """Labeled and unlabeled partition the pool; every cycle's batch is K new unique ids."""
    labeled, unlabeled = state.labeled_ids(), state.unlabeled_ids()
    assert np.intersect1d(labeled, unlabeled).size == 0
    assert np.array_equal(np.sort(np.concatenate([labeled, unlabeled])), state.sample_ids)
    for c in range(1, len(state.history)):
        batch = state.ids_of_cycle(c)
        earlier = state.sample_ids[(state.labeled_cycle >= 0) & (state.labeled_cycle < c)]
        assert batch.size == k and np.unique(batch).size == k and np.intersect1d(batch, earlier).size == 0
