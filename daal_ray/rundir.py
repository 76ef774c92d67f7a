"""The run directory of one experiment: its lock, its identity and its saved config.

    RUN_DIR/
        .lock                 flock held while a run is live (hold_run_dir)
        config.json           the ExperimentConfig the run was started with (prepare_run_dir)
        pool_state.parquet    the ALDriver's PoolState, with .prev, the previous generation
        results.parquet       one row per cycle
        checkpoints/cycle_NNN/ the task model (and strategy nets) of each cycle

A re-run with the same config resumes; one whose science differs (anything but the
resources) is refused, so two experiments never share a pool state.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

from daal_ray.atomic_io import atomic_write_text, storage_errors
from daal_ray.config import ExperimentConfig
from daal_ray.errors import ConfigError, RunLockedError
from daal_ray.pool import STATE_FILE

__all__ = ["CONFIG_FILE", "LOCK_FILE", "STATE_FILE", "hold_run_dir", "prepare_run_dir", "run_id_of"]

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
# Fields that may change between a run and its resumption (resources, not the science).
_RESUMABLE_CHANGES = ("scale",)


def run_id_of(cfg: ExperimentConfig) -> str:
    """Identity of an experiment: its name plus a hash of everything but resources."""
    d = cfg.to_dict()
    for key in _RESUMABLE_CHANGES:
        d.pop(key, None)
    return f"{cfg.name}-{hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]}"


def prepare_run_dir(run_dir: Path, cfg: ExperimentConfig) -> None:
    """Create ``run_dir`` and save the config, or check it matches the saved one."""
    run_dir.mkdir(parents=True, exist_ok=True)
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



@contextlib.contextmanager
def hold_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` while an experiment runs in it.

    The lock is an ``flock`` on ``run_dir/.lock``: the kernel drops it when the holder
    dies, so a crashed run never blocks its own resumption, while a live one refuses a
    second run that would interleave writes to the same pool state.

    Raises:
        RunLockedError: naming the lock file and the pid that holds it.
    """
    path = run_dir / LOCK_FILE
    with storage_errors(path):
        fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise RunLockedError(f"{run_dir} is in use by a live run (lock {path} held by pid {holder}); "
                                 f"wait for it to finish or use another run directory") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fh.close()  # releases the lock
