"""Exceptions raised by daal-ray.

Every error a user can cause (bad config, bad data, a foreign state file) is a
:class:`DaalRayError` whose message names the thing to fix, so the CLI can print it
without a traceback.
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")


class DaalRayError(Exception):
    """Base class of every error daal-ray raises on purpose."""


class ConfigError(DaalRayError, ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


class DataError(DaalRayError, ValueError):
    """A dataset is missing, unreadable or inconsistent."""


class PoolStateError(DaalRayError):
    """A pool-state file is corrupt, foreign, or an operation would break an invariant."""


class RunLockedError(DaalRayError):
    """Another live process holds the run directory."""


class StaleWriterError(DaalRayError):
    """A writer whose fencing epoch is older than the run's newest one tried to replace a
    file: another writer took the run over (a restarted ALDriver, or a retried run after
    this one's lease expired), so the stale one is refused and the newer file stays."""


class StorageError(DaalRayError, OSError):
    """A file could not be written: its file system is full, read-only or refuses us. The
    file being replaced is unchanged, so a re-run after the fix resumes from it."""


def find_error(exc: BaseException) -> BaseException:
    """The :class:`DaalRayError` inside ``exc``'s wrappers, or ``exc`` itself if there is none.

    Ray wraps an exception raised in a task, actor or Train worker (``RayTaskError``,
    ``TrainingFailedError``, worker-failure maps); users should see the message that names
    the fix, not the wrapper. Causes, contexts, ``cause`` attributes, ``worker_failures`` /
    ``errors`` collections and ``as_instanceof_cause`` are all searched.
    """
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen or e is None:
            continue
        seen.add(id(e))
        if isinstance(e, DaalRayError):
            return e
        cause = getattr(e, "cause", None)
        stack.extend([e.__cause__, e.__context__, cause] if isinstance(cause, BaseException)
                     else [e.__cause__, e.__context__])
        for attr in ("worker_failures", "errors"):
            val = getattr(e, attr, None)
            if isinstance(val, dict):
                stack.extend(v for v in val.values() if isinstance(v, BaseException))
            elif isinstance(val, (list, tuple)):
                stack.extend(v for v in val if isinstance(v, BaseException))
        if hasattr(e, "as_instanceof_cause"):
            try:
                stack.append(e.as_instanceof_cause())
            except Exception:
                pass
    return exc


def from_text(exc: BaseException) -> Optional[DaalRayError]:
    """Rebuild a daal-ray error from the text of ``exc``: Ray Data keeps only the text of
    an exception raised in a UDF (``... daal_ray.errors.DataError: message``)."""
    found = re.search(r"daal_ray\.errors\.(\w+): (.+)", str(exc))
    cls = globals().get(found.group(1)) if found else None
    if isinstance(cls, type) and issubclass(cls, DaalRayError):
        return cls(found.group(2).strip())
    return None


def reraise_unwrapped(batches: Iterable[T]) -> Iterator[T]:
    """``batches``, with a daal-ray error raised in a Ray worker re-raised as itself (not
    inside Ray's wrappers), so its message reaches the user."""
    try:
        yield from batches
    except Exception as exc:
        inner = find_error(exc)
        if inner is not exc:
            raise inner from None
        rebuilt = from_text(exc)
        if rebuilt is not None:
            raise rebuilt from None
        raise
