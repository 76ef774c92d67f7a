"""The cluster path: cluster.yaml against Ray's own schema, and a real multi-node Ray
cluster with token authentication taking ``ray job submit`` of the Cityscapes job.

The cluster is three real ``ray start --block`` processes on this machine, each in its own
session: a head with no CPUs (it runs Ray's services and the jobs' drivers, as on a real
cluster) and two worker nodes of 4 CPUs, which run the tasks and actors, Ray Train's
workers among them. Every port of every node is chosen free, and the temp dir is the
cluster's own, so it never touches another Ray instance on the machine; it is stopped by
signalling the nodes' process groups (never a bare ``ray stop``).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import inspect
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import listening
import pyarrow.parquet as pq
import pytest
import yaml

from daal_ray.pool import PoolState

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


# ------------------------------------------------------------------ cluster.yaml
def _cluster_config() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def _validate(config: dict) -> dict:
    """Ray's own check, as ``ray up`` does it: merge the provider's defaults, then validate
    against the autoscaler's JSON schema (and its extra rules)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    full = prepare_config(copy.deepcopy(config))
    validate_config(full)
    return full


def test_cluster_yaml_validates_against_rays_cluster_schema():
    full = _validate(_cluster_config())
    head = full["available_node_types"][full["head_node_type"]]
    workers = [t for name, t in full["available_node_types"].items() if name != full["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    assert workers and all(t["resources"].get("GPU", 0) >= 1 for t in workers), "workers are GPU nodes"


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c["available_node_types"]["gpu_worker"].update(min_worker=1), "min_worker"),
    (lambda c: c.update(head_node_typ="cpu_head"), "head_node_typ"),
    (lambda c: c.update(max_workers="eight"), "eight"),
])
def test_rays_schema_check_rejects_a_broken_cluster_yaml(mutate, expected):
    """The check above can fail: a misspelt key or a wrong type is refused by Ray's schema."""
    import jsonschema

    config = _cluster_config()
    mutate(config)
    with pytest.raises(jsonschema.ValidationError, match=expected):
        _validate(config)


def test_cluster_yaml_keeps_the_job_server_on_loopback_with_token_auth_and_installs_everywhere():
    config = _cluster_config()
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        starts = [c for c in commands if " start " in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts)
    setup = " ".join(config["setup_commands"])  # setup_commands run on every node
    assert "pip install -e ~/daal-ray" in setup and "/data" in setup
    assert config["file_mounts"]["~/daal-ray"] == "."
    assert "~/.ray/auth_token" in config["file_mounts"]


# ------------------------------------------------------------------ a real cluster + ray job submit
WORKER_NODES = 2
WORKER_NODE_CPUS = 4
TRAIN_WORKER = "RayTrainWorker"  # the actor class of a Ray Train (V2) worker


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports that are free right now (all held at once while they are picked)."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _block_is_free(base: int, size: int) -> bool:
    socks = []
    try:
        for p in range(base, base + size):
            s = socket.socket()
            socks.append(s)
            s.bind(("127.0.0.1", p))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


# Blocks of worker ports handed out on this machine, with the pid each was handed to: a
# cluster's workers bind their ports only when they start, so a block free now may already
# be another cluster's (xdist workers start clusters at the same time).
_BLOCK_CLAIMS = Path(tempfile.gettempdir()) / "daal-ray-test-port-blocks"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _worker_port_ranges(n: int, size: int = 200) -> list[tuple[int, int]]:
    """``n`` disjoint blocks of ``size`` ports, each free right now and not handed to a
    live test process of this machine: one per node, for its workers. The blocks are tried
    in random order; none of them overlaps the kernel's ephemeral range, where the nodes'
    own ports come from."""
    bases = list(range(21000, 30000 - size + 1, size))
    random.shuffle(bases)
    with open(_BLOCK_CLAIMS, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        fh.seek(0)
        claims = [tuple(map(int, line.split())) for line in fh if len(line.split()) == 2]
        live = [(b, pid) for b, pid in claims if _alive(pid)]
        taken = {b for b, _ in live}
        blocks = [(b, b + size - 1) for b in bases if b not in taken and _block_is_free(b, size)][:n]
        fh.seek(0)
        fh.truncate()
        fh.writelines(f"{b} {pid}\n" for b, pid in live + [(b, os.getpid()) for b, _ in blocks])
    assert len(blocks) == n, f"no {n} free blocks of worker ports between 21000 and 30000"
    return blocks


class LocalHead:
    """A real three-node Ray cluster on this machine, with token authentication.

    Three ``ray start --block`` processes, each in its own process group: a head with
    ``--num-cpus=0``, which (as on a real cluster) runs only Ray's services and the jobs'
    drivers, and two worker nodes with 4 CPUs and a ``worker_node`` resource each, which
    run every task and actor, the Ray Train workers among them. Every port of every node
    (and a block of worker ports per node) is chosen here, free and distinct, and Ray's
    temp dir is this cluster's own, so it collides neither with itself nor with another
    Ray instance on the machine. The nodes are given 127.0.0.1 as their address (on
    Linux, Ray announces the machine's address for it); the dashboard, which takes
    ``ray job submit`` and answers the state API, listens on loopback only.
    """

    # A node's raylet waits 15 s (fixed in Ray) for its dashboard agent to start, and gives
    # up; on a small, busy machine the agent's imports can take longer, so a node that
    # exited is started again, and the nodes are started one at a time.
    ATTEMPTS = 3

    def __init__(self) -> None:
        # A short temp dir: Ray's Unix socket paths must stay under ~100 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="drh-", dir="/tmp"))
        self.token = secrets.token_hex(32)
        (self.root / "token").write_text(self.token)
        ports = iter(_free_ports(9 + 6 * WORKER_NODES))
        head_workers, *node_workers = _worker_port_ranges(1 + WORKER_NODES)
        gcs, dash, client = next(ports), next(ports), next(ports)
        self.gcs_address = f"127.0.0.1:{gcs}"
        self.address = f"http://127.0.0.1:{dash}"
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.root / "token"),
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.env.pop("RAY_AUTH_TOKEN", None)
        self.env.pop("RAY_ADDRESS", None)
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        try:
            self._start_node("head", [
                "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                "--include-dashboard=true", f"--ray-client-server-port={client}", "--num-cpus=0",
                f"--temp-dir={self.root / 'r'}", *self._node_ports(ports, head_workers)])
            # A worker node joins the head's session (its temp dir), read from the GCS.
            for i, workers in enumerate(node_workers):
                self._start_node(f"worker{i}", [
                    f"--address={self.gcs_address}", f"--num-cpus={WORKER_NODE_CPUS}",
                    '--resources={"worker_node": 1}', *self._node_ports(ports, workers)])
            self._wait_for_nodes(1 + WORKER_NODES, timeout=120)
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _node_ports(ports, workers: tuple[int, int]) -> list[str]:
        """A node's own ports: taken from ``ports``, so no two nodes share one."""
        return [f"--node-manager-port={next(ports)}", f"--object-manager-port={next(ports)}",
                f"--metrics-export-port={next(ports)}", f"--dashboard-agent-listen-port={next(ports)}",
                f"--dashboard-agent-grpc-port={next(ports)}", f"--runtime-env-agent-port={next(ports)}",
                f"--min-worker-port={workers[0]}", f"--max-worker-port={workers[1]}"]

    def _start_node(self, name: str, args: list[str]) -> None:
        """Start one node: return once its ``ray start`` says it runs (its raylet is
        registered with the GCS), start it again if it exited before."""
        log = self.root / f"{name}.log"
        self.logs.append(log)
        for _ in range(self.ATTEMPTS):
            offset = log.stat().st_size if log.exists() else 0
            with open(log, "ab") as out:  # the child holds its own copy
                proc = subprocess.Popen(
                    [RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats", *args],
                    env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            self.procs.append(proc)
            deadline = time.time() + 120
            while proc.poll() is None and time.time() < deadline:
                with open(log, "rb") as f:
                    f.seek(offset)
                    if b"Ray runtime started." in f.read():
                        return
                time.sleep(0.5)
            self._kill([proc])  # what is left of it (its agents), before its ports are used again
            self.procs.remove(proc)
        raise RuntimeError(f"{name} did not start in {self.ATTEMPTS} attempts:\n{self._log_tails()}")

    def _log_tails(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}" for log in self.logs)

    def _wait_for_nodes(self, n: int, timeout: float) -> None:
        """Until the state API (through the dashboard, with the token) reports ``n`` alive nodes."""
        deadline = time.time() + timeout
        alive: list = []
        while time.time() < deadline:
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"a node of the cluster exited:\n{self._log_tails()}")
            try:
                alive = self.state("nodes", "state=ALIVE", timeout=30)
            except (RuntimeError, ValueError, subprocess.TimeoutExpired):  # the dashboard is not up yet
                alive = []
            if len(alive) >= n:
                return
            time.sleep(2)
        raise RuntimeError(f"the cluster did not reach {n} alive nodes ({len(alive)}):\n{self._log_tails()}")

    def state(self, kind: str, *filters: str, timeout: float = 60) -> list[dict]:
        """``ray list KIND --detail`` of this cluster, as dicts (dead entries included unless filtered)."""
        cmd = [RAY, "list", kind, "--address", self.address, "--format", "json", "--detail", "--limit", "10000"]
        for f in filters:
            cmd += ["--filter", f]
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"ray list {kind} failed: {(r.stdout + r.stderr)[-2000:]}")
        return json.loads(r.stdout)

    def submit(self, *entrypoint: str, env: dict | None = None, submission_id: str | None = None,
               timeout: float = 400) -> subprocess.CompletedProcess:
        ids = ["--submission-id", submission_id] if submission_id else []
        return subprocess.run([RAY, "job", "submit", "--address", self.address, "--working-dir", str(REPO), *ids,
                               "--", *entrypoint], env=env or self.env, cwd=REPO, capture_output=True, text=True,
                              timeout=timeout)

    @staticmethod
    def _kill(procs: list[subprocess.Popen]) -> None:
        """SIGTERM to each process group, then SIGKILL to whatever ignored it."""
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.time() + 10
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.time()))
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    def stop(self) -> None:
        """Signal every node's process group (never a bare ``ray stop``, which would stop
        every Ray instance on the machine), then remove the cluster's temp dir."""
        self._kill(self.procs)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def local_head():
    # Two clusters of three nodes at once on a small machine slow each other down more than
    # they overlap: under xdist, wait for the multi-node scenarios' cluster to be gone (without
    # xdist this module runs after tests/test_multinode.py, which waits for them).
    from conftest import shared_scenarios_dir
    from test_multinode import wait_for_shared_scenarios

    shared = shared_scenarios_dir()
    if os.environ.get("PYTEST_XDIST_WORKER") and shared.exists():
        wait_for_shared_scenarios(shared)
    head = LocalHead()
    try:
        yield head
    finally:
        head.stop()


@pytest.mark.cluster
@pytest.mark.slow
def test_ray_job_submit_runs_the_cityscapes_smoke_test_to_success(local_head, tmp_path):
    """The smoke test (DAAL on a generated fixture in the official layout, 2 Ray Train workers
    under DDP, spread across nodes) submitted to the cluster: it succeeds, its results and
    pool state are right, and its two Train workers ran one on each worker node."""
    run_dir = tmp_path / "runs"
    submission_id = f"cityscapes-smoke-{secrets.token_hex(4)}"
    r = local_head.submit("python", "jobs/cityscapes.py", "--smoke-test", "--num-workers", "2",
                          "--placement-strategy", "SPREAD", "--run-dir", str(run_dir), submission_id=submission_id)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "succeeded" in out.lower()
    assert str(run_dir / "results.parquet") in out and str(run_dir / "fixture") in out
    # The console: one line per cycle, none of Ray Train's report lines or DAAL's losses,
    # which are in the workers' logs in the run directory instead.
    cycle_lines = [line for line in out.splitlines() if line.startswith("cityscapes-daal-seed0  cycle ")]
    assert [line.split()[2] for line in cycle_lines] == ["0/1", "1/1"], out[-4000:]
    for noise in ("Reporting training result", "StepLosses(", "DAAL epoch", "TrainingReport("):
        assert noise not in out, noise
    worker_log = (run_dir / "cityscapes-daal-seed0" / "worker-rank0.log").read_text()
    assert "Reporting training result" in worker_log and "DAAL epoch 1/1: recon " in worker_log
    assert (run_dir / "cityscapes-daal-seed0" / "worker-rank1.log").is_file()  # every rank has its log
    assert "running 1 experiment(s)" in (run_dir / "job.log").read_text()
    status = subprocess.run([RAY, "job", "list", "--address", local_head.address], env=local_head.env,
                            capture_output=True, text=True, timeout=60).stdout
    assert "SUCCEEDED" in status
    rows = pq.read_table(run_dir / "results.parquet").to_pylist()
    assert {r["dataset"] for r in rows} == {"cityscapes"} and {r["metric"] for r in rows} == {"miou"}
    assert [r["cycle"] for r in rows] == [0, 1] and [r["num_labeled"] for r in rows] == [2, 3]
    assert rows[0]["num_selected"] == 1
    assert all(0.0 <= r["value"] <= 1.0 for r in rows)
    assert 0.0 <= rows[0]["batch_class_entropy"] <= 1.0  # the selected mask's class composition
    state = PoolState.load(run_dir / "cityscapes-daal-seed0" / "pool_state.parquet")
    assert state.labeled_ids().size == 3 and set(state.ids_of_cycle(1)).isdisjoint(state.ids_of_cycle(0))
    # Where the Train workers ran, from the cluster's state API: SPREAD reached Ray Train's
    # placement group (PACK would put both on one node), and the head, with no CPUs, took none.
    (job,) = local_head.state("jobs", f"submission_id={submission_id}")
    workers = local_head.state("actors", f"class_name={TRAIN_WORKER}", f"job_id={job['job_id']}")
    worker_nodes = {n["node_id"] for n in local_head.state("nodes", "state=ALIVE")
                    if n["resources_total"].get("worker_node")}
    assert len(worker_nodes) == WORKER_NODES
    assert len(workers) == 2, workers  # one worker group of 2 for the run
    assert {w["node_id"] for w in workers} == worker_nodes, (workers, worker_nodes)


@pytest.mark.cluster
@pytest.mark.faults
@pytest.mark.slow
def test_a_failing_job_makes_ray_job_submit_exit_non_zero(local_head, tmp_path):
    r = local_head.submit("python", "jobs/cityscapes.py", "--data-root", str(tmp_path / "missing"),
                          "--run-dir", str(tmp_path / "runs"), timeout=200)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "FAILED" in out or "failed" in out
    assert str(tmp_path / "missing") in out, "the job's error names the missing data root"


@pytest.mark.cluster
@pytest.mark.faults
@pytest.mark.slow
@pytest.mark.parametrize("auth", ["none", "wrong"])
def test_ray_job_submit_without_the_token_is_refused(local_head, auth):
    env = dict(local_head.env)
    env.pop("RAY_AUTH_TOKEN_PATH")
    if auth == "none":
        env["RAY_AUTH_MODE"] = "disabled"
    else:
        env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    r = subprocess.run([RAY, "job", "submit", "--address", local_head.address, "--", "python", "-c", "print(42)"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "authentication" in (r.stdout + r.stderr).lower()


@pytest.mark.cluster
@pytest.mark.slow
def test_a_local_instance_started_next_to_another_cluster_finds_itself(local_head, tmp_path):
    """Two Ray instances on one machine (the cluster above and the one ``init_ray`` starts):
    a process of the new instance that looks its cluster up without an address (as Ray
    Train's placement-group cleaner does through the state API) finds its own, where the
    lookup would otherwise fail with 'Found multiple active Ray instances'."""
    script = inspect.getsource(listening) + (
        "import json, ray, ray._private.services as services\n"
        "from daal_ray.runtime import init_ray\n"
        "init_ray(num_cpus=2)\n"
        "@ray.remote\n"
        "def lookup():\n"
        "    return services.canonicalize_bootstrap_address_or_die(None)\n"
        "print('OWN', ray.get_runtime_context().gcs_address)\n"
        "print('FOUND', ray.get(lookup.remote()))\n"
        "print('LISTENING', json.dumps(listening(descendants(os.getpid()))))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({"RAY_AUTH_MODE": "disabled", "DAAL_RAY_DASHBOARD": "1"})  # the state API needs the dashboard
    r = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    found = dict(line.split(" ", 1) for line in r.stdout.splitlines() if line.startswith(("OWN", "FOUND")))
    assert found["FOUND"].split(":")[-1] == found["OWN"].split(":")[-1]  # the same GCS port: this instance
    # Every server of the instance (GCS, raylet, object manager, workers, dashboard, agents,
    # metrics) listens on loopback only: nothing of it is reachable from the network.
    sockets = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("LISTENING")).split(" ", 1)[1])
    commands = " ".join(cmd for _, _, _, cmd in sockets)
    assert "gcs_server" in commands and "raylet" in commands and "dashboard" in commands, sockets
    exposed = [s for s in sockets if s[0] not in ("127.0.0.1", "0000:0000:0000:0000:0000:0000:0000:0001")]
    assert not exposed, exposed
    assert found["OWN"].startswith("127.0.0.1:")
