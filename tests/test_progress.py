"""The job's console: one line per recorded cycle, a bar over all cycles, logs in the run
directory; and what a job prints when it is interrupted."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daal_ray.acquisition.daal.fit import StepLosses
from daal_ray.progress import CycleProgress, format_cycle
from daal_ray.results import upsert_rows
from daal_ray.runtime import log_to_file, route_raylet_messages, setup_logging, stop_logging_to

REPO = Path(__file__).resolve().parents[1]


def _row(cfg, cycle, value=0.9, **extra):
    row = {"experiment": cfg.name, "strategy": cfg.acquisition.strategy, "dataset": "digits", "seed": cfg.seed,
           "budget": 72, "cycle": cycle, "num_labeled": 72 + 72 * cycle, "labeled_fraction": 0.05 * (cycle + 1),
           "metric": "accuracy", "value": value, "num_selected": 72, "train_s": 1.25, "acq_fit_s": 0.0,
           "features_s": 0.5, "scoring_s": 0.25, "selection_s": 0.25, "cycle_s": 2.5, "config": "{}"}
    row.update(extra)
    return row


def test_a_cycle_is_one_line_with_its_labeled_count_metric_and_step_times(tiny_config):
    cfg = tiny_config("daal")
    line = format_cycle(_row(cfg, 1, 0.91234, acq_fit_s=7.5, cycle_s=10.0), rounds=2)
    assert "\n" not in line
    assert line.startswith(f"{cfg.name}  cycle 1/2  144 labeled (10.0%)  accuracy 0.9123")
    assert "[10.0s: train 1.2s, strategy fit 7.5s, select 1.0s]" in line
    last = format_cycle(_row(cfg, 2, num_selected=0, cycle_s=1.5), rounds=2)
    assert "select" not in last and "strategy fit" not in last  # the last cycle selects nothing


def test_progress_prints_each_new_cycle_once_and_counts_resumed_ones_as_done(tiny_config, tmp_path):
    a, b = tiny_config("random"), tiny_config("entropy")
    upsert_rows(tmp_path / a.name / "results.parquet", [_row(a, 0)])  # recorded before the job (a resume)
    out = io.StringIO()
    progress = CycleProgress([a, b], tmp_path, stream=out, poll_s=3600)
    assert progress.total == 2 * 3  # 5% -> 15% in +5% steps: cycles 0, 1, 2 each
    assert progress.done == 1 and progress.poll() == []
    upsert_rows(tmp_path / a.name / "results.parquet", [_row(a, 1)])
    upsert_rows(tmp_path / b.name / "results.parquet", [_row(b, 0), _row(b, 1)])
    lines = progress.poll()
    assert [line.split()[:3] for line in lines] == [[a.name, "cycle", "1/2"], [b.name, "cycle", "0/2"],
                                                   [b.name, "cycle", "1/2"]]
    assert progress.poll() == [] and progress.done == 4
    upsert_rows(tmp_path / a.name / "results.parquet", [_row(a, 1, value=0.5)])  # a re-run cycle replaces its row
    assert progress.poll() == []
    assert out.getvalue().splitlines() == lines, "not a terminal: the lines only, no bar redraws"


def test_a_cycle_written_within_the_file_systems_time_resolution_is_still_seen(tiny_config, tmp_path):
    """Two writes of the results file with the same modification time (a file system with
    coarse timestamps, or two writes in one tick): the second is still a new generation."""
    cfg = tiny_config("random")
    path = tmp_path / cfg.name / "results.parquet"
    upsert_rows(path, [_row(cfg, 0)])
    progress = CycleProgress([cfg], tmp_path, stream=io.StringIO(), poll_s=3600)
    first = os.stat(path)
    upsert_rows(path, [_row(cfg, 0), _row(cfg, 1)])
    os.utime(path, ns=(first.st_atime_ns, first.st_mtime_ns))
    assert [line.split()[2] for line in progress.poll()] == ["1/2"]


def test_progress_thread_sees_cycles_written_while_it_runs(tiny_config, tmp_path):
    cfg = tiny_config("random")
    out = io.StringIO()
    with CycleProgress([cfg], tmp_path, stream=out, poll_s=0.05) as progress:
        upsert_rows(tmp_path / cfg.name / "results.parquet", [_row(cfg, 0)])
        deadline = time.time() + 30
        while progress.done < 1 and time.time() < deadline:
            time.sleep(0.05)
        upsert_rows(tmp_path / cfg.name / "results.parquet", [_row(cfg, 1)])
    assert [line.split()[2] for line in out.getvalue().splitlines()] == ["0/2", "1/2"]  # the last by the final look


def test_console_shows_daal_ray_records_but_only_errors_of_other_libraries(tmp_path, capsys):
    from ray.train.v2._internal.execution import context as ray_train_context

    root = logging.getLogger()
    before = list(root.handlers)
    try:
        setup_logging()
        handler = log_to_file(tmp_path / "job.log")
        logging.getLogger("daal_ray.cycle").info("cycle line")
        logging.getLogger("daal_ray.acquisition.daal.fit").debug("DAAL epoch 1/2: recon 1.5")
        ray_train_context.logger.info("Reporting training result 1")  # Ray Train's own report line
        logging.getLogger("ray._private.authentication").warning("Token authentication is enabled")
        logging.getLogger("ray").error("a Ray error")
        stop_logging_to(handler)
    finally:
        for h in root.handlers[:]:
            if h not in before:
                root.removeHandler(h)
    console = capsys.readouterr().err
    assert "cycle line" in console and "a Ray error" in console
    assert "DAAL epoch" not in console and "Reporting training result" not in console and "Token" not in console
    log = (tmp_path / "job.log").read_text()
    for text in ("cycle line", "DAAL epoch 1/2", "Reporting training result 1", "Token authentication", "a Ray error"):
        assert text in log


def test_what_a_raylet_pushes_to_the_driver_goes_to_the_log_not_the_console(tmp_path, capsys, monkeypatch):
    """Ray prints the raylets' messages (the worker-count warning) to stdout itself; routed,
    they are records: in the run's log file, off the default console. Other messages Ray
    prints (a worker's output) are left to Ray."""
    import ray._private.worker as ray_worker

    printed = []
    monkeypatch.setattr(ray_worker, "print_to_stdstream", lambda data, ignore_prefix: printed.append(data))
    route_raylet_messages()
    route_raylet_messages()  # idempotent: wrapped once
    root = logging.getLogger()
    before = list(root.handlers)
    warning = ("WARNING: 14 PYTHON worker processes have been started on node: abc with address: 127.0.0.1, "
               "which is 7x the maximum expected startup concurrency (2).")
    try:
        setup_logging()
        handler = log_to_file(tmp_path / "job.log")
        ray_worker.print_to_stdstream({"lines": [warning], "pid": "raylet", "is_err": False}, ignore_prefix=False)
        ray_worker.print_to_stdstream({"lines": ["a worker's print"], "pid": 123, "is_err": False}, ignore_prefix=False)
        stop_logging_to(handler)
    finally:
        for h in root.handlers[:]:
            if h not in before:
                root.removeHandler(h)
    captured = capsys.readouterr()
    assert "worker processes" not in captured.out + captured.err
    assert warning in (tmp_path / "job.log").read_text()
    assert [d["lines"] for d in printed] == [["a worker's print"]]


def test_daal_losses_print_rounded():
    text = str(StepLosses(recon=57.42100871693004, prior=0.035641019994562324, length=0.1688715233044191,
                          dpp=4.438053564591841, gan=-0.7726171125065197, mean_score=0.36553585258397187))
    assert text == "recon 57.42, prior 0.03564, length 0.1689, dpp 4.438, gan -0.7726, mean_score 0.3655"


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.faults
def test_ctrl_c_stops_a_job_within_seconds_and_says_how_to_resume(tmp_path):
    """SIGINT to the job's process group (what Ctrl-C sends) while a cycle runs on the
    worker group: the job exits 130 with the resume message, and the same command run again
    resumes and ends with the pool state of an uninterrupted run: the random strategy's
    labeled set (a function of the seed and cycle, so known without running it), each cycle
    once with its scheduled batch, one results row per cycle."""
    from test_crash_points import EXPERIMENT, check_pool, outcome, uninterrupted_random_outcome

    run_dir = tmp_path / "runs"
    cmd = [sys.executable, str(REPO / "jobs" / "digits.py"), "--smoke-test", "--strategies", "random",
           "--run-dir", str(run_dir), "--num-cpus", "4"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "DAAL_RAY_DASHBOARD": "0"}
    # A terminal's Ctrl-C reaches a process whose SIGINT is at its default. A test run started
    # in the background (`pytest ... &` from a script) hands its children SIGINT ignored, and
    # Python keeps it ignored: the job then stopped only when a Ray worker of the group passed
    # the interrupt on, and once ran on and exited 0. Reset it in the child.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    worker_log = run_dir / "digits-random-seed0" / "worker-rank0.log"
    deadline = time.time() + 180
    while not worker_log.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()
    os.killpg(proc.pid, signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("the job did not stop within a minute of Ctrl-C")
    assert proc.returncode == 130, out[-3000:]
    assert "interrupted:" in out and "of 2 cycles are recorded under" in out and "run the same command again" in out
    assert "Traceback" not in out
    assert EXPERIMENT == worker_log.parent.name
    rerun = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=600,
                           start_new_session=True)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    got = outcome(run_dir)
    check_pool(got, uninterrupted_random_outcome(run_dir, EXPERIMENT), "resumed after Ctrl-C")
    assert [r["cycle"] for r in got["rows"]] == [0, 1] and got["figure"], rerun.stdout[-3000:]
