"""PoolState: which sample was labeled in which cycle, the pending batch, the history.

The state is a set of columns keyed by ``sample_id`` (int64, sorted, unique):

* ``labeled_cycle`` (int32): the cycle whose commit labeled the sample, -1 = unlabeled.
* ``label`` (int64): the label the oracle gave, -1 = none (unlabeled, or a task whose
  targets are not one class per sample, such as segmentation masks).
* ``pending`` (bool): the sample is in the proposed batch that awaits labels.

Cycle 0 is the initial labeled pool; cycle ``c > 0`` adds the batch selected after the
task model of cycle ``c - 1`` was trained. A batch is *proposed* (recorded as pending and
persisted) before labels are asked for, then *committed*; both are idempotent, so a crash
anywhere loses no committed label and never spends budget twice. People label a batch in
parts: a partial commit labels some of its ids (they carry the pending cycle) and leaves
the rest pending; the cycle enters the history when its last id is labeled.

It is saved as one parquet file by atomic replace (temp file, fsync, rename), with its
history, run id and a content hash in the file's metadata; loading checks the hash and
every invariant and refuses a corrupt or foreign file with a message naming it.

Fencing: after a network partition a stale writer (an ALDriver that Ray restarted
elsewhere, or a run whose lease was taken over) may still be alive and write. Every
writer first claims a *fencing epoch* in the state's directory (:func:`claim_epoch`: the
next number, created atomically under ``.epochs/``, so two claimers never share one), and
every save carries it (:meth:`PoolState.save` with ``epoch``). Right before its rename a
save checks the newest epoch claimed and the one recorded in the file it replaces, and a
writer holding an older one is refused with :class:`~daal_ray.errors.StaleWriterError`:
the newer state stays on disk. A writer claims its epoch *before* it loads the state, so
whatever a stale writer saved before the claim is loaded, and nothing after it lands.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from daal_ray.atomic_io import atomic_create, atomic_write_table, read_table_once, set_aside_torn
from daal_ray.errors import PoolStateError, StaleWriterError

# The pool state's file name in a run (or labeling project) directory.
STATE_FILE = "pool_state.parquet"

logger = logging.getLogger(__name__)

FORMAT = "daal-ray/pool-state"
VERSION = 1
_META_KEY = b"daal_ray"

# The fencing epochs claimed in a state's directory: one file per epoch, named by its number.
EPOCH_DIR = ".epochs"
_EPOCH_NAME = re.compile(r"^[0-9]{12}$")
# Older claims are pruned; the newest one alone decides, the rest only name past writers.
_EPOCHS_KEPT = 8


def newest_epoch(directory: str | os.PathLike) -> tuple[int, dict[str, Any]]:
    """The newest fencing epoch claimed in ``directory`` (0 if none) and its claim
    (``host``, ``pid``, ``claimed_at``; empty if unreadable)."""
    folder = Path(directory) / EPOCH_DIR
    try:
        numbers = [int(n) for n in os.listdir(folder) if _EPOCH_NAME.match(n)]
    except FileNotFoundError:
        return 0, {}
    if not numbers:
        return 0, {}
    top = max(numbers)
    try:
        claim = json.loads((folder / f"{top:012d}").read_text())
    except (OSError, ValueError):
        claim = {}
    return top, claim if isinstance(claim, dict) else {}


def claim_epoch(directory: str | os.PathLike) -> int:
    """Claim the next fencing epoch in ``directory``; returns it.

    Each claim is a file created atomically (:func:`~daal_ray.atomic_io.atomic_create`), so
    of two writers racing for one number exactly one gets it and the other takes the next:
    no two writers ever hold the same epoch, on one host or several sharing the directory.

    Raises:
        StorageError: the directory's file system is full, read-only or refuses us.
    """
    folder = Path(directory) / EPOCH_DIR
    while True:
        epoch = newest_epoch(directory)[0] + 1
        claim = {"epoch": epoch, "host": socket.gethostname(), "pid": os.getpid(), "claimed_at": time.time()}
        if atomic_create(folder / f"{epoch:012d}", json.dumps(claim).encode()):
            break
    for name in os.listdir(folder):
        if _EPOCH_NAME.match(name) and int(name) <= epoch - _EPOCHS_KEPT:
            with contextlib.suppress(OSError):
                (folder / name).unlink()
    return epoch


def epoch_of(path: str | os.PathLike) -> Optional[int]:
    """The fencing epoch recorded in the saved state at ``path`` (None: no file, none
    recorded, or unreadable)."""
    try:
        with open(path, "rb") as fh:
            raw = (pq.read_schema(fh).metadata or {}).get(_META_KEY)
        epoch = json.loads(raw).get("epoch") if raw else None
    except (OSError, ValueError, AttributeError, pa.ArrowException):
        return None
    return epoch if isinstance(epoch, int) else None


def check_epoch(path: str | os.PathLike, epoch: int) -> None:
    """Refuse a write of ``path`` by a writer holding fencing ``epoch`` if a newer one was
    claimed in its directory or wrote the file.

    Raises:
        StaleWriterError: naming the file, both epochs and the newer claim's holder.
    """
    path = Path(path)
    claimed, claim = newest_epoch(path.parent)
    written = epoch_of(path) or 0
    newest = max(claimed, written)
    if newest <= epoch:
        return
    if newest == claimed and claim:
        who = (f" (claimed by pid {claim.get('pid')} on host {claim.get('host')} at "
               f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(claim.get('claimed_at', 0)))})")
    else:
        who = " (recorded in the file)"
    raise StaleWriterError(
        f"refusing to write {path}: this writer holds fencing epoch {epoch}, but epoch {newest} is newer{who}. "
        f"Another ALDriver has taken the run over (Ray restarted it, or a re-run took over after this one lost its "
        f"lease), so this writer is stale: {path} keeps the newer state, and this process should stop")


def _as_ids(ids: Iterable[int] | np.ndarray, what: str = "sample ids") -> np.ndarray:
    arr = np.asarray(ids)
    if arr.size == 0:
        return arr.astype(np.int64).reshape(0)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise PoolStateError(f"{what} must be a 1-d array of integers, got shape {arr.shape} dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


@dataclass(frozen=True)
class CycleRecord:
    """One committed cycle: what was added and when."""

    cycle: int
    num_added: int
    num_labeled: int
    strategy: str
    committed_at: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class PoolState:
    """The labeled/unlabeled split of one experiment's pool.

    Args:
        sample_ids: every id of the pool (the training split), unique int64.
        run_id: identifies the experiment; a saved file of another run is refused.
    """

    def __init__(self, sample_ids: Sequence[int] | np.ndarray, run_id: str) -> None:
        ids = _as_ids(sample_ids, "pool sample ids")
        if ids.size == 0:
            raise PoolStateError("the pool is empty")
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        if np.any(ids[1:] == ids[:-1]):
            dup = ids[1:][ids[1:] == ids[:-1]][:5].tolist()
            raise PoolStateError(f"duplicate sample ids in the pool, e.g. {dup}")
        self.run_id = run_id
        self.sample_ids = ids
        self.labeled_cycle = np.full(ids.size, -1, dtype=np.int32)
        self.label = np.full(ids.size, -1, dtype=np.int64)
        self.pending = np.zeros(ids.size, dtype=bool)
        self.pending_cycle: Optional[int] = None
        self.history: list[CycleRecord] = []

    # ----------------------------------------------------------------- queries
    def __len__(self) -> int:
        return int(self.sample_ids.size)

    @property
    def next_cycle(self) -> int:
        """The cycle the next commit will record (0 = the initial pool)."""
        return len(self.history)

    def labeled_ids(self) -> np.ndarray:
        return self.sample_ids[self.labeled_cycle >= 0]

    def labeled_labels(self) -> np.ndarray:
        return self.label[self.labeled_cycle >= 0]

    def unlabeled_ids(self) -> np.ndarray:
        return self.sample_ids[self.labeled_cycle < 0]

    def pending_ids(self) -> np.ndarray:
        return self.sample_ids[self.pending]

    def ids_of_cycle(self, cycle: int) -> np.ndarray:
        return self.sample_ids[self.labeled_cycle == cycle]

    def _positions(self, ids: np.ndarray, what: str) -> np.ndarray:
        pos = np.searchsorted(self.sample_ids, ids)
        pos_clipped = np.minimum(pos, self.sample_ids.size - 1)
        missing = self.sample_ids[pos_clipped] != ids
        if np.any(missing):
            raise PoolStateError(f"{what}: {int(missing.sum())} id(s) are not in the pool, e.g. {ids[missing][:5].tolist()}")
        return pos

    # ----------------------------------------------------------------- updates
    def propose(self, cycle: int, ids: Iterable[int] | np.ndarray, expected_size: Optional[int] = None) -> np.ndarray:
        """Record ``ids`` as the pending batch of ``cycle`` and return the pending batch.

        If ``cycle`` already has a pending batch (a crash came between propose and commit),
        that batch is returned unchanged and ``ids`` are ignored: budget is never spent
        twice. If ``cycle`` was committed already, its committed ids are returned.

        Raises:
            PoolStateError: the ids repeat, are outside the pool, are labeled already, or
                are not ``expected_size`` many; or ``cycle`` skips ahead.
        """
        if cycle < self.next_cycle:
            return self.ids_of_cycle(cycle)
        if cycle > self.next_cycle:
            raise PoolStateError(f"cannot propose for cycle {cycle}: the next cycle is {self.next_cycle}")
        if self.pending_cycle is not None:
            if self.pending_cycle != cycle:  # unreachable unless the state was edited by hand
                raise PoolStateError(f"cycle {self.pending_cycle} is pending, cannot propose cycle {cycle}")
            return self.pending_ids()
        ids = _as_ids(ids)
        if np.unique(ids).size != ids.size:
            raise PoolStateError(f"proposed batch for cycle {cycle} repeats sample ids")
        if expected_size is not None and ids.size != expected_size:
            raise PoolStateError(f"proposed batch for cycle {cycle} has {ids.size} ids, expected {expected_size}")
        if ids.size == 0:
            raise PoolStateError(f"proposed batch for cycle {cycle} is empty")
        pos = self._positions(ids, f"proposed batch for cycle {cycle}")
        already = self.labeled_cycle[pos] >= 0
        if np.any(already):
            raise PoolStateError(
                f"proposed batch for cycle {cycle} holds {int(already.sum())} labeled id(s), e.g. {ids[already][:5].tolist()}"
            )
        self.pending[pos] = True
        self.pending_cycle = cycle
        return self.pending_ids()

    def commit(self, cycle: int, ids: Iterable[int] | np.ndarray, labels: Optional[Sequence[int] | np.ndarray] = None,
               strategy: str = "", partial: bool = False) -> bool:
        """Label the pending batch of ``cycle``. Idempotent.

        With ``partial``, ``ids`` may be any part of the pending batch: they are labeled
        now and the rest stays pending; the cycle enters the history when its last pending
        id is labeled (by a partial or a full commit of the rest). Ids that an earlier
        partial commit labeled in ``cycle`` with the same labels are skipped, so repeating
        a partial commit changes nothing.

        Returns:
            True if this call changed the state, False if ``cycle`` was committed already
            with these same ids (or, with ``partial``, every id was labeled already).

        Raises:
            PoolStateError: ``ids`` differ from the pending (or committed) batch, nothing
                is pending, or the labels do not match the ids; with ``partial``: ids
                neither pending nor labeled in ``cycle``, or labeled with other labels.
        """
        raw = _as_ids(ids)
        order = np.argsort(raw, kind="stable")
        ids = raw[order]
        if partial:
            return self._commit_part(cycle, ids, None if labels is None else np.asarray(labels), order, strategy)
        if cycle < self.next_cycle:
            done = np.sort(self.ids_of_cycle(cycle))
            if not np.array_equal(done, ids):
                raise PoolStateError(f"cycle {cycle} was committed with other ids; refusing a second, different commit")
            return False
        if self.pending_cycle != cycle:
            raise PoolStateError(f"nothing is pending for cycle {cycle}; propose the batch first")
        pending = self.pending_ids()  # sorted, since sample_ids are
        if not np.array_equal(pending, ids):
            raise PoolStateError(
                f"commit for cycle {cycle} names {ids.size} ids but the pending batch has {pending.size} other ids"
            )
        pos = self._positions(ids, f"commit for cycle {cycle}")
        if labels is not None:
            lab = np.asarray(labels)
            if lab.shape != ids.shape or not np.issubdtype(lab.dtype, np.integer):
                raise PoolStateError(f"labels for cycle {cycle} must be {ids.size} integers, got shape {lab.shape}")
            self.label[pos] = lab[order].astype(np.int64)  # labels follow their ids, in any order
        self.labeled_cycle[pos] = cycle
        self.pending[pos] = False
        self._close_pending(cycle, strategy)
        return True

    def _commit_part(self, cycle: int, ids: np.ndarray, labels: Optional[np.ndarray], order: np.ndarray,
                     strategy: str) -> bool:
        """:meth:`commit` with ``partial``; ``ids`` sorted, ``labels`` in the caller's order."""
        where = f"partial commit for cycle {cycle}"
        if labels is not None:
            if labels.shape != ids.shape or not np.issubdtype(labels.dtype, np.integer):
                raise PoolStateError(f"labels for cycle {cycle} must be {ids.size} integers, got shape {labels.shape}")
            labels = labels[order].astype(np.int64)
        if np.any(ids[1:] == ids[:-1]):
            raise PoolStateError(f"{where} repeats sample ids")
        if cycle > self.next_cycle or (cycle == self.next_cycle and self.pending_cycle != cycle):
            raise PoolStateError(f"nothing is pending for cycle {cycle}; propose the batch first")
        pos = self._positions(ids, where)
        done = self.labeled_cycle[pos] == cycle
        stray = ~done & ~self.pending[pos]
        if np.any(stray):
            raise PoolStateError(f"{where}: {int(stray.sum())} id(s) are neither pending nor labeled in cycle {cycle}, "
                                 f"e.g. {ids[stray][:5].tolist()}")
        if labels is not None and np.any(self.label[pos[done]] != labels[done]):
            clash = ids[done][self.label[pos[done]] != labels[done]]
            raise PoolStateError(f"{where}: {clash.size} id(s) were labeled in cycle {cycle} with other labels, "
                                 f"e.g. {clash[:5].tolist()}; labels are final")
        new = pos[~done]
        if new.size == 0:
            return False
        if labels is not None:
            self.label[new] = labels[~done]
        self.labeled_cycle[new] = cycle
        self.pending[new] = False
        if not self.pending.any():
            self._close_pending(cycle, strategy)
        return True

    def _close_pending(self, cycle: int, strategy: str) -> None:
        """The pending batch of ``cycle`` is all labeled: record the cycle."""
        self.pending_cycle = None
        self.history.append(
            CycleRecord(cycle=cycle, num_added=int((self.labeled_cycle == cycle).sum()),
                        num_labeled=int((self.labeled_cycle >= 0).sum()), strategy=strategy, committed_at=time.time())
        )

    # -------------------------------------------------------------- invariants
    def check(self, where: str = "pool state") -> None:
        """Raise :class:`PoolStateError` naming ``where`` if any invariant is broken."""
        ids = self.sample_ids
        n = ids.size
        for name, arr in (("labeled_cycle", self.labeled_cycle), ("label", self.label), ("pending", self.pending)):
            if arr.shape != (n,):
                raise PoolStateError(f"{where}: column {name} has {arr.shape[0]} rows, expected {n}")
        if n == 0:
            raise PoolStateError(f"{where}: the pool is empty")
        if np.any(ids[1:] <= ids[:-1]):
            raise PoolStateError(f"{where}: sample ids are not unique and sorted")
        # A pending batch may be partly labeled already (a partial commit): those carry its cycle.
        top = self.next_cycle - (self.pending_cycle is None)
        if np.any(self.labeled_cycle < -1) or np.any(self.labeled_cycle > top):
            raise PoolStateError(f"{where}: a labeled cycle is outside [-1, {top}]")
        if np.any(self.pending & (self.labeled_cycle >= 0)):
            raise PoolStateError(f"{where}: a sample is both pending and labeled")
        if (self.pending_cycle is None) == bool(self.pending.any()):
            raise PoolStateError(f"{where}: pending flags and pending cycle disagree")
        if self.pending_cycle is not None and self.pending_cycle != self.next_cycle:
            raise PoolStateError(f"{where}: pending cycle {self.pending_cycle} is not the next cycle {self.next_cycle}")
        for rec in self.history:
            count = int((self.labeled_cycle == rec.cycle).sum())
            if count != rec.num_added:
                raise PoolStateError(f"{where}: cycle {rec.cycle} records {rec.num_added} labeled ids but {count} carry it")
        if [r.cycle for r in self.history] != list(range(len(self.history))):
            raise PoolStateError(f"{where}: history cycles are not 0..{len(self.history) - 1}")

    # -------------------------------------------------------------- persistence
    def _table(self) -> pa.Table:
        return pa.table({
            "sample_id": pa.array(self.sample_ids, pa.int64()),
            "labeled_cycle": pa.array(self.labeled_cycle, pa.int32()),
            "label": pa.array(self.label, pa.int64()),
            "pending": pa.array(self.pending, pa.bool_()),
        })

    def _digest(self) -> str:
        h = hashlib.sha256()
        for arr in (self.sample_ids, self.labeled_cycle, self.label, self.pending):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()

    def save(self, path: str | os.PathLike, epoch: Optional[int] = None) -> None:
        """Write atomically: temp file, fsync, rename; the previous file is kept as ``.prev``.

        Args:
            epoch: the writer's fencing epoch (:func:`claim_epoch`), recorded in the file.
                Right before the rename, a newer epoch claimed in the directory or recorded
                in the file being replaced refuses the write. None writes unfenced (a new
                state, or one tool writing alone under the run-directory lock).

        Raises:
            StaleWriterError: ``epoch`` is older than the newest; ``path`` is unchanged.
            StorageError: the file system is full, read-only or refuses us.
        """
        self.check()
        path = Path(path)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "run_id": self.run_id,
            "pending_cycle": self.pending_cycle,
            "history": [r.to_dict() for r in self.history],
            "sha256": self._digest(),
            "epoch": epoch,
        }
        table = self._table().replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
        fence = None if epoch is None else (lambda: check_epoch(path, epoch))
        atomic_write_table(table, path, keep_previous=True, before_replace=fence)

    @classmethod
    def load(cls, path: str | os.PathLike, run_id: Optional[str] = None) -> "PoolState":
        """Read and verify a saved state.

        Raises:
            PoolStateError: naming ``path`` when it is unreadable, not a daal-ray state,
                of another run (``run_id`` given and different), or breaks an invariant.
        """
        path = Path(path)
        try:
            table = read_table_once(path)
        except FileNotFoundError:
            raise
        except Exception as exc:  # pyarrow raises several types for torn files
            raise TornStateError(f"pool state {path} is corrupt or truncated ({exc}); "
                                 f"the previous good state is {path.with_suffix(path.suffix + '.prev')}") from exc
        raw = (table.schema.metadata or {}).get(_META_KEY)
        if raw is None:
            raise PoolStateError(f"{path} is not a daal-ray pool-state file (no {_META_KEY.decode()} metadata)")
        try:
            meta = json.loads(raw)
        except ValueError as exc:
            raise PoolStateError(f"pool state {path} has unreadable metadata") from exc
        if not isinstance(meta, dict):
            raise PoolStateError(f"pool state {path} has malformed metadata (not an object)")
        if meta.get("format") != FORMAT:
            raise PoolStateError(f"{path} is not a daal-ray pool-state file (format {meta.get('format')!r})")
        if meta.get("version") != VERSION:
            raise PoolStateError(f"pool state {path} has version {meta.get('version')}, this daal-ray reads {VERSION}")
        if run_id is not None and meta.get("run_id") != run_id:
            raise PoolStateError(f"pool state {path} belongs to run {meta.get('run_id')!r}, not {run_id!r}; "
                                 f"use another run directory or the matching config")
        expected = {"sample_id", "labeled_cycle", "label", "pending"}
        if set(table.column_names) != expected:
            raise PoolStateError(f"pool state {path} has columns {table.column_names}, expected {sorted(expected)}")
        state = cls.__new__(cls)
        try:
            state.run_id = meta["run_id"]
            state.sample_ids = table["sample_id"].to_numpy().astype(np.int64)
            state.labeled_cycle = table["labeled_cycle"].to_numpy().astype(np.int32)
            state.label = table["label"].to_numpy().astype(np.int64)
            state.pending = table["pending"].to_numpy(zero_copy_only=False).astype(bool)
            state.pending_cycle = meta["pending_cycle"]
            state.history = [CycleRecord(**r) for r in meta["history"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise PoolStateError(f"pool state {path} has malformed metadata ({exc!r})") from exc
        if state._digest() != meta.get("sha256"):
            raise TornStateError(f"pool state {path} is corrupt: its content does not match its checksum")
        state.check(where=f"pool state {path}")
        return state


class TornStateError(PoolStateError):
    """A pool-state file is torn, truncated or fails its checksum (not merely foreign)."""


def load_last_good(path: str | os.PathLike, run_id: Optional[str] = None, epoch: Optional[int] = None) -> PoolState:
    """Load the state at ``path``; if that file is torn, resume from ``path.prev``.

    A torn file (unreadable, truncated, checksum mismatch) is moved aside to
    ``<name>.torn-<unix time>`` and logged as an error naming it; the previous generation,
    which :meth:`PoolState.save` keeps, is loaded and written back to ``path``. Falling back
    one generation is safe: the cycle loop redoes the last step with the same seed, and a
    pending batch is committed with the same ids, so no budget is spent twice. The write
    back carries ``epoch``, the caller's fencing epoch (see :meth:`PoolState.save`).

    Raises:
        PoolStateError: the file is foreign or breaks an invariant, or it is torn and the
            previous generation is missing or bad too (naming both files).
    """
    path = Path(path)
    try:
        return PoolState.load(path, run_id=run_id)
    except TornStateError as exc:
        prev = path.with_name(path.name + ".prev")
        if not prev.is_file():
            raise PoolStateError(f"{exc}; there is no previous generation {prev} to resume from") from exc
        try:
            state = PoolState.load(prev, run_id=run_id)
        except PoolStateError as prev_exc:
            raise PoolStateError(f"{exc}; its previous generation does not load either: {prev_exc}") from prev_exc
        torn = set_aside_torn(path)
        logger.error("pool state %s is torn (%s); resuming from the last good state %s; the torn file is kept as %s",
                     path, exc, prev, torn)
        state.save(path, epoch=epoch)  # path is gone, so .prev stays the good generation
        return state

