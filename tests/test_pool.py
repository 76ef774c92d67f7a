"""PoolState: invariants, idempotent propose/commit, and verified persistence."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from daal_ray.errors import PoolStateError
from daal_ray.pool import PoolState

RUN = "run-a"


def _pool_ids(n: int = 60, seed: int = 0) -> np.ndarray:
    """Unique, non-contiguous, shuffled ids (so id != position anywhere)."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n, dtype=np.int64) * 3 + 7
    rng.shuffle(ids)
    return ids


def _labels_for(ids: np.ndarray) -> np.ndarray:
    return (np.asarray(ids) % 10).astype(np.int64)


def _state_after_cycles(cycles: int = 2, pending: bool = False) -> PoolState:
    """Cycle 0 labels 10 ids, each further cycle 5; optionally one more batch left pending."""
    ids = _pool_ids()
    state = PoolState(ids, RUN)
    rng = np.random.default_rng(1)
    for c in range(cycles):
        size = 10 if c == 0 else 5
        batch = rng.choice(state.unlabeled_ids(), size, replace=False)
        got = state.propose(c, batch, expected_size=size)
        assert state.commit(c, got, _labels_for(got), strategy="random" if c else "initial")
    if pending:
        state.propose(cycles, rng.choice(state.unlabeled_ids(), 5, replace=False), expected_size=5)
    return state


def _snapshot(state: PoolState):
    return (state.sample_ids.copy(), state.labeled_cycle.copy(), state.label.copy(), state.pending.copy(),
            state.pending_cycle, list(state.history), state.run_id)


def _assert_same(a, b):
    for x, y in zip(a[:4], b[:4]):
        np.testing.assert_array_equal(x, y)
    assert a[4:] == b[4:]


def _assert_partition(state: PoolState):
    lab, unl = state.labeled_ids(), state.unlabeled_ids()
    assert np.intersect1d(lab, unl).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([lab, unl])), np.sort(_pool_ids()))
    assert lab.size + unl.size == len(state)
    state.check()


# --------------------------------------------------------------------------- construction
def test_new_state_all_unlabeled():
    state = PoolState(_pool_ids(), RUN)
    assert len(state) == 60
    assert state.labeled_ids().size == 0
    np.testing.assert_array_equal(state.unlabeled_ids(), np.sort(_pool_ids()))
    assert state.next_cycle == 0 and state.pending_cycle is None
    _assert_partition(state)


def test_construction_refuses_empty_and_duplicate_pools():
    with pytest.raises(PoolStateError):
        PoolState([], RUN)
    with pytest.raises(PoolStateError, match="duplicate"):
        PoolState([1, 2, 2, 3], RUN)


# --------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("pending", [False, True])
def test_labeled_and_unlabeled_partition_the_pool(pending):
    state = _state_after_cycles(3, pending=pending)
    _assert_partition(state)
    assert state.labeled_ids().size == 10 + 5 + 5
    assert state.next_cycle == 3
    # Pending ids are unlabeled.
    assert np.isin(state.pending_ids(), state.unlabeled_ids()).all()
    assert state.pending_ids().size == (5 if pending else 0)


def test_cycles_recorded_per_id():
    state = _state_after_cycles(3)
    assert state.ids_of_cycle(0).size == 10
    assert state.ids_of_cycle(1).size == 5 and state.ids_of_cycle(2).size == 5
    assert [r.cycle for r in state.history] == [0, 1, 2]
    assert [r.num_added for r in state.history] == [10, 5, 5]
    assert [r.num_labeled for r in state.history] == [10, 15, 20]
    assert [r.strategy for r in state.history] == ["initial", "random", "random"]


# --------------------------------------------------------------------------- propose
def test_propose_returns_exactly_the_ids():
    state = PoolState(_pool_ids(), RUN)
    batch = _pool_ids()[:7]
    got = state.propose(0, batch, expected_size=7)
    np.testing.assert_array_equal(np.sort(got), np.sort(batch))
    np.testing.assert_array_equal(np.sort(state.pending_ids()), np.sort(batch))
    assert state.pending_cycle == 0
    assert state.labeled_ids().size == 0  # proposing labels nothing
    state.check()


def test_propose_refuses_labeled_ids():
    state = _state_after_cycles(1)
    labeled = state.labeled_ids()[:2]
    batch = np.concatenate([labeled, state.unlabeled_ids()[:3]])
    before = _snapshot(state)
    with pytest.raises(PoolStateError, match="labeled"):
        state.propose(1, batch)
    _assert_same(_snapshot(state), before)


@pytest.mark.parametrize("outsider", [0, 8, 10_000], ids=["below", "gap", "above"])
def test_propose_refuses_ids_outside_pool(outsider):
    state = PoolState(_pool_ids(), RUN)
    batch = np.array([_pool_ids()[0], outsider])
    with pytest.raises(PoolStateError, match="not in the pool") as ei:
        state.propose(0, batch)
    assert str(outsider) in str(ei.value)
    assert state.pending_cycle is None and not state.pending.any()


def test_propose_refuses_duplicates():
    state = PoolState(_pool_ids(), RUN)
    a, b = _pool_ids()[:2]
    with pytest.raises(PoolStateError, match="repeat"):
        state.propose(0, [a, b, a])
    assert state.pending_cycle is None


def test_propose_refuses_wrong_expected_size():
    state = PoolState(_pool_ids(), RUN)
    with pytest.raises(PoolStateError, match="expected 4"):
        state.propose(0, _pool_ids()[:3], expected_size=4)
    assert state.pending_cycle is None


def test_propose_refuses_skipping_a_cycle():
    state = PoolState(_pool_ids(), RUN)
    with pytest.raises(PoolStateError, match="next cycle is 0"):
        state.propose(1, _pool_ids()[:3])
    state = _state_after_cycles(2)
    with pytest.raises(PoolStateError, match="next cycle is 2"):
        state.propose(3, state.unlabeled_ids()[:3])


def test_propose_refuses_empty_and_non_integer_batches():
    state = PoolState(_pool_ids(), RUN)
    with pytest.raises(PoolStateError):
        state.propose(0, [])
    with pytest.raises(PoolStateError):
        state.propose(0, np.array([7.0, 10.0]))


def test_propose_while_pending_returns_the_pending_batch():
    state = _state_after_cycles(1)
    first = state.unlabeled_ids()[:5]
    second = state.unlabeled_ids()[5:10]
    got1 = state.propose(1, first, expected_size=5)
    got2 = state.propose(1, second, expected_size=5)
    np.testing.assert_array_equal(np.sort(got1), np.sort(first))
    np.testing.assert_array_equal(np.sort(got2), np.sort(first))  # the new ids are ignored
    np.testing.assert_array_equal(np.sort(state.pending_ids()), np.sort(first))
    # Budget is not spent twice: only the first batch gets labeled.
    state.commit(1, got2, _labels_for(got2))
    assert state.labeled_ids().size == 15
    assert not np.isin(second, state.labeled_ids()).any()


def test_propose_for_committed_cycle_returns_committed_ids():
    state = _state_after_cycles(2)
    before = _snapshot(state)
    got = state.propose(1, state.unlabeled_ids()[:5])
    np.testing.assert_array_equal(np.sort(got), np.sort(state.ids_of_cycle(1)))
    _assert_same(_snapshot(state), before)


# --------------------------------------------------------------------------- commit
def test_commit_is_idempotent():
    state = _state_after_cycles(1)
    batch = state.propose(1, state.unlabeled_ids()[:5])
    assert state.commit(1, batch, _labels_for(batch), strategy="entropy") is True
    after_first = _snapshot(state)
    assert state.commit(1, batch, _labels_for(batch), strategy="entropy") is False
    _assert_same(_snapshot(state), after_first)
    # Order of the ids does not matter for recognising the same commit.
    assert state.commit(1, batch[::-1], _labels_for(batch[::-1])) is False
    _assert_same(_snapshot(state), after_first)
    assert len(state.history) == 2


def test_different_commit_for_committed_cycle_raises():
    state = _state_after_cycles(2)
    before = _snapshot(state)
    other = state.unlabeled_ids()[:5]
    with pytest.raises(PoolStateError, match="other ids"):
        state.commit(1, other, _labels_for(other))
    _assert_same(_snapshot(state), before)


def test_commit_of_ids_other_than_pending_raises():
    state = _state_after_cycles(1)
    pending = state.propose(1, state.unlabeled_ids()[:5])
    others = state.unlabeled_ids()[5:10]
    before = _snapshot(state)
    with pytest.raises(PoolStateError, match="pending"):
        state.commit(1, others, _labels_for(others))
    with pytest.raises(PoolStateError, match="pending"):
        state.commit(1, pending[:4], _labels_for(pending[:4]))  # a subset is not the batch
    _assert_same(_snapshot(state), before)


def test_commit_without_proposal_raises():
    state = _state_after_cycles(1)
    ids = state.unlabeled_ids()[:5]
    with pytest.raises(PoolStateError, match="propose"):
        state.commit(1, ids, _labels_for(ids))
    with pytest.raises(PoolStateError):
        state.commit(5, ids, _labels_for(ids))


def test_commit_refuses_mismatched_labels():
    state = _state_after_cycles(1)
    batch = state.propose(1, state.unlabeled_ids()[:5])
    before = _snapshot(state)
    with pytest.raises(PoolStateError, match="labels"):
        state.commit(1, batch, np.zeros(4, dtype=np.int64))
    with pytest.raises(PoolStateError, match="labels"):
        state.commit(1, batch, np.zeros(5, dtype=np.float64))
    _assert_same(_snapshot(state), before)


def test_labels_stored():
    state = _state_after_cycles(3)
    lab = state.labeled_ids()
    np.testing.assert_array_equal(state.labeled_labels(), _labels_for(lab))
    # Unlabeled samples carry no label.
    assert (state.label[state.labeled_cycle < 0] == -1).all()


def test_commit_without_labels_keeps_minus_one():
    state = PoolState(_pool_ids(), RUN)
    batch = state.propose(0, _pool_ids()[:4])
    assert state.commit(0, batch, None)
    assert state.labeled_ids().size == 4
    assert (state.labeled_labels() == -1).all()


def test_labels_follow_their_ids_in_any_order():
    state = PoolState(_pool_ids(), RUN)
    batch = state.propose(0, _pool_ids()[:6])
    shuffled = batch[[3, 0, 5, 1, 4, 2]]
    labels = (shuffled * 10 + 1).astype(np.int64)  # distinct, tied to each id
    state.commit(0, shuffled, labels)
    got = dict(zip(state.labeled_ids().tolist(), state.labeled_labels().tolist()))
    assert got == dict(zip(shuffled.tolist(), labels.tolist()))


# --------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("pending", [False, True])
def test_save_load_round_trip(tmp_path, pending):
    state = _state_after_cycles(3, pending=pending)
    path = tmp_path / "state.parquet"
    state.save(path)
    back = PoolState.load(path, run_id=RUN)
    _assert_same(_snapshot(back), _snapshot(state))
    assert back.sample_ids.dtype == np.int64 and back.label.dtype == np.int64
    assert back.pending.dtype == bool
    assert back.pending_cycle == (3 if pending else None)
    # A loaded state carries on where the saved one stopped.
    if pending:
        ids = back.pending_ids()
        assert back.commit(3, ids, _labels_for(ids))
    else:
        ids = back.propose(3, back.unlabeled_ids()[:5], expected_size=5)
        assert back.commit(3, ids, _labels_for(ids))
    back.check()


def test_load_without_run_id_accepts_any_run(tmp_path):
    state = _state_after_cycles(1)
    state.save(tmp_path / "s.parquet")
    assert PoolState.load(tmp_path / "s.parquet").run_id == RUN


def test_save_keeps_previous_generation_and_no_temp_files(tmp_path):
    path = tmp_path / "state.parquet"
    state = _state_after_cycles(1)
    state.save(path)
    assert sorted(os.listdir(tmp_path)) == ["state.parquet"]
    gen1 = _snapshot(state)

    ids = state.propose(1, state.unlabeled_ids()[:5])
    state.commit(1, ids, _labels_for(ids))
    state.save(path)
    gen2 = _snapshot(state)
    assert sorted(os.listdir(tmp_path)) == ["state.parquet", "state.parquet.prev"]
    _assert_same(_snapshot(PoolState.load(path, run_id=RUN)), gen2)
    _assert_same(_snapshot(PoolState.load(tmp_path / "state.parquet.prev", run_id=RUN)), gen1)

    # A third generation moves .prev along.
    state.propose(2, state.unlabeled_ids()[:5])
    state.save(path)
    assert sorted(os.listdir(tmp_path)) == ["state.parquet", "state.parquet.prev"]
    _assert_same(_snapshot(PoolState.load(tmp_path / "state.parquet.prev", run_id=RUN)), gen2)


def test_load_refuses_truncated_file(tmp_path):
    path = tmp_path / "state.parquet"
    _state_after_cycles(2).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PoolStateError) as ei:
        PoolState.load(path, run_id=RUN)
    assert str(path) in str(ei.value)


def test_load_refuses_tail_truncated_file(tmp_path):
    path = tmp_path / "state.parquet"
    _state_after_cycles(2).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:-3])  # the footer magic is gone
    with pytest.raises(PoolStateError) as ei:
        PoolState.load(path)
    assert str(path) in str(ei.value)


def test_load_refuses_parquet_without_metadata(tmp_path):
    path = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"sample_id": pa.array([1, 2], pa.int64())}), path)
    with pytest.raises(PoolStateError, match="not a daal-ray pool-state file") as ei:
        PoolState.load(path)
    assert str(path) in str(ei.value)


def test_load_refuses_other_format_tag(tmp_path):
    path = tmp_path / "state.parquet"
    _state_after_cycles(1).save(path)
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"daal_ray"])
    meta["format"] = "something-else"
    pq.write_table(table.replace_schema_metadata({b"daal_ray": json.dumps(meta).encode()}), path)
    with pytest.raises(PoolStateError, match="not a daal-ray pool-state file"):
        PoolState.load(path)


def test_load_refuses_other_run(tmp_path):
    path = tmp_path / "state.parquet"
    _state_after_cycles(1).save(path)
    with pytest.raises(PoolStateError) as ei:
        PoolState.load(path, run_id="run-b")
    msg = str(ei.value)
    assert "run-a" in msg and "run-b" in msg
    assert str(path) in msg


def test_load_refuses_altered_content(tmp_path):
    path = tmp_path / "state.parquet"
    state = _state_after_cycles(3)
    state.save(path)
    table = pq.read_table(path)
    old_meta = table.schema.metadata
    cycles = table["labeled_cycle"].to_numpy().copy()
    i = int(np.flatnonzero(cycles == 2)[0])
    cycles[i] = 1  # a plausible edit: move one sample to another cycle
    altered = table.set_column(table.column_names.index("labeled_cycle"), "labeled_cycle",
                               pa.array(cycles, pa.int32()))
    pq.write_table(altered.replace_schema_metadata(old_meta), path)
    with pytest.raises(PoolStateError, match="checksum") as ei:
        PoolState.load(path, run_id=RUN)
    assert str(path) in str(ei.value)


@pytest.mark.parametrize("damage", ["drop_history", "bad_history", "drop_run_id"])
def test_load_refuses_malformed_metadata(tmp_path, damage):
    path = tmp_path / "state.parquet"
    _state_after_cycles(1).save(path)
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"daal_ray"])
    if damage == "drop_history":
        del meta["history"]
    elif damage == "bad_history":
        meta["history"] = [{"cycle": 0}]
    else:
        del meta["run_id"]
    pq.write_table(table.replace_schema_metadata({b"daal_ray": json.dumps(meta).encode()}), path)
    with pytest.raises(PoolStateError) as ei:
        PoolState.load(path)
    assert str(path) in str(ei.value)


def test_load_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        PoolState.load(tmp_path / "absent.parquet")
