"""MLflow tracking (daal_ray.tracking): what is logged, where, and never twice.

The pure tests drive the logging from results files and a sweep's trial reports against a
local file store in tmp_path, without Ray; two end-to-end tests run the smallest real
``daal-ray run`` and a two-trial ``daal-ray sweep`` with ``--mlflow-uri`` and read the
store back with MlflowClient.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import pytest

pytest.importorskip("mlflow", reason='the tracking tests need the extra: pip install "daal-ray[mlflow]"')

from daal_ray.cli import main  # noqa: E402
from daal_ray.errors import ConfigError, DaalRayError  # noqa: E402
from daal_ray.report import aulc  # noqa: E402
from daal_ray.results import RESULTS_FILE, read_results, upsert_rows  # noqa: E402
from daal_ray.tracking import (  # noqa: E402
    AULC_METRIC,
    INSTALL_HINT,
    RECORD_FILE,
    ResultsTracker,
    cycle_metrics,
    flatten_config,
    open_target,
    resolve_tracking_uri,
    sweep_callback,
)
from daal_ray.tuning import _row_metrics, plan_experiments  # noqa: E402

PROTOCOL = {"initial_fraction": 0.05, "final_fraction": 0.10}


@pytest.fixture(autouse=True)
def _file_store(monkeypatch):
    # MLflow 3 opens its file store only when asked to (open_target asks for it too).
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs(target):
    return {r.info.run_name: r for r in _client(target.tracking_uri).search_runs([target.experiment_id])}


def _history(target, run, key):
    return [(m.step, m.value) for m in _client(target.tracking_uri).get_metric_history(run.info.run_id, key)]


def _row(cfg, cycle, value, num_selected=72):
    return {"experiment": cfg.name, "strategy": cfg.acquisition.strategy, "dataset": "digits", "seed": cfg.seed,
            "budget": 0, "cycle": cycle, "num_labeled": 72 * (cycle + 1), "labeled_fraction": 0.05 * (cycle + 1),
            "metric": "accuracy", "value": value, "num_selected": num_selected, "batch_cosine": float("nan"),
            "train_s": 1.0 + cycle, "cycle_s": 2.0 + cycle}


# --------------------------------------------------------------------------- pure: what is logged
def test_config_flattens_to_dotted_text_params():
    params = flatten_config({"seed": 3, "train": {"epochs": 1, "milestones": [2, 4], "augment": "none"},
                             "acquisition": {"strategy": "daal", "params": {}}, "data": {"root": None,
                                                                                         "download": False}})
    assert params == {"seed": "3", "train.epochs": "1", "train.milestones": "[2, 4]", "train.augment": "none",
                      "acquisition.strategy": "daal", "acquisition.params": "{}", "data.root": "null",
                      "data.download": "false"}


def test_cycle_metrics_name_the_task_metric_and_drop_what_is_not_a_number():
    (cfg,) = plan_experiments(dataset="digits", strategies=["random"])
    row = {**_row(cfg, 1, 0.8), "metric": "miou", "auroc_wrong": None}
    assert cycle_metrics(row) == {"miou": 0.8, "num_labeled": 144.0, "labeled_fraction": 0.1, "num_selected": 72.0,
                                  "train_s": 2.0, "cycle_s": 3.0}  # NaN batch_cosine and None auroc left out
    # a sweep's trial report carries the same numbers
    assert cycle_metrics(_row_metrics(_row(cfg, 1, 0.8), cfg, done=False)) == cycle_metrics(_row(cfg, 1, 0.8))


# --------------------------------------------------------------------------- pure: where it goes
def test_tracking_uris_are_made_absolute_and_bad_ones_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = (tmp_path / "mlruns").as_uri()
    assert resolve_tracking_uri("mlruns") == store
    assert resolve_tracking_uri("file:mlruns") == store
    assert resolve_tracking_uri(store) == store
    assert resolve_tracking_uri("sqlite:///db/m.db") == f"sqlite:///{tmp_path}/db/m.db"
    assert resolve_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    for bad, message in (("ftp://host/x", "MLflow does not store runs behind ftp:"),
                         ("http://", "names no server"), ("file://otherhost/x", "must be on this machine"),
                         ("sqlite:/x.db", "sqlite:///RELATIVE/FILE.db")):
        with pytest.raises(ConfigError, match=message):
            resolve_tracking_uri(bad)


def test_without_mlflow_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now raises ImportError
    with pytest.raises(DaalRayError, match="install the extra: " + INSTALL_HINT.replace("[", r"\[").replace("]",
                                                                                                           r"\]")):
        open_target(str(tmp_path / "mlruns"), "x")


@pytest.mark.parametrize("flags,message", [
    (["--mlflow-uri", "ftp://host/runs"], "MLflow does not store runs behind ftp:"),
    (["--mlflow-experiment", "x"], "--mlflow-experiment needs --mlflow-uri"),
])
def test_cli_refuses_bad_tracking_flags_before_anything_runs(tmp_path, capsys, flags, message):
    run_dir = tmp_path / "runs"
    assert main(["run", "--run-dir", str(run_dir), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not run_dir.exists()


# --------------------------------------------------------------------------- pure: never twice
def test_an_experiment_is_one_run_and_a_resume_logs_only_new_cycles(tmp_path):
    configs = plan_experiments(dataset="digits", strategies=["random"], seeds=[0, 1], protocol=PROTOCOL)
    first, idle = configs
    root = tmp_path / "runs"
    results = root / first.name / RESULTS_FILE
    target = open_target(str(tmp_path / "mlruns"), "digits")
    upsert_rows(results, [_row(first, 0, 0.5)])

    # 1. The job is stopped (Ctrl-C) after cycle 0: one run, KILLED; nothing for the idle experiment.
    with pytest.raises(KeyboardInterrupt), ResultsTracker(target, configs, root, poll_s=0.05):
        raise KeyboardInterrupt
    (run,) = _runs(target).values()
    assert run.info.run_name == first.name and run.info.status == "KILLED"
    assert {k: run.data.tags[k] for k in ("strategy", "seed", "dataset")} == {"strategy": "random", "seed": "0",
                                                                               "dataset": "digits"}
    assert run.data.params["acquisition.strategy"] == "random" and run.data.params["seed"] == "0"
    assert run.data.params["train.model"] == "small_cnn"  # the resolved config, as it ran
    assert _history(target, run, "accuracy") == [(0, 0.5)]
    assert not (root / idle.name / RECORD_FILE).exists()

    # 2. Resumed: cycle 0 is rewritten (as a redone cycle is) and the last cycle recorded.
    upsert_rows(results, [_row(first, 0, 0.5), _row(first, 1, 0.7, num_selected=0)])
    with ResultsTracker(target, configs, root, poll_s=0.05):
        pass
    (run,) = _runs(target).values()
    assert run.info.status == "FINISHED"
    assert _history(target, run, "accuracy") == [(0, 0.5), (1, 0.7)]
    assert _history(target, run, "num_labeled") == [(0, 72.0), (1, 144.0)]
    assert _history(target, run, "batch_cosine") == []  # NaN: not computed by random
    assert _history(target, run, AULC_METRIC) == [(1, pytest.approx(aulc([0.05, 0.1], [0.5, 0.7])))]

    # 3. Run again, and against a second store: the first store's run is untouched, the second gets its own.
    other = open_target(str(tmp_path / "other"), "digits")
    for t in (target, other):
        with ResultsTracker(t, configs, root, live=False):
            pass
    (again,) = _runs(target).values()
    assert again.info.run_id == run.info.run_id
    assert _history(target, again, "accuracy") == [(0, 0.5), (1, 0.7)] and len(_history(target, again, "aulc")) == 1
    assert _history(other, _runs(other)[first.name], "accuracy") == [(0, 0.5), (1, 0.7)]
    record = json.loads((root / first.name / RECORD_FILE).read_text())["runs"]
    assert [r["tracking_uri"] for r in record] == [target.tracking_uri, other.tracking_uri]


def test_a_cycle_written_within_the_file_systems_time_resolution_is_logged(tmp_path):
    """The second write of the results file keeps the first's modification time (coarse
    timestamps): it is still read, and its cycle logged."""
    (cfg,) = plan_experiments(dataset="digits", strategies=["random"], protocol=PROTOCOL)
    root = tmp_path / "runs"
    results = root / cfg.name / RESULTS_FILE
    target = open_target(str(tmp_path / "mlruns"), "digits")
    upsert_rows(results, [_row(cfg, 0, 0.5)])
    tracker = ResultsTracker(target, [cfg], root, live=False)
    assert tracker.poll() == 1
    first = os.stat(results)
    upsert_rows(results, [_row(cfg, 0, 0.5), _row(cfg, 1, 0.7, num_selected=0)])
    os.utime(results, ns=(first.st_atime_ns, first.st_mtime_ns))
    assert tracker.poll() == 1
    assert _history(target, _runs(target)[cfg.name], "accuracy") == [(0, 0.5), (1, 0.7)]


def test_the_live_tracker_logs_cycles_while_the_job_runs(tmp_path):
    (cfg,) = plan_experiments(dataset="digits", strategies=["random"], protocol=PROTOCOL)
    root = tmp_path / "runs"
    target = open_target(str(tmp_path / "mlruns"), "digits")
    with ResultsTracker(target, [cfg], root, poll_s=0.05):
        upsert_rows(root / cfg.name / RESULTS_FILE, [_row(cfg, 0, 0.5)])
        deadline = time.monotonic() + 20
        while not _runs(target) or not _history(target, _runs(target)[cfg.name], "accuracy"):
            assert time.monotonic() < deadline, "the watcher logged nothing"
            time.sleep(0.05)
        assert _runs(target)[cfg.name].info.status == "RUNNING"


class _Trial:
    """What the callback reads of a Tune trial: its config and its name."""

    def __init__(self, cfg, run_root, name):
        self.config = {"experiment": cfg.to_dict(), "run_root": str(run_root)}
        self.name = name

    def __str__(self):
        return self.name


def test_the_sweep_callback_logs_a_trial_per_experiment_at_step_cycle(tmp_path):
    (cfg,) = plan_experiments(dataset="digits", strategies=["entropy"], protocol=PROTOCOL)
    root = tmp_path / "sweep"
    target = open_target(str(tmp_path / "mlruns"), "sweep")
    rows = [_row(cfg, 0, 0.4), _row(cfg, 1, 0.6, num_selected=0)]

    # A first trial reports cycle 0 and fails.
    upsert_rows(root / cfg.name / RESULTS_FILE, rows[:1])
    callback = sweep_callback(target)
    callback.setup()
    trial = _Trial(cfg, root, "_trial_0001")
    callback.log_trial_start(trial)
    callback.log_trial_result(1, trial, {**_row_metrics(rows[0], cfg, done=False), "training_iteration": 1})
    callback.log_trial_end(trial, failed=True)
    (run,) = _runs(target).values()
    assert run.info.run_name == cfg.name and run.info.status == "FAILED"
    assert run.data.tags["trial_name"] == "_trial_0001" and run.data.params["acquisition.strategy"] == "entropy"

    # The re-run's trial (a new Tuner) reports every recorded cycle again, from cycle 0.
    upsert_rows(root / cfg.name / RESULTS_FILE, rows)
    callback = sweep_callback(target)
    callback.setup()
    trial = _Trial(cfg, root, "_trial_0002")
    callback.log_trial_start(trial)
    for i, row in enumerate(rows):
        callback.log_trial_result(i + 1, trial, {**_row_metrics(row, cfg, done=i == 1), "training_iteration": i + 1})
    callback.log_trial_end(trial)
    (run,) = _runs(target).values()
    assert run.info.status == "FINISHED"
    assert _history(target, run, "accuracy") == [(0, 0.4), (1, 0.6)]  # at the cycle, once each
    assert _history(target, run, "training_iteration") == []  # Tune's own numbers are not logged
    assert len(_history(target, run, AULC_METRIC)) == 1


# --------------------------------------------------------------------------- end to end
def _cli(verb, run_dir, store, *extra):
    return [verb, "--dataset", "digits", "--strategy", "random", "--initial-fraction", "0.05", "--final-fraction",
            "0.10", "--epochs", "1", "--concurrency", "1", "--inference-compute", "tasks", "--no-progress",
            "--run-dir", str(run_dir), "--mlflow-uri", str(store), *extra]


def _check_against_results(target, run_dir, names):
    """Each experiment is one FINISHED run whose metric histories are its results.parquet, once per cycle."""
    runs = _runs(target)
    assert sorted(runs) == sorted(names)
    for name, run in runs.items():
        rows = sorted(read_results(run_dir / name).to_pylist(), key=lambda r: r["cycle"])
        assert [r["cycle"] for r in rows] == [0, 1]
        assert _history(target, run, "accuracy") == [(r["cycle"], pytest.approx(r["value"])) for r in rows]
        assert _history(target, run, "num_labeled") == [(r["cycle"], r["num_labeled"]) for r in rows]
        assert _history(target, run, "train_s") == [(r["cycle"], pytest.approx(r["train_s"])) for r in rows]
        (step, value), = _history(target, run, AULC_METRIC)
        assert step == 1 and math.isclose(value, aulc([r["labeled_fraction"] for r in rows],
                                                      [r["value"] for r in rows]))
        assert run.info.status == "FINISHED"
        seed = str(rows[0]["seed"])
        assert run.data.params["acquisition.strategy"] == "random" and run.data.params["seed"] == seed
        assert run.data.tags["seed"] == seed and run.data.tags["dataset"] == "digits"
    return runs


@pytest.mark.cluster
@pytest.mark.ray
@pytest.mark.slow
def test_run_then_sweep_log_one_mlflow_run_per_experiment_and_a_rerun_adds_nothing(ray_session, tmp_path, capsys):
    """`daal-ray run` (seed 0, in-process training: the cheapest), then a sweep over seeds 0
    and 1 in the same directory: seed 0 is complete and skipped, seed 1 is a Tune trial
    logged through Tune's MLflow callback; then the sweep again, which runs and logs nothing."""
    run_dir, store = tmp_path / "digits", tmp_path / "mlruns"
    assert main(_cli("run", run_dir, store, "--num-workers", "0")) == 0
    target = open_target(str(store), "digits")  # default MLflow experiment: the run directory's name
    (first,) = _check_against_results(target, run_dir, ["digits-random-seed0"]).values()
    assert first.data.params["scale.num_workers"] == "0"

    sweep = _cli("sweep", run_dir, store, "--num-workers", "1", "--seeds", "2")
    assert main(sweep) == 0
    runs = _check_against_results(target, run_dir, ["digits-random-seed0", "digits-random-seed1"])
    assert runs["digits-random-seed0"].info.run_id == first.info.run_id
    assert runs["digits-random-seed1"].data.tags["trial_name"].startswith("_trial")  # Tune's callback made it

    results = {n: (run_dir / n / RESULTS_FILE).read_bytes() for n in runs}
    assert main(sweep) == 0
    assert {n: (run_dir / n / RESULTS_FILE).read_bytes() for n in runs} == results  # nothing ran again
    again = _check_against_results(target, run_dir, list(runs))
    assert {n: r.info.run_id for n, r in again.items()} == {n: r.info.run_id for n, r in runs.items()}
