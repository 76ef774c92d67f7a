"""Many experiments at once through Ray Tune: one trial per (strategy, seed, budget, dataset).

Each trial runs :func:`daal_ray.experiment.run_experiment` with its own ALDriver and run
directory ``run_root/<experiment name>``, so a trial that is re-run resumes from its last
committed cycle. Trials run in parallel within the cluster's resources
(``ScaleConfig.trial_concurrency`` caps them; 0 = as resources allow). The job scripts'
:func:`run_experiments` with a concurrency of N runs N lanes instead, each one worker group
that runs its share of the experiments one after another (:func:`worker_group_lanes`).

A sweep (:func:`run_sweep`, ``daal-ray sweep``, ``jobs/sweep.py``) is resumable: re-run
with the same arguments after a kill, it skips the experiments whose results are complete
and runs the rest, each continuing where its pool state stands. Every trial reports each
cycle to Tune as it is recorded (``ray.tune.report``), and the driver logs one line per
report: experiment, cycle, labeled fraction and metric.

Trials that share dataset and seed start from the same initial labeled pool whatever
their strategy and budget (:func:`daal_ray.cycle.initial_pool`), so strategies are
compared on equal footing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import pyarrow as pa
import ray.tune

from daal_ray import errors as errors_mod
from daal_ray.config import (
    MAX_NAME_LEN,
    AcquisitionConfig,
    DataConfig,
    ExperimentConfig,
    ScaleConfig,
    TrainConfig,
    resolve_config,
)
from daal_ray.data import get_dataset_class, open_dataset
from daal_ray.errors import ConfigError, DaalRayError, find_error
from daal_ray.experiment import run_experiment, run_experiment_group
from daal_ray.results import DIAGNOSTIC_COLUMNS, RESULTS_FILE, STEP_COLUMNS, combine, read_results
from daal_ray.runtime import experiment_demand, fit_concurrency

logger = logging.getLogger(__name__)
# How often a trial looks for new cycle rows to report (seconds); a cycle takes longer.
POLL_S = 1.0


def experiment_name(cfg: ExperimentConfig, variant: str = "") -> str:
    """Stable, readable run name: dataset-strategy[-variant]-seed[-budget], at most
    :data:`MAX_NAME_LEN` characters.

    Whitespace is dropped from the variant. A variant whose params make the name longer is cut to what fits and followed by the
    first 8 hex digits of its SHA-1, so two variants never share a name; the seed and
    budget stay at the end, readable. The full params are in every results row's config.
    """
    tail = f"-seed{cfg.seed}" + (f"-budget{cfg.budget}" if cfg.budget else "")
    head = f"{cfg.data.name}-{cfg.acquisition.strategy}"
    variant = re.sub(r"\s+", "", variant)  # list values ([8, 8]) read with spaces
    if variant and len(head) + 1 + len(variant) + len(tail) > MAX_NAME_LEN:
        digest = hashlib.sha1(variant.encode()).hexdigest()[:8]
        room = max(0, MAX_NAME_LEN - len(head) - len(tail) - len(digest) - 2)
        variant = f"{variant[:room].rstrip('-=')}-{digest}" if room else digest
    return f"{head}-{variant}{tail}" if variant else f"{head}{tail}"


def parse_strategy(spec: str) -> tuple[str, dict[str, Any], str]:
    """``"daal[use_rdis=false;epochs=5]"`` -> ``("daal", {"use_rdis": False, "epochs": 5}, "use_rdis=false-epochs=5")``.

    A strategy name, optionally with params in brackets (``;``-separated ``key=value``,
    values read as JSON, else as text): how a sweep runs ablations, several variants of one
    strategy side by side. The third item names the variant in experiment names.

    Raises:
        ConfigError: a malformed spec, named.
    """
    m = re.fullmatch(r"\s*([A-Za-z0-9_]+)\s*(?:\[(.*)\])?\s*", spec)
    if not m:
        raise ConfigError(f"strategy {spec!r} must be NAME or NAME[key=value;key=value], e.g. daal[use_rdis=false]")
    name, body = m.group(1), m.group(2)
    params: dict[str, Any] = {}
    parts = []
    for item in filter(None, (t.strip() for t in (body or "").split(";"))):
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"strategy {spec!r}: {item!r} is not key=value")
        try:
            params[key.strip()] = json.loads(text.strip())
        except ValueError:
            params[key.strip()] = text.strip()
        parts.append(f"{key.strip()}={text.strip()}")
    variant = "-".join(parts)
    if "/" in variant:
        raise ConfigError(f"strategy {spec!r}: values may not contain '/'")
    return name, params, variant


def plan_experiments(*, dataset: Optional[str] = None, strategies: Optional[Sequence[str]] = None,
                     seeds: Iterable[int] = (0,), budgets: Sequence[int] = (0,), base: Optional[dict] = None,
                     data: Optional[dict] = None, train: Optional[dict] = None, scale: Optional[dict] = None,
                     protocol: Optional[dict] = None,
                     strategy_params: Optional[dict[str, dict]] = None) -> list[ExperimentConfig]:
    """The grid strategy x seed x budget on one dataset, each a full ExperimentConfig.

    ``base`` is a (partial) ExperimentConfig dict, e.g. read from a ``--config`` file; it
    is validated strictly. The keyword groups override it: ``train`` fields override the
    dataset's default recipe, ``protocol`` sets ExperimentConfig fields such as
    ``initial_fraction``; ``strategy_params`` maps a strategy name to its params. A
    strategy may carry params of its own, ``daal[use_rdis=false]`` (:func:`parse_strategy`),
    which override both.
    """
    base = dict(base or {})
    ExperimentConfig.from_dict(base)  # unknown keys and wrong types stop here, named
    base_data = dict(base.pop("data", {}))
    base_acq = dict(base.pop("acquisition", {}))
    dataset = dataset or base_data.get("name", "digits")
    strategies = list(strategies or [base_acq.get("strategy", "random")])
    dataset_cls = get_dataset_class(dataset)
    recipe = dataset_cls.default_train().to_dict()
    recipe.update(base.pop("train", {}))
    recipe.update(train or {})
    data_cfg = DataConfig.from_dict({**base_data, "name": dataset, **(data or {})})
    train_cfg = TrainConfig.from_dict(recipe)
    scale_cfg = ScaleConfig.from_dict({**base.pop("scale", {}), **(scale or {})})
    base.pop("name", None)
    configs = []
    for spec in strategies:
        strategy, spec_params, variant = parse_strategy(spec)
        params = dict(base_acq.get("params", {})) if strategy == base_acq.get("strategy") else {}
        params.update((strategy_params or {}).get(strategy, {}))
        params.update(spec_params)
        acq = AcquisitionConfig(strategy=strategy, params=params)
        for seed in seeds:
            for budget in budgets:
                # The metric follows the task (mIoU for segmentation) unless base or protocol name one.
                metric = "miou" if getattr(dataset_cls, "task", "") == "segmentation" else "accuracy"
                cfg = ExperimentConfig.from_dict({"metric": metric, **base, **(protocol or {}), "seed": seed,
                                                  "budget": budget})
                cfg = dataclasses.replace(cfg, data=data_cfg, train=train_cfg, acquisition=acq, scale=scale_cfg)
                configs.append(cfg.replace(name=experiment_name(cfg, variant)))
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


def plan_sweep(datasets: Sequence[Optional[str]] = (None,), **kwargs: Any) -> list[ExperimentConfig]:
    """The grid strategy x seed x budget on each of ``datasets``: :func:`plan_experiments`
    per dataset (same keyword arguments), concatenated."""
    configs = [c for d in datasets for c in plan_experiments(dataset=d, **kwargs)]
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError("the sweep repeats an experiment; give each dataset once")
    return configs


def experiment_complete(cfg: ExperimentConfig, run_root: str | Path) -> bool:
    """True when ``run_root/cfg.name`` holds every cycle's results row: cycles 0..last,
    the last one selecting nothing (the loop's final row)."""
    table = read_results(Path(run_root) / cfg.name)
    if not table.num_rows:
        return False
    cycles = table["cycle"].to_pylist()
    final = [c for c, n in zip(cycles, table["num_selected"].to_pylist()) if n == 0]
    return bool(final) and sorted(set(cycles)) == list(range(max(final) + 1))


# Per-cycle numbers a trial reports besides the metric (what a Tune callback, e.g. the
# MLflow one of daal_ray.tracking, logs); a diagnostic a strategy does not compute is NaN.
REPORTED_COLUMNS = ("num_selected", *DIAGNOSTIC_COLUMNS, *STEP_COLUMNS, "startup_s", "cycle_s")


def _row_metrics(row: dict[str, Any], cfg: ExperimentConfig, done: bool) -> dict[str, Any]:
    extra = {c: float(row[c]) for c in REPORTED_COLUMNS if row.get(c) is not None}
    return {"experiment": cfg.name, "cycle": int(row["cycle"]), "labeled_fraction": float(row["labeled_fraction"]),
            "num_labeled": int(row["num_labeled"]), "metric": row["metric"], "value": float(row["value"]),
            **extra, "done": done}


def _trial(config: dict[str, Any]) -> None:
    """Tune function trainable: one experiment, reported to Tune once per recorded cycle.

    The experiment runs in a thread of the trial; this thread watches its results file and
    reports each new cycle row, so Tune (and the driver's progress log) sees the cycle,
    labeled fraction and metric while the experiment runs.
    """

    cfg = ExperimentConfig.from_dict(config["experiment"])
    run_dir = Path(config["run_root"]) / cfg.name
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["table"] = run_experiment(cfg, config["run_root"])
        except BaseException as exc:  # re-raised in the trial's thread below
            outcome["error"] = exc

    worker = threading.Thread(target=target, name=f"experiment-{cfg.name}", daemon=True)
    worker.start()
    reported = -1
    while True:
        alive = worker.is_alive()  # read before the file: a row written before the end is seen
        rows = sorted((r for r in read_results(run_dir).to_pylist() if r["cycle"] > reported), key=lambda r: r["cycle"])
        for r in rows:
            ray.tune.report(_row_metrics(r, cfg, done=not alive and r is rows[-1] and "error" not in outcome))
            reported = r["cycle"]
        if not alive:
            break
        worker.join(POLL_S)
    if "error" in outcome:
        inner = find_error(outcome["error"])
        if isinstance(inner, DaalRayError):
            # Bad config or data fails the same way every time: reported, not raised, so
            # Tune's retries (for a lost node or process) do not run it again.
            ray.tune.report({"experiment": cfg.name, "done": False, ERROR_KEY: type(inner).__name__,
                             ERROR_TEXT_KEY: str(inner)})
            return
        raise outcome["error"]
    if reported < 0:  # the experiment wrote nothing new (already complete): one final report
        table = outcome["table"]
        if table.num_rows:
            ray.tune.report(_row_metrics(table.slice(table.num_rows - 1).to_pylist()[0], cfg, done=True))


def _progress_callback(total: int) -> Any:
    """A Tune callback that logs one line per trial report, completion and failure."""
    class ProgressLogger(ray.tune.Callback):
        def __init__(self) -> None:
            self.finished = 0
            self.total = total

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            if "cycle" not in result:  # not a cycle row (a trial's reported failure)
                return
            logger.debug("progress: %s cycle %d: %d labeled (%.1f%%), %s %.4f", result["experiment"], result["cycle"],
                        result["num_labeled"], 100 * result["labeled_fraction"], result["metric"], result["value"])

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.finished += 1
            logger.debug("progress: %s finished (%d/%d trials)", _trial_name(trial), self.finished, self.total)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.finished += 1
            logger.debug("progress: %s FAILED (%d/%d trials); a re-run resumes it", _trial_name(trial),
                        self.finished, self.total)

    return ProgressLogger()


def _trial_name(trial: Any) -> str:
    try:
        return trial.config["experiment"]["name"]
    except (KeyError, TypeError, AttributeError):
        return str(trial)


TRIAL_CPU = 0.01  # what a trial's own actor holds
TRIAL_RETRIES = 2  # runs of a trial after a lost process or node
ERROR_KEY, ERROR_TEXT_KEY = "daal_ray_error", "daal_ray_error_text"  # a trial's deterministic failure


def _tune(configs: Sequence[ExperimentConfig], run_root: Path, sweep_name: str,
          concurrency: int, callbacks: Sequence[ray.tune.Callback] = ()) -> list[BaseException]:
    """Run each config as one Tune trial; return the trials' errors (unwrapped).

    ``concurrency`` (0 = as many as fit) is checked against the cluster first: Tune starts
    every trial its resources allow, and trials whose worker groups hold all the CPUs while
    each waits for one more to score its pool never finish.
    """
    _quiet_tune_output()
    biggest = max(configs, key=lambda c: experiment_demand(c.scale)["CPU"]).scale
    concurrency = fit_concurrency(biggest, concurrency, what=f"sweep {sweep_name}", extra_cpu=TRIAL_CPU)
    tuner = ray.tune.Tuner(
        # A trial only waits on its TorchTrainer, which reserves the real resources itself.
        ray.tune.with_resources(_trial, {"cpu": TRIAL_CPU}),
        param_space={"experiment": ray.tune.grid_search([c.to_dict() for c in configs]), "run_root": str(run_root)},
        tune_config=ray.tune.TuneConfig(max_concurrent_trials=concurrency or None),
        run_config=ray.tune.RunConfig(name=sweep_name, storage_path=str(run_root / "tune"), verbose=0,
                                      # a trial whose process or node is lost runs again, resuming its
                                      # experiment from the committed cycles; finished trials are not redone
                                      failure_config=ray.tune.FailureConfig(max_failures=TRIAL_RETRIES),
                                      callbacks=[_progress_callback(len(configs)), *callbacks]),
    )
    grid = tuner.fit()
    errors: list[BaseException] = []
    for r in grid:
        if r.error is not None:
            errors.append(find_error(r.error))
        elif (r.metrics or {}).get(ERROR_KEY):
            cls = getattr(errors_mod, r.metrics[ERROR_KEY], None)
            cls = cls if isinstance(cls, type) and issubclass(cls, DaalRayError) else DaalRayError
            try:
                errors.append(cls(r.metrics[ERROR_TEXT_KEY]))
            except TypeError:  # an error class with another signature: its text is what matters
                errors.append(DaalRayError(r.metrics[ERROR_TEXT_KEY]))
    return errors


def _quiet_tune_output() -> None:
    """Tune's console output off: its new output engine prints a configuration table
    whatever the verbosity; the legacy one at ``verbose=0`` prints nothing. The job's own
    progress lines say what the trials do."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def worker_group_lanes(configs: Sequence[ExperimentConfig], lanes: int) -> list[list[ExperimentConfig]]:
    """``configs`` dealt round-robin into at most ``lanes`` lists, each run in order by one
    worker group. In the planned order (strategy by strategy, seeds within), each lane gets
    one seed of every strategy, so lanes of a strategy grid carry about equal work."""
    n = max(1, min(lanes, len(configs)))
    return [list(configs[i::n]) for i in range(n)]


def run_experiments(configs: Sequence[ExperimentConfig], run_root: str | Path, *, sweep_name: str = "sweep",
                    concurrency: int = 0, share_worker_group: Optional[bool] = None) -> pa.Table:
    """Run every config under ``run_root``; return all results combined.

    With ``share_worker_group`` (default: when ``concurrency`` >= 1) the experiments run in
    ``concurrency`` lanes at once, each lane one Ray Train worker group that runs its
    experiments one after another (:func:`worker_group_lanes`,
    :func:`daal_ray.experiment.run_experiment_group`): a group's start-up is paid once per
    lane, not once per experiment. Otherwise (``concurrency=0``: as resources allow) each
    experiment is a Tune trial of its own. If an experiment fails, the first error is raised
    (unwrapped to the message that names the fix) after the others finish; a lane stops at
    its failed experiment and a re-run resumes it. The combined table is also written to
    ``run_root/results.parquet``.
    """
    preflight(configs)
    run_root = Path(run_root).resolve()
    run_root.mkdir(parents=True, exist_ok=True)
    if share_worker_group is None:
        share_worker_group = concurrency >= 1
    if share_worker_group:
        errors = _run_lanes(worker_group_lanes(configs, concurrency or 1), run_root)
    else:
        errors = _tune(configs, run_root, sweep_name, concurrency)
    table = combine([run_root / c.name / RESULTS_FILE for c in configs], run_root / RESULTS_FILE)
    if errors:
        raise errors[0]
    return table


def _run_lanes(lanes: list[list[ExperimentConfig]], run_root: Path) -> list[BaseException]:
    """Each lane's worker group, all at once (one thread each, waiting on its group);
    returns the lanes' errors. A single lane runs in this thread."""
    if len(lanes) == 1:
        run_experiment_group(lanes[0], run_root)
        return []
    # The groups run at once: the cluster must hold all of them (with the pool scoring each
    # one's loop starts), or the last would wait forever.
    fit_concurrency(lanes[0][0].scale, len(lanes), what=f"{len(lanes)} worker groups at once")
    errors: list[BaseException] = []

    def lane(configs: list[ExperimentConfig]) -> None:
        try:
            run_experiment_group(configs, run_root)
        except BaseException as exc:  # raised by the caller once every lane is done
            errors.append(exc)

    threads = [threading.Thread(target=lane, args=(group,), name=f"lane-{i}", daemon=True)
               for i, group in enumerate(lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def run_sweep(configs: Sequence[ExperimentConfig], run_root: str | Path, *, sweep_name: str = "sweep",
              concurrency: Optional[int] = None, callbacks: Sequence[ray.tune.Callback] = ()) -> pa.Table:
    """Run a sweep: one Tune trial per config, resumable.

    Experiments already complete under ``run_root`` are skipped; the others run as Tune
    trials (``concurrency`` at once; default ``scale.trial_concurrency`` of the first
    config, 0 = as resources allow), each resuming from its committed cycles. Returns
    every experiment's results combined, also written to ``run_root/results.parquet``.
    ``callbacks`` are added to Tune's (e.g. :func:`daal_ray.tracking.sweep_callback`).

    Raises:
        DaalRayError: bad config or data, before anything runs; or the first trial's
            error, after the other trials finish.
    """
    if not configs:
        raise ConfigError("the sweep has no experiments; give at least one strategy, seed and budget")
    local = sorted(c.name for c in configs if c.scale.num_workers == 0)
    if local:
        # Train's in-process mode (0 workers) cannot report from inside a Tune trial.
        raise ConfigError(f"a sweep runs each experiment in a Ray Train worker group; set ScaleConfig.num_workers "
                          f"(--num-workers) >= 1 (0 for: {', '.join(local)})")
    preflight(configs)
    run_root = Path(run_root).resolve()
    run_root.mkdir(parents=True, exist_ok=True)
    if concurrency is None:
        concurrency = configs[0].scale.trial_concurrency
    todo = [c for c in configs if not experiment_complete(c, run_root)]
    done = len(configs) - len(todo)
    if done:
        logger.info("sweep %s: %d of %d experiment(s) already complete, skipped", sweep_name, done, len(configs))
    errors: list[BaseException] = []
    if todo:
        logger.info("sweep %s: running %d trial(s), %s at once: %s", sweep_name, len(todo),
                    concurrency or "as many as fit",
                    ", ".join(c.name for c in todo))
        t0 = time.perf_counter()
        errors = _tune(todo, run_root, sweep_name, concurrency, callbacks)
        logger.info("sweep %s: trials finished in %.1f s", sweep_name, time.perf_counter() - t0)
    table = combine([run_root / c.name / RESULTS_FILE for c in configs], run_root / RESULTS_FILE)
    if errors:
        raise errors[0]
    return table
