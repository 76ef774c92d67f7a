"""Results: one parquet row per (experiment, cycle).

Rows are written by atomic replace and keyed by (experiment, cycle): re-running a cycle
after a crash replaces its row instead of adding a second one. Summaries, tables and
figures live in :mod:`daal_ray.report`.

Columns added after the first release carry a default, so older files still read: the
per-cycle diagnostics (:data:`DIAGNOSTIC_COLUMNS`: the redundancy of the batch selected at
that cycle and the informativeness of the strategy's score, see :mod:`daal_ray.diagnostics`)
read as NaN.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa

from daal_ray.atomic_io import atomic_write_table, read_table_once

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.parquet"
STEP_COLUMNS = ("train_s", "features_s", "acq_fit_s", "scoring_s", "selection_s", "overhead_s")
SCHEMA = pa.schema([
    ("experiment", pa.string()),
    ("strategy", pa.string()),
    ("dataset", pa.string()),
    ("seed", pa.int64()),
    ("budget", pa.int64()),
    ("cycle", pa.int64()),
    ("num_labeled", pa.int64()),
    ("labeled_fraction", pa.float64()),
    ("metric", pa.string()),
    ("value", pa.float64()),
    ("num_selected", pa.int64()),
    ("batch_cosine", pa.float64()),
    ("batch_class_entropy", pa.float64()),
    ("auroc_wrong", pa.float64()),
    ("spearman_loss", pa.float64()),
    ("spearman_entropy", pa.float64()),
    ("batch_labeled_distance", pa.float64()),
    *[(c, pa.float64()) for c in STEP_COLUMNS],
    ("startup_s", pa.float64()),
    ("cycle_s", pa.float64()),
    ("config", pa.string()),
])
# Value a column takes in files written before it existed (absent = null).
# Per-cycle diagnostics of the selected batch (daal_ray.diagnostics): its redundancy, and the
# informativeness of the strategy's score.
REDUNDANCY_COLUMNS = ("batch_cosine", "batch_class_entropy")
INFORMATIVENESS_COLUMNS = ("auroc_wrong", "spearman_loss", "spearman_entropy", "batch_labeled_distance")
DIAGNOSTIC_COLUMNS = REDUNDANCY_COLUMNS + INFORMATIVENESS_COLUMNS
COLUMN_DEFAULTS: dict[str, Any] = {c: float("nan") for c in DIAGNOSTIC_COLUMNS}


def conform(table: pa.Table) -> pa.Table:
    """``table`` in :data:`SCHEMA`: columns it lacks are added with their default, extra
    columns are dropped, types are cast."""
    n = table.num_rows
    cols = []
    for f in SCHEMA:
        if f.name in table.column_names:
            cols.append(table[f.name].cast(f.type))
        else:
            cols.append(pa.array([COLUMN_DEFAULTS.get(f.name)] * n, f.type))
    return pa.Table.from_arrays(cols, schema=SCHEMA)


def read_results(path: str | Path) -> pa.Table:
    """The results table at ``path`` (a file, or a directory holding ``results.parquet``)."""
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_FILE
    if not p.exists():
        return SCHEMA.empty_table()
    return conform(read_table_once(p))


def upsert_rows(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Insert or replace rows keyed by (experiment, cycle); returns the table written."""
    path = Path(path)
    new = pa.Table.from_pylist([{c: r.get(c) for c in SCHEMA.names} for r in rows], schema=SCHEMA)
    old = read_results(path)
    if old.num_rows:
        keys = {(r["experiment"], r["cycle"]) for r in new.select(["experiment", "cycle"]).to_pylist()}
        keep = [(e, c) not in keys for e, c in zip(old["experiment"].to_pylist(), old["cycle"].to_pylist())]
        old = old.filter(pa.array(keep, pa.bool_()))
        new = pa.concat_tables([old, new])
    new = new.sort_by([("experiment", "ascending"), ("cycle", "ascending")])
    atomic_write_table(new, path)
    return new


def combine(paths: Iterable[str | Path], out: str | Path) -> pa.Table:
    """Concatenate the results of several experiments into ``out``."""
    tables = [read_results(p) for p in paths]
    table = pa.concat_tables([t for t in tables if t.num_rows] or [SCHEMA.empty_table()])
    table = table.sort_by([("strategy", "ascending"), ("seed", "ascending"), ("cycle", "ascending")])
    atomic_write_table(table, Path(out))
    return table
