"""Experiment tracking in MLflow (the optional extra ``daal-ray[mlflow]``): one MLflow run per experiment.

``daal-ray run --mlflow-uri URI`` and ``daal-ray sweep --mlflow-uri URI`` log each experiment
of the job as one MLflow run, named by the experiment and tagged with its strategy, seed,
dataset and budget: the flattened ExperimentConfig as params, every recorded cycle's metrics
at ``step = cycle`` (the task metric under its own name, ``num_labeled``,
``labeled_fraction``, the batch diagnostics and the step times), and the learning curve's
``aulc`` once the experiment is complete.

    target = open_target("file:runs/mlruns", "digits")     # checks the URI and the store, at start
    with watch_results(target, configs, run_root):          # `run`: follows the results files
        run_experiments(configs, run_root)
    run_sweep(configs, run_root, callbacks=[sweep_callback(target)])   # `sweep`: Tune's MLflow callback

Everything is logged from the job's own process, never from the Ray workers: ``run``
follows the experiments' results files (as the console's progress does), ``sweep`` a
subclass of Ray Tune's ``MLflowLoggerCallback`` fed by each trial's per-cycle reports. The
tracking URI therefore only has to be reachable from where the job is started.

A run is never duplicated and no cycle is logged twice: the MLflow run id is recorded in
the experiment's directory (:data:`RECORD_FILE`), a resumed experiment logs into the same
run, and a cycle whose metric is already in the run's history is skipped. A failure to
log is a warning, not the job's end: a re-run logs what is missing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from daal_ray.atomic_io import atomic_write_text, file_generation
from daal_ray.config import ExperimentConfig, resolve_config
from daal_ray.errors import ConfigError, DaalRayError
from daal_ray.report import aulc
from daal_ray.results import RESULTS_FILE, read_results
from daal_ray.tuning import REPORTED_COLUMNS, experiment_complete

__all__ = ["AULC_METRIC", "CYCLE_COLUMNS", "INSTALL_HINT", "RECORD_FILE", "ExperimentRun", "TrackingTarget",
           "cycle_metrics", "flatten_config", "open_target", "resolve_tracking_uri", "run_tags", "sweep_callback",
           "watch_results"]

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "daal-ray[mlflow]"'
# The experiment's MLflow runs, one per (tracking URI, MLflow experiment): a resumed
# experiment finds its run here.
RECORD_FILE = "mlflow_runs.json"
AULC_METRIC = "aulc"
# Per-cycle columns of results.parquet logged as metrics, besides the task metric (logged
# under its name, e.g. ``accuracy``). Seed, budget and cycle are params and the step.
# A sweep's trials report the same columns (tuning.REPORTED_COLUMNS), so both paths log the same.
CYCLE_COLUMNS = ("num_labeled", "labeled_fraction", *REPORTED_COLUMNS)
# Tracking URI schemes MLflow stores runs behind (a database scheme may name its driver: postgresql+psycopg2).
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
POLL_S = 1.0
_MAX_PARAMS_PER_CALL = 100  # MLflow's log_batch limit
_MAX_PARAM_VALUE = 6000


# --------------------------------------------------------------------------- what is logged
def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: dotted keys, text values.

    ``{"train": {"epochs": 1}, "acquisition": {"params": {}}}`` ->
    ``{"train.epochs": "1", "acquisition.params": "{}"}``. Strings stay as they are, other
    values are JSON (``true``, ``null``, ``[1, 2]``); an empty section is kept as ``{}`` so
    every run has the same keys.
    """
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_config(value, prefix=f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
            out[name] = text[:_MAX_PARAM_VALUE]
    return out


def cycle_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """One cycle's metrics: the task metric under its name, then the :data:`CYCLE_COLUMNS`
    that hold a finite number (a diagnostic a strategy does not compute is NaN, and left out).

    ``row`` is a results.parquet row or a sweep trial's report (they share the column names).
    """
    out = {}
    for key in CYCLE_COLUMNS:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    out[str(row["metric"])] = float(row["value"])
    return out


def run_tags(cfg: ExperimentConfig) -> dict[str, str]:
    """Tags to find an experiment's run by in MLflow's search and UI."""
    return {"experiment": cfg.name, "strategy": cfg.acquisition.strategy, "seed": str(cfg.seed),
            "dataset": cfg.data.name, "budget": str(cfg.budget), "metric": cfg.metric}


# --------------------------------------------------------------------------- where it goes
def resolve_tracking_uri(uri: str) -> str:
    """``uri`` as an absolute tracking URI, checked.

    A plain path or ``file:PATH`` is MLflow's local file store, made absolute here (against
    the current directory) so it names the same folder wherever it is read; a relative
    ``sqlite:///FILE`` likewise. ``http(s)://``, ``databricks`` and the database schemes
    pass unchanged.

    Raises:
        ConfigError: a scheme MLflow does not store runs behind, or a server URI without a host.
    """
    text = uri.strip()
    if not text:
        raise ConfigError("--mlflow-uri is empty; give a folder, file:PATH, sqlite:///FILE or http(s)://SERVER")
    parsed = urllib.parse.urlparse(text)
    scheme = parsed.scheme.lower()
    if not scheme:
        return Path(text).expanduser().resolve().as_uri()
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"--mlflow-uri {uri!r}: a file store must be on this machine (file:PATH or "
                              f"file:///ABSOLUTE/PATH), not on host {parsed.netloc!r}")
        return Path(urllib.parse.unquote(parsed.path)).expanduser().resolve().as_uri()
    base = scheme.split("+")[0]
    if base == "sqlite":
        prefix = f"{parsed.scheme}:///"
        if not text.startswith(prefix):
            raise ConfigError(f"--mlflow-uri {uri!r}: a SQLite store is sqlite:///RELATIVE/FILE.db or "
                              f"sqlite:////ABSOLUTE/FILE.db")
        rest = text[len(prefix):]
        return prefix + (rest if rest.startswith("/") else str(Path(rest).resolve()))
    if base in DATABASE_SCHEMES or scheme.startswith("databricks"):  # databricks, databricks-uc
        return text
    if scheme in ("http", "https"):
        if not parsed.netloc:
            raise ConfigError(f"--mlflow-uri {uri!r} names no server; e.g. http://127.0.0.1:5000")
        return text
    raise ConfigError(f"--mlflow-uri {uri!r}: MLflow does not store runs behind {scheme}:; use a folder or "
                      f"file:PATH (a local store), sqlite:///FILE, http(s)://SERVER, databricks or a database "
                      f"({', '.join(DATABASE_SCHEMES)})")


def _import_mlflow() -> Any:
    try:
        # MLflow takes about 2 s to import: only a job that tracks pays it.
        import mlflow  # noqa: PLC0415
    except ImportError:
        raise DaalRayError(f"--mlflow-uri needs MLflow, which is not installed; install the extra: "
                           f"{INSTALL_HINT}") from None
    return mlflow


@dataclass(frozen=True)
class TrackingTarget:
    """An MLflow store and the MLflow experiment a job's runs go to (plain values, so Ray
    can copy a callback that holds one)."""

    tracking_uri: str
    experiment_name: str
    experiment_id: str

    def client(self) -> Any:
        """An ``mlflow.tracking.MlflowClient`` of the store."""
        mlflow = _import_mlflow()
        return mlflow.tracking.MlflowClient(tracking_uri=self.tracking_uri)


def open_target(uri: str, experiment_name: str) -> TrackingTarget:
    """Check ``uri``, that MLflow is installed and that the store answers; get or create the
    MLflow experiment ``experiment_name``. Called when a job starts, so a bad URI stops it
    before anything runs.

    Raises:
        DaalRayError: MLflow missing (naming the extra to install), a bad URI, or a store
            that cannot be opened, with MLflow's reason.
    """
    uri = resolve_tracking_uri(uri)
    if not experiment_name.strip():
        raise ConfigError("--mlflow-experiment is empty")
    mlflow = _import_mlflow()
    base = urllib.parse.urlparse(uri).scheme.lower().split("+")[0]
    if base in DATABASE_SCHEMES and importlib.util.find_spec("sqlalchemy") is None:
        raise DaalRayError(f"--mlflow-uri {uri}: a database store needs the full MLflow package (SQLAlchemy); "
                           f"pip install mlflow, or use a folder (file:PATH) or a tracking server")
    if base == "file":
        # MLflow 3 refuses its file store unless asked for it by this variable; a file: URI
        # given on purpose is that request (runs stay readable by `mlflow ui`).
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment_name)
        if found is not None and found.lifecycle_stage != "active":
            raise DaalRayError(f"MLflow experiment {experiment_name!r} in {uri} is deleted; restore it "
                               f"(mlflow experiments restore) or give another --mlflow-experiment")
        experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment_name)
    except DaalRayError:
        raise
    except Exception as exc:  # MLflow's own errors (a refused store, a server that does not answer)
        raise DaalRayError(f"cannot open the MLflow store {uri}: {exc}") from None
    logger.info("MLflow: logging to experiment %r (id %s) in %s", experiment_name, experiment_id, uri)
    return TrackingTarget(uri, experiment_name, str(experiment_id))


# --------------------------------------------------------------------------- one experiment's run
class ExperimentRun:
    """One experiment's MLflow run: created once, found again on resume through the record
    in its directory; logs each cycle once.

    Args:
        target: the store and MLflow experiment.
        cfg: the experiment (its resolved config is logged as params).
        run_dir: the experiment's directory (``run_root/cfg.name``), where the record lives.
        tags: tags added when the run is created (e.g. a sweep's trial name).
    """

    def __init__(self, target: TrackingTarget, cfg: ExperimentConfig, run_dir: str | Path,
                 tags: Optional[Mapping[str, str]] = None) -> None:
        self.target = target
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.client = target.client()
        self.run_id = self._find_or_create(dict(tags or {}))
        self._log_params()
        # Steps already in the run: the task metric is logged last in a cycle, so a cycle
        # whose task metric is there has all its metrics.
        self.logged = {m.step for m in self.client.get_metric_history(self.run_id, cfg.metric)}
        self.has_aulc = bool(self.client.get_metric_history(self.run_id, AULC_METRIC))

    # ---- the record
    def _record(self) -> list[dict[str, str]]:
        path = self.run_dir / RECORD_FILE
        try:
            return list(json.loads(path.read_text()).get("runs", []))
        except FileNotFoundError:
            return []
        except (ValueError, AttributeError):
            logger.warning("MLflow: %s is not readable; a new run is started", path)
            return []

    def _find_or_create(self, tags: dict[str, str]) -> str:
        runs = self._record()
        for entry in runs:
            if entry.get("tracking_uri") == self.target.tracking_uri and \
                    entry.get("experiment_id") == self.target.experiment_id:
                run_id = entry["run_id"]
                try:
                    run = self.client.get_run(run_id)
                except Exception:  # deleted from the store for good: start afresh
                    run = None
                if run is not None and run.info.lifecycle_stage == "active":
                    logger.info("MLflow: %s resumes run %s", self.cfg.name, run_id)
                    return run_id
                runs.remove(entry)
                break
        run = self.client.create_run(self.target.experiment_id, run_name=self.cfg.name,
                                     tags={**run_tags(self.cfg), "run_dir": str(self.run_dir), **tags})
        runs.append({"tracking_uri": self.target.tracking_uri, "experiment_id": self.target.experiment_id,
                     "run_id": run.info.run_id})
        # Recorded before anything is logged into it: a crash from here on resumes this run.
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / RECORD_FILE, json.dumps({"runs": runs}, indent=2))
        logger.info("MLflow: %s is run %s", self.cfg.name, run.info.run_id)
        return run.info.run_id

    def _log_params(self) -> None:
        mlflow = _import_mlflow()
        have = self.client.get_run(self.run_id).data.params
        params = flatten_config(resolve_config(self.cfg).to_dict())
        # Params cannot change in MLflow; a resumed run may have other resources (scale.*),
        # which keep their first value.
        changed = sorted(k for k, v in params.items() if k in have and have[k] != v)
        if changed:
            logger.debug("MLflow: %s keeps the first value of %s", self.cfg.name, ", ".join(changed))
        new = [mlflow.entities.Param(k, v) for k, v in params.items() if k not in have]
        for i in range(0, len(new), _MAX_PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=new[i:i + _MAX_PARAMS_PER_CALL])

    # ---- metrics
    def log_cycles(self, rows: Sequence[Mapping[str, Any]]) -> list[int]:
        """Log the cycles of ``rows`` not logged yet, at ``step = cycle``; return those logged."""
        mlflow = _import_mlflow()
        done = []
        for row in sorted(rows, key=lambda r: int(r["cycle"])):
            step = int(row["cycle"])
            if step in self.logged:
                continue
            now = int(time.time() * 1000)
            metrics = cycle_metrics(row)
            primary = metrics.pop(self.cfg.metric, None)
            batch = [mlflow.entities.Metric(k, v, now, step) for k, v in metrics.items()]
            if primary is not None:
                batch.append(mlflow.entities.Metric(self.cfg.metric, primary, now, step))  # last: the cycle's mark
            self.client.log_batch(self.run_id, metrics=batch)
            self.logged.add(step)
            done.append(step)
        return done

    def finish(self, rows: Sequence[Mapping[str, Any]], complete: bool, failed: bool = False) -> str:
        """Log what ``rows`` holds that is not logged yet, the AULC when the experiment is
        ``complete``, and end the run: FINISHED when complete, else FAILED (the job failed)
        or KILLED (stopped; a re-run continues this run). Returns the status."""
        self.log_cycles(rows)
        if complete and not self.has_aulc and rows:
            ordered = sorted(rows, key=lambda r: int(r["cycle"]))
            value = aulc([float(r["labeled_fraction"]) for r in ordered], [float(r["value"]) for r in ordered])
            self.client.log_metric(self.run_id, AULC_METRIC, value, step=int(ordered[-1]["cycle"]))
            self.has_aulc = True
        status = "FINISHED" if complete else "FAILED" if failed else "KILLED"
        if self.client.get_run(self.run_id).info.status != status:
            self.client.set_terminated(self.run_id, status)
        return status


def _warn_on_error(what: str, fn: Callable[[], Any]) -> Any:
    """``fn()``; an error is a warning: tracking never stops the experiments."""
    try:
        return fn()
    except Exception as exc:
        logger.warning("MLflow: could not %s: %s (the experiments go on; a re-run logs what is missing)", what, exc)
        return None


# --------------------------------------------------------------------------- `run`: follow the results files
class ResultsTracker:
    """Logs the experiments of a job to MLflow from their results files.

    With ``live``, a thread looks at the files every ``poll_s`` and logs each new cycle as it
    is recorded; either way, leaving the context logs what is left and ends each run
    (FINISHED, or KILLED/FAILED when the job stopped or failed first). A run is created
    when its experiment's first cycle is recorded, so an experiment refused at start leaves
    no empty run.
    """

    def __init__(self, target: TrackingTarget, configs: Sequence[ExperimentConfig], run_root: str | Path, *,
                 live: bool = True, poll_s: float = POLL_S) -> None:
        self.target = target
        self.configs = list(configs)
        self.run_root = Path(run_root).resolve()
        self.live = live
        self.poll_s = poll_s
        self.runs: dict[str, ExperimentRun] = {}
        self._generations: dict[str, tuple[int, int, int]] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _run_of(self, cfg: ExperimentConfig) -> ExperimentRun:
        if cfg.name not in self.runs:
            self.runs[cfg.name] = ExperimentRun(self.target, cfg, self.run_root / cfg.name)
        return self.runs[cfg.name]

    def poll(self) -> int:
        """Look once at every results file; log the new cycles; return how many."""
        count = 0
        for cfg in self.configs:
            path = self.run_root / cfg.name / RESULTS_FILE
            generation = file_generation(path)
            if generation is None or generation == self._generations.get(cfg.name):
                continue
            try:
                rows = read_results(path).to_pylist()
            except (OSError, ValueError):  # replaced while being read: the next look reads it again
                continue
            if not rows:
                continue
            logged = _warn_on_error(f"log {cfg.name}", lambda: self._run_of(cfg).log_cycles(rows))
            if logged is not None:
                self._generations[cfg.name] = generation
                count += len(logged)
        return count

    def close(self, failed: bool = False) -> None:
        """Log what is left and end every run."""
        self.poll()
        for cfg in self.configs:
            rows = read_results(self.run_root / cfg.name).to_pylist()
            if not rows:
                continue
            _warn_on_error(f"finish {cfg.name}", lambda: self._run_of(cfg).finish(
                rows, complete=experiment_complete(cfg, self.run_root), failed=failed))

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()

    def __enter__(self) -> "ResultsTracker":
        if self.live:
            self._thread = threading.Thread(target=self._watch, name="mlflow-tracking", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        # Ctrl-C (the job exits 130) is a stop, not a failure: KILLED, and a re-run resumes.
        stopped = exc_type is KeyboardInterrupt or (exc_type is SystemExit and getattr(exc, "code", 0) != 0)
        self.close(failed=exc_type is not None and not stopped)


def watch_results(target: Optional[TrackingTarget], configs: Sequence[ExperimentConfig], run_root: str | Path, *,
                  live: bool = True) -> contextlib.AbstractContextManager:
    """A :class:`ResultsTracker` for ``target``, or a context that does nothing without one."""
    if target is None:
        return contextlib.nullcontext()
    return ResultsTracker(target, configs, run_root, live=live)


# --------------------------------------------------------------------------- `sweep`: Tune's MLflow callback
def sweep_callback(target: TrackingTarget) -> Any:
    """A Ray Tune callback that logs each trial of a sweep (one experiment) as one MLflow run.

    It is Ray's ``MLflowLoggerCallback`` (which sets the tracking URI and the MLflow
    experiment up on the driver, and calls it at each trial's start, report and end) with
    two changes: a trial's run is its experiment's (:class:`ExperimentRun`: named by the
    experiment, found again when a re-run of the sweep resumes the trial), and a report is
    logged at ``step = cycle`` with the per-cycle metrics, instead of at Tune's iteration
    with every number of the report.
    """
    # Ray's MLflow integration imports MLflow (about 2 s): only a sweep that tracks loads it.
    from ray.air.integrations.mlflow import MLflowLoggerCallback  # noqa: PLC0415

    class ExperimentLogger(MLflowLoggerCallback):
        def __init__(self) -> None:
            super().__init__(tracking_uri=target.tracking_uri, experiment_name=target.experiment_name)
            self.target = target
            self.runs: dict[Any, ExperimentRun] = {}

        def log_trial_start(self, trial: Any) -> None:
            if trial in self.runs:  # a trial Tune restarts keeps its run
                return
            cfg = ExperimentConfig.from_dict(trial.config["experiment"])
            run_dir = Path(trial.config["run_root"]) / cfg.name
            run = _warn_on_error(f"start the run of {cfg.name}",
                                 lambda: ExperimentRun(self.target, cfg, run_dir, tags={"trial_name": str(trial)}))
            if run is not None:
                self.runs[trial] = run

        def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
            run = self.runs.get(trial)
            if run is not None and "cycle" in result and "metric" in result:
                _warn_on_error(f"log {run.cfg.name}", lambda: run.log_cycles([result]))

        def log_trial_end(self, trial: Any, failed: bool = False) -> None:
            run = self.runs.pop(trial, None)
            if run is None:
                return
            run_root = Path(trial.config["run_root"])
            _warn_on_error(f"finish {run.cfg.name}", lambda: run.finish(
                read_results(run.run_dir).to_pylist(), complete=experiment_complete(run.cfg, run_root),
                failed=failed))

    return ExperimentLogger()
