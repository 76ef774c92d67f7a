"""Results: one parquet row per (experiment, cycle), and the learning-curve plot.

Rows are written by atomic replace and keyed by (experiment, cycle): re-running a cycle
after a crash replaces its row instead of adding a second one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from daal_ray.pool import atomic_write_table

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
    *[(c, pa.float64()) for c in STEP_COLUMNS],
    ("startup_s", pa.float64()),
    ("cycle_s", pa.float64()),
    ("config", pa.string()),
])


def read_results(path: str | Path) -> pa.Table:
    """The results table at ``path`` (a file, or a directory holding ``results.parquet``)."""
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_FILE
    if not p.exists():
        return SCHEMA.empty_table()
    return pq.read_table(p).cast(SCHEMA)


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


def curve_summary(table: pa.Table) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per strategy: labeled fractions, mean, std over seeds, and seed count per fraction."""
    out = {}
    rows = table.select(["strategy", "labeled_fraction", "value"]).to_pylist()
    for strategy in sorted({r["strategy"] for r in rows}):
        by_frac: dict[float, list[float]] = {}
        for r in rows:
            if r["strategy"] == strategy:
                by_frac.setdefault(round(r["labeled_fraction"], 4), []).append(r["value"])
        fr = np.array(sorted(by_frac))
        vals = [np.asarray(by_frac[f]) for f in fr]
        out[strategy] = (fr, np.array([v.mean() for v in vals]), np.array([v.std() for v in vals]),
                         np.array([len(v) for v in vals]))
    return out


def aulc(fractions: np.ndarray, values: np.ndarray) -> float:
    """Area under one learning curve, normalised by its fraction range (so it reads as a
    mean metric): trapezoids over the sorted labeled fractions."""
    order = np.argsort(fractions)
    f, v = np.asarray(fractions, float)[order], np.asarray(values, float)[order]
    if f.size < 2 or f[-1] == f[0]:
        return float(v.mean()) if v.size else float("nan")
    return float(np.sum((v[1:] + v[:-1]) / 2 * np.diff(f)) / (f[-1] - f[0]))


def aulc_summary(table: pa.Table) -> dict[str, tuple[float, float, int]]:
    """Per strategy: mean and std over seeds of each seed's AULC, and the seed count."""
    per: dict[str, list[float]] = {}
    rows = table.select(["strategy", "seed", "labeled_fraction", "value"]).to_pylist()
    for strategy, seed in sorted({(r["strategy"], r["seed"]) for r in rows}):
        mine = [r for r in rows if r["strategy"] == strategy and r["seed"] == seed]
        per.setdefault(strategy, []).append(aulc(np.array([r["labeled_fraction"] for r in mine]),
                                                 np.array([r["value"] for r in mine])))
    return {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in per.items()}


def format_table(table: pa.Table) -> str:
    """Metric at each labeled fraction per strategy, mean +- std over seeds, as text."""
    summary = curve_summary(table)
    if not summary:
        return "(no results)"
    metric = table["metric"][0].as_py()
    fracs = sorted({f for fr, *_ in summary.values() for f in fr})
    head = f"{'strategy':<14}" + "".join(f"{f * 100:>14.0f}%" for f in fracs)
    lines = [f"{metric} (mean +- std over seeds) at each labeled fraction", head]
    for strategy, (fr, mean, std, _) in summary.items():
        cells = {f: f"{100 * m:.2f} +- {100 * s:.2f}" for f, m, s in zip(fr, mean, std)}
        lines.append(f"{strategy:<14}" + "".join(f"{cells.get(f, '-'):>15}" for f in fracs))
    lines.append("")
    lines.append("area under the learning curve (mean +- std over seeds)")
    for strategy, (m, sd, n) in aulc_summary(table).items():
        lines.append(f"{strategy:<14}{100 * m:>10.2f} +- {100 * sd:.2f}  (n={n})")
    return "\n".join(lines)


def plot_learning_curves(table: pa.Table, out: str | Path, title: str = "") -> Path:
    """Metric vs labeled fraction per strategy, mean line with a +-1 std band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    summary = curve_summary(table)
    metric = table["metric"][0].as_py() if table.num_rows else "metric"
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for strategy, (fr, mean, std, n) in summary.items():
        ax.plot(100 * fr, 100 * mean, marker="o", ms=3.5, label=f"{strategy} (n={int(n.max())})")
        ax.fill_between(100 * fr, 100 * (mean - std), 100 * (mean + std), alpha=0.2)
    ax.set_xlabel("labeled samples (% of the training pool)")
    ax.set_ylabel(f"test {metric} (%)")
    ax.set_title(title or f"{metric} vs labeled fraction, mean +- std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
