"""A job killed at every point where it writes durable state, and at random points, resumes
to the outcome of an uninterrupted run.

The job is the digits job (``jobs/digits.py``) on a tiny protocol: random strategy, 72
labeled then 72 more (cycles 0 and 1), one epoch, training in the driver process
(``--num-workers 0``). Every file daal-ray writes goes through ``atomic_io``, which reaches
the crash points of :mod:`daal_ray.faults` just before and just after each rename (or
create). A record run (``DAAL_RAY_CRASH_AT=record``, which kills nothing) lists the points
of the whole job in order: the run directory's lease, the run configuration, the ALDriver's
fencing epoch, the pool state at each propose and commit, each cycle's model checkpoint,
each results row, the combined results and the report's figure. It is also the
uninterrupted run every other outcome is compared with.

A killed run is run with ``DAAL_RAY_CRASH_AT=<plan>``: the process that reaches the point
(the job's driver, or its ALDriver actor) SIGKILLs the job's process group, so no process
of the job gets to clean up. The same command is then run again on the same run directory,
itself killed at the next point (:func:`chain_plans`), so one run directory goes through
every kill; the run after the last kill ends the job, and its labeled set, labels, pool
history (each cycle once, with its scheduled batch size), results rows and figure must be
the uninterrupted run's.

Cost (the whole suite runs on 2 cores): a kill per run, rather than a killed run and a
full re-run per point, and every run a process forked from a server that has imported the
job and warmed torch once (``python tests/test_crash_points.py serve``), each in a session
of its own, connected to the suite's Ray instance (the job's Ray processes get the plan
through the job's runtime environment). Killing a job there kills its driver's process
group and, when the ALDriver reached the point, that worker; Ray then ends what else the
job had.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from daal_ray import faults
from daal_ray.rundir import LEASE_HEARTBEAT_ENV, LEASE_TTL_ENV

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "digits-random-seed0"
JOB_ARGS = ["--smoke-test", "--strategies", "random", "--epochs", "1", "--initial-fraction", "0.05",
            "--step-fraction", "0.05", "--final-fraction", "0.10", "--num-workers", "0", "--no-progress"]
BEFORE = ("write:", "create:")  # the points just before a write or a create takes effect
AFTER = {"write": "written", "create": "created"}  # and the points once it has
CYCLE_FILES = {"config.json", "pool_state.parquet", "model.pt", "meta.json", "results.parquet", "learning_curve.png"}
SCHEDULE = [(0, 72), (1, 72)]  # (cycle, ids labeled by it): 5% of digits' 1,437 training ids, then 5% more
JOB_TIMEOUT_S = 300


# ====================================================================== the hook itself
def test_plans_name_a_point_and_a_count_and_refuse_anything_else(tmp_path):
    log = str(tmp_path / "points.log")
    assert faults.parse_plan(None, log) is None and faults.parse_plan("", None) is None
    assert faults.parse_plan("record", log).point is None
    assert faults.parse_plan("write:pool_state.parquet:3", log)[:2] == ("write:pool_state.parquet", 3)
    plan = faults.parse_plan("written:meta.json:1 after write:model.pt", log)
    assert (plan.point, plan.count, plan.after) == ("written:meta.json", 1, "write:model.pt")
    for bad in ("write:pool_state.parquet", "write:x:0", "write:x:-1", ":3", "write:x:1 after "):
        with pytest.raises(ValueError, match="DAAL_RAY_CRASH_AT must be"):
            faults.parse_plan(bad, log)
    with pytest.raises(ValueError, match="needs DAAL_RAY_CRASH_LOG"):
        faults.parse_plan("write:x:1", None)
    hold = faults.parse_plan("written:results.parquet:1", log, faults.HOLD_ENV)
    assert (hold.point, hold.count) == ("written:results.parquet", 1)
    with pytest.raises(ValueError, match="DAAL_RAY_HOLD_AT must be '<point>"):  # a hold has no record mode
        faults.parse_plan("record", log, faults.HOLD_ENV)
    with pytest.raises(ValueError, match="DAAL_RAY_HOLD_AT needs DAAL_RAY_CRASH_LOG"):
        faults.parse_plan("write:x:1", None, faults.HOLD_ENV)


def test_a_plan_is_due_at_its_count_of_its_point_only():
    def due_at(value: str, reached: list[str]) -> list[int]:
        plan = faults.parse_plan(value, "log")
        return [i for i in range(len(reached)) if plan.due(reached[:i], reached[i])]

    run = ["write:b", "write:a", "write:a", "write:c", "write:b"]
    assert due_at("write:a:2", run) == [2]
    assert due_at("write:a:3", run) == []
    assert due_at("*:4", run) == [3]
    assert due_at("write:b:1 after write:a", run) == [4]  # the b before the first a does not count
    assert due_at("write:a:1 after write:a", run) == [2]  # the same point: its next time
    assert due_at("write:c:1 after write:z", run) == []
    assert due_at("record", run) == []


def test_point_names_are_the_kind_of_file_not_its_number():
    assert faults.point_name("write", Path("/r/exp/checkpoints/cycle_001/model.pt")) == "write:model.pt"
    assert faults.point_name("written", Path("/r/exp/.lease/000000000003.json")) == "written:N.json"
    assert faults.point_name("write", "/r/exp/.epochs/000000000012") == "write:N"
    assert faults.point_name("propose") == "propose"


_CRASHING = """
import subprocess, sys
from daal_ray import faults
child = subprocess.Popen(["sleep", "60"])  # another process of the job's group
print(child.pid, flush=True)
faults.crash_point("write", "run/pool_state.parquet")
print("survived the first", flush=True)
faults.crash_point("written", "run/pool_state.parquet")
faults.crash_point("write", "run/pool_state.parquet")
print("survived the second", flush=True)
"""


@pytest.mark.faults
def test_the_planned_point_kills_the_whole_process_group_and_no_other(tmp_path):
    log = tmp_path / "points.log"
    env = {**os.environ, faults.CRASH_ENV: "write:pool_state.parquet:2", faults.LOG_ENV: str(log)}
    env.pop(faults.GROUP_ENV, None)
    r = subprocess.run([sys.executable, "-c", _CRASHING], env=env, capture_output=True, text=True, timeout=60,
                       start_new_session=True)
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    child, *said = r.stdout.split("\n")
    assert said[:1] == ["survived the first"] and "survived the second" not in r.stdout
    deadline = time.time() + 10
    while Path(f"/proc/{child}").exists() and "Z" not in _proc_state(child):
        assert time.time() < deadline, "the job's other process survived the kill"
        time.sleep(0.1)
    assert faults.read_points(log) == [("write:pool_state.parquet", 1), ("written:pool_state.parquet", 1),
                                       ("write:pool_state.parquet", 2)]


_HOLDING = """
import os, sys
from daal_ray import faults
if sys.argv[1:] == ["armed"]:  # as a test's wrapper arms it in one job's processes
    faults.arm_hold("written:results.parquet:2", os.environ["DAAL_RAY_CRASH_LOG"])
for n in (1, 2):
    faults.crash_point("written", "run/results.parquet")
    print("past", n, flush=True)
"""


@pytest.mark.faults
@pytest.mark.parametrize("how", ["env", "armed"])
def test_the_hold_point_holds_its_process_until_released_and_a_resumed_job_passes_it(tmp_path, how):
    """Held at the 2nd ``written:results.parquet`` (set in the environment, or armed by
    ``arm_hold``), in a process that leads no group (a hold kills nothing): past the 1st,
    its pid in LOG.held, no further until LOG.release exists. The count goes on in the log,
    so a second run (a resumption) does not hold again."""
    log = tmp_path / "points.log"
    env = {**os.environ, faults.LOG_ENV: str(log)}
    env.pop(faults.CRASH_ENV, None)
    if how == "env":
        env[faults.HOLD_ENV] = "written:results.parquet:2"
    proc = subprocess.Popen([sys.executable, "-c", _HOLDING, how], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "past 1\n"
        held = faults.held_file(log)
        deadline = time.time() + 60
        while not held.exists():
            assert proc.poll() is None and time.time() < deadline, "the process did not hold"
            time.sleep(0.05)
        assert held.read_text() == str(proc.pid)
        time.sleep(0.5)
        assert proc.poll() is None, "held until released"
        faults.release_file(log).touch()
        assert proc.communicate(timeout=60)[0] == "past 2\n" and proc.returncode == 0
    finally:
        proc.kill()
    faults.release_file(log).unlink()
    again = subprocess.run([sys.executable, "-c", _HOLDING, how], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout == "past 1\npast 2\n", again.stderr
    assert [n for _, n in faults.read_points(log)] == [1, 2, 3, 4]


def _proc_state(pid: str) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return "gone"


@pytest.mark.faults
def test_a_plan_in_a_process_that_leads_no_group_is_refused_and_record_mode_kills_nothing(tmp_path):
    """A kill would take the processes that started the job (here: pytest): refused at
    import. A record run only counts, wherever it runs; with no plan nothing is written."""
    env = {**os.environ, faults.CRASH_ENV: "write:x:1", faults.LOG_ENV: str(tmp_path / "points.log")}
    env.pop(faults.GROUP_ENV, None)
    r = subprocess.run([sys.executable, "-c", "import daal_ray.faults"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "does not lead one" in r.stderr, r.stderr
    env[faults.CRASH_ENV] = faults.RECORD
    r = subprocess.run([sys.executable, "-c", "from daal_ray import faults; faults.crash_point('write', 'a/b.json')"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert faults.read_points(tmp_path / "points.log") == [("write:b.json", 1)]
    assert faults._PLAN is None and faults._HOLD is None, "the suite runs without a plan"
    faults.crash_point("write", tmp_path / "c.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["points.log"]


# ====================================================================== the fork server
def serve() -> None:
    """Import the job once, then run it in a forked child per request (one JSON line on
    stdin: argv, env, log file, Ray address); answer with the child's pid when it starts and
    its exit when it ends (a JSON line each)."""
    import importlib

    sys.path.insert(0, str(REPO / "jobs"))
    import digits  # noqa: F401  (the job, with everything it imports: torch, Ray Train, Data, Tune)
    import ray

    import daal_ray.report  # noqa: F401
    from daal_ray import runtime

    _warm_up()
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid:
            sys.stdout.write(json.dumps({"pid": pid}) + "\n")
            sys.stdout.flush()
        else:  # the job: a session of its own, so its crash takes no one else
            code = 1
            try:
                os.setsid()
                fd = os.open(req["out"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.environ.update(req["env"])
                importlib.reload(faults)  # the plan is read when the module loads: this job's
                job_env = {k: v for k, v in os.environ.items() if k.startswith("DAAL_RAY_CRASH")}
                with runtime._loopback_node():
                    ray.init(address=req["address"], logging_level="WARNING", log_to_driver=False,
                             runtime_env={"env_vars": job_env} if job_env else None)
                code = digits.main(req["argv"])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        sys.stdout.write(json.dumps({"pid": pid, "rc": os.waitstatus_to_exitcode(status)}) + "\n")
        sys.stdout.flush()


def _warm_up() -> None:
    """Do once, before the jobs are forked, what each would do first: read the dataset,
    take torch's first training step and evaluation (lazy imports, kernel set-up: seconds,
    against milliseconds for the next), draw matplotlib's first figure (its font cache). On
    one thread, the jobs' own setting: a forked child cannot use threads its parent started."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from daal_ray.config import TrainConfig
    from daal_ray.data import open_dataset
    from daal_ray.settings import DataConfig
    from daal_ray.training import evaluate, fit_task_model

    threads = len(os.listdir("/proc/self/task"))  # the imports' own (jemalloc's, torch's): fork-safe
    torch.set_num_threads(1)
    dataset = open_dataset(DataConfig(name="digits"))
    ids = dataset.sample_ids("train")[:64]
    model, _ = fit_task_model(dataset, ids, dataset.targets("train", ids), TrainConfig(model="small_cnn", epochs=1),
                              seed=0, device=torch.device("cpu"))
    evaluate(model, dataset, device=torch.device("cpu"), batch_size=512)
    fig = plt.figure()
    fig.savefig(io.BytesIO(), format="png")
    plt.close(fig)
    started = len(os.listdir("/proc/self/task")) - threads
    assert started == 0, f"the warm-up started {started} threads: a forked job could hang on one of their locks"


class JobRunner:
    """Runs the tiny digits job through the fork server, on the suite's Ray instance."""

    def __init__(self, address: str, root: Path) -> None:
        self.address, self.root = address, root
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        for key in (faults.CRASH_ENV, faults.LOG_ENV, faults.GROUP_ENV, "RAY_ADDRESS"):
            env.pop(key, None)
        # The run directory's lease is renewed on a timer; renewed every 10 s, a job would
        # reach a different number of points from one run to the next. A dead holder's lease
        # on this host is taken over at once whatever its TTL.
        env.update({LEASE_TTL_ENV: "7200", LEASE_HEARTBEAT_ENV: "3600"})
        self.server = subprocess.Popen([sys.executable, __file__, "serve"], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, env=env, cwd=REPO, start_new_session=True)
        self._pending = b""

    def _answer(self, timeout: float) -> dict | None:
        """The server's next JSON line, or None if none came within ``timeout`` seconds (read
        from the pipe itself: a buffered reader would hide a line that came with the last)."""
        deadline = time.time() + timeout
        while b"\n" not in self._pending:
            ready, _, _ = select.select([self.server.stdout], [], [], max(0.0, deadline - time.time()))
            if not ready:
                return None
            chunk = os.read(self.server.stdout.fileno(), 4096)
            assert chunk, "the fork server died"
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return json.loads(line)

    def run(self, run_dir: Path, crash_at: str | None = None, log: Path | None = None) -> int:
        """Run the job on ``run_dir``; return its exit code (-9: killed at ``crash_at``)."""
        env = {faults.CRASH_ENV: crash_at, faults.LOG_ENV: str(log)} if crash_at else {}
        out = run_dir.parent / f"{run_dir.name}.out"
        request = {"argv": [*JOB_ARGS, "--run-dir", str(run_dir)], "env": env, "out": str(out),
                   "address": self.address}
        self.server.stdin.write(json.dumps(request).encode() + b"\n")
        self.server.stdin.flush()
        started = self._answer(60)
        assert started is not None, "the fork server did not start the job"
        ended = self._answer(JOB_TIMEOUT_S)
        if ended is None:  # a hung job: its session ends here, and the test with it
            os.killpg(started["pid"], signal.SIGKILL)
            self._answer(60)
            raise AssertionError(f"the job ran over {JOB_TIMEOUT_S} s; its output:\n{_tail(out)}")
        _wait_until_job_gone(run_dir)
        return ended["rc"]

    def close(self) -> None:
        self.server.stdin.close()
        try:
            self.server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.server.pid, signal.SIGKILL)
            self.server.wait()


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no output)"


def _wait_until_job_gone(run_dir: Path, timeout: float = 60) -> None:
    """Until the ALDriver of ``run_dir``'s experiment is no longer registered: Ray ends a
    dead job's actors, and a re-run must not find the old one half torn down."""
    import ray

    from daal_ray.driver import driver_name

    name = driver_name((run_dir / EXPERIMENT).resolve())
    deadline = time.time() + timeout
    while any(a["name"] == name for a in ray.util.list_named_actors(all_namespaces=True)):
        assert time.time() < deadline, f"the ALDriver {name} of a finished job is still registered"
        time.sleep(0.2)


# ====================================================================== outcomes
def outcome(run_dir: Path) -> dict:
    """What must not depend on crashes: the pool state, its history, the results rows."""
    from daal_ray.pool import PoolState
    from daal_ray.results import read_results

    state = PoolState.load(run_dir / EXPERIMENT / "pool_state.parquet")
    rows = read_results(run_dir / EXPERIMENT).to_pylist()
    combined = read_results(run_dir).to_pylist()
    keep = ("experiment", "cycle", "num_labeled", "num_selected", "value", "budget")
    return {
        "labeled_cycle": state.labeled_cycle.tolist(), "label": state.label.tolist(),
        "pending_cycle": state.pending_cycle,
        "history": [(h.cycle, h.num_added) for h in state.history],
        "rows": [{k: r[k] for k in keep} for r in rows],
        "combined": [{k: r[k] for k in keep} for r in combined],
        "figure": (run_dir / "learning_curve.png").is_file(),
    }


def uninterrupted_random_outcome(run_dir: Path, experiment: str) -> dict:
    """The pool state an uninterrupted run of the random strategy ends with, computed
    without running it: its initial pool and every batch are functions of the seed and the
    cycle alone (``cycle.initial_pool``; the strategy's scores merged by the cycle loop's own
    exact top-K), whatever the models. Keys as in :func:`outcome`."""
    from daal_ray.acquisition import build_strategy
    from daal_ray.config import ExperimentConfig
    from daal_ray.cycle import initial_pool
    from daal_ray.data import open_dataset
    from daal_ray.scoring import select_topk

    cfg = ExperimentConfig.from_dict(json.loads((run_dir / experiment / "config.json").read_text()))
    assert cfg.acquisition.strategy == "random"
    dataset = open_dataset(cfg.data)
    pool = np.sort(dataset.sample_ids("train"))
    n_initial, _, rounds = cfg.schedule(pool.size)
    labeled_cycle = np.where(np.isin(pool, initial_pool(pool, n_initial, cfg.seed)), 0, -1)
    for cycle in range(rounds):
        k = cfg.batch_size(pool.size, int((labeled_cycle >= 0).sum()))
        if k == 0:
            break
        strategy = build_strategy(cfg.acquisition, seed=cfg.seed, cycle=cycle)
        ids, _, _ = select_topk({"sample_id": pool, "labeled": labeled_cycle >= 0}, strategy, k)
        labeled_cycle[np.isin(pool, ids)] = cycle + 1
    label = np.where(labeled_cycle >= 0, dataset.targets("train", pool), -1)
    return {"labeled_cycle": labeled_cycle.tolist(), "label": label.tolist(), "pending_cycle": None,
            "history": [(c, int((labeled_cycle == c).sum())) for c in range(int(labeled_cycle.max()) + 1)]}


def check_pool(got: dict, expected: dict, what: str) -> None:
    """The pool-state part of :func:`check_outcome`: nothing pending, each cycle once with
    its batch, the labeled set and its labels."""
    assert got["pending_cycle"] is None, f"{what}: a batch is left pending"
    assert got["history"] == expected["history"], f"{what}: each cycle once, with its scheduled batch"
    assert got["labeled_cycle"] == expected["labeled_cycle"], f"{what}: the labeled set (and each id's cycle)"
    assert got["label"] == expected["label"], f"{what}: the labels"


def check_outcome(got: dict, clean: dict, what: str) -> None:
    assert clean["history"] == SCHEDULE
    check_pool(got, clean, what)
    assert [r["cycle"] for r in got["rows"]] == [0, 1], f"{what}: each cycle recorded once"
    assert got["rows"] == clean["rows"] and got["combined"] == clean["combined"], f"{what}: the results rows"
    assert got["figure"], f"{what}: the report's figure"


def chain_plans(points: list[tuple[str, int]], kills: list[int]) -> list[tuple[str, int, int]]:
    """Crash plans that kill a job at ``points[i]`` for each ``i`` of ``kills`` (ascending),
    one run after another on one run directory: ``[(plan, anchor, i)]``.

    A run resumed after a kill reaches, before it goes further, the first write the killed
    run left undone: the anchor, ``A`` (the point of the kill itself when it came before a
    rename or create, else the next point). The run is killed at the c-th time it reaches
    ``B`` = ``points[i]`` after ``A``, c counting the times the uninterrupted run reached
    ``B`` after ``A``: ``"B:c after A"``. Its points from ``A`` to the kill must be the
    uninterrupted run's (the test checks it), so it dies in the state the uninterrupted run
    had at ``B``.
    """
    plans, prev = [], -1
    for i in kills:
        point, n = points[i]
        if prev < 0:
            plans.append((f"{point}:{n}", 0, i))
        else:
            anchor = prev if points[prev][0].startswith(BEFORE) else prev + 1
            assert anchor < i, f"a kill at {points[i]} right after one at {points[prev]} cannot be told apart"
            c = sum(p == point for p, _ in points[anchor + 1:i + 1])
            plans.append((f"{point}:{c} after {points[anchor][0]}", anchor, i))
        prev = i
    return plans


def every_write(points: list[tuple[str, int]]) -> list[int]:
    """The kill points that cover every durable state of a job once.

    Killed just before a rename (``write:``) or a create (``create:``), a job leaves every
    earlier write durable and this one not, with its temp file complete: each such point is
    a distinct state. Killed just after one (``written:``, ``created:``), it leaves the state
    the next such point leaves, less that file's temp file; only the job's last point, after
    everything, is kept.
    """
    return [i for i, (p, _) in enumerate(points) if p.startswith(BEFORE)] + [len(points) - 1]


def run_killed_chain(jobs: "JobRunner", run_dir: Path, points: list[tuple[str, int]], kills: list[int]) -> None:
    """Run the job on ``run_dir`` killed at each of ``kills`` in turn, checking where each
    run died; then once more, to its end."""
    names = [p for p, _ in points]
    for j, (plan, anchor, i) in enumerate(chain_plans(points, kills)):
        log = run_dir.parent / f"{run_dir.name}{j:02d}.log"
        rc = jobs.run(run_dir, crash_at=plan, log=log)
        assert rc == -signal.SIGKILL, f"{plan}: the job was not killed\n{_tail(run_dir.parent / f'{run_dir.name}.out')}"
        reached = [p for p, _ in faults.read_points(log)]
        expected = names[anchor:i + 1]
        assert reached[-len(expected):] == expected, f"{plan}: killed after {reached}, not after {expected}"
        if j == 0:
            assert reached == expected
    rc = jobs.run(run_dir)
    assert rc == 0, _tail(run_dir.parent / f"{run_dir.name}.out")


@pytest.fixture(scope="module")
def jobs(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    runner = JobRunner(ray_session.get_runtime_context().gcs_address, root)
    try:
        yield runner
    finally:
        runner.close()


@pytest.fixture(scope="module")
def clean_run(jobs):
    """The uninterrupted run, recording every crash point it reaches."""
    run_dir = jobs.root / "clean"
    log = jobs.root / "clean-points.log"
    rc = jobs.run(run_dir, crash_at=faults.RECORD, log=log)
    assert rc == 0, _tail(run_dir.parent / "clean.out")
    points = faults.read_points(log)
    return outcome(run_dir), points


# ====================================================================== tests
@pytest.mark.cluster
@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.faults
def test_a_record_run_lists_every_write_of_the_job_in_order(jobs, clean_run):
    """The record run reaches both points of every write, in the job's order: the points
    the other tests kill at. A write that bypassed atomic_write would be missing here. (The
    run directory's lease and the ALDriver's fencing epoch, ``N.json`` and ``N``, are written
    too; their place in the order is theirs to keep.)"""
    clean, points = clean_run
    writes = [p.split(":", 1)[1] for p, _ in points if p.startswith(BEFORE)]
    assert [w for w in writes if w in CYCLE_FILES] == [
        "config.json",
        "pool_state.parquet", "pool_state.parquet",  # cycle 0: the initial pool proposed, committed
        "model.pt", "meta.json", "results.parquet",  # cycle 0: checkpoint, results row
        "pool_state.parquet", "pool_state.parquet",  # cycle 1's batch: proposed (pending), committed
        "model.pt", "meta.json", "results.parquet",  # cycle 1: checkpoint, results row
        "results.parquet", "learning_curve.png",     # the job: combined results, the report's figure
    ], writes
    check_pool(clean, uninterrupted_random_outcome(jobs.root / "clean", EXPERIMENT), "the known answer")
    times = dict(points)  # each point's last count: how often it was reached
    for point, n in times.items():  # every write completed: renamed (or linked) as often as begun
        kind, name = point.split(":", 1)
        if kind in ("write", "create"):
            assert times.get(f"{AFTER[kind]}:{name}") == n, points
    assert points[-1][0] == "written:learning_curve.png", "the report's figure is the job's last write"
    check_outcome(clean, clean, "the uninterrupted run")


@pytest.mark.cluster
@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.faults
def test_a_job_killed_at_each_write_point_resumes_to_the_uninterrupted_outcome(jobs, clean_run):
    """One run directory, the job killed once at each write point in turn (every run one
    write further on than the one before, after redoing, as a resumption does, the write the
    previous run was killed at), then run to its end."""
    clean, points = clean_run
    kills = every_write(points)
    assert [points[i][0] for i in kills[:-1]] == [p for p, _ in points if p.startswith(BEFORE)]
    run_killed_chain(jobs, jobs.root / "points", points, kills)
    check_outcome(outcome(jobs.root / "points"), clean, "killed at every write point")


@pytest.mark.cluster
@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.faults
def test_random_kills_across_one_run_end_in_the_uninterrupted_outcome(jobs, clean_run):
    """Four kills at points of the job drawn with a fixed seed from all of them (before and
    after a rename alike), each run resuming from the one before and killed further on,
    then a last run to the end."""
    clean, points = clean_run
    rng = np.random.default_rng(2024)
    while True:  # a kill just after a rename, then one at the next point, would be one state: draw again
        kills = sorted(rng.choice(len(points), size=4, replace=False).tolist())
        if all(b > a + 1 or points[a][0].startswith(BEFORE) for a, b in zip(kills, kills[1:])):
            break
    run_killed_chain(jobs, jobs.root / "chaos", points, kills)
    check_outcome(outcome(jobs.root / "chaos"), clean, f"killed at {[points[i] for i in kills]}")


if __name__ == "__main__" and sys.argv[1:] == ["serve"]:
    with contextlib.suppress(KeyboardInterrupt):
        serve()
