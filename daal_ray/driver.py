"""The ALDriver actor: the one owner and writer of an experiment's pool state.

Every change (a proposed batch, a commit) is persisted before the call returns, and a
restarted ALDriver reloads the state, so no committed label is lost and no budget is
spent twice. Each start claims a new fencing epoch before it loads the state, and every
save carries it: an ALDriver that a partition left behind (Ray restarted it elsewhere, or
a re-run took the run directory over) is refused when it writes
(:class:`~daal_ray.errors.StaleWriterError`), so it cannot overwrite the newer state.
The actor is named after its run directory, so the cycle loop, a resumed run and a
labeling command all find the same one.

This module imports only the pool state and the errors (not torch, not the strategies):
an experiment group or a sweep starts one ALDriver process per experiment, so each must
stay small.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import ray

from daal_ray.errors import PoolStateError, find_error
from daal_ray.pool import STATE_FILE, PoolState, claim_epoch, load_last_good

logger = logging.getLogger(__name__)

__all__ = ["ALDriver", "NAMESPACE", "PoolKeeper", "driver_name", "start_driver"]

NAMESPACE = "daal_ray"


class PoolKeeper:
    """Owns one experiment's :class:`PoolState`; every change is persisted before it returns.

    Wrapped as the :data:`ALDriver` actor; a plain object in unit tests. On (re)start it
    claims a new fencing epoch in ``run_dir`` (every save carries it), then reloads
    ``run_dir/pool_state.parquet`` when it exists. A change whose save fails (a full disk, or
    a newer epoch took over) is undone in memory too, so the keeper stays on the state the
    disk holds.
    """

    def __init__(self, run_dir: str, run_id: str, pool_ids: np.ndarray) -> None:
        self.path = Path(run_dir) / STATE_FILE
        # Claimed before the load: a stale writer's save that lands before this is loaded,
        # any after it is refused.
        self.epoch = claim_epoch(run_dir)
        if self.path.exists():
            self.state = load_last_good(self.path, run_id=run_id, epoch=self.epoch)
            if not np.array_equal(self.state.sample_ids, np.sort(np.asarray(pool_ids, dtype=np.int64))):
                raise PoolStateError(f"pool state {self.path} describes another pool than the dataset's training split; "
                                     f"use a new run directory for changed data")
            logger.info("ALDriver: reloaded %s (next cycle %d)", self.path, self.state.next_cycle)
        else:
            self.state = PoolState(pool_ids, run_id=run_id)

    def snapshot(self) -> dict[str, Any]:
        """Plain-data view of the state for the workers."""
        s = self.state
        return {
            "next_cycle": s.next_cycle,
            "labeled_ids": s.labeled_ids(),
            "labeled_labels": s.labeled_labels(),
            "pending_cycle": s.pending_cycle,
            "pending_ids": s.pending_ids(),
            "num_pool": len(s),
            "history": [r.to_dict() for r in s.history],
            "epoch": self.epoch,
        }

    def propose(self, cycle: int, ids: np.ndarray, expected_size: Optional[int] = None) -> np.ndarray:
        before = copy.deepcopy(self.state)
        out = self.state.propose(cycle, ids, expected_size=expected_size)
        if self.state.pending_cycle != before.pending_cycle:
            self._save_or_undo(before)
        return out

    def commit(self, cycle: int, ids: np.ndarray, labels: Optional[np.ndarray], strategy: str = "",
               partial: bool = False) -> bool:
        before = copy.deepcopy(self.state)
        changed = self.state.commit(cycle, ids, labels, strategy=strategy, partial=partial)
        if changed:
            self._save_or_undo(before)
        return changed

    def _save_or_undo(self, before: PoolState) -> None:
        try:
            self.state.save(self.path, epoch=self.epoch)
        except BaseException:
            self.state = before  # what the disk still holds
            raise

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> Optional[str]:
        """The Ray node this keeper runs on (None outside Ray): where an ALDriver restarted."""
        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


ALDriver = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(PoolKeeper)


def driver_name(run_dir: Path) -> str:
    """Actor name of a run: stable for one run directory, distinct across directories."""
    digest = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:12]
    return f"aldriver-{run_dir.name}-{digest}"


def start_driver(run_dir: Path, run_id: str, pool_ids: np.ndarray):
    """Get or create the run's named ALDriver and wait until its state is loaded.

    The ALDriver of a run that just ended in this cluster may still be registered while it
    is torn down; the lookup then returns that dying actor, whose first call fails without
    a daal-ray error. The lookup is repeated (for up to 10 s) until a live one answers.
    """
    attempts = 50
    for attempt in range(attempts):
        handle = ALDriver.options(name=driver_name(run_dir), namespace=NAMESPACE, get_if_exists=True).remote(
            str(run_dir), run_id, pool_ids)
        try:
            ray.get(handle.snapshot.remote())
            return handle
        except ray.exceptions.RayActorError as exc:
            inner = find_error(exc)
            creation_failed = "creation task" in str(exc)  # the state failed to load: say why, do not retry
            if creation_failed and inner is exc:
                # Ray reports the failed constructor as ActorDiedError; load the state here
                # to raise its own PoolStateError (naming the files) instead.
                PoolKeeper(str(run_dir), run_id, pool_ids)
            if inner is not exc or creation_failed or attempt == attempts - 1:
                raise inner from None
            logger.info("ALDriver %s is being torn down; looking it up again", driver_name(run_dir))
            time.sleep(0.2)
    raise AssertionError("unreachable")
