"""Exceptions raised by daal-ray.

Every error a user can cause (bad config, bad data, a foreign state file) is a
:class:`DaalRayError` whose message names the thing to fix, so the CLI can print it
without a traceback.
"""

from __future__ import annotations


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
