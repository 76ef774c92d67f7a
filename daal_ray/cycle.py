"""One experiment's active-learning cycles, as run by every rank of its worker group.

Every rank trains the task model (DDP) and evaluates it; rank 0 then drives the pool-wide
steps through Ray Data (features, fit, scoring, top-K: :mod:`daal_ray.scoring`), proposes
the batch to the ALDriver, asks the oracle and commits. One results row per cycle is
durable before its batch is proposed.

Resuming is the same code path as starting: the loop reads the pool state, finds the
current cycle, reuses a pending batch if a crash came between propose and commit, and
reuses the cycle's checkpoint if the model was already trained.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, NamedTuple, Optional

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch

from daal_ray.acquisition import FitContext, Strategy, build_strategy
from daal_ray.config import ExperimentConfig
from daal_ray.data import PoolDataset, open_dataset
from daal_ray.diagnostics import batch_redundancy, cycle_informativeness
from daal_ray.driver import NAMESPACE
from daal_ray.errors import PoolStateError
from daal_ray.models import build_model
from daal_ray.results import RESULTS_FILE, STEP_COLUMNS, upsert_rows
from daal_ray.runtime import (
    barrier,
    check_reachable_everywhere,
    derive_seed,
    log_to_file,
    quiet_ray_data,
    share_from_rank_zero,
    stop_logging_to,
    world,
)
from daal_ray.scoring import extract_features, pool_dataset, predictor_kwargs, select_topk
from daal_ray.training import METRICS, FitStats, evaluate, fit_task_model, load_checkpoint_meta, save_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["Selection", "experiment_loop", "group_loop", "initial_pool", "oracle_labels", "select_batch", "train_cycle_model"]


def initial_pool(pool_ids: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The random initial labeled pool: depends on the pool and the seed only, so every
    strategy run with one seed starts from the same ids."""
    rng = np.random.default_rng(derive_seed(seed, 0x1A17))
    return np.sort(rng.choice(np.sort(pool_ids), size=n, replace=False))


def oracle_labels(dataset: PoolDataset, ids: np.ndarray) -> Optional[np.ndarray]:
    """The simulated oracle: ground truth for classification, None for dense targets."""
    if dataset.task != "classification":
        return None
    return dataset.targets("train", ids)


def _report(metrics: dict[str, Any], checkpoint_dir: Optional[Path]) -> None:
    """Report to Ray Train (all ranks must call it); rank 0 attaches the cycle checkpoint."""
    ckpt = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
    ray.train.report(metrics, checkpoint=ckpt)


WORKER_LOG = "worker-rank{rank}.log"


def experiment_loop(loop_config: dict[str, Any]) -> None:
    """Per-worker body of an experiment: every cycle, from wherever the state stands.

    Each rank appends its log records (Ray Train's report lines and DAAL's losses among
    them) to ``worker-rank<r>.log`` in the experiment's run directory.
    """
    handler = log_to_file(Path(loop_config["run_dir"]) / WORKER_LOG.format(rank=world()[0]))
    try:
        _experiment_loop(loop_config)
    finally:
        stop_logging_to(handler)


def _experiment_loop(loop_config: dict[str, Any]) -> None:
    cfg = ExperimentConfig.from_dict(loop_config["config"])
    run_dir = Path(loop_config["run_dir"])
    driver = ray.get_actor(loop_config["driver_name"], namespace=NAMESPACE)
    rank, size = world()
    torch.set_num_threads(cfg.scale.threads)
    device = ray.train.torch.get_device() if cfg.scale.use_gpu else torch.device("cpu")
    startup_s = time.time() - loop_config["submitted_at"]
    quiet_ray_data()
    logging.getLogger("ray.train").setLevel(logging.WARNING)

    dataset = open_dataset(cfg.data)
    pool_ids = dataset.sample_ids("train")
    n_initial, per_cycle, rounds = cfg.schedule(len(pool_ids))
    strategy_name = cfg.acquisition.strategy

    if rank == 0:
        snap = ray.get(driver.snapshot.remote())
        logger.info("%s: a worker group of %d started at cycle %d", cfg.name, size, snap["next_cycle"])
        if snap["next_cycle"] == 0:
            ids = ray.get(driver.propose.remote(0, initial_pool(pool_ids, n_initial, cfg.seed), n_initial))
            ray.get(driver.commit.remote(0, ids, oracle_labels(dataset, ids), "initial"))
    barrier()

    checked_nodes: set[str] = set()
    while True:
        t_cycle = time.perf_counter()
        if rank == 0:
            # Nodes that joined since the last cycle (autoscaled workers) see the run directory
            # before this cycle gives them work: fail fast, naming the node, instead of losing
            # a checkpoint or a results row written where the others cannot read it.
            check_reachable_everywhere(run_dir, checked=checked_nodes)
        snap = ray.get(driver.snapshot.remote())
        cycle = snap["next_cycle"] - 1
        if snap["pending_cycle"] is not None:
            # A crash came between propose and commit: label the recorded batch, spend nothing new.
            if rank == 0:
                ids = snap["pending_ids"]
                logger.info("%s: cycle %d batch of %d was pending; labeling it", cfg.name, snap["pending_cycle"], ids.size)
                ray.get(driver.commit.remote(snap["pending_cycle"], ids, oracle_labels(dataset, ids), strategy_name))
            barrier()
            continue
        labeled, labels = snap["labeled_ids"], snap["labeled_labels"]
        ckpt_dir = run_dir / "checkpoints" / f"cycle_{cycle:03d}"
        value, train_s, stats = train_cycle_model(cfg, dataset, labeled, labels, cycle, ckpt_dir, device)
        if stats is not None:
            _report({"cycle": cycle, cfg.metric: value, "num_labeled": int(labeled.size), "loss": stats.last_loss},
                    ckpt_dir if rank == 0 else None)

        row = {
            "experiment": cfg.name, "strategy": strategy_name, "dataset": cfg.data.name, "seed": cfg.seed,
            "budget": per_cycle, "cycle": cycle, "num_labeled": int(labeled.size),
            "labeled_fraction": labeled.size / len(pool_ids), "metric": cfg.metric, "value": value,
            "num_selected": 0, "train_s": train_s, "features_s": 0.0, "acq_fit_s": 0.0, "scoring_s": 0.0,
            "selection_s": 0.0, "startup_s": startup_s, "config": json.dumps(cfg.to_dict(), sort_keys=True),
        }
        startup_s = 0.0
        k = cfg.batch_size(len(pool_ids), int(labeled.size))
        last = cycle >= rounds or k == 0
        picked = None
        if not last:
            picked = _select(cfg, dataset, pool_ids, labeled, cycle, k, ckpt_dir, run_dir, row, device,
                             labels=labels if dataset.task == "classification" else None)
        batch = picked.ids if picked is not None else None
        if rank == 0:
            row["cycle_s"] = time.perf_counter() - t_cycle
            row["overhead_s"] = max(0.0, row["cycle_s"] - sum(row[c] for c in STEP_COLUMNS if c != "overhead_s"))
            if batch is not None:
                row["num_selected"] = int(batch.size)
                # Diagnostics, untimed (outside cycle_s): redundancy and informativeness of the batch.
                row.update(batch_redundancy(cfg, dataset, batch, ckpt_dir / "model.pt", device))
                row.update(cycle_informativeness(cfg, dataset, picked.strategy, pool_ids, labeled, batch,
                                                 ckpt_dir / "model.pt"))
            # The row is durable before the batch is proposed: a crash in between re-runs this
            # cycle (same model, same selection) and replaces the row; after the proposal the
            # pending path commits the batch, and the cycle's row is already there.
            upsert_rows(run_dir / RESULTS_FILE, [row])
            logger.info("%s cycle %d: %d labeled (%.1f%%), %s %.4f, cycle %.1fs (train %.1fs)", cfg.name, cycle,
                        labeled.size, 100 * row["labeled_fraction"], cfg.metric, value, row["cycle_s"], train_s)
            if batch is not None:
                ids = ray.get(driver.propose.remote(cycle + 1, batch, batch.size))
                ray.get(driver.commit.remote(cycle + 1, ids, oracle_labels(dataset, ids), strategy_name))
        barrier()
        if last:
            return


def train_cycle_model(cfg: ExperimentConfig, dataset: PoolDataset, labeled: np.ndarray, labels: np.ndarray,
                      cycle: int, ckpt_dir: Path, device: torch.device) -> tuple[float, float, Optional[FitStats]]:
    """Train the task model of ``cycle`` on the labeled ids, or reuse its checkpoint.

    Every rank of the worker group calls it (DDP); rank 0 writes the checkpoint to
    ``ckpt_dir``. A complete checkpoint trained on as many labeled ids is reused, so a
    resumed cycle does not train again. ``labels`` are those of ``labeled`` (sorted ids).

    Returns:
        ``(metric value on the test split, training seconds, FitStats)``; FitStats is None
        when the checkpoint was reused.
    """
    rank, _ = world()
    head_factory = build_strategy(cfg.acquisition, seed=cfg.seed, cycle=cycle).task_head
    meta = load_checkpoint_meta(ckpt_dir)
    if meta is not None and meta.get("num_labeled") == int(labeled.size):
        # Reused only if it also holds the joint head this strategy trains (a project may
        # switch strategies between cycles).
        probe = head_factory(build_model(cfg.train.model, num_classes=dataset.num_classes,
                                         in_channels=dataset.in_channels))
        if probe is None or (ckpt_dir / probe.checkpoint_file).is_file():
            return float(meta["value"]), float(meta["train_s"]), None
    t0 = time.perf_counter()
    targets = labels if dataset.task == "classification" else None
    model, stats = fit_task_model(dataset, labeled, targets, cfg.train, seed=derive_seed(cfg.seed, cycle, 7),
                                  device=device, head_factory=head_factory)
    value = METRICS[cfg.metric](evaluate(model, dataset, device=device, batch_size=cfg.scale.inference_batch_size))
    train_s = time.perf_counter() - t0
    if rank == 0:
        save_checkpoint(model, ckpt_dir, {"cycle": cycle, "value": value, "train_s": train_s,
                                          "num_labeled": int(labeled.size), "model": cfg.train.model,
                                          "first_loss": stats.first_loss, "last_loss": stats.last_loss},
                        head=stats.head)
    barrier()
    return value, train_s, stats


class Selection(NamedTuple):
    """A cycle's selection: the ids in pick order, their scores, and the fitted strategy."""

    ids: np.ndarray
    scores: np.ndarray
    strategy: Strategy


def _select(*args: Any, **kwargs: Any) -> Optional[Selection]:
    """The cycle loop's selection step (:func:`select_batch`; a seam for fault injection)."""
    return select_batch(*args, **kwargs)


def select_batch(cfg: ExperimentConfig, dataset: PoolDataset, pool_ids: np.ndarray, labeled: np.ndarray, cycle: int,
                 k: int, ckpt_dir: Path, run_dir: Path, row: dict[str, Any], device: torch.device,
                 labels: Optional[np.ndarray] = None) -> Optional[Selection]:
    """Features -> fit -> select (``Strategy.select``: top-K or the strategy's own) for the
    next cycle. ``labels`` are those of ``labeled`` (sorted ids). Every rank calls it;
    returns the :class:`Selection` on rank 0, None on the others. The step timings go into
    ``row``."""
    rank, _ = world()
    strategy = build_strategy(cfg.acquisition, seed=cfg.seed, cycle=cycle)
    trains = strategy.trains
    features = None
    if rank == 0:
        t0 = time.perf_counter()
        features = pool_dataset(pool_ids, labeled, cfg.scale)
        if strategy.needs:
            predictor = predictor_kwargs(data=cfg.data, model_name=cfg.train.model, num_classes=dataset.num_classes,
                                         in_channels=dataset.in_channels, checkpoint=str(ckpt_dir / "model.pt"),
                                         scale=cfg.scale, acquisition=cfg.acquisition, strategy=strategy)
            features = extract_features(features, predictor, cfg.scale)
            if trains or strategy.multipass:  # read more than once: compute them once
                features = features.materialize()
        row["features_s"] = time.perf_counter() - t0
    ctx = FitContext(features=features, num_labeled=int(labeled.size), cycle=cycle, run_dir=str(run_dir),
                     device=device, config=cfg, labeled_ids=np.sort(labeled), pool_ids=np.sort(pool_ids),
                     labeled_labels=labels, scorer=lambda feats, strat, n: select_topk(feats, strat, n, cfg.scale))
    if trains:
        t0 = time.perf_counter()
        ctx.features = share_from_rank_zero(features)
        strategy.fit(ctx)
        row["acq_fit_s"] = time.perf_counter() - t0
    if rank != 0:
        return None
    # Without a fit, features stream straight into scoring: one Ray Data execution per cycle,
    # so scoring_s also covers the feature extraction.
    t0 = time.perf_counter()
    ids, scores, merge_s = strategy.select(ctx, k)
    row["selection_s"] = merge_s
    row["scoring_s"] = time.perf_counter() - t0 - merge_s
    if ids.size != k:
        raise PoolStateError(f"selection returned {ids.size} ids, expected {k}")
    return Selection(ids, scores, strategy)


def group_loop(loop_config: dict[str, Any]) -> None:
    """Per-worker body of several experiments run one after another in one worker group."""
    for i, item in enumerate(loop_config["experiments"]):
        # Only the first experiment paid the worker group's start-up.
        experiment_loop({**item, "submitted_at": loop_config["submitted_at"] if i == 0 else time.time()})
