"""The ALDriver actor and the active-learning cycle loop.

One experiment runs as **one** Ray Train worker group that lives for all its cycles, so
the 10-15 s start-up of a TorchTrainer is paid once per experiment rather than once per
cycle. Every rank trains the task model (DDP) and evaluates it; rank 0 then drives the
pool-wide steps through Ray Data (features, scoring, top-K), proposes the batch to the
ALDriver, asks the oracle and commits. The ALDriver is the only writer of the pool state;
it persists every change before answering, and a restarted ALDriver reloads it.

Resuming is the same code path as starting: the loop reads the pool state, finds the
current cycle, reuses a pending batch if a crash came between propose and commit, and
reuses the cycle's checkpoint if the model was already trained.

    ExperimentConfig -> run_experiment -> ALDriver (named actor, pool_state.parquet)
                                       -> TorchTrainer(experiment_loop) for all cycles
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pyarrow as pa
import ray
import torch

from daal_ray.acquisition import FitContext, build_strategy
from daal_ray.config import ExperimentConfig
from daal_ray.data import get_dataset, get_dataset_class
from daal_ray.data.base import PoolDataset
from daal_ray.errors import ConfigError, DaalRayError, PoolStateError, RunLockedError
from daal_ray.pool import PoolState, load_last_good
from daal_ray.report import batch_redundancy
from daal_ray.results import STEP_COLUMNS, read_results, upsert_rows
from daal_ray.training import (
    METRICS,
    FitStats,
    barrier,
    derive_seed,
    evaluate,
    fit_task_model,
    load_checkpoint_meta,
    save_checkpoint,
    share_from_rank_zero,
    world,
)

logger = logging.getLogger(__name__)

NAMESPACE = "daal_ray"
STATE_FILE = "pool_state.parquet"
CONFIG_FILE = "config.json"
# Fields that may change between a run and its resumption (resources, not the science).
_RESUMABLE_CHANGES = ("scale",)


# ====================================================================== ALDriver
class PoolKeeper:
    """Owns one experiment's :class:`PoolState`; every change is persisted before it returns.

    Wrapped as the :data:`ALDriver` actor; a plain object in unit tests. On (re)start it
    reloads ``run_dir/pool_state.parquet`` when it exists.
    """

    def __init__(self, run_dir: str, run_id: str, pool_ids: np.ndarray) -> None:
        self.path = Path(run_dir) / STATE_FILE
        if self.path.exists():
            self.state = load_last_good(self.path, run_id=run_id)
            if not np.array_equal(self.state.sample_ids, np.sort(np.asarray(pool_ids, dtype=np.int64))):
                raise PoolStateError(f"pool state {self.path} describes another pool than the dataset's training split; "
                                     f"use a new run directory for changed data")
            logger.info("ALDriver: reloaded %s (next cycle %d)", self.path, self.state.next_cycle)
        else:
            self.state = PoolState(pool_ids, run_id=run_id)

    def snapshot(self) -> dict[str, Any]:
        """Plain-data view of the state for the workers."""
        s = self.state
        return {
            "next_cycle": s.next_cycle,
            "labeled_ids": s.labeled_ids(),
            "labeled_labels": s.labeled_labels(),
            "pending_cycle": s.pending_cycle,
            "pending_ids": s.pending_ids(),
            "num_pool": len(s),
            "history": [r.to_dict() for r in s.history],
        }

    def propose(self, cycle: int, ids: np.ndarray, expected_size: Optional[int] = None) -> np.ndarray:
        before = self.state.pending_cycle
        out = self.state.propose(cycle, ids, expected_size=expected_size)
        if self.state.pending_cycle != before:
            self.state.save(self.path)
        return out

    def commit(self, cycle: int, ids: np.ndarray, labels: Optional[np.ndarray], strategy: str = "",
               partial: bool = False) -> bool:
        changed = self.state.commit(cycle, ids, labels, strategy=strategy, partial=partial)
        if changed:
            self.state.save(self.path)
        return changed

    def pid(self) -> int:
        return os.getpid()


ALDriver = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(PoolKeeper)


def driver_name(run_dir: Path) -> str:
    """Actor name of a run: stable for one run directory, distinct across directories."""
    digest = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:12]
    return f"aldriver-{run_dir.name}-{digest}"


def start_driver(run_dir: Path, run_id: str, pool_ids: np.ndarray):
    """Get or create the run's named ALDriver and wait until its state is loaded.

    The ALDriver of a run that just ended in this cluster may still be registered while it
    is torn down; the lookup then returns that dying actor, whose first call fails without
    a daal-ray error. The lookup is repeated (for up to 10 s) until a live one answers.
    """
    attempts = 50
    for attempt in range(attempts):
        handle = ALDriver.options(name=driver_name(run_dir), namespace=NAMESPACE, get_if_exists=True).remote(
            str(run_dir), run_id, pool_ids)
        try:
            ray.get(handle.snapshot.remote())
            return handle
        except ray.exceptions.RayActorError as exc:
            inner = _unwrap(exc)
            creation_failed = "creation task" in str(exc)  # the state failed to load: say why, do not retry
            if creation_failed and inner is exc:
                # Ray reports the failed constructor as ActorDiedError; load the state here
                # to raise its own PoolStateError (naming the files) instead.
                PoolKeeper(str(run_dir), run_id, pool_ids)
            if inner is not exc or creation_failed or attempt == attempts - 1:
                raise inner from None
            logger.info("ALDriver %s is being torn down; looking it up again", driver_name(run_dir))
            time.sleep(0.2)
    raise AssertionError("unreachable")


# ====================================================================== helpers
def resolve_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """Fill the dataset's default model in when none is named; check the model fits the task.

    Raises:
        ConfigError: an unknown model, or a classifier named for a segmentation dataset
            (or the reverse).
    """
    cls = get_dataset_class(cfg.data.name)
    if not cfg.train.model:
        cfg = cfg.replace(train=cfg.train.replace(model=cls.default_model))
    from daal_ray.models import build_model, check_model_name

    check_model_name(cfg.train.model)
    # Datasets may be registered as factories: read their attributes with the protocol's defaults.
    data_task = getattr(cls, "task", "classification")
    model = build_model(cfg.train.model, num_classes=2, in_channels=getattr(cls, "in_channels", 3))
    model_task = getattr(model, "task", "classification")
    if model_task != data_task:
        raise ConfigError(f"model {cfg.train.model!r} is a {model_task} model but dataset {cfg.data.name!r} is "
                          f"{data_task}; pick a {data_task} model (its default is "
                          f"{getattr(cls, 'default_model', '?')!r}, see `daal-ray models`)")
    return cfg


def run_id_of(cfg: ExperimentConfig) -> str:
    """Identity of an experiment: its name plus a hash of everything but resources."""
    d = cfg.to_dict()
    for key in _RESUMABLE_CHANGES:
        d.pop(key, None)
    return f"{cfg.name}-{hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]}"


def prepare_run_dir(run_dir: Path, cfg: ExperimentConfig) -> None:
    """Create ``run_dir`` and save the config, or check it matches the saved one."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CONFIG_FILE
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except ValueError as exc:
            raise ConfigError(f"{path} is not valid JSON; remove it or use another run directory") from exc
        now = cfg.to_dict()
        diff = sorted(k for k in set(saved) | set(now) if k not in _RESUMABLE_CHANGES and saved.get(k) != now.get(k))
        if diff:
            raise ConfigError(f"{run_dir} holds experiment {saved.get('name')!r} with another config "
                              f"(differs in: {', '.join(diff)}); use another run directory or name")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    os.replace(tmp, path)


LOCK_FILE = ".lock"


@contextlib.contextmanager
def hold_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` while an experiment runs in it.

    The lock is an ``flock`` on ``run_dir/.lock``: the kernel drops it when the holder
    dies, so a crashed run never blocks its own resumption, while a live one refuses a
    second run that would interleave writes to the same pool state.

    Raises:
        RunLockedError: naming the lock file and the pid that holds it.
    """
    path = run_dir / LOCK_FILE
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise RunLockedError(f"{run_dir} is in use by a live run (lock {path} held by pid {holder}); "
                                 f"wait for it to finish or use another run directory") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fh.close()  # releases the lock


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


def _unwrap(exc: BaseException) -> BaseException:
    """Find a DaalRayError inside Ray's wrappers so users see the message that names the fix."""
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen or e is None:
            continue
        seen.add(id(e))
        if isinstance(e, DaalRayError):
            return e
        cause = getattr(e, "cause", None)
        stack.extend([e.__cause__, e.__context__, cause] if isinstance(cause, BaseException) else [e.__cause__, e.__context__])
        for attr in ("worker_failures", "errors"):
            val = getattr(e, attr, None)
            if isinstance(val, dict):
                stack.extend(v for v in val.values() if isinstance(v, BaseException))
            elif isinstance(val, (list, tuple)):
                stack.extend(v for v in val if isinstance(v, BaseException))
        if hasattr(e, "as_instanceof_cause"):
            try:
                stack.append(e.as_instanceof_cause())
            except Exception:
                pass
    return exc


def _report(metrics: dict[str, Any], checkpoint_dir: Optional[Path]) -> None:
    """Report to Ray Train (all ranks must call it); rank 0 attaches the cycle checkpoint."""
    import ray.train

    ckpt = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
    ray.train.report(metrics, checkpoint=ckpt)


# ====================================================================== the loop
@functools.lru_cache(maxsize=1)
def _open_dataset(data_json: str) -> PoolDataset:
    from daal_ray.config import DataConfig

    return get_dataset(DataConfig.from_dict(json.loads(data_json)))


def open_dataset(data: Any) -> PoolDataset:
    """The dataset of a DataConfig, opened once per process for consecutive users of it
    (preflight, each experiment of a group, each worker), so a large image folder is not
    scanned again for every experiment."""
    return _open_dataset(data.to_json())


def experiment_loop(loop_config: dict[str, Any]) -> None:
    """Per-worker body of an experiment: every cycle, from wherever the state stands."""
    import ray.train

    cfg = ExperimentConfig.from_dict(loop_config["config"])
    run_dir = Path(loop_config["run_dir"])
    driver = ray.get_actor(loop_config["driver_name"], namespace=NAMESPACE)
    rank, size = world()
    torch.set_num_threads(cfg.scale.threads)
    device = ray.train.torch.get_device() if cfg.scale.use_gpu else torch.device("cpu")
    startup_s = time.time() - loop_config["submitted_at"]
    from daal_ray.runtime import quiet_ray_data

    quiet_ray_data()
    logging.getLogger("ray.train").setLevel(logging.WARNING)

    dataset = open_dataset(cfg.data)
    pool_ids = dataset.sample_ids("train")
    n_initial, per_cycle, rounds = cfg.schedule(len(pool_ids))
    strategy_name = cfg.acquisition.strategy

    if rank == 0:
        snap = ray.get(driver.snapshot.remote())
        if snap["next_cycle"] == 0:
            ids = ray.get(driver.propose.remote(0, initial_pool(pool_ids, n_initial, cfg.seed), n_initial))
            ray.get(driver.commit.remote(0, ids, oracle_labels(dataset, ids), "initial"))
    barrier()

    while True:
        t_cycle = time.perf_counter()
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
        last = cycle >= rounds or labeled.size >= len(pool_ids)
        batch = None
        if not last:
            batch = _select(cfg, dataset, pool_ids, labeled, cycle, min(per_cycle, len(pool_ids) - labeled.size),
                            ckpt_dir, run_dir, row, device,
                            labels=labels if dataset.task == "classification" else None)
        if rank == 0:
            row["cycle_s"] = time.perf_counter() - t_cycle
            row["overhead_s"] = max(0.0, row["cycle_s"] - sum(row[c] for c in STEP_COLUMNS if c != "overhead_s"))
            if batch is not None:
                row["num_selected"] = int(batch.size)
                row.update(batch_redundancy(cfg, dataset, batch, ckpt_dir / "model.pt", device))  # diagnostic, untimed
            # The row is durable before the batch is proposed: a crash in between re-runs this
            # cycle (same model, same selection) and replaces the row; after the proposal the
            # pending path commits the batch, and the cycle's row is already there.
            upsert_rows(run_dir / "results.parquet", [row])
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
        from daal_ray.models import build_model

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


def _select(*args: Any, **kwargs: Any) -> Optional[np.ndarray]:
    """The cycle loop's selection step: the ids of :func:`select_batch`."""
    picked = select_batch(*args, **kwargs)
    return None if picked is None else picked[0]


def select_batch(cfg: ExperimentConfig, dataset: PoolDataset, pool_ids: np.ndarray, labeled: np.ndarray, cycle: int,
                 k: int, ckpt_dir: Path, run_dir: Path, row: dict[str, Any], device: torch.device,
                 labels: Optional[np.ndarray] = None) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """Features -> fit -> select (``Strategy.select``: top-K or the strategy's own) for the
    next cycle. ``labels`` are those of ``labeled`` (sorted ids). Every rank calls it;
    returns ``(ids in pick order, their scores)`` on rank 0, None on the others. The
    step timings go into ``row``."""
    from daal_ray.inference import extract_features, pool_dataset

    rank, _ = world()
    strategy = build_strategy(cfg.acquisition, seed=cfg.seed, cycle=cycle)
    trains = strategy.trains
    features = None
    if rank == 0:
        t0 = time.perf_counter()
        features = pool_dataset(pool_ids, labeled, cfg.scale)
        if strategy.needs:
            features = extract_features(features, data=cfg.data, model_name=cfg.train.model,
                                        num_classes=dataset.num_classes, in_channels=dataset.in_channels,
                                        checkpoint=str(ckpt_dir / "model.pt"), scale=cfg.scale,
                                        acquisition=cfg.acquisition,
                                        predictor_options=strategy.predictor_options())
            if trains:  # fitting and scoring both read the features: compute them once
                features = features.materialize()
        row["features_s"] = time.perf_counter() - t0
    ctx = FitContext(features=features, num_labeled=int(labeled.size), cycle=cycle, run_dir=str(run_dir),
                     device=device, config=cfg, labeled_ids=np.sort(labeled), pool_ids=np.sort(pool_ids),
                     labeled_labels=labels)
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
    return ids, scores


def group_loop(loop_config: dict[str, Any]) -> None:
    """Per-worker body of several experiments run one after another in one worker group."""
    for i, item in enumerate(loop_config["experiments"]):
        # Only the first experiment paid the worker group's start-up.
        experiment_loop({**item, "submitted_at": loop_config["submitted_at"] if i == 0 else time.time()})


def run_on_worker_group(loop: Any, loop_config: dict[str, Any], scale: Any, storage: Path) -> None:
    """Run ``loop`` on a Ray Train worker group sized by ``scale``; return when it is done."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    resources = {"CPU": scale.cpus_per_worker}
    if scale.use_gpu:
        resources["GPU"] = scale.gpus_per_worker
    trainer = TorchTrainer(
        loop,
        train_loop_config={**loop_config, "submitted_at": time.time()},
        scaling_config=ray.train.ScalingConfig(num_workers=scale.num_workers, use_gpu=scale.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(name=storage.name, storage_path=str(storage.parent),
                                       failure_config=ray.train.FailureConfig(max_failures=2)),
        torch_config=TorchConfig(backend="nccl" if scale.use_gpu else "gloo", timeout_s=3600),
    )
    try:
        trainer.fit()
    except Exception as exc:
        inner = _unwrap(exc)
        if inner is not exc:
            raise inner from None
        raise


def _open_experiment(cfg: ExperimentConfig, run_root: str | Path, stack: contextlib.ExitStack) -> dict[str, Any]:
    """Validate, lock and prepare one experiment's run directory and start its ALDriver.

    The lock and the ALDriver handle live as long as ``stack``: a non-detached actor dies
    with its last handle.
    """
    run_dir = (Path(run_root) / cfg.name).resolve()
    pool_ids = open_dataset(cfg.data).sample_ids("train")  # fails fast on a missing root or bad files
    cfg.schedule(len(pool_ids))  # fails fast on a budget larger than the pool
    run_dir.mkdir(parents=True, exist_ok=True)
    stack.enter_context(hold_run_dir(run_dir))
    prepare_run_dir(run_dir, cfg)
    handle = start_driver(run_dir, run_id_of(cfg), pool_ids)
    stack.callback(lambda: handle)  # keeps the handle referenced until the stack closes
    return {"config": cfg.to_dict(), "run_dir": str(run_dir), "driver_name": driver_name(run_dir)}


# ====================================================================== entry point
def run_experiment(cfg: ExperimentConfig, run_root: str | Path) -> pa.Table:
    """Run (or resume) one experiment under ``run_root/cfg.name``; returns its results.

    Raises:
        DaalRayError: bad config or data, with the message naming the fix;
            RunLockedError if a live run holds the run directory.
    """
    cfg = resolve_config(cfg)
    with contextlib.ExitStack() as stack:
        item = _open_experiment(cfg, run_root, stack)
        run_on_worker_group(experiment_loop, item, cfg.scale, Path(item["run_dir"]) / "ray_train" / "train")
    return read_results(item["run_dir"])


def run_experiment_group(configs: list[ExperimentConfig], run_root: str | Path) -> list[pa.Table]:
    """Run (or resume) several experiments one after another in ONE Ray Train worker group.

    The group's start-up and teardown are paid once instead of once per experiment; each
    experiment keeps its own run directory, lock and ALDriver. All configs must share one
    ScaleConfig (the group's size). If one fails, the rest do not run; a re-run resumes.
    """
    configs = [resolve_config(c) for c in configs]
    if len({json.dumps(c.scale.to_dict(), sort_keys=True) for c in configs}) != 1:
        raise ConfigError("experiments that share a worker group need one ScaleConfig")
    group = hashlib.sha1(",".join(c.name for c in configs).encode()).hexdigest()[:10]
    with contextlib.ExitStack() as stack:
        items = [_open_experiment(cfg, run_root, stack) for cfg in configs]
        run_on_worker_group(group_loop, {"experiments": items}, configs[0].scale,
             Path(run_root).resolve() / "ray_train" / f"group-{group}")
    return [read_results(item["run_dir"]) for item in items]
