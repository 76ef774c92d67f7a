"""The run directory of one experiment: its lock, its identity and its saved config.

    RUN_DIR/
        .lock                 flock held while a run is live (hold_run_dir)
        .lease/NNN.json       the holder's lease: host, pid, expiry, renewed by a heartbeat
        .epochs/NNN           fencing epochs claimed by the ALDrivers (daal_ray.pool)
        config.json           the ExperimentConfig the run was started with (prepare_run_dir)
        strategy_params.json  the strategy's params with every default filled in, as started
        pool_state.parquet    the ALDriver's PoolState, with .prev, the previous generation
        results.parquet       one row per cycle
        checkpoints/cycle_NNN/ the task model (and strategy nets) of each cycle

A re-run with the same config resumes; one whose science differs (anything but the
resources) is refused, so two experiments never share a pool state. That includes a
strategy default that changed between the start and the resumption (a newer daal-ray): the
config names only the params given, so the params as started, defaults filled in, are
saved beside it and compared too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from daal_ray.atomic_io import atomic_create, atomic_write_bytes, atomic_write_text, storage_errors
from daal_ray.config import ExperimentConfig
from daal_ray.errors import ConfigError, RunLockedError, StorageError
from daal_ray.pool import STATE_FILE

__all__ = ["CONFIG_FILE", "STRATEGY_PARAMS_FILE", "DEFAULT_HEARTBEAT_S", "DEFAULT_LEASE_TTL_S", "LEASE_DIR", "LOCK_FILE", "STATE_FILE",
           "LeaseRecord", "RunLease", "hold_run_dir", "lease_settings", "prepare_run_dir", "read_lease", "run_id_of"]

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
STRATEGY_PARAMS_FILE = "strategy_params.json"
LOCK_FILE = ".lock"
LEASE_DIR = ".lease"
LEASE_TTL_ENV = "DAAL_RAY_LEASE_TTL_S"
LEASE_HEARTBEAT_ENV = "DAAL_RAY_LEASE_HEARTBEAT_S"
DEFAULT_LEASE_TTL_S = 60.0
DEFAULT_HEARTBEAT_S = 10.0
_LEASE_NAME = re.compile(r"^([0-9]{12})\.json$")
_LEASES_KEPT = 4  # older lease files are pruned; only the newest decides
_HOST = socket.gethostname()
# Fields that may change between a run and its resumption (resources, not the science).
_RESUMABLE_CHANGES = ("scale",)


def run_id_of(cfg: ExperimentConfig) -> str:
    """Identity of an experiment: its name plus a hash of everything but resources."""
    d = cfg.to_dict()
    for key in _RESUMABLE_CHANGES:
        d.pop(key, None)
    return f"{cfg.name}-{hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]}"


def prepare_run_dir(run_dir: Path, cfg: ExperimentConfig, strategy_params: Optional[dict[str, Any]] = None,
                    run_length: frozenset[str] = frozenset()) -> None:
    """Create ``run_dir`` and save the config, or check it matches the saved one.

    ``strategy_params`` (the strategy's params with its defaults filled in) are saved the
    same way and checked on resumption, but for the ``run_length`` ones (when or how results
    are written, not what they are): a resumed run whose strategy would now run with other
    values, because a default changed, is refused with the params named.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    if strategy_params is not None:
        _check_strategy_params(run_dir, cfg, strategy_params, run_length)
    path = run_dir / CONFIG_FILE
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except ValueError as exc:
            raise ConfigError(f"{path} is not valid JSON; remove it or use another run directory") from exc
        now = cfg.to_dict()
        diff = sorted(k for k in set(saved) | set(now) if k not in _RESUMABLE_CHANGES and saved.get(k) != now.get(k))
        if diff:
            raise ConfigError(f"{run_dir} holds experiment {saved.get('name')!r} with another config "
                              f"(differs in: {', '.join(diff)}); use another run directory or name")
    atomic_write_text(path, json.dumps(cfg.to_dict(), indent=2, sort_keys=True))


def _check_strategy_params(run_dir: Path, cfg: ExperimentConfig, now: dict[str, Any],
                           run_length: frozenset[str]) -> None:
    path = run_dir / STRATEGY_PARAMS_FILE
    now = json.loads(json.dumps(now, sort_keys=True, default=str))  # tuples as lists, as saved
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except ValueError as exc:
            raise ConfigError(f"{path} is not valid JSON; remove it or use another run directory") from exc
        # A param one of the two versions does not have is left out: one added since keeps
        # the old behaviour at its default (or it would be a changed default of another).
        diff = sorted(k for k in set(saved) & set(now) if k not in run_length and saved[k] != now[k])
        if diff:
            changes = ", ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in diff)
            raise ConfigError(
                f"{run_dir} was started with other {cfg.acquisition.strategy} params than it would resume with "
                f"({changes}): a default changed since. Finish it with the daal-ray version that started it, or "
                f"start it again in another run directory (with "
                f"{', '.join(f'{k}={json.dumps(saved[k])}' for k in diff)} to run it as started)")
    atomic_write_text(path, json.dumps(now, indent=2, sort_keys=True))



@contextlib.contextmanager
def hold_run_dir(run_dir: Path, ttl_s: Optional[float] = None,
                 heartbeat_s: Optional[float] = None) -> Iterator["RunLease"]:
    """Hold ``run_dir`` exclusively while an experiment (or a labeling command) runs in it.

    Two mechanisms, because either alone fails somewhere:

    * an ``flock`` on ``run_dir/.lock``: the kernel drops it when its holder dies, so a
      crashed run never blocks its own resumption, and a live one on this host refuses a
      second run that would interleave writes to the same pool state;
    * a *lease* under ``run_dir/.lease/``: the holder's host, pid and an expiry, renewed by
      a heartbeat thread every ``heartbeat_s`` seconds. On shared storage (NFS) the lock of
      a holder that died on another host may never be released; once its lease has expired
      (``ttl_s`` after its last renewal) the run directory is taken over, with a warning
      naming the dead holder, so a retried Tune trial resumes. A live holder, whose lease is
      being renewed, is refused whether or not its lock reaches this host.

    A lease is taken by creating the next numbered lease file atomically, so of two runs
    taking over one expired lease exactly one wins. A holder that comes back after its
    lease was taken over notices on its next heartbeat (:attr:`RunLease.lost`), and its
    ALDriver's writes are refused by the newer run's fencing epoch (:mod:`daal_ray.pool`).
    The TTL must exceed the hosts' clock skew plus the longest pause a holder may take.

    Args:
        ttl_s: lease lifetime; default ``DAAL_RAY_LEASE_TTL_S`` or 60 s.
        heartbeat_s: renewal interval, below ``ttl_s``; default ``DAAL_RAY_LEASE_HEARTBEAT_S`` or 10 s.

    Yields:
        The :class:`RunLease` held.

    Raises:
        RunLockedError: a live holder has the run directory, naming the lock file, its
            pid and host.
        StorageError: the run directory cannot be written (full, read-only).
        ConfigError: a TTL or heartbeat that is not positive, or a heartbeat not below the TTL.
    """
    ttl_s, heartbeat_s = lease_settings(ttl_s, heartbeat_s)
    path = run_dir / LOCK_FILE
    with storage_errors(path):
        fh = open(path, "a+")
    lease: Optional[RunLease] = None
    try:
        flocked = _try_flock(fh)
        lease = _take_lease(run_dir, fh, flocked, ttl_s, heartbeat_s)
        if flocked:
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
        lease.start()
        yield lease
    finally:
        if lease is not None:
            lease.stop()
        fh.close()  # releases the flock (before the lease: a released lease means a free lock)
        if lease is not None:
            lease.release()


# ---------------------------------------------------------------------- leases
def lease_settings(ttl_s: Optional[float] = None, heartbeat_s: Optional[float] = None) -> tuple[float, float]:
    """The lease TTL and heartbeat interval: the arguments, else the environment, else
    the defaults (60 s, 10 s).

    Raises:
        ConfigError: a value that is not a positive number, or a heartbeat not below the TTL.
    """
    def pick(value: Optional[float], env: str, default: float, what: str) -> float:
        if value is None:
            raw = os.environ.get(env, "").strip()
            if not raw:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"{env}={raw!r} is not a number of seconds") from None
        if not value > 0:
            raise ConfigError(f"the run-directory lease's {what} must be a positive number of seconds, got {value}")
        return float(value)

    ttl = pick(ttl_s, LEASE_TTL_ENV, DEFAULT_LEASE_TTL_S, "TTL")
    beat = pick(heartbeat_s, LEASE_HEARTBEAT_ENV, DEFAULT_HEARTBEAT_S, "heartbeat")
    if beat >= ttl:
        raise ConfigError(f"the run-directory lease's heartbeat ({beat:g} s) must be shorter than its TTL "
                          f"({ttl:g} s), or a live holder's lease expires between renewals")
    return ttl, beat


@dataclass(frozen=True)
class LeaseRecord:
    """One lease file: who holds (or held) the run directory, and until when."""

    seq: int
    host: str
    pid: int
    token: str
    expires_at: float
    flock: bool = False  # whether its holder also holds the flock (then a free flock means it is gone)
    released: bool = False

    def holder(self) -> str:
        return f"pid {self.pid} on host {self.host}"

    def expired(self, now: float) -> bool:
        return self.released or self.expires_at <= now


def read_lease(run_dir: Path) -> Optional[LeaseRecord]:
    """The newest lease of ``run_dir`` (None if it never had one).

    An unreadable lease file (cut short where the file system has no hard links) counts
    as held by an unknown holder until the default TTL after it was written."""
    folder = Path(run_dir) / LEASE_DIR
    try:
        seqs = [int(m.group(1)) for m in map(_LEASE_NAME.match, os.listdir(folder)) if m]
    except FileNotFoundError:
        return None
    if not seqs:
        return None
    seq = max(seqs)
    path = folder / _lease_name(seq)
    try:
        doc = json.loads(path.read_text())
        return LeaseRecord(seq=seq, host=str(doc["host"]), pid=int(doc["pid"]), token=str(doc["token"]),
                           expires_at=float(doc["expires_at"]), flock=bool(doc.get("flock", False)),
                           released=bool(doc.get("released", False)))
    except (OSError, ValueError, KeyError, TypeError):
        try:
            written = path.stat().st_mtime
        except OSError:
            written = 0.0
        return LeaseRecord(seq=seq, host="unknown", pid=-1, token="", expires_at=written + DEFAULT_LEASE_TTL_S)


class RunLease:
    """The lease this process holds on a run directory, renewed by a heartbeat thread.

    ``lost`` turns True when a renewal finds that another run took the lease over (this
    holder stopped renewing for longer than the TTL); renewals stop then.
    """

    def __init__(self, run_dir: Path, seq: int, ttl_s: float, heartbeat_s: float, flock: bool) -> None:
        self.run_dir = Path(run_dir)
        self.seq = seq
        self.ttl_s = ttl_s
        self.heartbeat_s = heartbeat_s
        self.flock = flock
        self.token = secrets.token_hex(8)
        self.path = self.run_dir / LEASE_DIR / _lease_name(seq)
        self.taken_by: Optional[LeaseRecord] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def lost(self) -> bool:
        return self.taken_by is not None

    def record(self, expires_at: float, released: bool = False) -> bytes:
        return json.dumps({"seq": self.seq, "host": _HOST, "pid": os.getpid(), "token": self.token,
                           "expires_at": expires_at, "renewed_at": time.time(), "ttl_s": self.ttl_s,
                           "flock": self.flock, "released": released}).encode()

    def _still_ours(self) -> bool:
        newest = read_lease(self.run_dir)
        if newest is not None and newest.seq == self.seq and newest.token == self.token:
            return True
        if self.taken_by is None:
            self.taken_by = newest or LeaseRecord(self.seq, "unknown", -1, "", 0.0)
            logger.error("lost the lease of %s to %s (this process did not renew it for %g s); this run's "
                         "pool-state writes are refused by the newer run's fencing epoch, stop it", self.run_dir,
                         self.taken_by.holder(), self.ttl_s)
        return False

    def renew(self) -> bool:
        """Extend the lease by the TTL from now; False (and nothing written) if it was lost."""
        if not self._still_ours():
            return False
        atomic_write_bytes(self.path, self.record(time.time() + self.ttl_s))
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.run_dir.name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self.renew():
                    return
            except StorageError as exc:  # the next beat retries; the lease lapses if none gets through
                logger.warning("could not renew the lease of %s: %s", self.run_dir, exc)
            except Exception:
                logger.exception("could not renew the lease of %s", self.run_dir)

    def stop(self) -> None:
        """Stop renewing (the lease stays until it expires or is released)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def release(self) -> None:
        """Mark the lease released, so the next run takes the directory at once. Never
        raises: a run that ends on a full or read-only disk keeps its own error."""
        try:
            if self._still_ours():
                atomic_write_bytes(self.path, self.record(0.0, released=True))
        except Exception as exc:
            logger.warning("could not release the lease of %s (it expires by itself within %g s): %s",
                           self.run_dir, self.ttl_s, exc)


def _lease_name(seq: int) -> str:
    return f"{seq:012d}.json"


def _try_flock(fh: Any) -> Optional[bool]:
    """True: locked; False: another holder has it; None: the file system has no flock."""
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return None
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _verdict(current: Optional[LeaseRecord], flocked: Optional[bool], now: float) -> str:
    """``take`` (free), ``gone`` (its holder on this host is dead), ``expired`` (take over,
    warning) or ``refuse`` (a live holder)."""
    if current is None or current.released:
        # No live lease, yet the flock is held: a holder of the flock alone, or one about to
        # write its lease (a holder releases its flock before its lease). A holder that died
        # never released its lease, so this is a live one.
        return "refuse" if flocked is False else "take"
    if current.expires_at <= now:
        return "expired"
    if current.host == _HOST:
        if current.flock and flocked:
            return "gone"  # the kernel dropped its flock: it died (or finished without releasing)
        if current.pid != os.getpid() and current.pid > 0 and not _pid_alive(current.pid):
            return "gone"
    return "refuse"


def _take_lease(run_dir: Path, fh: Any, flocked: Optional[bool], ttl_s: float, heartbeat_s: float) -> RunLease:
    lock = run_dir / LOCK_FILE
    for _ in range(5):  # a race lost to another taker re-reads who won, and refuses it
        current = read_lease(run_dir)
        now = time.time()
        verdict = _verdict(current, flocked, now)
        if verdict == "refuse":
            raise RunLockedError(_refusal(run_dir, lock, fh, current, ttl_s))
        lease = RunLease(run_dir, (current.seq if current else 0) + 1, ttl_s, heartbeat_s, flock=bool(flocked))
        if not atomic_create(lease.path, lease.record(now + ttl_s)):
            continue
        if verdict == "expired":
            logger.warning("taking over %s: the lease of %s expired at %s (%.0f s ago) without being renewed, so its "
                           "holder died or lost contact; its lock is ignored, and a write it still attempts is "
                           "refused by this run's fencing epoch", run_dir, current.holder(), _clock(current.expires_at),
                           now - current.expires_at)
        elif verdict == "gone":
            logger.info("%s: the lease of %s on this host is left from a run that ended without releasing it; "
                        "taking it", run_dir, current.holder())
        _prune(run_dir / LEASE_DIR, lease.seq)
        return lease
    raise RunLockedError(f"{run_dir} is being taken by other runs at the same time (lease {run_dir / LEASE_DIR}); "
                         f"wait for them to finish or use another run directory")


def _refusal(run_dir: Path, lock: Path, fh: Any, current: Optional[LeaseRecord], ttl_s: float) -> str:
    if current is not None and not current.released:
        return (f"{run_dir} is in use by a live run (lock {lock} held by {current.holder()}, its lease renewed "
                f"until {_clock(current.expires_at)}); wait for it to finish or use another run directory. A holder "
                f"that died is taken over once its lease expires ({ttl_s:g} s after its last renewal)")
    fh.seek(0)
    holder = fh.read().strip() or "unknown"
    return (f"{run_dir} is in use by a live run (lock {lock} held by pid {holder}); "
            f"wait for it to finish or use another run directory")


def _prune(folder: Path, newest: int) -> None:
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            m = _LEASE_NAME.match(name)
            if m and int(m.group(1)) <= newest - _LEASES_KEPT:
                with contextlib.suppress(OSError):
                    (folder / name).unlink()


def _clock(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
