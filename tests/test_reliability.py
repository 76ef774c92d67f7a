"""Faults injected into a running experiment, and bad input refused before anything is written.

Each test injects one fault of RELIABILITY.md (a killed job, a crashed Ray Data scoring task, a torn pool-state
file; losing the node of the ALDriver or of a Train worker is in test_multinode.py) or feeds one kind of bad input,
and checks the outcome against a known answer: the labeled set of an uninterrupted run with
the same seed, the full sort of the scores, the previous state generation.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from daal_ray import cycle as cycle_mod
from daal_ray import data as data_mod
from daal_ray import runtime
from daal_ray.acquisition.base import NoParams, Strategy
from daal_ray.config import DataConfig, ExperimentConfig, ScaleConfig
from daal_ray.data import get_dataset
from daal_ray.data.base import DATASETS, InMemoryDataset
from daal_ray.driver import driver_name, start_driver
from daal_ray.errors import ConfigError, DataError, PoolStateError, RunLockedError
from daal_ray.experiment import TRAIN_SNAPSHOT, run_experiment, run_on_worker_group, set_aside_torn_train_snapshot
from daal_ray.pool import PoolState, load_last_good
from daal_ray.rundir import STATE_FILE, hold_run_dir
from daal_ray.scoring import select_topk

pytestmark = pytest.mark.faults  # pytest -m faults: every fault-injection test


def _state(run_root: Path, cfg) -> PoolState:
    return PoolState.load(run_root / cfg.name / STATE_FILE)


# =========================================================================== faults
_KILLED_JOB = """
import json, os, signal, sys
import daal_ray.cycle as d
from daal_ray.config import ExperimentConfig
from daal_ray.experiment import TRAIN_SNAPSHOT, run_experiment, run_on_worker_group, set_aside_torn_train_snapshot
from daal_ray.runtime import init_ray

init_ray()
cfg = ExperimentConfig.from_dict(json.loads(sys.argv[1]))
real, calls = d.oracle_labels, []

def oracle(dataset, ids):
    calls.append(len(ids))
    if len(calls) == 2:  # cycle 1's batch is proposed and persisted: the job dies here
        os.kill(os.getpid(), signal.SIGKILL)
    return real(dataset, ids)

d.oracle_labels = oracle
run_experiment(cfg, sys.argv[2])
"""


@pytest.mark.cluster
@pytest.mark.ray
def test_job_killed_between_propose_and_commit_spends_no_budget_twice(ray_session, tiny_config, tmp_path,
                                                                      monkeypatch):
    """The job's process is SIGKILLed right after cycle 1's batch was proposed (persisted as
    pending) and before its labels were committed; its ALDriver dies with it and the kernel
    drops its lock. The re-run with the same run name labels exactly the pending batch,
    asks the oracle for no other id, and ends like an uninterrupted run."""
    import json
    import subprocess
    import sys

    ray = ray_session
    cfg = tiny_config("entropy", seed=2, final_fraction=0.10)
    run_experiment(cfg, tmp_path / "clean")
    clean = _state(tmp_path / "clean", cfg)

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    job = subprocess.run([sys.executable, "-c", _KILLED_JOB, json.dumps(cfg.to_dict()), str(tmp_path / "crashed")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert job.returncode == -signal.SIGKILL, job.stdout + job.stderr
    crashed = _state(tmp_path / "crashed", cfg)
    assert crashed.pending_cycle == 1 and crashed.next_cycle == 1
    pending = crashed.pending_ids()
    assert np.array_equal(crashed.labeled_ids(), clean.ids_of_cycle(0))

    name = driver_name((tmp_path / "crashed" / cfg.name).resolve())
    deadline = time.time() + 60  # the dead job's ALDriver is torn down with its owner
    while any(a["name"] == name for a in ray.util.list_named_actors(all_namespaces=True)):
        assert time.time() < deadline, "the killed job's ALDriver is still registered"
        time.sleep(0.2)

    asked: list[np.ndarray] = []
    real_oracle = cycle_mod.oracle_labels

    def recording_oracle(dataset, ids):
        asked.append(np.sort(np.asarray(ids)))
        return real_oracle(dataset, ids)

    monkeypatch.setattr(cycle_mod, "oracle_labels", recording_oracle)
    run_experiment(cfg, tmp_path / "crashed")
    done = _state(tmp_path / "crashed", cfg)
    assert len(asked) == 1 and np.array_equal(asked[0], pending), "the re-run must label the pending batch only"
    assert np.array_equal(pending, np.sort(clean.ids_of_cycle(1)))
    assert np.array_equal(done.labeled_cycle, clean.labeled_cycle)
    assert np.array_equal(done.label, clean.label)


@pytest.mark.ray
@pytest.mark.parametrize("crash", ["process", "none", "exception"])
def test_scoring_task_crash_still_scores_every_unlabeled_id_once(ray_session, tmp_path, crash):
    """A Ray Data scoring task whose worker process dies once (os._exit) is retried by Ray
    Data (tasks retry system failures); the merged top-K over all unlabeled ids is the full
    sort of their scores, each id exactly once. An exception raised by ``score`` is a bug,
    not a transient fault: it is not retried and stops the selection with its message."""
    import ray.data


    marker = tmp_path / "crashed-once"
    if crash == "none":
        marker.write_text("no crash")

    class CrashOnce(Strategy):  # local: pickled by value into the Ray Data tasks
        name = "crash_once"
        needs = frozenset({"probs"})

        def score(self, batch):
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                if crash == "exception":
                    raise RuntimeError("injected scoring error")
                os._exit(1)  # the task's worker process dies mid-batch
            return batch["probs"]  # a known score per id

    rng = np.random.default_rng(0)
    n = 400
    ids = rng.permutation(np.arange(1000, 1000 + n, dtype=np.int64))
    labeled = rng.random(n) < 0.2
    scores = rng.permutation(n).astype(np.float64) / n  # distinct: one right order
    import pyarrow as pa

    blocks = [pa.table({"sample_id": i, "labeled": m, "probs": p})
              for i, m, p in zip(np.array_split(ids, 8), np.array_split(labeled, 8), np.array_split(scores, 8))]
    ds = ray.data.from_arrow(blocks)
    n_unl = int((~labeled).sum())
    if crash == "exception":
        with pytest.raises(Exception, match="injected scoring error"):
            select_topk(ds, CrashOnce(NoParams(), seed=0, cycle=0), n_unl, ScaleConfig(inference_batch_size=25))
        return
    got, got_scores, _ = select_topk(ds, CrashOnce(NoParams(), seed=0, cycle=0), n_unl,
                                     ScaleConfig(inference_batch_size=25))
    assert marker.exists()
    if crash == "process":
        assert marker.read_text() != "no crash"
    order = np.argsort(-scores[~labeled], kind="stable")
    assert np.array_equal(got, ids[~labeled][order])
    assert np.array_equal(got_scores, scores[~labeled][order])
    assert np.unique(got).size == n_unl


@pytest.mark.ray
def test_second_run_on_a_live_run_directory_is_refused_naming_the_lock(ray_session, tiny_config, tmp_path):
    """A second experiment started while a live one (here: this process, inside
    hold_run_dir) holds the run directory is refused, the message naming the lock file."""
    cfg = tiny_config("random", final_fraction=0.10)
    run_dir = (tmp_path / cfg.name).resolve()
    run_dir.mkdir()
    with hold_run_dir(run_dir):
        with pytest.raises(RunLockedError) as ei:
            run_experiment(cfg, tmp_path)
        assert str(run_dir / ".lock") in str(ei.value) and f"pid {os.getpid()}" in str(ei.value)
    assert not (run_dir / STATE_FILE).exists()


def _saved_generations(tmp_path: Path) -> tuple[Path, PoolState]:
    """A state saved twice: ``path`` holds cycle 1 pending, ``path.prev`` cycle 0 committed."""
    ids = np.arange(50, dtype=np.int64)
    state = PoolState(ids, run_id="r")
    state.propose(0, ids[:10], 10)
    state.commit(0, ids[:10], np.zeros(10, np.int64), "initial")
    path = tmp_path / STATE_FILE
    state.save(path)
    good = PoolState.load(path)
    state.propose(1, ids[10:15], 5)
    state.save(path)
    return path, good


@pytest.mark.parametrize("damage", ["truncate", "tail", "flip"])
def test_torn_state_file_falls_back_to_the_last_good_state(tmp_path, caplog, damage):
    path, good = _saved_generations(tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "tail":
        data = data[:-3]
    else:  # content changed under the saved metadata: parquet reads it, the checksum does not match
        import pyarrow.parquet as pq

        state = PoolState.load(path)
        state.labeled_cycle[20] = 0
        table = state._table().replace_schema_metadata(pq.read_schema(path).metadata)
        pq.write_table(table, path)
        data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data))
    with pytest.raises(PoolStateError) as ei:
        PoolState.load(path)
    assert str(path) in str(ei.value)
    with caplog.at_level(logging.ERROR, logger="daal_ray.pool"):
        loaded = load_last_good(path, run_id="r")
    assert np.array_equal(loaded.labeled_cycle, good.labeled_cycle) and loaded.pending_cycle is None
    assert loaded.next_cycle == good.next_cycle == 1
    assert any(str(path) in r.getMessage() and "torn" in r.getMessage() for r in caplog.records), caplog.text
    torn = list(tmp_path.glob(f"{STATE_FILE}.torn-*"))
    assert len(torn) == 1 and torn[0].read_bytes() == bytes(data), "the torn file is kept aside"
    assert np.array_equal(PoolState.load(path).labeled_cycle, good.labeled_cycle), "the good state is written back"


def test_torn_state_without_a_good_previous_generation_is_refused_naming_both(tmp_path):
    path, _ = _saved_generations(tmp_path)
    prev = path.with_name(path.name + ".prev")
    path.write_bytes(path.read_bytes()[:40])
    prev.write_bytes(prev.read_bytes()[:-3])
    with pytest.raises(PoolStateError) as ei:
        load_last_good(path)
    assert str(path) in str(ei.value) and str(prev) in str(ei.value)
    prev.unlink()
    with pytest.raises(PoolStateError, match="no previous generation"):
        load_last_good(path)
    assert not list(tmp_path.glob("*.torn-*")), "nothing is moved when nothing can be loaded"


@pytest.mark.ray
def test_aldriver_on_an_unloadable_state_raises_the_pool_state_error_itself(ray_session, tmp_path):
    """Through Ray: the ALDriver's constructor fails, and the caller sees the PoolStateError
    naming both files, not Ray's ActorDiedError."""
    path, _ = _saved_generations(tmp_path)
    prev = path.with_name(path.name + ".prev")
    path.write_bytes(path.read_bytes()[:40])
    prev.write_bytes(prev.read_bytes()[:-3])
    with pytest.raises(PoolStateError) as ei:
        start_driver(tmp_path, "r", np.arange(50, dtype=np.int64))
    assert str(path) in str(ei.value) and str(prev) in str(ei.value)


def test_a_foreign_state_is_not_mistaken_for_a_torn_one(tmp_path):
    path, _ = _saved_generations(tmp_path)
    with pytest.raises(PoolStateError, match="belongs to run 'r'"):
        load_last_good(path, run_id="another")
    assert not list(tmp_path.glob("*.torn-*"))


@pytest.mark.parametrize("content", [b"", b'{"checkpoint_results": [{"metr'])
def test_a_torn_ray_train_snapshot_is_set_aside_and_a_good_one_kept(tmp_path, caplog, content):
    snapshot = tmp_path / TRAIN_SNAPSHOT
    assert set_aside_torn_train_snapshot(tmp_path) is None, "no snapshot yet: nothing to do"
    snapshot.write_text('{"checkpoint_results": []}')
    assert set_aside_torn_train_snapshot(tmp_path) is None and snapshot.is_file()
    snapshot.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="daal_ray.experiment"):
        torn = set_aside_torn_train_snapshot(tmp_path)
    assert torn is not None and torn.read_bytes() == content and not snapshot.exists()
    assert str(snapshot) in caplog.text and str(torn) in caplog.text


@pytest.mark.ray
@pytest.mark.slow
def test_a_worker_group_starts_on_a_ray_train_snapshot_torn_by_a_lost_node(ray_session, tmp_path):
    """A node lost while Ray Train wrote its checkpoint snapshot leaves it empty; the next
    fit of that run (a Tune retry, a re-run) loaded it and died in TrainController.__init__.
    It is set aside, and the fit runs and writes Ray Train's record afresh."""

    def report_a_checkpoint(config):  # nested: pickled by value for the worker
        import tempfile

        import ray.train

        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "weights").write_text("1")
            ray.train.report({"step": 1}, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    storage = tmp_path / "ray_train" / "train"
    storage.mkdir(parents=True)
    (storage / TRAIN_SNAPSHOT).write_bytes(b"")
    run_on_worker_group(report_a_checkpoint, {}, ScaleConfig(num_workers=1), storage)
    torn = list(storage.glob(f"{TRAIN_SNAPSHOT}.torn-*"))
    assert len(torn) == 1 and torn[0].read_bytes() == b""
    fresh = json.loads((storage / TRAIN_SNAPSHOT).read_bytes())
    assert len(fresh["checkpoint_results"]) == 1, fresh


@pytest.mark.ray
def test_torn_state_file_in_a_run_resumes_from_the_last_good_state(ray_session, tiny_config, tmp_path):
    """The run's pool_state.parquet is torn after the run finished: the resumed run's
    ALDriver loads pool_state.parquet.prev (cycle 1 pending), commits that batch again with
    the same ids, and the run ends with the uninterrupted labeled set."""
    cfg = tiny_config("entropy", seed=4, final_fraction=0.10)
    run_experiment(cfg, tmp_path)
    clean = _state(tmp_path, cfg)
    path = tmp_path / cfg.name / STATE_FILE
    path.write_bytes(path.read_bytes()[:100])
    run_experiment(cfg, tmp_path)
    after = _state(tmp_path, cfg)
    assert np.array_equal(after.labeled_cycle, clean.labeled_cycle)
    assert np.array_equal(after.label, clean.label)
    assert len(list((tmp_path / cfg.name).glob(f"{STATE_FILE}.torn-*"))) == 1


# =========================================================================== bad input
class _Arrays:
    """An in-memory dataset of given arrays (registered for one test only)."""

    @staticmethod
    def make(train, test=None):
        class Tiny(InMemoryDataset):
            name = "tiny_arrays"
            num_classes = 3
            in_channels = 1
            mean = (0.0,)
            std = (1.0,)

        if test is None:
            test = (np.array([900, 901], np.int64), np.zeros((2, 1, 4, 4), np.float32), np.array([0, 1]))
        return Tiny({"train": train, "test": test})


def _good_train(n=30):
    rng = np.random.default_rng(0)
    return np.arange(n, dtype=np.int64), rng.random((n, 1, 4, 4)).astype(np.float32), np.arange(n, dtype=np.int64) % 3


@pytest.mark.parametrize("case,message", [
    ("size_mismatch", "split train has 30 ids, 29 images, 30 labels"),
    ("label_range", "labels outside [0, 3)"),
    ("negative_label", "labels outside [0, 3)"),
    ("duplicate_ids", "duplicate sample ids in split train"),
    ("nan", "NaN or infinite pixel values, e.g. sample ids [7]"),
    ("inf", "NaN or infinite pixel values, e.g. sample ids [3, 4]"),
])
def test_bad_arrays_are_refused_with_the_fix_named(case, message):
    import re

    ids, x, y = _good_train()
    if case == "size_mismatch":
        x = x[:-1]
    elif case == "label_range":
        y[5] = 3
    elif case == "negative_label":
        y[0] = -1
    elif case == "duplicate_ids":
        ids[4] = ids[9]
    elif case == "nan":
        x[7, 0, 1, 2] = np.nan
    else:
        x[3, 0, 0, 0] = np.inf
        x[4, 0, 3, 3] = -np.inf
    with pytest.raises(DataError, match=re.escape(message)):
        _Arrays.make((ids, x, y))
    _Arrays.make(_good_train())  # and the good arrays load


@pytest.fixture
def arrays_dataset():
    """Register ``tiny_arrays`` (its arrays set by the test) for one test, then remove it."""
    box: dict = {}

    def factory(config: DataConfig):
        return _Arrays.make(box["train"])

    DATASETS.add("tiny_arrays", factory, "test-only arrays")
    data_mod.base._open_dataset.cache_clear()
    try:
        yield box
    finally:
        DATASETS._items.pop("tiny_arrays", None)
        DATASETS._descriptions.pop("tiny_arrays", None)
        data_mod.base._open_dataset.cache_clear()


@pytest.mark.parametrize("case", ["nan", "duplicate_ids", "label_range", "budget"])
def test_bad_input_to_an_experiment_writes_nothing(arrays_dataset, tmp_path, case):
    """run_experiment refuses bad data or a budget larger than the pool before it creates
    the run directory (no Ray needed: it fails before the ALDriver starts)."""
    ids, x, y = _good_train()
    if case == "nan":
        x[2, 0, 0, 0] = np.nan
    elif case == "duplicate_ids":
        ids[1] = ids[0]
    elif case == "label_range":
        y[0] = 7
    arrays_dataset["train"] = (ids, x, y)
    cfg = ExperimentConfig.from_dict({"name": "bad", "data": {"name": "tiny_arrays"}, "train": {"model": "small_cnn"},
                                      "budget": 1000 if case == "budget" else 0, "scale": {"num_workers": 0}})
    with pytest.raises((DataError, ConfigError)) as ei:
        run_experiment(cfg, tmp_path / "runs")
    assert isinstance(ei.value, ConfigError if case == "budget" else DataError)
    if case == "budget":
        assert "budget of 1000 per cycle is larger than the unlabeled pool" in str(ei.value)
    assert not (tmp_path / "runs").exists(), "bad input must not leave a run directory"


def test_cifar_with_fewer_labels_than_images_is_refused(tmp_path):
    import pickle


    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        n = 4
        labels = [int(v) for v in rng.integers(0, 10, n)]
        if i == 0:
            labels = labels[:-1]  # one image without a label
        with open(base / name, "wb") as fh:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": labels}, fh, protocol=2)
    with pytest.raises(DataError, match="ids, 20 images, 19 labels"):
        get_dataset(DataConfig(name="cifar10", root=str(tmp_path)))


# =========================================================================== safe defaults
def test_local_ray_keeps_the_dashboard_on_localhost(monkeypatch):
    import ray


    seen: dict = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw, gcs_port=os.environ.get(runtime.GCS_PORT_ENV)))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(runtime.DASHBOARD_ENV, raising=False)
    runtime.init_ray(num_cpus=2)
    assert seen["dashboard_host"] == "127.0.0.1" and seen["address"] == "local", "a new instance, never another's"
    assert seen["include_dashboard"] is True, "on by default"
    # the instance's own address, known before it starts, is every one of its processes' RAY_ADDRESS
    assert seen["runtime_env"]["env_vars"]["RAY_ADDRESS"].endswith(f":{seen['gcs_port']}")
    assert runtime.GCS_PORT_ENV not in os.environ, "the port variable is not left behind"
    seen.clear()
    monkeypatch.setenv(runtime.DASHBOARD_ENV, "0")
    runtime.init_ray(num_cpus=2)
    assert seen["include_dashboard"] is False and seen["dashboard_host"] == "127.0.0.1"
    assert "runtime_env" not in seen and seen["gcs_port"] is None

