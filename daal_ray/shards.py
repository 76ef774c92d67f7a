"""Parquet pool shards: finding them, checking their schema, and turning each batch into
validated NumPy columns (``sample_id``, ``labeled``, ``features``[, ``probs``]).

The per-batch functions run inside Ray Data's read and map workers, so this module imports
only NumPy, pyarrow and :mod:`daal_ray.errors` (no torch): a worker that only validates
shards stays small. Errors name the shard (Ray Data's ``path`` column).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from daal_ray.errors import DataError

Source = Union[str, Path, Sequence[Union[str, Path]]]
PATH_COLUMN = "path"  # Ray Data's include_paths column: names the shard in every error


def shard_paths(source: Source) -> list[str]:
    """The parquet files of ``source``: a folder (every ``*.parquet`` below it, sorted), a
    file, or a list of files.

    Raises:
        DataError: nothing to read.
    """
    items = [source] if isinstance(source, (str, Path)) else list(source)
    out: list[str] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            out += sorted(str(f) for f in p.rglob("*.parquet") if f.is_file())
        elif p.is_file():
            out.append(str(p))
        else:
            raise DataError(f"pool shard source {p} does not exist")
    if not out:
        raise DataError(f"no parquet shards under {source}; expected *.parquet files")
    return out


@dataclass(frozen=True)
class PoolSchema:
    """What every shard of a pool holds: its feature width and optional columns."""

    dim: int
    has_label: bool
    has_probs: bool
    num_rows: int


def _vector_width(tp: pa.DataType) -> Optional[int]:
    """Fixed width of a vector column type, -1 for variable-length lists, None if not a vector."""
    if pa.types.is_fixed_size_list(tp):
        return tp.list_size
    if pa.types.is_list(tp) or pa.types.is_large_list(tp):
        return -1
    if isinstance(tp, pa.ExtensionType) and hasattr(tp, "shape"):
        shape = tuple(tp.shape)
        return int(np.prod(shape)) if shape and all(s is not None and s > 0 for s in shape) else -1
    return None


def _footer(path: str) -> tuple[pq.FileMetaData, pa.Schema]:
    """The parquet footer of ``path`` and its arrow schema; ``DataError`` naming the shard."""
    try:
        meta = pq.read_metadata(path)
        return meta, meta.schema.to_arrow_schema()
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"shard {path} is not a readable parquet file: {exc}") from exc


def inspect_feature_shards(paths: Sequence[str]) -> PoolSchema:
    """Check every shard's schema (footers only, no data) and find the feature width.

    Raises:
        DataError: a shard lacks ``sample_id`` or ``features``, has them with the wrong
            type, or disagrees with the other shards; named by path.
    """
    dim, has_label, has_probs, rows = None, None, None, 0
    for path in paths:
        meta, schema = _footer(path)
        rows += meta.num_rows
        missing = [c for c in ("sample_id", "features") if c not in schema.names]
        if missing:
            raise DataError(f"shard {path} lacks column(s) {', '.join(missing)}; a feature shard needs sample_id "
                            f"(integer) and features (a float vector per row); it has {', '.join(schema.names)}")
        if not pa.types.is_integer(schema.field("sample_id").type):
            raise DataError(f"shard {path}: sample_id must be an integer column, got {schema.field('sample_id').type}")
        width = _vector_width(schema.field("features").type)
        if width is None:
            raise DataError(f"shard {path}: features must be a list or tensor column of floats, "
                            f"got {schema.field('features').type}")
        if width == -1 and meta.num_rows:
            first = pq.ParquetFile(path).iter_batches(batch_size=1, columns=["features"])
            value = next(first).column(0)[0].as_py()
            width = len(value) if value is not None else -1
        flags = ("label" in schema.names, "probs" in schema.names)
        if has_label is None:
            has_label, has_probs = flags
        elif flags != (has_label, has_probs):
            raise DataError(f"shard {path} has {'a' if flags[0] else 'no'} label and {'a' if flags[1] else 'no'} "
                            f"probs column, unlike the shards before it; every shard needs the same columns")
        if width > 0:
            if dim is not None and width != dim:
                raise DataError(f"shard {path} has {width}-d features, the shards before it {dim}-d")
            dim = width
    if dim is None:
        raise DataError(f"the shards of {paths[0]} hold no rows")
    return PoolSchema(dim=dim, has_label=bool(has_label), has_probs=bool(has_probs), num_rows=rows)


def inspect_id_shards(paths: Sequence[str]) -> int:
    """Check that every shard has an integer ``sample_id``; return the row count."""
    rows = 0
    for path in paths:
        meta, schema = _footer(path)
        if "sample_id" not in schema.names or not pa.types.is_integer(schema.field("sample_id").type):
            raise DataError(f"shard {path} needs an integer sample_id column; it has {', '.join(schema.names)}")
        rows += meta.num_rows
    return rows


# ====================================================================== per-batch preparation
def _shard_of(batch: pa.Table, rows: np.ndarray) -> str:
    if PATH_COLUMN not in batch.column_names or rows.size == 0:
        return "a shard"
    return f"shard {batch.column(PATH_COLUMN)[int(rows[0])].as_py()}"


def _ids_of(batch: pa.Table) -> np.ndarray:
    col = batch.column("sample_id")
    if col.null_count:
        rows = np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))
        raise DataError(f"{_shard_of(batch, rows)}: sample_id is null in {rows.size} row(s)")
    ids = col.to_numpy().astype(np.int64, copy=False)
    srt = np.sort(ids)
    dup = srt[1:][srt[1:] == srt[:-1]]
    if dup.size:
        rows = np.flatnonzero(np.isin(ids, dup))
        raise DataError(f"{_shard_of(batch, rows)}: duplicate sample ids {np.unique(dup)[:5].tolist()}; "
                        f"every sample needs one row")
    return ids


def _vectors_of(batch: pa.Table, name: str, dim: Optional[int]) -> np.ndarray:
    """A vector column as float32 ``[n, dim]``; DataError on nulls, ragged rows, NaN or inf."""
    col = batch.column(name).combine_chunks()
    n = len(col)
    if isinstance(col.type, pa.ExtensionType):
        x = np.asarray(col.to_numpy(zero_copy_only=False))
        if x.dtype == object:
            raise DataError(f"{_shard_of(batch, np.arange(n))}: {name} rows have different lengths")
        x = x.reshape(n, -1)
    else:
        if col.null_count:
            rows = np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))
            raise DataError(f"{_shard_of(batch, rows)}: {name} is null in {rows.size} row(s), "
                            f"e.g. sample ids {_ids_at(batch, rows)}")
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        width = dim if dim is not None else (int(lengths[0]) if n else 0)
        bad = np.flatnonzero(lengths != width)
        if bad.size:
            raise DataError(f"{_shard_of(batch, bad)}: {name} has ragged rows (lengths {sorted(set(lengths[bad].tolist()))[:5]}"
                            f" where {width} was expected), e.g. sample ids {_ids_at(batch, bad)}")
        values = pc.list_flatten(col)
        if values.null_count:
            raise DataError(f"{_shard_of(batch, np.arange(n))}: {name} holds null values")
        x = values.to_numpy(zero_copy_only=False).reshape(n, width)
    if dim is not None and x.shape[1] != dim:
        raise DataError(f"{_shard_of(batch, np.arange(n))}: {name} is {x.shape[1]}-d, expected {dim}-d")
    x = x.astype(np.float32, copy=False)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise DataError(f"{_shard_of(batch, rows)}: {name} is NaN or infinite in {rows.size} row(s), "
                        f"e.g. sample ids {_ids_at(batch, rows)}")
    return x


def _ids_at(batch: pa.Table, rows: np.ndarray) -> list:
    return batch.column("sample_id").take(pa.array(rows[:5])).to_pylist()


def labeled_flags(ids: np.ndarray, labeled_ids: Optional[np.ndarray]) -> np.ndarray:
    """``ids`` in the sorted array ``labeled_ids``: a binary search per id, no pool-sized set."""
    if labeled_ids is None or labeled_ids.size == 0:
        return np.zeros(len(ids), dtype=bool)
    pos = np.minimum(np.searchsorted(labeled_ids, ids), labeled_ids.size - 1)
    return labeled_ids[pos] == ids


def prepare_feature_batch(batch: pa.Table, dim: int, labeled_ids: Optional[np.ndarray],
                          use_label: bool, probs: bool) -> dict[str, np.ndarray]:
    """Ray Data body: one validated batch of a feature shard as ``{sample_id, labeled,
    features[, probs]}``. Labeled rows are those in ``labeled_ids`` or, without it, those
    whose ``label`` is not null (``use_label``)."""
    ids = _ids_of(batch)
    if labeled_ids is not None:
        labeled = labeled_flags(ids, labeled_ids)
    elif use_label:
        labeled = batch.column("label").is_valid().to_numpy(zero_copy_only=False)
    else:
        labeled = np.zeros(ids.size, dtype=bool)
    out = {"sample_id": ids, "labeled": labeled, "features": _vectors_of(batch, "features", dim)}
    if probs:
        out["probs"] = _vectors_of(batch, "probs", None)
    return out


def prepare_id_batch(batch: pa.Table, labeled_ids: Optional[np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data body: one validated batch of an id shard as ``{sample_id, labeled}``."""
    ids = _ids_of(batch)
    return {"sample_id": ids, "labeled": labeled_flags(ids, labeled_ids)}


def keep_ids(batch: dict[str, np.ndarray], ids: np.ndarray) -> dict[str, np.ndarray]:
    """Ray Data body: the rows of ``batch`` whose ``sample_id`` is in the sorted ``ids``."""
    mask = labeled_flags(np.asarray(batch["sample_id"], dtype=np.int64), ids)
    return {name: np.asarray(col)[mask] for name, col in batch.items()}
