"""The cluster path: cluster.yaml against Ray's own schema, and a real local Ray head with
token authentication taking ``ray job submit`` of the Cityscapes job.

The head is started with ``ray start --head --block`` in its own session, on 127.0.0.1,
with its own ports and temp dir, so it never touches another Ray instance on the machine;
it is stopped by signalling its process group (never a bare ``ray stop``).
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import secrets
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


# ------------------------------------------------------------------ a real head + ray job submit
def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _worker_port_range() -> tuple[int, int]:
    """A block of 200 ports that is free right now, for the head's workers."""
    for base in range(21000, 30000, 200):
        try:
            socks = []
            for p in range(base, base + 200):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return base, base + 199
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    pytest.skip("no free block of worker ports")


class LocalHead:
    """A ``ray start --head`` on 127.0.0.1 with token auth, in its own process group."""

    def __init__(self) -> None:
        # A short temp dir: Ray's Unix socket paths must stay under ~100 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="drh-", dir="/tmp"))
        self.token = secrets.token_hex(32)
        (self.root / "token").write_text(self.token)
        gcs, dash, client, agent_http, agent_grpc, metrics, env_agent, node_mgr, obj_mgr = _free_ports(9)
        lo, hi = _worker_port_range()
        self.address = f"http://127.0.0.1:{dash}"
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.root / "token"),
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.env.pop("RAY_AUTH_TOKEN", None)
        self.env.pop("RAY_ADDRESS", None)
        cmd = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
               f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent_http}",
               f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
               f"--runtime-env-agent-port={env_agent}", f"--node-manager-port={node_mgr}",
               f"--object-manager-port={obj_mgr}", f"--min-worker-port={lo}", f"--max-worker-port={hi}",
               "--num-cpus=8", f"--temp-dir={self.root / 'r'}", "--disable-usage-stats"]
        self.log = open(self.root / "head.log", "wb")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._wait_ready(timeout=120)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {(self.root / 'head.log').read_text()[-3000:]}")
            r = subprocess.run([RAY, "job", "list", "--address", self.address], env=self.env,
                               capture_output=True, text=True, timeout=60)
            if r.returncode == 0:
                return
            time.sleep(2)
        raise RuntimeError(f"the head did not come up: {(self.root / 'head.log').read_text()[-3000:]}")

    def submit(self, *entrypoint: str, env: dict | None = None, timeout: float = 400) -> subprocess.CompletedProcess:
        return subprocess.run([RAY, "job", "submit", "--address", self.address, "--working-dir", str(REPO), "--",
                               *entrypoint], env=env or self.env, cwd=REPO, capture_output=True, text=True,
                              timeout=timeout)

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever ignored SIGTERM
        except ProcessLookupError:
            pass
        self.log.close()


@pytest.fixture(scope="module")
def local_head():
    head = LocalHead()
    try:
        yield head
    finally:
        head.stop()


@pytest.mark.slow
def test_ray_job_submit_runs_the_cityscapes_smoke_test_to_success(local_head, tmp_path):
    """The smoke test (DAAL on a generated fixture in the official layout, 2 Ray Train workers
    under DDP) submitted to the head: it succeeds and its results and pool state are right."""
    run_dir = tmp_path / "runs"
    r = local_head.submit("python", "jobs/cityscapes.py", "--smoke-test", "--run-dir", str(run_dir),
                          "--num-workers", "2")
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


@pytest.mark.slow
def test_a_failing_job_makes_ray_job_submit_exit_non_zero(local_head, tmp_path):
    r = local_head.submit("python", "jobs/cityscapes.py", "--data-root", str(tmp_path / "missing"),
                          "--run-dir", str(tmp_path / "runs"), timeout=200)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "FAILED" in out or "failed" in out
    assert str(tmp_path / "missing") in out, "the job's error names the missing data root"


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


@pytest.mark.slow
def test_a_local_instance_started_next_to_another_cluster_finds_itself(local_head, tmp_path):
    """Two Ray instances on one machine (the head above and the one ``init_ray`` starts):
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
