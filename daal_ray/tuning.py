"""Many experiments at once through Ray Tune: one trial per (strategy, seed, budget, dataset).

Each trial runs :func:`daal_ray.driver.run_experiment` with its own ALDriver and run
directory, so a trial that is re-run resumes where it stopped. Trials run in parallel
within the cluster's resources (``ScaleConfig.trial_concurrency`` caps them).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import pyarrow as pa

from daal_ray.config import AcquisitionConfig, DataConfig, ExperimentConfig, ScaleConfig, TrainConfig
from daal_ray.data import get_dataset_class
from daal_ray.driver import _unwrap, open_dataset, resolve_config
from daal_ray.errors import ConfigError
from daal_ray.results import RESULTS_FILE, combine

logger = logging.getLogger(__name__)


def experiment_name(cfg: ExperimentConfig) -> str:
    """Stable, readable run name: dataset-strategy-seed[-budget]."""
    name = f"{cfg.data.name}-{cfg.acquisition.strategy}-seed{cfg.seed}"
    return f"{name}-budget{cfg.budget}" if cfg.budget else name


def plan_experiments(*, dataset: Optional[str] = None, strategies: Optional[Sequence[str]] = None,
                     seeds: Iterable[int] = (0,), budgets: Sequence[int] = (0,), base: Optional[dict] = None,
                     data: Optional[dict] = None, train: Optional[dict] = None, scale: Optional[dict] = None,
                     protocol: Optional[dict] = None,
                     strategy_params: Optional[dict[str, dict]] = None) -> list[ExperimentConfig]:
    """The grid strategy x seed x budget on one dataset, each a full ExperimentConfig.

    ``base`` is a (partial) ExperimentConfig dict, e.g. read from a ``--config`` file; it
    is validated strictly. The keyword groups override it: ``train`` fields override the
    dataset's default recipe, ``protocol`` sets ExperimentConfig fields such as
    ``initial_fraction``; ``strategy_params`` maps a strategy name to its params.
    """
    base = dict(base or {})
    ExperimentConfig.from_dict(base)  # unknown keys and wrong types stop here, named
    base_data = dict(base.pop("data", {}))
    base_acq = dict(base.pop("acquisition", {}))
    dataset = dataset or base_data.get("name", "digits")
    strategies = list(strategies or [base_acq.get("strategy", "random")])
    recipe = get_dataset_class(dataset).default_train().to_dict()
    recipe.update(base.pop("train", {}))
    recipe.update(train or {})
    data_cfg = DataConfig.from_dict({**base_data, "name": dataset, **(data or {})})
    train_cfg = TrainConfig.from_dict(recipe)
    scale_cfg = ScaleConfig.from_dict({**base.pop("scale", {}), **(scale or {})})
    base.pop("name", None)
    configs = []
    for strategy in strategies:
        params = dict(base_acq.get("params", {})) if strategy == base_acq.get("strategy") else {}
        params.update((strategy_params or {}).get(strategy, {}))
        acq = AcquisitionConfig(strategy=strategy, params=params)
        for seed in seeds:
            for budget in budgets:
                cfg = ExperimentConfig.from_dict({**base, **(protocol or {}), "seed": seed, "budget": budget})
                cfg = dataclasses.replace(cfg, data=data_cfg, train=train_cfg, acquisition=acq, scale=scale_cfg)
                configs.append(cfg.replace(name=experiment_name(cfg)))
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError("the grid repeats an experiment; give each strategy, seed and budget once")
    return configs


def preflight(configs: Sequence[ExperimentConfig]) -> None:
    """Open each dataset once and check every protocol fits its pool, before anything is written.

    Raises:
        DaalRayError: a missing data root, an unreadable image, an unknown model, a budget
            larger than the pool, named.
    """
    for cfg in configs:
        cfg = resolve_config(cfg)
        cfg.schedule(len(open_dataset(cfg.data).sample_ids("train")))


def _trial(config: dict[str, Any]) -> None:
    """Tune function trainable: one experiment, reported as its final metric."""
    import ray.tune

    from daal_ray.driver import run_experiment

    cfg = ExperimentConfig.from_dict(config["experiment"])
    table = run_experiment(cfg, config["run_root"])
    last = table.slice(table.num_rows - 1).to_pylist()[0] if table.num_rows else {}
    ray.tune.report({"cycle": last.get("cycle", -1), "value": last.get("value", float("nan")),
                     "labeled_fraction": last.get("labeled_fraction", 0.0)})


def run_experiments(configs: Sequence[ExperimentConfig], run_root: str | Path, *, sweep_name: str = "sweep",
                    concurrency: int = 0, share_worker_group: Optional[bool] = None) -> pa.Table:
    """Run every config under ``run_root``; return all results combined.

    With ``share_worker_group`` (default: when ``concurrency=1``) the experiments run one
    after another in one Ray Train worker group (:func:`daal_ray.driver.run_experiment_group`),
    which pays the group's start-up once. Otherwise each is a Tune trial, run in parallel as resources allow; if a trial
    fails, the first error is raised (unwrapped to the message that names the fix) after the
    others finish. The combined table is also written to ``run_root/results.parquet``.
    """
    import ray.tune

    from daal_ray.driver import run_experiment_group

    preflight(configs)
    run_root = Path(run_root).resolve()
    run_root.mkdir(parents=True, exist_ok=True)
    if share_worker_group is None:
        share_worker_group = concurrency == 1
    if share_worker_group:
        run_experiment_group(list(configs), run_root)
        return combine([run_root / c.name / RESULTS_FILE for c in configs], run_root / RESULTS_FILE)
    tuner = ray.tune.Tuner(
        # A trial only waits on its TorchTrainer, which reserves the real resources itself.
        ray.tune.with_resources(_trial, {"cpu": 0.01}),
        param_space={"experiment": ray.tune.grid_search([c.to_dict() for c in configs]), "run_root": str(run_root)},
        tune_config=ray.tune.TuneConfig(max_concurrent_trials=concurrency or None),
        run_config=ray.tune.RunConfig(name=sweep_name, storage_path=str(run_root / "tune"), verbose=0),
    )
    grid = tuner.fit()
    table = combine([run_root / c.name / RESULTS_FILE for c in configs], run_root / RESULTS_FILE)
    for result in grid:
        if result.error is not None:
            raise _unwrap(result.error)
    return table
