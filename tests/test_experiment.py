"""The cycle loop on a local Ray instance: invariants, determinism, crashes, restarts.

Most tests train in-process (``num_workers=0``) to stay fast; the ``slow`` test goes
through a real two-worker Ray Train group with DDP and Ray Data actors.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from daal_ray import cycle as cycle_mod
from daal_ray.acquisition.entropy import predictive_entropy
from daal_ray.config import resolve_config
from daal_ray.cycle import train_cycle_model
from daal_ray.data import get_dataset, open_dataset
from daal_ray.driver import start_driver
from daal_ray.errors import RunLockedError
from daal_ray.experiment import run_experiment, run_experiment_group
from daal_ray.models import build_model
from daal_ray.pool import PoolState
from daal_ray.rundir import STATE_FILE
from daal_ray.training import load_state_dict
from daal_ray.tuning import run_experiments

pytestmark = pytest.mark.ray


def _state(run_root, cfg) -> PoolState:
    return PoolState.load(run_root / cfg.name / STATE_FILE)


def test_cycles_add_exactly_k_unlabeled_ids(ray_session, tiny_config, tmp_path):
    cfg = tiny_config("entropy")
    table = run_experiment(cfg, tmp_path)
    state = _state(tmp_path, cfg)
    n = len(state)
    initial, k, rounds = cfg.schedule(n)
    assert rounds == 2 and table.num_rows == 3
    assert [r.num_added for r in state.history] == [initial, k, k]
    labeled, unlabeled = state.labeled_ids(), state.unlabeled_ids()
    assert np.intersect1d(labeled, unlabeled).size == 0
    assert np.array_equal(np.sort(np.concatenate([labeled, unlabeled])), state.sample_ids)
    # every batch came from the pool that was unlabeled when it was chosen
    for c in range(1, len(state.history)):
        batch = state.ids_of_cycle(c)
        earlier = state.sample_ids[(state.labeled_cycle >= 0) & (state.labeled_cycle < c)]
        assert batch.size == k and np.intersect1d(batch, earlier).size == 0
    # results: one row per cycle, labeled counts matching the state
    assert table["cycle"].to_pylist() == [0, 1, 2]
    assert table["num_labeled"].to_pylist() == [initial, initial + k, initial + 2 * k]
    assert table["num_selected"].to_pylist() == [k, k, 0]
    assert all(0.0 < v <= 1.0 for v in table["value"].to_pylist())
    # the labels stored are the oracle's
    ds = get_dataset(cfg.data)
    assert np.array_equal(state.labeled_labels(), ds.targets("train", labeled))


def test_entropy_picks_the_most_uncertain(ray_session, tiny_config, tmp_path):
    """The committed batch is the top-K entropy of the cycle's model over the unlabeled pool."""
    import torch


    cfg = tiny_config("entropy", final_fraction=0.10)
    run_experiment(cfg, tmp_path)
    state = _state(tmp_path, cfg)
    ds = get_dataset(cfg.data)
    model = build_model(cfg.train.model, num_classes=10, in_channels=1)
    model.load_state_dict(load_state_dict(tmp_path / cfg.name / "checkpoints" / "cycle_000" / "model.pt"))
    model.eval()
    unl = state.sample_ids[state.labeled_cycle != 0]
    with torch.no_grad():
        probs = torch.softmax(model(ds.images("train", unl)), 1).numpy()
    h = predictive_entropy(probs)
    k = state.history[1].num_added
    expected = np.sort(unl[np.lexsort((unl, -h))][:k])
    assert np.array_equal(np.sort(state.ids_of_cycle(1)), expected)


def test_same_seed_same_selections(ray_session, tiny_config, tmp_path):
    for strategy in ("random", "entropy"):
        cfg = tiny_config(strategy, seed=3, final_fraction=0.10)
        run_experiment(cfg, tmp_path / "a")
        run_experiment(cfg, tmp_path / "b")
        a, b = _state(tmp_path / "a", cfg), _state(tmp_path / "b", cfg)
        assert np.array_equal(a.labeled_cycle, b.labeled_cycle), strategy
    other = tiny_config("random", seed=4, final_fraction=0.10)
    run_experiment(other, tmp_path / "c")
    c = _state(tmp_path / "c", other)
    assert not np.array_equal(c.labeled_cycle, _state(tmp_path / "a", tiny_config("random", seed=3)).labeled_cycle)


def test_strategies_share_the_initial_pool(ray_session, tiny_config, tmp_path):
    a, b = tiny_config("random", seed=1, final_fraction=0.10), tiny_config("entropy", seed=1, final_fraction=0.10)
    run_experiment(a, tmp_path)
    run_experiment(b, tmp_path)
    assert np.array_equal(_state(tmp_path, a).ids_of_cycle(0), _state(tmp_path, b).ids_of_cycle(0))


@pytest.mark.faults
def test_crash_between_propose_and_commit_reuses_pending(ray_session, tiny_config, tmp_path, monkeypatch):
    cfg = tiny_config("entropy", final_fraction=0.10)
    calls = {"oracle": 0, "select": 0}
    real_oracle, real_select = cycle_mod.oracle_labels, cycle_mod._select

    def crashing_oracle(dataset, ids):
        calls["oracle"] += 1
        if calls["oracle"] == 2:  # 1 = initial pool, 2 = the first selected batch
            raise RuntimeError("injected crash after propose")
        return real_oracle(dataset, ids)

    def counting_select(*a, **kw):
        calls["select"] += 1
        return real_select(*a, **kw)

    monkeypatch.setattr(cycle_mod, "oracle_labels", crashing_oracle)
    monkeypatch.setattr(cycle_mod, "_select", counting_select)
    with pytest.raises(Exception, match="injected crash"):
        run_experiment(cfg, tmp_path)
    crashed = _state(tmp_path, cfg)
    assert crashed.pending_cycle == 1 and crashed.next_cycle == 1
    pending = crashed.pending_ids()
    assert calls["select"] == 1

    monkeypatch.setattr(cycle_mod, "oracle_labels", real_oracle)
    run_experiment(cfg, tmp_path)
    done = _state(tmp_path, cfg)
    assert done.pending_cycle is None and done.next_cycle == 2
    assert np.array_equal(np.sort(done.ids_of_cycle(1)), np.sort(pending))
    assert calls["select"] == 1, "a pending batch must be labeled, not selected again"
    # the model of cycle 0 was not retrained: its checkpoint file is the one written before the crash
    rows = pq.read_table(tmp_path / cfg.name / "results.parquet").to_pylist()
    assert [r["cycle"] for r in rows] == [0, 1]


def test_resume_after_finish_changes_nothing(ray_session, tiny_config, tmp_path):
    cfg = tiny_config("random", final_fraction=0.10)
    first = run_experiment(cfg, tmp_path)
    before = _state(tmp_path, cfg)
    again = run_experiment(cfg, tmp_path)
    after = _state(tmp_path, cfg)
    assert np.array_equal(before.labeled_cycle, after.labeled_cycle)
    assert first.select(["cycle", "value"]).equals(again.select(["cycle", "value"]))


@pytest.mark.faults
def test_a_live_run_directory_is_refused_naming_the_lock(ray_session, tiny_config, tmp_path):
    import fcntl


    cfg = tiny_config("random", final_fraction=0.10)
    run_dir = tmp_path / cfg.name
    run_dir.mkdir()
    with open(run_dir / ".lock", "a+") as held:  # another live run
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242")
        held.flush()
        with pytest.raises(RunLockedError, match=r"lock .*\.lock held by pid 4242"):
            run_experiment(cfg, tmp_path)
    assert not (run_dir / STATE_FILE).exists() and not (run_dir / "config.json").exists()
    run_experiment(cfg, tmp_path)  # the lock is gone with its holder
    assert (run_dir / STATE_FILE).exists()


@pytest.mark.faults
def test_killed_aldriver_comes_back_with_its_state(ray_session, tmp_path):
    ray = ray_session

    ids = np.arange(100, 200, dtype=np.int64)
    handle = start_driver(tmp_path, "run-x", ids)
    ray.get(handle.propose.remote(0, ids[:10], 10))
    ray.get(handle.commit.remote(0, ids[:10], np.zeros(10, np.int64), "initial"))
    ray.get(handle.propose.remote(1, ids[10:15], 5))
    pid = ray.get(handle.pid.remote())
    os.kill(pid, signal.SIGKILL)  # a real crash of the actor's process
    deadline = time.time() + 60
    while ray.get(handle.pid.remote()) == pid:  # calls are retried until the restarted actor answers
        assert time.time() < deadline, "ALDriver did not restart"
        time.sleep(0.2)
    snap = ray.get(handle.snapshot.remote())
    assert snap["next_cycle"] == 1 and snap["pending_cycle"] == 1
    assert np.array_equal(np.sort(snap["labeled_ids"]), ids[:10])
    assert np.array_equal(np.sort(snap["pending_ids"]), ids[10:15])
    # and it goes on: commit is accepted by the restarted actor, then is idempotent
    assert ray.get(handle.commit.remote(1, ids[10:15], np.ones(5, np.int64), "random")) is True
    assert ray.get(handle.commit.remote(1, ids[10:15], np.ones(5, np.int64), "random")) is False
    ray.kill(handle, no_restart=True)


@pytest.mark.slow
def test_entropy_and_daal_on_a_real_two_rank_worker_group(ray_session, tiny_config, tmp_path):
    """Two Ray Train workers (DDP over gloo), shared by two experiments one after another
    (one start-up for both): entropy, with Ray Data actors for the features, raises the
    accuracy with its labels; DAAL's fit runs on both ranks (features broadcast, gradients
    averaged), then its ScoreNet scores the pool through Ray Data."""
    entropy = tiny_config("entropy", num_workers=2, inference_compute="actors", initial_fraction=0.03,
                          step_fraction=0.25, final_fraction=0.28)
    entropy = entropy.replace(train=entropy.train.replace(epochs=15))
    daal = tiny_config("daal", num_workers=2, inference_compute="actors", final_fraction=0.10)
    daal = daal.replace(acquisition=daal.acquisition.replace(params={"epochs": 2, "batch_size": 32}))
    entropy_table, daal_table = run_experiment_group([entropy, daal], tmp_path)

    rows = entropy_table.to_pylist()
    assert [r["cycle"] for r in rows] == [0, 1]
    assert rows[1]["num_labeled"] > rows[0]["num_labeled"]
    assert rows[1]["value"] > rows[0]["value"] + 0.05, rows
    assert rows[0]["features_s"] > 0 and rows[0]["startup_s"] > 0 and rows[0]["selection_s"] > 0

    state = _state(tmp_path, daal)
    assert state.history[1].num_added == daal.schedule(len(state))[1]
    row = daal_table.to_pylist()[0]
    assert row["acq_fit_s"] > 0 and row["num_selected"] == state.history[1].num_added
    assert row["startup_s"] < rows[0]["startup_s"] / 4, (row["startup_s"], rows[0]["startup_s"])  # already up
    ckpt = torch.load(tmp_path / daal.name / "checkpoints" / "cycle_000" / "daal.pt", weights_only=True)
    assert ckpt["epoch"] == 2
    # the Ray Train run recorded a checkpoint per cycle of both experiments
    (group,) = (tmp_path / "ray_train").glob("group-*")
    assert len([p for p in group.glob("checkpoint_*") if p.is_dir()]) == len(rows) + daal_table.num_rows


def test_lanes_of_experiments_share_one_worker_group_each(ray_session, tiny_config, tmp_path):
    """concurrency=2 runs the experiments in two lanes at once, each lane one worker group:
    in each lane only its first experiment pays the start-up, and every experiment still has
    its own run directory and pool state."""
    configs = [tiny_config(s, seed=seed, num_workers=1, final_fraction=0.10)
               for s, seed in (("random", 0), ("random", 1), ("entropy", 0))]
    table = run_experiments(configs, tmp_path, concurrency=2)
    rows = table.to_pylist()
    assert sorted({r["experiment"] for r in rows}) == sorted(c.name for c in configs)
    startup = {r["experiment"]: r["startup_s"] for r in rows if r["cycle"] == 0}
    # lanes: random-0 (pays the start-up) then entropy-0; random-1 (pays it). Compared with
    # each other, not with a fixed time: a group starts in seconds here, faster elsewhere.
    paid = [startup[c.name] for c in configs if c.acquisition.strategy == "random"]
    reused = [startup[c.name] for c in configs if c.acquisition.strategy != "random"]
    assert max(reused) < min(paid) / 4, startup
    for cfg in configs:
        assert _state(tmp_path, cfg).next_cycle == 2
    a, b = (_state(tmp_path, c) for c in configs if c.seed == 0)
    assert np.array_equal(a.ids_of_cycle(0), b.ids_of_cycle(0))
    assert len(list((tmp_path / "ray_train").glob("group-*"))) == 2


def test_cycle_checkpoint_is_reused_only_with_the_joint_head_the_strategy_needs(tiny_config, tmp_path):
    """A checkpoint trained without Learning Loss's head is not reused for Learning Loss."""
    plain = resolve_config(tiny_config("random"))
    ll = resolve_config(tiny_config("learning_loss"))
    dataset = open_dataset(plain.data)
    labeled = np.sort(dataset.sample_ids("train")[:60])
    labels = dataset.targets("train", labeled)
    ckpt = tmp_path / "cycle_000"
    _, _, stats = train_cycle_model(plain, dataset, labeled, labels, 0, ckpt, torch.device("cpu"))
    assert stats is not None and stats.head is None
    _, _, again = train_cycle_model(plain, dataset, labeled, labels, 0, ckpt, torch.device("cpu"))
    assert again is None, "same labels, no head needed: the checkpoint is reused"
    _, _, with_head = train_cycle_model(ll, dataset, labeled, labels, 0, ckpt, torch.device("cpu"))
    assert with_head is not None and with_head.head is not None, "retrained with the head"
    assert (ckpt / with_head.head.checkpoint_file).is_file()
    _, _, reused = train_cycle_model(ll, dataset, labeled, labels, 0, ckpt, torch.device("cpu"))
    assert reused is None
