"""The run directory's file system filling up, or turning read-only, in the middle of a cycle.

The run directory lies on a small tmpfs mounted by the test (root only; skipped where
mounting is not allowed). The fault comes while cycle 1's batch is with the oracle: it is
proposed (durable), its labels not yet committed. The run must stop with an error that
names the file and the fix, leave the last good state loadable, and, once the fault is
fixed, a re-run must resume and end with the labeled set of an uninterrupted run with the
same seed: nothing lost, nothing labeled twice.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from daal_ray import cycle as cycle_mod
from daal_ray.errors import StorageError
from daal_ray.experiment import run_experiment
from daal_ray.pool import PoolState
from daal_ray.results import read_results
from daal_ray.rundir import STATE_FILE


def _mount(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@pytest.fixture
def small_fs(tmp_path):
    """A 64 MiB tmpfs at ``tmp_path/fs``, unmounted afterwards."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    r = _mount(["-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)])
    if r.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not allowed here ({r.stderr.strip()})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(mnt: Path) -> Path:
    """Write zeros into ``mnt`` until its file system is full; returns the filler file."""
    filler = mnt / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * (1 << 20))
                fh.flush()
        except OSError:
            pass
    return filler


def _faults(monkeypatch, inject):
    """Call ``inject`` while cycle 1's batch is with the oracle (proposed, not committed)."""
    real = cycle_mod.oracle_labels
    calls = {"n": 0}

    def oracle(dataset, ids):
        calls["n"] += 1
        if calls["n"] == 2:  # 1 = the initial pool, 2 = cycle 1's batch
            inject()
        return real(dataset, ids)

    monkeypatch.setattr(cycle_mod, "oracle_labels", oracle)
    return calls


_CLEAN: dict[str, PoolState] = {}


@pytest.mark.ray
@pytest.mark.parametrize("fault", ["full", "read_only"])
def test_a_full_or_read_only_run_directory_stops_naming_the_file_and_resumes_after_the_fix(
        ray_session, tiny_config, tmp_path, small_fs, monkeypatch, fault):
    cfg = tiny_config("entropy", seed=3, final_fraction=0.10)
    if cfg.name not in _CLEAN:  # the uninterrupted run, once for both faults
        run_experiment(cfg, tmp_path / "clean")
        _CLEAN[cfg.name] = PoolState.load(tmp_path / "clean" / cfg.name / STATE_FILE)
    clean = _CLEAN[cfg.name]
    run_dir = small_fs / cfg.name
    state_file = run_dir / STATE_FILE
    undo = []

    def inject():
        assert PoolState.load(state_file).pending_cycle == 1
        if fault == "full":
            undo.append(_fill(small_fs).unlink)
        else:  # a read-only bind mount over the run directory: the run's open files block a remount
            assert _mount(["--bind", str(run_dir), str(run_dir)]).returncode == 0
            r = _mount(["-o", "remount,bind,ro", str(run_dir)])
            assert r.returncode == 0, r.stderr
            undo.append(lambda: subprocess.run(["umount", str(run_dir)], check=True))

    calls = _faults(monkeypatch, inject)
    with pytest.raises(StorageError) as ei:
        run_experiment(cfg, small_fs)
    text = str(ei.value)
    reason = "the file system is full" if fault == "full" else "the file system is read-only"
    assert f"cannot write {run_dir}" in text and reason in text and "re-run the same command" in text, text
    # the last good state is whole: cycle 1's batch proposed, its labels not committed
    stopped = PoolState.load(state_file)
    assert stopped.pending_cycle == 1 and stopped.next_cycle == 1
    assert read_results(run_dir / "results.parquet")["cycle"].to_pylist() == [0]
    # the same command again, before the fix: the same clear error, nothing changed
    with pytest.raises(StorageError, match=reason):
        run_experiment(cfg, small_fs)
    assert PoolState.load(state_file).pending_ids().tolist() == stopped.pending_ids().tolist()

    undo.pop()()  # the fix: space freed, or the file system writable again
    calls["n"] = 10  # no more faults
    table = run_experiment(cfg, small_fs)
    after = PoolState.load(state_file)
    assert after.pending_cycle is None and after.next_cycle == clean.next_cycle == 2
    assert np.array_equal(after.labeled_cycle, clean.labeled_cycle), "the labeled set of the uninterrupted run"
    assert np.array_equal(after.label, clean.label)
    assert [h.num_added for h in after.history] == [h.num_added for h in clean.history], "no budget spent twice"
    assert table["cycle"].to_pylist() == [0, 1], "every cycle recorded once"


class _NodeLocalStorage:
    """Stands in for the per-node probe of ``check_reachable_everywhere``: the i-th node
    asked answers ``answers[i]`` (False: it does not see the directory)."""

    def __init__(self, ray, answers):
        self.ray, self.answers = ray, list(answers)

    def options(self, **_):
        return self

    def remote(self, path, token):
        assert Path(path).read_text() == token, "the marker is written before any node is asked"
        return self.ray.put(self.answers.pop(0))


@pytest.mark.ray
def test_a_run_directory_a_node_cannot_see_is_refused_naming_the_node(ray_session, tmp_path, monkeypatch):
    from daal_ray import runtime
    from daal_ray.errors import ConfigError

    real = next(n for n in ray_session.nodes() if n["Alive"])
    elsewhere = {**real, "NodeManagerAddress": "10.0.0.7", "NodeID": "ab" * 28}
    assert runtime.check_reachable_everywhere(tmp_path) == 0, "one node: nothing to check"
    monkeypatch.setattr(runtime.ray, "nodes", lambda: [real, elsewhere])
    monkeypatch.setattr(runtime, "_sees", _NodeLocalStorage(ray_session, [True, True]))
    assert runtime.check_reachable_everywhere(tmp_path) == 2
    monkeypatch.setattr(runtime, "_sees", _NodeLocalStorage(ray_session, [True, False]))
    with pytest.raises(ConfigError) as ei:
        runtime.check_reachable_everywhere(tmp_path)
    text = str(ei.value)
    assert f"the run directory {tmp_path} is not on storage every node of the Ray cluster reaches" in text
    assert "node(s) 10.0.0.7 (abababab) do not see it" in text and "shared storage" in text
    assert not list(tmp_path.glob(".reachable-*")), "the marker is removed"
