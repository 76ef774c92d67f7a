"""Launching experiments: run directories opened, ALDrivers started, one worker group.

One experiment runs as **one** Ray Train worker group that lives for all its cycles, so
the 10-15 s start-up of a TorchTrainer is paid once per experiment rather than once per
cycle; several experiments can share one group, one after another
(:func:`run_experiment_group`). Each experiment keeps its own run directory, lock and
ALDriver.

    ExperimentConfig -> run_experiment -> ALDriver (named actor, pool_state.parquet)
                                       -> TorchTrainer(experiment_loop) for all cycles
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

from daal_ray.acquisition import get_strategy_class
from daal_ray.atomic_io import set_aside_torn
from daal_ray.config import ExperimentConfig, resolve_config
from daal_ray.cycle import experiment_loop, group_loop
from daal_ray.data import open_dataset
from daal_ray.driver import driver_name, start_driver
from daal_ray.errors import ConfigError, find_error
from daal_ray.results import read_results
from daal_ray.rundir import hold_run_dir, prepare_run_dir, run_id_of
from daal_ray.runtime import check_reachable_everywhere, fit_concurrency

__all__ = ["run_experiment", "run_experiment_group", "run_on_worker_group"]

logger = logging.getLogger(__name__)

# Ray Train's record of the checkpoints a run reported, in the run's storage folder.
TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"


def set_aside_torn_train_snapshot(storage: Path) -> Path | None:
    """Move Ray Train's snapshot in ``storage`` aside if it does not parse; return where.

    A fit of a run name that has a snapshot loads it, and an empty or cut-short one (its
    node or process lost while Ray Train wrote it, which it does in place) fails the fit in
    ``TrainController.__init__``, so the run could never resume. The project does not
    resume from Ray Train's snapshot (the cycle loop resumes from the run directory's pool
    state and cycle checkpoints), so a torn one is kept as ``<name>.torn-<unix time>`` and
    the fit starts Ray Train's record afresh.
    """
    snapshot = storage / TRAIN_SNAPSHOT
    try:
        json.loads(snapshot.read_bytes())
        return None
    except FileNotFoundError:
        return None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        torn = set_aside_torn(snapshot)
        logger.warning("Ray Train's snapshot %s is torn (%s), as a node or process lost while writing it leaves "
                       "it; the run resumes from its own state, and the torn file is kept as %s", snapshot, exc, torn)
        return torn


def run_on_worker_group(loop: Any, loop_config: dict[str, Any], scale: Any, storage: Path) -> None:
    """Run ``loop`` on a Ray Train worker group sized by ``scale``; return when it is done.

    Raises:
        ConfigError: the Ray cluster this process started cannot hold the group and the
            pool scoring its loop starts (it would wait forever).
    """
    fit_concurrency(scale, 1, what=f"the worker group of {storage.name}")
    resources = {"CPU": scale.cpus_per_worker}
    if scale.use_gpu:
        resources["GPU"] = scale.gpus_per_worker
    trainer = TorchTrainer(
        loop,
        train_loop_config={**loop_config, "submitted_at": time.time()},
        scaling_config=ray.train.ScalingConfig(num_workers=scale.num_workers, use_gpu=scale.use_gpu,
                                               resources_per_worker=resources,
                                               placement_strategy=scale.placement_strategy),
        run_config=ray.train.RunConfig(name=storage.name, storage_path=str(storage.parent),
                                       failure_config=ray.train.FailureConfig(max_failures=2)),
        torch_config=TorchConfig(backend="nccl" if scale.use_gpu else "gloo", timeout_s=3600),
    )
    set_aside_torn_train_snapshot(storage)
    try:
        trainer.fit()
    except Exception as exc:
        inner = find_error(exc)
        if inner is not exc:
            raise inner from None
        raise


def _strategy_params(cfg: ExperimentConfig) -> tuple[dict[str, Any], frozenset[str]]:
    """The experiment's strategy params with every default filled in, and those that only
    size the run (checked on resumption by :func:`daal_ray.rundir.prepare_run_dir`)."""
    params_cls = get_strategy_class(cfg.acquisition.strategy).Params
    params = params_cls.from_dict(cfg.acquisition.params, where=f"AcquisitionConfig.params ({cfg.acquisition.strategy})")
    return params.to_dict(), params.RUN_LENGTH_PARAMS


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
    check_reachable_everywhere(run_dir)
    prepare_run_dir(run_dir, cfg, *_strategy_params(cfg))
    handle = start_driver(run_dir, run_id_of(cfg), pool_ids)
    stack.callback(lambda: handle)  # keeps the handle referenced until the stack closes
    return {"config": cfg.to_dict(), "run_dir": str(run_dir), "driver_name": driver_name(run_dir)}


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
