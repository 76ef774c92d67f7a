"""Fencing: a stale pool-state writer is refused, and the newer state stays on disk.

After a partition, an ALDriver that Ray restarted elsewhere, or a run whose lease was taken
over, may still be alive and write. Each writer claims a fencing epoch when it starts
(before it loads the state) and every save carries it; a save whose epoch is older than the
newest one claimed, or than the one recorded in the file, is refused with a
:class:`StaleWriterError` naming both epochs and the file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from daal_ray import atomic_io
from daal_ray.driver import PoolKeeper
from daal_ray.errors import StaleWriterError
from daal_ray.pool import EPOCH_DIR, STATE_FILE, PoolState, claim_epoch, epoch_of, newest_epoch

pytestmark = pytest.mark.faults  # pytest -m faults: every fault-injection test

RUN = "run-f"
POOL = np.arange(100, 160, dtype=np.int64)


def _labels(ids):
    return (np.asarray(ids) % 10).astype(np.int64)


def _keeper_after_cycle_0(run_dir: Path) -> PoolKeeper:
    keeper = PoolKeeper(str(run_dir), RUN, POOL)
    ids = keeper.propose(0, POOL[:10], 10)
    keeper.commit(0, ids, _labels(ids), "initial")
    return keeper


def _on_disk(run_dir: Path) -> PoolState:
    return PoolState.load(run_dir / STATE_FILE, run_id=RUN)


def test_a_stale_keeper_is_refused_and_the_newer_state_stays(tmp_path):
    stale = _keeper_after_cycle_0(tmp_path)
    newer = PoolKeeper(str(tmp_path), RUN, POOL)  # took the run over: a restart elsewhere
    assert (stale.epoch, newer.epoch) == (1, 2)
    assert newer.state.next_cycle == 1, "the newer keeper loaded what the stale one committed before it started"
    newer_batch = newer.propose(1, POOL[20:25], 5)

    with pytest.raises(StaleWriterError) as ei:
        stale.propose(1, POOL[40:45], 5)  # the stale one selected another batch for the same cycle
    text = str(ei.value)
    path = tmp_path / STATE_FILE
    assert f"refusing to write {path}" in text and "holds fencing epoch 1" in text and "epoch 2 is newer" in text, text
    assert "pid " in text and "host " in text, "the newer claim's holder is named"
    on_disk = _on_disk(tmp_path)
    assert np.array_equal(on_disk.pending_ids(), newer_batch), "the newer state stays"
    assert epoch_of(path) == 2
    assert stale.state.pending_cycle is None, "the refused change is undone in memory too"
    with pytest.raises(StaleWriterError):  # a partial commit of its own, never-saved batch: refused too
        stale.state.propose(1, POOL[40:45], 5)
        stale.commit(1, POOL[40:42], _labels(POOL[40:42]), "random", partial=True)
    assert np.array_equal(_on_disk(tmp_path).pending_ids(), newer_batch)

    assert newer.commit(1, newer_batch, _labels(newer_batch), "random")  # the newer one carries on
    final = _on_disk(tmp_path)
    assert final.next_cycle == 2 and np.array_equal(final.ids_of_cycle(1), newer_batch)
    assert not np.isin(POOL[40:45], final.labeled_ids()).any(), "the stale batch spent no budget"


def test_a_keeper_restarted_after_a_crash_takes_a_newer_epoch_and_resumes(tmp_path):
    first = _keeper_after_cycle_0(tmp_path)
    batch = first.propose(1, POOL[30:35], 5)
    del first  # crashed with its batch pending
    restarted = PoolKeeper(str(tmp_path), RUN, POOL)
    assert restarted.epoch == 2 and np.array_equal(restarted.state.pending_ids(), batch)
    assert restarted.propose(1, POOL[50:55], 5).tolist() == batch.tolist(), "the pending batch, no new budget"
    assert restarted.commit(1, batch, _labels(batch), "random")
    assert _on_disk(tmp_path).next_cycle == 2 and epoch_of(tmp_path / STATE_FILE) == 2
    again = PoolKeeper(str(tmp_path), RUN, POOL)
    assert again.epoch == 3 and again.snapshot()["epoch"] == 3


def test_the_epoch_recorded_in_the_file_refuses_an_older_writer_without_the_claims(tmp_path):
    """The claims folder lost (a copied run directory): the file's own epoch still fences."""
    stale = _keeper_after_cycle_0(tmp_path)
    newer = PoolKeeper(str(tmp_path), RUN, POOL)
    newer.propose(1, POOL[20:25], 5)
    for claim in (tmp_path / EPOCH_DIR).iterdir():
        claim.unlink()
    assert newest_epoch(tmp_path)[0] == 0
    with pytest.raises(StaleWriterError, match=r"holds fencing epoch 1, but epoch 2 is newer \(recorded in the file\)"):
        stale.propose(1, POOL[40:45], 5)
    assert np.array_equal(_on_disk(tmp_path).pending_ids(), POOL[20:25])


def test_a_writer_that_loses_the_run_while_it_writes_is_refused_before_its_rename(tmp_path, monkeypatch):
    """The check runs after the new content is durable, right before the rename: a takeover
    that lands while the stale writer writes still stops it."""
    stale = _keeper_after_cycle_0(tmp_path)
    real = atomic_io.atomic_write

    def slow_write(path, *args, **kwargs):
        cm = real(path, *args, **kwargs)

        class Wrapped:
            def __enter__(self):
                return cm.__enter__()

            def __exit__(self, *exc):
                claim_epoch(tmp_path)  # another driver starts while the content is being written
                return cm.__exit__(*exc)

        return Wrapped()

    monkeypatch.setattr(atomic_io, "atomic_write", slow_write)
    before = _on_disk(tmp_path)
    with pytest.raises(StaleWriterError, match="holds fencing epoch 1, but epoch 2 is newer"):
        stale.propose(1, POOL[40:45], 5)
    after = _on_disk(tmp_path)
    assert after.pending_cycle is None and np.array_equal(after.labeled_cycle, before.labeled_cycle)
    assert not list(tmp_path.glob(".*.tmp-*")), "the refused temp file is removed"


def test_concurrent_claims_never_share_an_epoch(tmp_path):
    got, barrier = [], threading.Barrier(8)

    def claim():
        barrier.wait()
        got.append(claim_epoch(tmp_path))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 9)), got
    assert newest_epoch(tmp_path)[0] == 8
    assert len(list((tmp_path / EPOCH_DIR).iterdir())) == 8
    claim_epoch(tmp_path)
    assert sorted(int(p.name) for p in (tmp_path / EPOCH_DIR).iterdir()) == list(range(2, 10)), "old claims pruned"


_STALE_CHILD = """
import sys
import numpy as np
from daal_ray.driver import PoolKeeper
from daal_ray.errors import StaleWriterError

keeper = PoolKeeper(sys.argv[1], "run-f", np.arange(100, 160, dtype=np.int64))
print("epoch", keeper.epoch, flush=True)
sys.stdin.readline()  # partitioned: meanwhile another driver takes the run over
try:
    keeper.propose(1, np.arange(140, 145), 5)
except StaleWriterError as exc:
    print("refused:", exc, flush=True)
    sys.exit(3)
print("written", flush=True)
"""


def test_a_stale_writer_in_another_process_is_refused(tmp_path):
    """Two processes: the first driver stalls, a second takes over, the first then writes."""
    _keeper_after_cycle_0(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", _STALE_CHILD, str(tmp_path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().split() == ["epoch", "2"]
        newer = PoolKeeper(str(tmp_path), RUN, POOL)
        batch = newer.propose(1, POOL[20:25], 5)
        out, err = child.communicate("go\n", timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 3, (out, err)
    assert "holds fencing epoch 2, but epoch 3 is newer" in out and str(tmp_path / STATE_FILE) in out, out
    assert np.array_equal(_on_disk(tmp_path).pending_ids(), batch)


def test_temp_names_are_unique_across_hosts_processes_and_calls(tmp_path, monkeypatch):
    target = tmp_path / "pool_state.parquet"
    a, b = atomic_io._tmp_path(target), atomic_io._tmp_path(target)
    assert a != b and a.parent == target.parent
    assert a.name.startswith(".pool_state.parquet.tmp-") and f"-{os.getpid()}-" in a.name
    assert atomic_io._HOST in a.name
    monkeypatch.setattr(atomic_io, "_HOST", "node-b")
    assert ".tmp-node-b-" in atomic_io._tmp_path(target).name
    long = tmp_path / ("x" * 250)
    assert len(atomic_io._tmp_path(long).name.encode()) <= 255


@pytest.mark.ray
def test_a_restarted_aldriver_takes_a_newer_epoch(ray_session, tmp_path):
    from daal_ray.driver import start_driver

    ray = ray_session
    handle = start_driver(tmp_path, RUN, POOL)
    ray.get(handle.propose.remote(0, POOL[:10], 10))
    first = ray.get(handle.snapshot.remote())["epoch"]
    pid = ray.get(handle.pid.remote())
    os.kill(pid, signal.SIGKILL)  # a crash of the actor's process; Ray restarts it
    deadline = time.monotonic() + 60
    while ray.get(handle.pid.remote()) == pid:  # calls are retried until the restarted actor answers
        assert time.monotonic() < deadline, "ALDriver did not restart"
        time.sleep(0.2)
    snap = ray.get(handle.snapshot.remote())
    assert snap["epoch"] == first + 1 and snap["pending_ids"].tolist() == POOL[:10].tolist()
    ray.get(handle.commit.remote(0, POOL[:10], _labels(POOL[:10]), "initial"))
    assert epoch_of(tmp_path / STATE_FILE) == first + 1 and _on_disk(tmp_path).next_cycle == 1
    ray.kill(handle, no_restart=True)
