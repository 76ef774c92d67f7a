"""The one durable writer: every file daal-ray replaces goes through here.

A write goes to a temporary file in the target's directory, is flushed and fsynced, then
renamed over the target, and the directory is fsynced so the rename itself survives a
power cut. A reader therefore sees the old file or the new one, never a torn one, and a
crash at any point leaves at most a stray ``.NAME.tmp-HOST-PID-RANDOM`` file, which is
ignored. The temporary name carries the host, the pid and a random part, so two writers
on different hosts that share the directory (and happen to share a pid) never write
through the same temporary file.

:func:`atomic_create` is the other primitive: it creates a file only if no file has the
name yet (a hard link of a complete temporary file, atomic on local file systems and NFS),
which is how fencing epochs and run-directory leases are claimed without a lock.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from daal_ray import faults
from daal_ray.errors import StorageError

__all__ = ["atomic_create", "atomic_write", "atomic_write_bytes", "atomic_write_table", "atomic_write_text",
           "file_generation", "fsync_dir", "storage_errors"]

# What a full, read-only or forbidding file system says; each is fixed outside the program.
_STORAGE_ERRNOS = {errno.ENOSPC: "the file system is full", errno.EDQUOT: "the disk quota is used up",
                   errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                   errno.EPERM: "permission denied"}
_STORAGE_TEXTS = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
                  "Read-only file system": errno.EROFS}


@contextlib.contextmanager
def storage_errors(path: Path) -> Iterator[None]:
    """Raise an ``OSError`` of a full, read-only or forbidding file system (also through
    pyarrow, which keeps only its text) as a :class:`StorageError` naming ``path``."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        code = exc.errno if exc.errno in _STORAGE_ERRNOS else next(
            (c for text, c in _STORAGE_TEXTS.items() if text in str(exc)), None)
        if code is None:
            raise
        raise StorageError(code, f"cannot write {path}: {_STORAGE_ERRNOS[code]} ({os.strerror(code)}); the file it "
                              f"replaces is unchanged. Free space or make {path.parent} writable, then re-run the "
                              f"same command: it resumes from the last committed state") from exc


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# File names are at most 255 bytes on the file systems a run directory lives on.
_NAME_MAX = 255
_HOST = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname() or "host")[:40]


def _tmp_path(path: Path, suffix: str = "") -> Path:
    """A temporary name beside ``path``, unique across hosts, processes and calls."""
    tail = f".tmp-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"
    head = f".{path.name}{suffix}"
    room = _NAME_MAX - len(tail.encode())
    if len(head.encode()) > room:  # a long name keeps its start; the tail keeps it unique
        head = head.encode()[:room].decode("utf-8", "ignore")
    return path.with_name(head + tail)


@contextlib.contextmanager
def atomic_write(path: str | Path, keep_previous: bool = False,
                 before_replace: Optional[Callable[[], None]] = None) -> Iterator[BinaryIO]:
    """Open a binary handle whose content replaces ``path`` atomically when the block ends.

    Nothing replaces ``path`` if the block raises. A full, read-only or forbidding file
    system raises :class:`~daal_ray.errors.StorageError` naming ``path``. With ``keep_previous`` the file being
    replaced is kept as ``NAME.prev`` (a hard link where the file system has them), so a
    reader can fall back one generation.

    Args:
        before_replace: called once the new content is durable, right before the rename;
            if it raises, nothing is replaced. A fencing check goes here, as late as it can,
            so a writer that lost the run while it wrote is still refused.
    """
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        with storage_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            if before_replace is not None:
                before_replace()
            if keep_previous and path.exists():
                prev = path.with_name(path.name + ".prev")
                prev_tmp = _tmp_path(prev)
                try:
                    os.link(path, prev_tmp)
                except OSError:  # file systems without hard links
                    shutil.copy2(path, prev_tmp)
                os.replace(prev_tmp, prev)
            faults.crash_point("write", path)  # fault tests: the new content complete, not renamed
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):  # a read-only file system keeps even the stray
            if tmp.exists():
                tmp.unlink()
    fsync_dir(path.parent)
    faults.crash_point("written", path)  # fault tests: renamed and durable


def atomic_create(path: str | Path, data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless a file of that name exists; True if created.

    The data is written to a temporary file and fsynced, then hard-linked to ``path``: the
    link fails if the name is taken, so of several writers (processes, hosts) racing for one
    name exactly one wins, and a reader never sees the file half written. Where the file
    system has no hard links, an exclusive create (``O_EXCL``) decides instead.

    Raises:
        StorageError: a full, read-only or forbidding file system, naming ``path``.
    """
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        with storage_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            faults.crash_point("create", path)  # fault tests: the content complete, not linked
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
                    raise
                if not _create_exclusive(path, data):  # no hard links here
                    return False
    finally:
        with contextlib.suppress(OSError):
            if tmp.exists():
                tmp.unlink()
    fsync_dir(path.parent)
    faults.crash_point("created", path)  # fault tests: created and durable
    return True


def _create_exclusive(path: Path, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return True


def atomic_write_bytes(path: str | Path, data: bytes, keep_previous: bool = False) -> Path:
    """Replace ``path`` with ``data`` atomically and durably; returns the path."""
    with atomic_write(path, keep_previous) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, keep_previous: bool = False) -> Path:
    """Replace ``path`` with ``text`` (UTF-8) atomically and durably; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"), keep_previous)


def atomic_write_table(table: pa.Table, path: str | Path, keep_previous: bool = False,
                       before_replace: Optional[Callable[[], None]] = None) -> Path:
    """Replace ``path`` with ``table`` as parquet, atomically and durably; returns the path.

    ``before_replace`` is as in :func:`atomic_write` (a fencing check)."""
    with atomic_write(path, keep_previous, before_replace) as fh:
        pq.write_table(table, fh)
    return Path(path)


def file_generation(path: str | Path) -> Optional[tuple[int, int, int]]:
    """What tells one generation of a file :func:`atomic_write` replaces from the next (for
    a watcher that rereads it only when it changed): its inode (each write renames a new
    file into place), modification time and size; None while it does not exist. The time
    alone can repeat over two writes on a file system with coarse timestamps (1 or 2 s on
    some network and older local ones), and a freed inode number can be reused at once."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def read_table_once(path: str | Path) -> pa.Table:
    """The parquet table at ``path``, read through ONE open handle.

    A writer replaces the file by renaming a new one over it (:func:`atomic_write`); a
    handle keeps reading the file it opened, so the table comes from one generation. Reading
    by path (``pq.read_table(path)``) may open it more than once (the footer, then the row
    groups) and mix two generations: ``OSError: Unexpected end of stream``.
    """
    with open(path, "rb") as fh:
        return pq.read_table(fh)


def set_aside_torn(path: str | Path) -> Path:
    """Rename a torn file to ``<name>.torn-<unix time>`` beside it (kept, not deleted); return the new path."""
    path = Path(path)
    torn = path.with_name(f"{path.name}.torn-{int(time.time())}")
    os.replace(path, torn)
    return torn
