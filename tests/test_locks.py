"""Run-directory locks on shared storage: the flock, and the lease that outlives a dead host.

On NFS the flock of a holder that died on another host may never be released. The holder
also keeps a lease (host, pid, expiry) renewed by a heartbeat thread: a lease that expired
is taken over with a warning naming the dead holder, a live one is refused, the take-over
is race-safe (one winner), and a holder that comes back after losing its lease is stopped
by the fencing epoch of the run that took over.

A holder that died on another host is simulated by a lease file naming another host and a
flock held on a separate open file (what an NFS server that never learned of the death keeps).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from daal_ray import rundir
from daal_ray.driver import PoolKeeper
from daal_ray.errors import ConfigError, RunLockedError, StaleWriterError
from daal_ray.pool import STATE_FILE, PoolState
from daal_ray.rundir import LEASE_DIR, LOCK_FILE, hold_run_dir, lease_settings, read_lease

pytestmark = pytest.mark.faults  # pytest -m faults: every fault-injection test

POOL = np.arange(50, dtype=np.int64)


def _plant_lease(run_dir: Path, seq: int, host: str, pid: int, expires_in: float, flock: bool = True) -> Path:
    """A lease file as another holder wrote it (expired when ``expires_in`` < 0)."""
    folder = run_dir / LEASE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{seq:012d}.json"
    path.write_text(json.dumps({"seq": seq, "host": host, "pid": pid, "token": "t" * 16, "flock": flock,
                                "expires_at": time.time() + expires_in, "released": False}))
    return path


@contextlib.contextmanager
def _stuck_flock(run_dir: Path):
    """The flock of a holder that is gone but whose lock the file server still keeps."""
    with open(run_dir / LOCK_FILE, "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.truncate(0)
        held.write("777")
        held.flush()
        yield


def _lease_files(run_dir: Path) -> list[str]:
    return sorted(os.listdir(run_dir / LEASE_DIR))


def test_a_live_lease_from_another_host_is_refused_naming_its_holder(tmp_path):
    _plant_lease(tmp_path, 1, "node-b", 777, expires_in=60)
    for stuck in (False, True):  # its lock reaches this host, or not
        with _stuck_flock(tmp_path) if stuck else contextlib.nullcontext():
            with pytest.raises(RunLockedError) as ei:
                with hold_run_dir(tmp_path):
                    pass
        text = str(ei.value)
        assert f"lock {tmp_path / LOCK_FILE} held by pid 777 on host node-b" in text, text
        assert "lease renewed until" in text and "taken over once its lease expires" in text, text
    assert _lease_files(tmp_path) == ["000000000001.json"], "a refused run writes no lease"


def test_an_expired_lease_from_a_dead_host_is_taken_over_with_a_warning(tmp_path, caplog):
    _plant_lease(tmp_path, 1, "node-b", 777, expires_in=-5)
    with _stuck_flock(tmp_path), caplog.at_level(logging.WARNING, logger="daal_ray.rundir"):
        with hold_run_dir(tmp_path) as lease:
            warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert any("taking over" in m and "pid 777 on host node-b" in m and "expired" in m for m in warned), warned
            held = read_lease(tmp_path)
            assert (held.seq, held.host, held.pid) == (2, socket.gethostname(), os.getpid()) and lease.seq == 2
            assert not held.flock, "taken over without the lock: a free lock on this host does not mean it is gone"
            with pytest.raises(RunLockedError, match=f"pid {os.getpid()} on host"):  # now this run is the live one
                with hold_run_dir(tmp_path):
                    pass
    assert read_lease(tmp_path).released, "released when the run ends: the next run starts at once"
    with hold_run_dir(tmp_path) as again:
        assert again.seq == 3


def test_a_held_flock_without_a_live_lease_is_refused(tmp_path):
    """The last lease released, yet the flock is held: a holder of the flock alone, or one
    between its flock and its lease; either is live (a dead holder never released)."""
    with hold_run_dir(tmp_path):
        pass
    assert read_lease(tmp_path).released
    with _stuck_flock(tmp_path):
        with pytest.raises(RunLockedError, match=r"held by pid 777\)"):
            with hold_run_dir(tmp_path):
                pass
    assert _lease_files(tmp_path) == ["000000000001.json"]


def test_a_holder_on_this_host_that_died_is_resumed_at_once(tmp_path):
    """The kernel drops a dead process's flock: no waiting for its lease to expire."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from daal_ray.rundir import hold_run_dir\n"
                               "with hold_run_dir(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(600)",
         str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"pid {child.pid} on host"):  # alive: refused
            with hold_run_dir(tmp_path):
                pass
        child.kill()  # a crash: no release
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
    dead = read_lease(tmp_path)
    assert dead.pid == child.pid and not dead.released and dead.expires_at > time.time(), "its lease is still live"
    with hold_run_dir(tmp_path) as lease:
        assert lease.seq == dead.seq + 1


def test_a_renewed_lease_outlives_its_ttl_and_keeps_refusing(tmp_path):
    # A TTL of 30 heartbeats: a renewal (a write with fsync) stalled by a busy disk for a
    # second or two still lands in time.
    with hold_run_dir(tmp_path, ttl_s=3.0, heartbeat_s=0.1) as lease:
        first = read_lease(tmp_path).expires_at
        while time.time() < first + 0.5:  # past the first expiry: only renewals keep it
            time.sleep(0.1)
        assert read_lease(tmp_path).expires_at > first, "the heartbeat renewed it"
        with pytest.raises(RunLockedError, match="lease renewed until"):
            with hold_run_dir(tmp_path, ttl_s=3.0, heartbeat_s=0.1):
                pass
        assert not lease.lost


def test_a_holder_whose_heartbeat_stops_is_taken_over_and_fenced(tmp_path, caplog):
    """The holder hangs (its heartbeat stops) past its TTL: another run takes over, and when
    the first comes back its writes are refused and it learns it lost the lease."""
    with contextlib.ExitStack() as first_run:
        first = first_run.enter_context(hold_run_dir(tmp_path, ttl_s=0.5, heartbeat_s=0.1))
        stale = PoolKeeper(str(tmp_path), "run", POOL)
        stale.commit(0, stale.propose(0, POOL[:10], 10), np.zeros(10, np.int64), "initial")
        first.stop()  # hung: no more renewals (its flock stays held)
        while not read_lease(tmp_path).expired(time.time()):
            time.sleep(0.05)

        with caplog.at_level(logging.WARNING, logger="daal_ray.rundir"):
            with hold_run_dir(tmp_path, ttl_s=0.5, heartbeat_s=0.1) as second:
                assert any("taking over" in r.getMessage() and f"pid {os.getpid()}" in r.getMessage()
                           for r in caplog.records)
                newer = PoolKeeper(str(tmp_path), "run", POOL)
                batch = newer.propose(1, POOL[10:15], 5)
                # The first run comes back: its write is refused, the newer state stays.
                with pytest.raises(StaleWriterError, match="holds fencing epoch 1, but epoch 2 is newer"):
                    stale.propose(1, POOL[30:35], 5)
                assert np.array_equal(PoolState.load(tmp_path / STATE_FILE).pending_ids(), batch)
                assert not first.renew() and first.lost and first.taken_by.seq == second.seq
                assert read_lease(tmp_path).seq == second.seq, "a lost lease is not renewed over the new one"
                assert not second.lost
        assert any("lost the lease" in r.getMessage() for r in caplog.records)
    # The first run's exit does not release the lease the second one held.
    assert read_lease(tmp_path).seq == second.seq


def test_two_runs_taking_over_one_expired_lease_at_once_get_one_winner(tmp_path, monkeypatch):
    _plant_lease(tmp_path, 1, "node-b", 777, expires_in=-5)
    racers = 6
    barrier = threading.Barrier(racers)
    real_read = rundir.read_lease
    seen = threading.local()

    def read_then_wait(run_dir):
        got = real_read(run_dir)
        if not getattr(seen, "done", False):  # every racer has seen the expired lease before any takes it
            seen.done = True
            barrier.wait()
        return got

    monkeypatch.setattr(rundir, "read_lease", read_then_wait)
    outcomes, leases, release = [], [], threading.Event()

    def race():
        try:
            with hold_run_dir(tmp_path) as lease:
                leases.append(lease)
                outcomes.append("won")
                release.wait(30)
        except RunLockedError as exc:
            outcomes.append(str(exc))

    with _stuck_flock(tmp_path):
        threads = [threading.Thread(target=race) for _ in range(racers)]
        for t in threads:
            t.start()
        while len(outcomes) < racers:
            time.sleep(0.05)
        assert outcomes.count("won") == 1, outcomes
        assert all("held by pid" in o for o in outcomes if o != "won"), outcomes
        assert read_lease(tmp_path).seq == 2 == leases[0].seq
        release.set()
        for t in threads:
            t.join()


def test_lease_settings_come_from_arguments_then_environment_and_are_checked(monkeypatch):
    assert lease_settings() == (60.0, 10.0)
    monkeypatch.setenv("DAAL_RAY_LEASE_TTL_S", "30")
    monkeypatch.setenv("DAAL_RAY_LEASE_HEARTBEAT_S", "5")
    assert lease_settings() == (30.0, 5.0)
    assert lease_settings(ttl_s=9, heartbeat_s=3) == (9.0, 3.0)
    with pytest.raises(ConfigError, match="must be shorter than its TTL"):
        lease_settings(ttl_s=5, heartbeat_s=5)
    with pytest.raises(ConfigError, match="positive"):
        lease_settings(ttl_s=0)
    monkeypatch.setenv("DAAL_RAY_LEASE_TTL_S", "soon")
    with pytest.raises(ConfigError, match="DAAL_RAY_LEASE_TTL_S='soon' is not a number"):
        lease_settings()


@pytest.mark.ray
def test_a_retried_run_resumes_over_a_dead_hosts_expired_lease(ray_session, tiny_config, tmp_path, monkeypatch,
                                                                caplog):
    """A run dies on another host after proposing cycle 1's batch, its lock stuck on the
    file server: the retried run is refused while the lease lives, and resumes (the pending
    batch labeled, no budget spent twice) once it has expired."""
    from daal_ray import cycle as cycle_mod
    from daal_ray.experiment import run_experiment

    cfg = tiny_config("random", seed=5, final_fraction=0.10)
    real = cycle_mod.oracle_labels
    calls = {"n": 0}

    def oracle_that_dies(dataset, ids):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("the host is gone")  # dies with cycle 1's batch pending
        return real(dataset, ids)

    monkeypatch.setattr(cycle_mod, "oracle_labels", oracle_that_dies)
    with pytest.raises(Exception, match="the host is gone"):
        run_experiment(cfg, tmp_path)
    monkeypatch.setattr(cycle_mod, "oracle_labels", real)
    run_dir = tmp_path / cfg.name
    pending = PoolState.load(run_dir / STATE_FILE).pending_ids()
    assert pending.size > 0

    top = read_lease(run_dir).seq
    _plant_lease(run_dir, top + 1, "node-b", 777, expires_in=60)  # the dead host's last renewal
    with _stuck_flock(run_dir):
        with pytest.raises(RunLockedError, match="held by pid 777 on host node-b"):
            run_experiment(cfg, tmp_path)
        _plant_lease(run_dir, top + 2, "node-b", 777, expires_in=-1)  # ... and then it expired
        with caplog.at_level(logging.WARNING, logger="daal_ray.rundir"):
            table = run_experiment(cfg, tmp_path)
    assert any("taking over" in r.getMessage() and "node-b" in r.getMessage() for r in caplog.records)
    after = PoolState.load(run_dir / STATE_FILE)
    assert after.pending_cycle is None and after.next_cycle == 2
    assert np.array_equal(after.ids_of_cycle(1), pending), "the pending batch labeled as proposed"
    assert table["cycle"].to_pylist() == [0, 1]
