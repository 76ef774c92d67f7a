"""The one durable writer: every file daal-ray replaces goes through here.

A write goes to a temporary file in the target's directory, is flushed and fsynced, then
renamed over the target, and the directory is fsynced so the rename itself survives a
power cut. A reader therefore sees the old file or the new one, never a torn one, and a
crash at any point leaves at most a stray ``.NAME.tmp-PID`` file, which is ignored.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
from pathlib import Path
from typing import BinaryIO, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from daal_ray.errors import StorageError

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_table", "atomic_write_text", "fsync_dir",
           "storage_errors"]

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


def _tmp_path(path: Path, suffix: str = "") -> Path:
    return path.with_name(f".{path.name}{suffix}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_write(path: str | Path, keep_previous: bool = False) -> Iterator[BinaryIO]:
    """Open a binary handle whose content replaces ``path`` atomically when the block ends.

    Nothing replaces ``path`` if the block raises. A full, read-only or forbidding file
    system raises :class:`~daal_ray.errors.StorageError` naming ``path``. With ``keep_previous`` the file being
    replaced is kept as ``NAME.prev`` (a hard link where the file system has them), so a
    reader can fall back one generation.
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
            if keep_previous and path.exists():
                prev = path.with_name(path.name + ".prev")
                prev_tmp = _tmp_path(prev)
                try:
                    os.link(path, prev_tmp)
                except OSError:  # file systems without hard links
                    shutil.copy2(path, prev_tmp)
                os.replace(prev_tmp, prev)
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):  # a read-only file system keeps even the stray
            if tmp.exists():
                tmp.unlink()
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes, keep_previous: bool = False) -> Path:
    """Replace ``path`` with ``data`` atomically and durably; returns the path."""
    with atomic_write(path, keep_previous) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, keep_previous: bool = False) -> Path:
    """Replace ``path`` with ``text`` (UTF-8) atomically and durably; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"), keep_previous)


def atomic_write_table(table: pa.Table, path: str | Path, keep_previous: bool = False) -> Path:
    """Replace ``path`` with ``table`` as parquet, atomically and durably; returns the path."""
    with atomic_write(path, keep_previous) as fh:
        pq.write_table(table, fh)
    return Path(path)


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
