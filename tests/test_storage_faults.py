"""The run directory's file system filling up, or turning read-only, in the middle of a cycle.

Two mechanisms, both run without root:

* a failing file system at the one durable writer: :mod:`daal_ray.atomic_io` opens every
  file it writes through the shim below (installed in this process and, through the
  actor's ``__ray_call__``, in the ALDriver's), which raises ENOSPC on write or EROFS on
  open from a chosen write on. Each write of cycle 0 (the model checkpoint, its meta, the
  results row, the pending batch, its labels) is hit with each error in turn.
* a real small tmpfs, filled up or bind-mounted read-only. It is mounted directly where
  this process may mount, else inside a user and mount namespace
  (``unshare --user --map-root-user --mount``), where an unprivileged user is root over
  its own mounts; that run happens in a child process with a Ray instance of its own,
  since a mount made in a namespace is seen only by its processes.

Every time the run must stop with a :class:`StorageError` naming the file and the fix,
leave the last good state loadable (exactly the state of the uninterrupted run at that
point), refuse again with the same clear error while the fault lasts, and once it is fixed
a re-run must resume and end with the labeled set of an uninterrupted run with the same
seed: nothing lost, nothing labeled twice.
"""

from __future__ import annotations

import builtins
import errno
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from daal_ray import atomic_io
from daal_ray import cycle as cycle_mod
from daal_ray import experiment as experiment_mod
from daal_ray.driver import PoolKeeper
from daal_ray.errors import StorageError
from daal_ray.experiment import run_experiment
from daal_ray.pool import EPOCH_DIR, PoolState
from daal_ray.results import read_results
from daal_ray.rundir import LEASE_DIR, STATE_FILE, hold_run_dir
from daal_ray.tuning import plan_experiments

pytestmark = pytest.mark.faults  # pytest -m faults: every fault-injection test

REASONS = {"ENOSPC": "the file system is full", "EROFS": "the file system is read-only"}
RESULTS = "results.parquet"


def _config():
    """The tiny digits experiment every test here runs: two cycles, random selection (no
    pool-scoring pass, so a run costs a few seconds), training in this process."""
    (cfg,) = plan_experiments(dataset="digits", strategies=["random"], seeds=[3],
                              protocol={"initial_fraction": 0.05, "step_fraction": 0.05, "final_fraction": 0.10},
                              train={"epochs": 3}, scale={"num_workers": 0})
    return cfg


# ====================================================================== the failing file system
class _FullFile:
    """A file on a full file system: it opens, and every write fails with ENOSPC."""

    def __init__(self, fh):
        self._fh = fh

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._fh.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()

    def __getattr__(self, name):
        return getattr(self._fh, name)


class _FailingFS:
    """Stands in for ``open`` in :mod:`daal_ray.atomic_io` (reads pass through).

    Its control folder ``ctl`` is shared by every process it is installed in: ``plan.json``
    (``root``: the run directory; ``armed``: ``[file, n, errno]``, the n-th write of ``file``,
    relative to ``root``, is the first to fail), ``log`` (every write let through, in order,
    across processes) and ``broken`` (present, holding the errno, once the fault has begun:
    from then on every write fails, as on a full or read-only disk, until the test fixes it).
    """

    def __init__(self, ctl: str, real=builtins.open):
        self.ctl = Path(ctl)
        self.real = real

    def __call__(self, file, mode="r", *args, **kwargs):
        if not any(c in mode for c in "wax+"):
            return self.real(file, mode, *args, **kwargs)
        code = self._decide(Path(file))
        if code == errno.EROFS:  # a read-only file system refuses the open itself
            raise OSError(code, os.strerror(code), str(file))
        fh = self.real(file, mode, *args, **kwargs)
        return _FullFile(fh) if code == errno.ENOSPC else fh

    def _decide(self, tmp: Path):
        found = re.match(r"^\.(.+)\.tmp-", tmp.name)  # atomic_io writes NAME through .NAME.tmp-HOST-PID-RANDOM
        target = tmp.with_name(found.group(1)) if found else tmp
        with self.real(self.ctl / "log", "a+") as log:
            fcntl.flock(log.fileno(), fcntl.LOCK_EX)  # one sequence over every process
            broken = self.ctl / "broken"
            if broken.exists():
                return getattr(errno, broken.read_text())
            plan = json.loads((self.ctl / "plan.json").read_text())
            rel = os.path.relpath(target, plan["root"])
            armed = plan.get("armed")
            log.seek(0)
            done = sum(1 for line in log if line.rstrip("\n") == rel)
            if armed and rel == armed[0] and done + 1 == armed[1]:
                broken.write_text(armed[2])
                return getattr(errno, armed[2])
            log.write(rel + "\n")
        return None


def _install_in_this_process(ctl: str) -> None:
    atomic_io.open = _FailingFS(ctl)


def _install_in_actor(_actor_self, ctl: str) -> None:
    _install_in_this_process(ctl)


class _Disk:
    """The failing file system of one run directory, in this process and the ALDriver's."""

    def __init__(self, ctl: Path, run_dir: Path, monkeypatch, ray):
        self.ctl, self.run_dir = ctl, run_dir
        ctl.mkdir(parents=True, exist_ok=True)
        self.plan(None)
        monkeypatch.setattr(atomic_io, "open", _FailingFS(str(ctl)), raising=False)
        real_start = experiment_mod.start_driver

        def start_driver(*args, **kwargs):
            handle = real_start(*args, **kwargs)
            # The shim, shipped by value: the actor cannot import this test module.
            ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
            ray.get(handle.__ray_call__.remote(_install_in_actor, str(ctl)))
            return handle

        monkeypatch.setattr(experiment_mod, "start_driver", start_driver)

    def plan(self, armed) -> None:
        (self.ctl / "plan.json").write_text(json.dumps({"root": str(self.run_dir), "armed": armed}))

    def fix(self) -> None:
        self.plan(None)
        (self.ctl / "broken").unlink(missing_ok=True)

    def writes(self) -> list[str]:
        """Every write let through so far, in order, lease renewals left out (their timing is the clock's)."""
        lines = (self.ctl / "log").read_text().splitlines() if (self.ctl / "log").exists() else []
        return [r for r in lines if not r.startswith(LEASE_DIR + os.sep)]


_CLEAN: dict[str, object] = {}


def _clean_run(ray, tmp_path_factory):
    """The uninterrupted run (once per session): its final state and its writes, in order."""
    if "state" not in _CLEAN:
        cfg = _config()
        root = tmp_path_factory.mktemp("clean")
        mp = pytest.MonkeyPatch()
        try:
            disk = _Disk(root / "ctl", root / cfg.name, mp, ray)
            run_experiment(cfg, root)
            _CLEAN["writes"] = disk.writes()
        finally:
            mp.undo()
        _CLEAN["state"] = PoolState.load(root / cfg.name / STATE_FILE)
        _CLEAN["state_file"] = root / cfg.name / STATE_FILE
    return _CLEAN["state"], _CLEAN["writes"]


def _expected_at(clean: PoolState, state_writes: int):
    """The uninterrupted run's state after its first ``state_writes`` pool-state saves (a
    propose, then a commit, per cycle): ``(labeled_cycle, pending ids)``."""
    committed = state_writes // 2
    labeled = np.where((clean.labeled_cycle >= 0) & (clean.labeled_cycle < committed), clean.labeled_cycle, -1)
    pending = clean.ids_of_cycle(committed) if state_writes % 2 else np.array([], np.int64)
    return labeled, pending


def _cycle_writes(writes: list[str]) -> list[tuple[str, int, int]]:
    """The writes of cycle 0, from after the initial pool's commit (the 2nd pool-state save)
    to the commit of the batch it selects (the 4th): ``(file, n-th write of it, index)``."""
    saves = [i for i, w in enumerate(writes) if w == STATE_FILE]
    assert len(saves) == 4, writes
    return [(w, writes[:i + 1].count(w), i) for i, w in enumerate(writes) if saves[1] < i <= saves[3]]


@pytest.mark.ray
def test_each_write_of_a_cycle_on_a_full_or_read_only_disk_stops_naming_the_file_and_resumes(
        ray_session, tmp_path_factory, tmp_path, monkeypatch):
    clean, clean_writes = _clean_run(ray_session, tmp_path_factory)
    targets = _cycle_writes(clean_writes)
    kinds = {w for w, _, _ in targets}
    # Every write a cycle makes: the model and its meta, the results row, the pending batch and its labels.
    assert {"checkpoints/cycle_000/model.pt", "checkpoints/cycle_000/meta.json", RESULTS} <= kinds, targets
    assert [w for w, _, _ in targets].count(STATE_FILE) == 2, targets

    cfg = _config()
    run_dir = tmp_path / cfg.name
    disk = _Disk(tmp_path / "ctl", run_dir, monkeypatch, ray_session)
    state_file = run_dir / STATE_FILE
    stops = 0
    for target, nth, index in targets:
        for code in ("ENOSPC", "EROFS"):
            disk.plan([target, nth, code])
            with pytest.raises(StorageError) as ei:
                run_experiment(cfg, tmp_path)
            text = str(ei.value)
            assert f"cannot write {run_dir / target}: {REASONS[code]}" in text, (target, code, text)
            assert "re-run the same command" in text, text
            stops += 1
            # The last good state is whole: exactly the uninterrupted run's before this write.
            saves_before = clean_writes[:index].count(STATE_FILE)
            labeled, pending = _expected_at(clean, saves_before)
            stopped = PoolState.load(state_file)
            assert np.array_equal(stopped.labeled_cycle, labeled), (target, code)
            assert np.array_equal(stopped.pending_ids(), np.sort(pending)), (target, code)
            assert read_results(run_dir)["cycle"].to_pylist() == list(range(clean_writes[:index].count(RESULTS)))
            assert not list(run_dir.rglob("*.tmp-*")), "a failed write leaves no temp file"
            # The same command again, before the fix: the same clear error, nothing changed.
            with pytest.raises(StorageError, match=REASONS[code]):
                run_experiment(cfg, tmp_path)
            again = PoolState.load(state_file)
            assert np.array_equal(again.labeled_cycle, labeled) and np.array_equal(again.pending, stopped.pending)
            disk.fix()
    assert stops == 2 * len(targets)

    table = run_experiment(cfg, tmp_path)
    after = PoolState.load(state_file)
    assert after.pending_cycle is None and after.next_cycle == clean.next_cycle == 2
    assert np.array_equal(after.labeled_cycle, clean.labeled_cycle), "the labeled set of the uninterrupted run"
    assert np.array_equal(after.label, clean.label)
    assert [h.num_added for h in after.history] == [h.num_added for h in clean.history], "no budget spent twice"
    assert table["cycle"].to_pylist() == [0, 1], "every cycle recorded once"


@pytest.mark.parametrize("code", ["ENOSPC", "EROFS"])
def test_a_full_or_read_only_disk_at_start_up_stops_naming_the_lease_or_epoch_file(tmp_path, monkeypatch, code):
    """Before any cycle: taking the run directory's lease, and an ALDriver's claim of its
    fencing epoch, are writes too; they stop with the same clear error and leave nothing."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    (ctl / "plan.json").write_text(json.dumps({"root": str(run_dir), "armed": None}))
    (ctl / "broken").write_text(code)
    monkeypatch.setattr(atomic_io, "open", _FailingFS(str(ctl)), raising=False)
    with pytest.raises(StorageError, match=re.escape(f"cannot write {run_dir / LEASE_DIR}")) as ei:
        with hold_run_dir(run_dir):
            pass
    assert REASONS[code] in str(ei.value)
    with pytest.raises(StorageError, match=re.escape(f"cannot write {run_dir / EPOCH_DIR}")) as ei:
        PoolKeeper(str(run_dir), "run", np.arange(10))
    assert REASONS[code] in str(ei.value)
    assert not os.listdir(run_dir / LEASE_DIR) and not os.listdir(run_dir / EPOCH_DIR)
    (ctl / "broken").unlink()  # fixed: both work
    with hold_run_dir(run_dir) as lease:
        assert PoolKeeper(str(run_dir), "run", np.arange(10)).epoch == 1 and lease.seq == 1


# ====================================================================== a real small file system
def _mount(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


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


def real_fs_scenario(mnt: Path, fault: str, clean: PoolState) -> None:
    """Fill ``mnt`` (a fresh small tmpfs) or turn the run directory read-only while cycle
    1's batch is with the oracle; check the stop, the retry before the fix, and the resume.
    Runs where ``mount`` works: in this process as root, or in a user namespace."""
    cfg = _config()
    run_dir = mnt / cfg.name
    state_file = run_dir / STATE_FILE
    undo = []

    def inject():
        assert PoolState.load(state_file).pending_cycle == 1
        if fault == "full":
            undo.append(_fill(mnt).unlink)
        else:  # a read-only bind mount over the run directory: the run's open files block a remount
            assert _mount(["--bind", str(run_dir), str(run_dir)]).returncode == 0
            r = _mount(["-o", "remount,bind,ro", str(run_dir)])
            assert r.returncode == 0, r.stderr
            undo.append(lambda: subprocess.run(["umount", str(run_dir)], check=True))

    mp = pytest.MonkeyPatch()
    try:
        calls = _faults(mp, inject)
        with pytest.raises(StorageError) as ei:
            run_experiment(cfg, mnt)
        text = str(ei.value)
        reason = "the file system is full" if fault == "full" else "the file system is read-only"
        assert f"cannot write {run_dir}" in text and reason in text and "re-run the same command" in text, text
        # the last good state is whole: cycle 1's batch proposed, its labels not committed
        stopped = PoolState.load(state_file)
        assert stopped.pending_cycle == 1 and stopped.next_cycle == 1
        assert np.array_equal(stopped.pending_ids(), clean.ids_of_cycle(1))
        assert read_results(run_dir / RESULTS)["cycle"].to_pylist() == [0]
        # the same command again, before the fix: the same clear error, nothing changed
        with pytest.raises(StorageError, match=reason):
            run_experiment(cfg, mnt)
        assert PoolState.load(state_file).pending_ids().tolist() == stopped.pending_ids().tolist()

        undo.pop()()  # the fix: space freed, or the file system writable again
        calls["n"] = 10  # no more faults
        table = run_experiment(cfg, mnt)
    finally:
        mp.undo()
        for step in undo:
            step()
    after = PoolState.load(state_file)
    assert after.pending_cycle is None and after.next_cycle == clean.next_cycle == 2
    assert np.array_equal(after.labeled_cycle, clean.labeled_cycle), "the labeled set of the uninterrupted run"
    assert np.array_equal(after.label, clean.label)
    assert [h.num_added for h in after.history] == [h.num_added for h in clean.history], "no budget spent twice"
    assert table["cycle"].to_pylist() == [0, 1], "every cycle recorded once"


FAULTS = ("full", "read_only")
TMPFS_SIZE = "64m"
# Which way to mount, when both work (e.g. as root): "direct" or "unshare"; unset: direct first.
MOUNT_ENV = "DAAL_RAY_TEST_MOUNT"


def _mechanisms() -> dict[str, str]:
    """Which ways of mounting a tmpfs work here: ``{"direct" | "unshare": ""}``, and for
    each that does not, ``{name: why}``."""
    probe = Path(tempfile.mkdtemp(prefix="mount-probe-"))
    try:
        out = {}
        if shutil.which("mount") is None:
            out["direct"] = "util-linux's mount is not installed"
        else:
            r = _mount(["-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)])
            if r.returncode == 0:
                subprocess.run(["umount", str(probe)], capture_output=True)
            out["direct"] = "" if r.returncode == 0 else (r.stderr.strip() or f"mount exited {r.returncode}")
        if shutil.which("unshare") is None or shutil.which("mount") is None:
            out["unshare"] = "util-linux's unshare is not installed"
        else:
            r = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "mount", "-t", "tmpfs", "-o",
                                "size=1m", "tmpfs", str(probe)], capture_output=True, text=True)
            out["unshare"] = "" if r.returncode == 0 else (r.stderr.strip() or f"unshare exited {r.returncode}")
        return out
    finally:
        probe.rmdir()


@pytest.mark.ray
def test_a_real_full_or_read_only_file_system_stops_naming_the_file_and_resumes_after_the_fix(
        ray_session, tmp_path_factory, tmp_path):
    """On a real tmpfs of 64 MiB: filled up, or bind-mounted read-only, mid-cycle.

    Mounted directly where this process may (root), else in a user namespace with
    ``unshare --user --map-root-user --mount``, which needs no privilege on kernels that
    allow unprivileged user namespaces. On Linux this test FAILS rather than skips when
    neither works (``mount`` refused, and user namespaces off: ``kernel.
    unprivileged_userns_clone=0``, ``user.max_user_namespaces=0``, AppArmor's
    ``kernel.apparmor_restrict_unprivileged_userns=1``, or a seccomp profile that blocks
    ``unshare``): a skip would let CI pass while the storage-fault guarantee on a real file
    system goes unchecked. Turn one of them on for the CI user instead.
    """
    if not sys.platform.startswith("linux"):
        pytest.skip("tmpfs and user namespaces are Linux's")
    works = _mechanisms()
    forced = os.environ.get(MOUNT_ENV)
    usable = [m for m in ("direct", "unshare") if works[m] == "" and forced in (None, m)]
    if not usable:
        pytest.fail(f"no way to mount a small tmpfs here ({MOUNT_ENV}={forced}): mount: {works['direct'] or 'works'}; "
                    f"unshare --user --map-root-user --mount: {works['unshare'] or 'works'}. Allow unprivileged user "
                    f"namespaces (sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces > 0) or run "
                    f"as root", pytrace=False)
    clean, _ = _clean_run(ray_session, tmp_path_factory)
    if usable[0] == "direct":
        for fault in FAULTS:
            mnt = tmp_path / fault
            mnt.mkdir()
            r = _mount(["-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mnt)])
            assert r.returncode == 0, r.stderr
            try:
                real_fs_scenario(mnt, fault, clean)
            finally:
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        return
    # In a namespace of its own: a child process that mounts, starts its own Ray and runs both faults.
    clean_copy = tmp_path / "clean_state.parquet"
    shutil.copyfile(_CLEAN["state_file"], clean_copy)
    r = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", sys.executable, __file__, str(tmp_path),
                        str(clean_copy)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and "real file system: full, read_only passed" in r.stdout, \
        f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"


# ====================================================================== storage a node cannot see
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


def _main(base: Path, clean_file: Path) -> None:
    """The child of the user-namespace run: root over its own mounts, with a Ray instance
    started inside the namespace so that the ALDriver sees them too."""
    from daal_ray.runtime import init_ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("DAAL_RAY_DASHBOARD", "0")
    clean = PoolState.load(clean_file)
    init_ray(num_cpus=8)
    for fault in FAULTS:
        mnt = base / fault
        mnt.mkdir()
        r = _mount(["-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mnt)])
        assert r.returncode == 0, r.stderr
        try:
            real_fs_scenario(mnt, fault, clean)
        finally:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    print("real file system: " + ", ".join(FAULTS) + " passed", flush=True)


if __name__ == "__main__":
    _main(Path(sys.argv[1]), Path(sys.argv[2]))
