"""Crash injection: SIGKILL a whole job, or hold one of its processes, at a named point
where it writes durable state.

The fault tests kill a job at each point where it writes (every file daal-ray replaces
goes through :func:`daal_ray.atomic_io.atomic_write`, which calls :func:`crash_point`
just before its rename and just after it), then re-run the same command and compare the
outcome with an uninterrupted run. Nothing here is active unless the environment asks:

    DAAL_RAY_CRASH_AT=record                        record every point reached, kill nothing
    DAAL_RAY_CRASH_AT=write:pool_state.parquet:3    kill at the 3rd time that point is reached
    DAAL_RAY_CRASH_AT=*:7                           kill at the 7th point reached, whichever it is
    DAAL_RAY_CRASH_AT="write:meta.json:1 after write:model.pt"
                                                    kill at the 1st time the point is reached after the
                                                    other one was (how a resumed job is killed one write
                                                    further on: it first redoes the write it was killed at)
    DAAL_RAY_CRASH_LOG=FILE                         where the points reached are counted (required)
    DAAL_RAY_HOLD_AT=written:results.parquet:1      hold the process that reaches the 1st such point (counted
                                                    in the same FILE) until FILE.release exists: it writes
                                                    its pid to FILE.held, then waits (a test loses a node
                                                    or the head with the job at a known point)

A point is ``<kind>:<file name>``: ``write`` (the new content is complete in its temp
file, not yet renamed) or ``written`` (renamed, directory synced); ``create`` and
``created`` for a file created only if absent (:func:`daal_ray.atomic_io.atomic_create`:
a lease, a fencing epoch). Digits in the file name are written ``N`` (``write:N.json`` for
a lease file): a point names a kind of file, so it is the same point in a job and in its
resumption, whose lease and fencing epoch are numbered one further. The job's processes
(the driver, the ALDriver actor, Ray Train and Ray Data workers) count one sequence: each
point reached is appended to ``FILE`` under an ``flock``, so the n-th is the n-th of the
whole job, whichever process reaches it. A record run (``record``) lists every point of a
job in the order it reaches them, so a test that kills at each listed point covers a write
point added later without being told about it.

The kill takes the job's process group: the process that imported this module first with
the plan set (the job's driver) must lead its own group (``setsid``, or
``subprocess.Popen(..., start_new_session=True)``), and its group id reaches the Ray
processes it starts through the environment. A local Ray instance's GCS and raylet are in
that group, and its workers exit once their raylet is gone; a worker that reaches the point
kills itself too. A job that joins a running Ray instance gives its workers the variables
through its runtime environment (``runtime_env={"env_vars": ...}``); killing its driver
then ends the job's workers and actors, which Ray does once their owner is gone.

The variables are read once, when this module is imported; unset, :func:`crash_point`
returns after one comparison.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import time
from pathlib import Path
from typing import NamedTuple, Optional

__all__ = ["ANY", "CRASH_ENV", "GROUP_ENV", "HOLD_ENV", "LOG_ENV", "RECORD", "CrashPlan", "arm_hold", "crash_point",
           "held_file", "parse_plan", "point_name", "read_points", "release_file"]

CRASH_ENV = "DAAL_RAY_CRASH_AT"
LOG_ENV = "DAAL_RAY_CRASH_LOG"
HOLD_ENV = "DAAL_RAY_HOLD_AT"
# Set by the job's driver for the Ray processes it starts (they inherit its environment).
GROUP_ENV = "DAAL_RAY_CRASH_GROUP"
RECORD = "record"
ANY = "*"  # a plan's point that matches every point: ``*:5`` kills at the 5th point reached


class CrashPlan(NamedTuple):
    """Where to kill: the ``count``-th time ``point`` is reached (``point`` None: record
    only), counted after the first time ``after`` was reached when it is given."""

    point: Optional[str]
    count: int
    log: Path
    after: Optional[str] = None

    def due(self, before: list[str], point: str) -> bool:
        """Whether reaching ``point`` now, after the points ``before``, is the kill."""
        if self.point is None or (self.point != ANY and point != self.point):
            return False
        if self.after is not None:
            if self.after not in before:
                return False
            before = before[before.index(self.after) + 1:]
        reached = len(before) + 1 if self.point == ANY else before.count(point) + 1
        return reached == self.count


def parse_plan(value: Optional[str], log: Optional[str], env: str = CRASH_ENV) -> Optional[CrashPlan]:
    """The plan ``value`` (of the variable ``env``: ``DAAL_RAY_CRASH_AT`` or
    ``DAAL_RAY_HOLD_AT``) and ``DAAL_RAY_CRASH_LOG`` describe, or None if unset.

    Raises:
        ValueError: a value that is not ``record`` (a crash plan only) or ``<point>:<n>``
            with n >= 1, or no log.
    """
    if not value:
        return None
    if not log:
        raise ValueError(f"{env} needs {LOG_ENV}: the file where the job's processes count the points reached")
    record = RECORD if env == CRASH_ENV else None
    if value == record:
        return CrashPlan(None, 0, Path(log))
    target, sep, after = value.partition(" after ")
    point, _, n = target.strip().rpartition(":")
    if not point or not n.isdigit() or int(n) < 1 or (sep and not after.strip()):
        either = f"'{record}' or " if record else ""
        raise ValueError(f"{env} must be {either}'<point>:<n>[ after <point>]' with n >= 1 (e.g. "
                         f"'write:pool_state.parquet:3'), got {value!r}")
    return CrashPlan(point, int(n), Path(log), after.strip() or None)


def _own_group() -> int:
    """The group to kill: the one this job's driver leads (set in the environment for the
    processes it starts), or this process's own if it leads one."""
    inherited = os.environ.get(GROUP_ENV)
    if inherited:
        return int(inherited)
    if os.getpgid(0) != os.getpid():
        raise RuntimeError(f"{CRASH_ENV} kills the job's process group, and this process does not lead one: start "
                           f"the job in a session of its own (setsid, or start_new_session=True), or its crash would "
                           f"take the processes that started it")
    os.environ[GROUP_ENV] = str(os.getpid())
    return os.getpid()


_PLAN = parse_plan(os.environ.get(CRASH_ENV), os.environ.get(LOG_ENV))
_GROUP = _own_group() if _PLAN is not None and _PLAN.point is not None else 0
_HOLD = parse_plan(os.environ.get(HOLD_ENV), os.environ.get(LOG_ENV), HOLD_ENV)


def arm_hold(value: str, log: str | os.PathLike) -> None:
    """Hold this process at ``value`` (a ``DAAL_RAY_HOLD_AT`` plan, counted in ``log``) as
    if the variables were set when it started: for a test that holds one job among several
    on one Ray cluster (from its Ray Train loop), where the environment would reach them all."""
    global _HOLD
    _HOLD = parse_plan(value, str(log), HOLD_ENV)


def point_name(kind: str, path: str | os.PathLike | None = None) -> str:
    """``kind:<file name>`` (digits written ``N``), or ``kind`` without a path."""
    return f"{kind}:{re.sub(r'[0-9]+', 'N', Path(path).name)}" if path is not None else kind


def crash_point(kind: str, path: str | os.PathLike | None = None) -> None:
    """Reach the point ``kind`` (``kind:<file name>`` when ``path`` is given): record it;
    SIGKILL the job's process group if the crash plan names this point and count, hold here
    if the hold plan does."""
    if _PLAN is None and _HOLD is None:
        return
    point = point_name(kind, path)
    log = (_PLAN or _HOLD).log
    with open(log, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # one count over all of the job's processes
        fh.seek(0)
        before = [line.split("\t", 1)[0] for line in fh]
        fh.write(f"{point}\t{before.count(point) + 1}\t{os.getpid()}\t{time.time():.3f}\n")
        fh.flush()
        if _PLAN is not None and _PLAN.due(before, point):
            os.killpg(_GROUP, signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)  # a Ray worker leads a group of its own
        hold = _HOLD is not None and _HOLD.due(before, point)
    if hold:  # outside the lock: the job's other processes go on counting
        _hold_until_released(_HOLD.log)


def held_file(log: str | os.PathLike) -> Path:
    """``LOG.held``: the pid of the process a hold plan counted in ``log`` holds, once it holds."""
    return Path(f"{os.fspath(log)}.held")


def release_file(log: str | os.PathLike) -> Path:
    """``LOG.release``: created by the test, it lets the held process go on."""
    return Path(f"{os.fspath(log)}.release")


def _hold_until_released(log: Path) -> None:
    """Write this process's pid to ``LOG.held`` (whole, by a rename), then wait until
    ``LOG.release`` exists."""
    held = held_file(log)
    tmp = held.with_name(f".{held.name}.{os.getpid()}")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, held)
    while not release_file(log).exists():
        time.sleep(0.05)


def read_points(log: str | os.PathLike) -> list[tuple[str, int]]:
    """The points a job reached, in order, from its log: ``[(point, n), ...]``, each point
    with its count so far (``write:pool_state.parquet``, 3: the 3rd time)."""
    path = Path(log)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        point, n = line.split("\t")[:2]
        out.append((point, int(n)))
    return out
