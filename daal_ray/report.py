"""Reports of a run directory: the paper's figures, tables and batch-redundancy diagnostics.

    daal-ray report runs/sweep              # figures + report.txt into runs/sweep/report/

What is drawn and printed, per (dataset, budget) group of experiments:

* learning curves, mean +- std over seeds (the paper's Fig. 3): ``learning_curves.png``;
* one panel per per-cycle budget (Fig. 5): ``budget_panels.png``;
* the area under the learning curve and the final metric per strategy variant as bars with
  std error bars (Fig. 6, ablations): ``ablation_bars.png``;
* the redundancy of each selected batch, mean pairwise cosine similarity of its task-model
  features and the entropy of its classes, against the labeled fraction (the paper's
  overlapping problem): ``batch_redundancy.png``;
* the informativeness of each cycle's score (AUROC for the model's errors, rank
  correlation with its loss and with predictive entropy) and how far each batch lies from
  the labeled set (:mod:`daal_ray.diagnostics`): ``informativeness.png``;
* the pairwise win/tie/loss matrix of the strategies over every group (Luth et al. 2023):
  ``win_tie_loss.png``;
* ``report.txt``: the metric at each labeled fraction, AULC, each strategy's paired
  difference against the reference (random) over seeds with the p-values of a paired
  t-test and a Wilcoxon signed-rank test and a plain verdict, the mean redundancy and
  informativeness, and the win/tie/loss matrix.

A *variant* is a strategy plus the params that differ between the experiments of that
strategy in the table (``daal[use_rdis=False]``), so ablations of one strategy get one
curve and one bar each. Standard deviations are over seeds, population form (ddof=0).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa
from scipy import stats

from daal_ray.acquisition import get_strategy_class
from daal_ray.atomic_io import atomic_write, atomic_write_text
from daal_ray.errors import ConfigError
from daal_ray.results import INFORMATIVENESS_COLUMNS, RESULTS_FILE, SCHEMA, combine, conform, read_results

logger = logging.getLogger(__name__)

REPORT_DIR = "report"
FRACTION_DECIMALS = 4


# ====================================================================== loading and grouping
def load_run(run_dir: str | Path) -> pa.Table:
    """Every results row under ``run_dir``.

    The experiments' own ``*/results.parquet`` are read when present (they are current
    even while a sweep runs or after it was killed) and combined into
    ``run_dir/results.parquet``; otherwise that file (or ``run_dir`` itself, a parquet file)
    is read.
    """
    run_dir = Path(run_dir)
    if run_dir.is_file():
        return read_results(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} does not exist; pass the --run-dir of a run or sweep")
    parts = sorted(p for p in run_dir.glob(f"*/{RESULTS_FILE}") if p.parent.name != REPORT_DIR)
    if parts:
        return combine(parts, run_dir / RESULTS_FILE)
    return read_results(run_dir)


def _params_of(config_json: Optional[str]) -> dict[str, Any]:
    if not config_json:
        return {}
    try:
        return dict(json.loads(config_json).get("acquisition", {}).get("params", {}))
    except (ValueError, AttributeError):
        return {}


def _default_params(strategy: str) -> dict[str, Any]:
    """The strategy's default params, so a param left out and one set to its default match."""
    try:
        return get_strategy_class(strategy).Params().to_dict()
    except Exception:  # a strategy no longer registered: compare the params as recorded
        return {}


def variant_labels(table: pa.Table) -> list[str]:
    """One label per row: the strategy, plus the params that differ between the rows of
    that strategy (sorted by name), e.g. ``daal[use_rdis=False]``."""
    strategies = table["strategy"].to_pylist()
    configs = table["config"].to_pylist() if "config" in table.column_names else [None] * table.num_rows
    defaults = {s: _default_params(s) for s in set(strategies)}
    params = [{**defaults[s], **_params_of(c)} for s, c in zip(strategies, configs)]
    varying: dict[str, list[str]] = {}
    for s in set(strategies):
        mine = [p for p, t in zip(params, strategies) if t == s]
        keys = sorted({k for p in mine for k in p})
        varying[s] = [k for k in keys if len({json.dumps(p.get(k), sort_keys=True) for p in mine}) > 1]
    labels = []
    for s, p in zip(strategies, params):
        keys = varying[s]
        labels.append(f"{s}[{','.join(f'{k}={p.get(k)}' for k in keys)}]" if keys else s)
    return labels


def _records(table: pa.Table) -> list[dict[str, Any]]:
    """Rows as dicts with a ``variant`` label and a rounded fraction."""
    rows = table.to_pylist()
    for r, label in zip(rows, variant_labels(table)):
        r["variant"] = label
        r["frac"] = round(r["labeled_fraction"], FRACTION_DECIMALS)
    return rows


def _order(variants: set[str], reference: str = "random") -> list[str]:
    """Variants sorted by name, the reference first."""
    return sorted(variants, key=lambda v: (v != reference, v))


def groups(table: pa.Table) -> list[tuple[tuple[str, int], pa.Table]]:
    """The table split by (dataset, per-cycle budget), sorted."""
    if not table.num_rows:
        return []
    keys = list(zip(table["dataset"].to_pylist(), table["budget"].to_pylist()))
    out = []
    for key in sorted(set(keys), key=lambda k: (str(k[0]), k[1] or 0)):
        mask = pa.array([k == key for k in keys], pa.bool_())
        out.append((key, table.filter(mask)))
    return out


# ====================================================================== summaries
def curve_summary(table: pa.Table) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per variant: labeled fractions, mean, std over seeds, and seed count per fraction."""
    out = {}
    rows = _records(table)
    for variant in _order({r["variant"] for r in rows}):
        by_frac: dict[float, list[float]] = {}
        for r in rows:
            if r["variant"] == variant:
                by_frac.setdefault(r["frac"], []).append(r["value"])
        fr = np.array(sorted(by_frac))
        vals = [np.asarray(by_frac[f], float) for f in fr]
        out[variant] = (fr, np.array([v.mean() for v in vals]), np.array([v.std() for v in vals]),
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


def per_seed(table: pa.Table) -> dict[str, dict[int, tuple[float, float]]]:
    """Per variant and seed: ``(AULC, metric at the largest labeled fraction)``."""
    return _per_seed(_records(table))


def _per_seed(rows: list[dict[str, Any]]) -> dict[str, dict[int, tuple[float, float]]]:
    out: dict[str, dict[int, tuple[float, float]]] = {}
    for variant, seed in sorted({(r["variant"], r["seed"]) for r in rows}):
        mine = sorted((r for r in rows if r["variant"] == variant and r["seed"] == seed), key=lambda r: r["frac"])
        fr = np.array([r["labeled_fraction"] for r in mine])
        val = np.array([r["value"] for r in mine])
        out.setdefault(variant, {})[seed] = (aulc(fr, val), float(val[-1]))
    return out


def aulc_summary(table: pa.Table) -> dict[str, tuple[float, float, int]]:
    """Per variant: mean and std over seeds of each seed's AULC, and the seed count."""
    out = {}
    for variant, seeds in per_seed(table).items():
        a = np.array([v[0] for v in seeds.values()])
        out[variant] = (float(a.mean()), float(a.std()), int(a.size))
    return {k: out[k] for k in _order(set(out))}


@dataclass(frozen=True)
class PairedDifference:
    """One variant minus the reference, seed by seed (only seeds both have).

    Attributes:
        aulc_mean, aulc_std: mean and std over seeds of the per-seed AULC difference.
        final_mean, final_std: the same for the metric at the largest labeled fraction.
        wins: seeds where the variant's AULC is higher than the reference's.
        n: the number of paired seeds.
        p_t: two-sided p-value of the paired t-test on the per-seed AULCs (NaN below 2 seeds).
        p_wilcoxon: two-sided p-value of the Wilcoxon signed-rank test on them (exact for
            small n; NaN below 2 seeds or when every difference is 0).
    """

    aulc_mean: float
    aulc_std: float
    final_mean: float
    final_std: float
    wins: int
    n: int
    p_t: float = float("nan")
    p_wilcoxon: float = float("nan")


def paired_tests(diffs: np.ndarray) -> tuple[float, float]:
    """Two-sided p-values of the paired t-test and the Wilcoxon signed-rank test on the
    per-seed differences ``diffs``; NaN where a test is undefined (fewer than 2 seeds, or
    no spread)."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size < 2:
        return float("nan"), float("nan")
    sd = d.std(ddof=1)
    p_t = float(2.0 * stats.t.sf(abs(d.mean()) / (sd / math.sqrt(d.size)), df=d.size - 1)) if sd > 0 else float("nan")
    if np.all(d == 0):
        return p_t, float("nan")
    try:
        p_w = float(stats.wilcoxon(d, alternative="two-sided").pvalue)
    except ValueError:
        p_w = float("nan")
    return p_t, p_w


def paired_differences(table: pa.Table, reference: str = "random") -> dict[str, PairedDifference]:
    """Each variant against ``reference`` over the seeds both ran (same initial pool)."""
    seeds = per_seed(table)
    if reference not in seeds:
        return {}
    ref = seeds[reference]
    out = {}
    for variant in _order(set(seeds)):
        if variant == reference:
            continue
        common = sorted(set(seeds[variant]) & set(ref))
        if not common:
            continue
        da = np.array([seeds[variant][s][0] - ref[s][0] for s in common])
        dfin = np.array([seeds[variant][s][1] - ref[s][1] for s in common])
        out[variant] = PairedDifference(float(da.mean()), float(da.std()), float(dfin.mean()), float(dfin.std()),
                                        int((da > 0).sum()), len(common), *paired_tests(da))
    return out


def win_tie_loss(table: pa.Table, alpha: float = 0.05) -> tuple[list[str], np.ndarray]:
    """Pairwise comparison of every two variants (Luth et al. 2023), over every (dataset,
    budget) group where both ran at least 2 common seeds: ``A`` wins against ``B`` in a
    group when its per-seed AULC is higher by a paired t-test at ``alpha``, loses when it
    is lower, and ties otherwise.

    Returns:
        ``(variants, counts)``: ``counts[i, j] = (wins, ties, losses)`` of variant ``i``
        against ``j``, summed over the groups.
    """
    rows = _records(table)  # variants labelled over the whole table, so every group names them alike
    variants = _order({r["variant"] for r in rows})
    index = {v: i for i, v in enumerate(variants)}
    counts = np.zeros((len(variants), len(variants), 3), dtype=np.int64)
    for key in sorted({(r["dataset"], r["budget"]) for r in rows}, key=lambda k: (str(k[0]), k[1] or 0)):
        seeds = _per_seed([r for r in rows if (r["dataset"], r["budget"]) == key])
        for a in seeds:
            for b in seeds:
                common = sorted(set(seeds[a]) & set(seeds[b]))
                if a == b or len(common) < 2:
                    continue
                d = np.array([seeds[a][s][0] - seeds[b][s][0] for s in common])
                p_t, _ = paired_tests(d)
                outcome = 1 if not p_t < alpha else (0 if d.mean() > 0 else 2)
                counts[index[a], index[b], outcome] += 1
    return variants, counts


def diagnostics_summary(table: pa.Table) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Per variant and informativeness column: mean and std over every selected batch
    (cycles and seeds) that has the value, and their number."""
    rows = [r for r in _records(table) if r.get("num_selected")]
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    for variant in _order({r["variant"] for r in rows}):
        for col in INFORMATIVENESS_COLUMNS:
            v = np.array([r[col] for r in rows if r["variant"] == variant and r.get(col) is not None], float)
            v = v[np.isfinite(v)]
            out.setdefault(variant, {})[col] = (float(v.mean()) if v.size else float("nan"),
                                                float(v.std()) if v.size else float("nan"), int(v.size))
    return out


def redundancy_summary(table: pa.Table) -> dict[str, tuple[float, float, float, float, int]]:
    """Per variant: mean and std of ``batch_cosine`` and ``batch_class_entropy`` over every
    selected batch (cycles and seeds) that has them, and the number of batches."""
    rows = [r for r in _records(table) if r.get("num_selected") and r.get("batch_cosine") is not None
            and math.isfinite(r["batch_cosine"])]
    out = {}
    for variant in _order({r["variant"] for r in rows}):
        c = np.array([r["batch_cosine"] for r in rows if r["variant"] == variant])
        e = np.array([r["batch_class_entropy"] for r in rows if r["variant"] == variant], float)
        e = e[np.isfinite(e)]
        out[variant] = (float(c.mean()), float(c.std()), float(e.mean()) if e.size else float("nan"),
                        float(e.std()) if e.size else float("nan"), int(c.size))
    return out


# ====================================================================== text
def _pct(x: float, sign: bool = False) -> str:
    return "nan" if not math.isfinite(x) else (f"{100 * x:+.2f}" if sign else f"{100 * x:.2f}")


def format_table(table: pa.Table) -> str:
    """Metric at each labeled fraction per variant, mean +- std over seeds, and AULC, as text."""
    summary = curve_summary(table)
    if not summary:
        return "(no results)"
    metric = table["metric"][0].as_py()
    fracs = sorted({f for fr, *_ in summary.values() for f in fr})
    width = max(14, 2 + max(map(len, summary)))
    # Whole percents print as such; otherwise one decimal for every column (7.5%, 12.5%).
    decimals = 0 if all(abs(round(f * 100) - f * 100) < 0.05 for f in fracs) else 1
    head = f"{'strategy':<{width}}" + "".join(f"{f * 100:>14.{decimals}f}%" for f in fracs)
    lines = [f"{metric} (mean +- std over seeds) at each labeled fraction", head]
    for variant, (fr, mean, std, _) in summary.items():
        cells = {f: f"{100 * m:.2f} +- {100 * s:.2f}" for f, m, s in zip(fr, mean, std)}
        lines.append(f"{variant:<{width}}" + "".join(f"{cells.get(f, '-'):>15}" for f in fracs))
    lines.append("")
    lines.append("area under the learning curve (mean +- std over seeds)")
    for variant, (m, sd, n) in aulc_summary(table).items():
        lines.append(f"{variant:<{width}}{100 * m:>10.2f} +- {100 * sd:.2f}  (n={n})")
    return "\n".join(lines)


def format_paired(table: pa.Table, reference: str = "random") -> str:
    """Each variant minus ``reference``, seed by seed, in metric points."""
    diffs = paired_differences(table, reference)
    if not diffs:
        return f"(no paired seeds against {reference})"
    width = max(14, 2 + max(map(len, diffs)))
    lines = [f"paired difference against {reference} over seeds (mean +- std of per-seed differences, points; "
             f"p: two-sided paired t-test and Wilcoxon signed-rank on the AULCs)",
             f"{'strategy':<{width}}{'AULC':>18}{'final':>18}{'AULC wins':>11}{'p (t)':>9}{'p (W)':>9}  verdict"]
    for variant, d in diffs.items():
        lines.append(f"{variant:<{width}}{_pct(d.aulc_mean, True) + ' +- ' + _pct(d.aulc_std):>18}"
                     f"{_pct(d.final_mean, True) + ' +- ' + _pct(d.final_std):>18}{f'{d.wins}/{d.n}':>11}"
                     f"{_p(d.p_t):>9}{_p(d.p_wilcoxon):>9}  {_verdict(d, reference)}")
    return "\n".join(lines)


def _p(p: float) -> str:
    return "-" if not math.isfinite(p) else (f"{p:.3f}" if p >= 0.001 else "<0.001")


def _verdict(d: PairedDifference, reference: str) -> str:
    """Plain words: better or worse than the reference only where the t-test says so at 5%."""
    if d.n < 2:
        return f"too few seeds to tell ({d.n})"
    if not math.isfinite(d.p_t):
        return f"no spread over {d.n} seeds: the test is undefined"
    if d.p_t >= 0.05:
        return f"not distinguishable from {reference}"
    return f"{'beats' if d.aulc_mean > 0 else 'trails'} {reference}"


def format_win_tie_loss(table: pa.Table, alpha: float = 0.05) -> str:
    """The pairwise win/tie/loss matrix over every group (row against column)."""
    variants, counts = win_tie_loss(table, alpha)
    if not counts.sum():
        return "(no pair of strategies with 2 or more common seeds: no win/tie/loss matrix)"
    width = max(14, 2 + max(map(len, variants)))
    cell = max(9, max(len(v) for v in variants) + 1)
    lines = [f"pairwise wins/ties/losses of the row against the column over (dataset, budget) groups "
             f"(paired t-test on per-seed AULC at {alpha:g})",
             " " * width + "".join(f"{v:>{cell}}" for v in variants) + f"{'total':>{cell + 2}}"]
    for i, v in enumerate(variants):
        cells = ["-" if i == j else "/".join(map(str, counts[i, j])) for j in range(len(variants))]
        total = "/".join(map(str, counts[i].sum(axis=0)))
        lines.append(f"{v:<{width}}" + "".join(f"{c:>{cell}}" for c in cells) + f"{total:>{cell + 2}}")
    return "\n".join(lines)


def format_diagnostics(table: pa.Table) -> str:
    """Mean informativeness of each variant's score, over its selected batches."""
    summary = diagnostics_summary(table)
    if not summary or not any(n for cols in summary.values() for _, _, n in cols.values()):
        return "(no informativeness diagnostics recorded)"
    width = max(14, 2 + max(map(len, summary)))
    names = {"auroc_wrong": "AUROC wrong", "spearman_loss": "rho loss", "spearman_entropy": "rho entropy",
             "batch_labeled_distance": "dist labeled"}
    lines = ["informativeness of the score on unlabeled samples (mean +- std over batches; AUROC for 'the model "
             "misclassifies it', 0.5 = no information; Spearman rho with the model's loss and predictive entropy; "
             "mean distance of the batch to the labeled set in task features)",
             f"{'strategy':<{width}}" + "".join(f"{names[c]:>18}" for c in INFORMATIVENESS_COLUMNS)]
    for variant, cols in summary.items():
        lines.append(f"{variant:<{width}}" + "".join(
            f"{(f'{m:.3f} +- {sd:.3f}' if n else '-'):>18}" for m, sd, n in (cols[c] for c in INFORMATIVENESS_COLUMNS)))
    return "\n".join(lines)


def format_redundancy(table: pa.Table) -> str:
    """Mean redundancy of the selected batches per variant."""
    summary = redundancy_summary(table)
    if not summary:
        return "(no batch redundancy recorded)"
    width = max(14, 2 + max(map(len, summary)))
    lines = ["selected-batch redundancy (mean +- std over batches; cosine: higher = more alike; "
             "class entropy: 1 = classes balanced)",
             f"{'strategy':<{width}}{'cosine':>18}{'class entropy':>18}{'batches':>9}"]
    for variant, (c, cs, e, es, n) in summary.items():
        lines.append(f"{variant:<{width}}{f'{c:.3f} +- {cs:.3f}':>18}{f'{e:.3f} +- {es:.3f}':>18}{n:>9}")
    return "\n".join(lines)


def _group_title(key: tuple[str, int], table: pa.Table) -> str:
    dataset, budget = key
    n = table.num_rows and len(set(table["seed"].to_pylist()))
    return f"{dataset}, budget {budget} per cycle, {n} seed(s)"


def format_report(table: pa.Table, reference: str = "random") -> str:
    """The whole text report: one block per (dataset, budget)."""
    if not table.num_rows:
        return "(no results)"
    blocks = []
    for key, sub in groups(table):
        title = _group_title(key, sub)
        blocks.append("\n\n".join([f"== {title} ==", format_table(sub), format_paired(sub, reference),
                                   format_redundancy(sub), format_diagnostics(sub)]))
    blocks.append("== all groups ==\n\n" + format_win_tie_loss(table))
    return "\n\n\n".join(blocks)


# ====================================================================== figures
def _pyplot():
    import matplotlib  # noqa: PLC0415  (matplotlib is heavy and only figures need it; the backend is chosen before pyplot loads)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  (matplotlib is heavy and only figures need it)

    return plt


def _colors(variants: Sequence[str]) -> dict[str, Any]:
    cmap = _pyplot().get_cmap("tab10")
    return {v: cmap(i % 10) for i, v in enumerate(variants)}


def _metric(table: pa.Table) -> str:
    return table["metric"][0].as_py() if table.num_rows else "metric"


def _draw_curves(ax: Any, table: pa.Table, colors: dict[str, Any]) -> None:
    for variant, (fr, mean, std, n) in curve_summary(table).items():
        c = colors.get(variant)
        ax.plot(100 * fr, 100 * mean, marker="o", ms=3.5, color=c, label=f"{variant} (n={int(n.max())})")
        ax.fill_between(100 * fr, 100 * (mean - std), 100 * (mean + std), color=c, alpha=0.2, linewidth=0)
    ax.set_xlabel("labeled samples (% of the training pool)")
    ax.set_ylabel(f"test {_metric(table)} (%)")
    ax.grid(alpha=0.3)


def _save(fig: Any, out: Path) -> Path:
    fig.tight_layout()
    with atomic_write(out) as fh:
        fig.savefig(fh, format=out.suffix.lstrip(".") or "png")
    _pyplot().close(fig)
    return out


def plot_learning_curves(table: pa.Table, out: str | Path, title: str = "") -> Path:
    """Metric vs labeled fraction per variant, mean line with a +-1 std band over seeds,
    one panel per dataset (the paper's Fig. 3). With several budgets, the default one
    (the smallest) is drawn; :func:`plot_budget_panels` draws them all."""
    plt = _pyplot()
    parts = groups(table)
    by_dataset: dict[str, pa.Table] = {}
    for (dataset, _), sub in parts:
        by_dataset.setdefault(dataset, sub)  # smallest budget first
    n = max(1, len(by_dataset))
    fig, axes = plt.subplots(1, n, figsize=(6.4 * n, 4.2), dpi=120, squeeze=False)
    colors = _colors(_order(set(variant_labels(table)))) if table.num_rows else {}
    for ax, (dataset, sub) in zip(axes[0], by_dataset.items()):
        _draw_curves(ax, sub, colors)
        ax.set_title(title or f"{dataset}: {_metric(sub)} vs labeled fraction, mean ± std over seeds", fontsize=10)
        ax.legend(loc="best", fontsize=8)
    return _save(fig, Path(out))


def plot_budget_panels(table: pa.Table, out: str | Path) -> Path:
    """One panel per (dataset, per-cycle budget), curves per variant with +-1 std bands
    (the paper's Fig. 5); datasets are rows, budgets columns, y shared within a row."""
    plt = _pyplot()
    parts = groups(table)
    datasets = sorted({k[0] for k, _ in parts})
    budgets = {d: [k[1] for k, _ in parts if k[0] == d] for d in datasets}
    cols = max([len(b) for b in budgets.values()] or [1])
    fig, axes = plt.subplots(max(1, len(datasets)), cols, figsize=(4.6 * cols, 3.8 * max(1, len(datasets))),
                             dpi=120, squeeze=False, sharey="row")
    colors = _colors(_order(set(variant_labels(table)))) if table.num_rows else {}
    lookup = dict(parts)
    for i, d in enumerate(datasets):
        for j in range(cols):
            ax = axes[i][j]
            if j >= len(budgets[d]):
                ax.axis("off")
                continue
            sub = lookup[(d, budgets[d][j])]
            _draw_curves(ax, sub, colors)
            ax.set_title(f"{d}: budget {budgets[d][j]} per cycle", fontsize=10)
            if j:
                ax.set_ylabel("")
            ax.legend(loc="best", fontsize=7)
    return _save(fig, Path(out))


def plot_ablation_bars(table: pa.Table, out: str | Path) -> Path:
    """AULC and final metric per variant as bars, mean over seeds with std error bars
    (the paper's Fig. 6); each (dataset, budget) group is one cluster."""
    plt = _pyplot()
    parts = groups(table)
    variants = _order(set(variant_labels(table))) if table.num_rows else []
    colors = _colors(variants)
    fig, axes = plt.subplots(1, 2, figsize=(max(9.5, 1.1 * len(variants) * max(1, len(parts)) + 3), 4.2), dpi=120)
    width = 0.8 / max(1, len(variants))
    metric = _metric(table)
    for ax, which in zip(axes, (0, 1)):
        bars = []
        for g, (key, sub) in enumerate(parts):
            seeds = per_seed(sub)
            for i, v in enumerate(variants):
                if v not in seeds:
                    continue
                vals = 100 * np.array([s[which] for s in seeds[v].values()])
                x = g + (i - (len(variants) - 1) / 2) * width
                ax.bar(x, vals.mean(), width * 0.9, yerr=vals.std(), capsize=3, color=colors[v],
                       label=v if g == 0 else None)
                bars.append((x, vals.mean(), vals.min()))
        ax.set_xticks(range(len(parts)))
        ax.set_xticklabels([f"{d}\nbudget {b}" for (d, b), _ in parts], fontsize=8)
        ax.set_ylabel(f"test {metric} at the largest labeled fraction (%)" if which else f"AULC of test {metric} (%)")
        ax.set_title(f"{'final metric' if which else 'AULC'}, mean ± std over seeds", fontsize=10)
        if bars:
            low = max(0.0, min(b[2] for b in bars) - 5)
            top = max(b[1] for b in bars) + 5
            ax.set_ylim(low, min(top, 100.5) if top > 95 else top)  # near the data, not at 0; % stops at 100
            for x, mean, _ in bars:  # the value, inside the bar, clear of the error bar
                ax.text(x, (low + mean) / 2, f"{mean:.1f}", ha="center", va="center", fontsize=7, color="white",
                        fontweight="bold", rotation=90 if len(bars) > 8 else 0)
        ax.grid(axis="y", alpha=0.3)
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), title="strategy", title_fontsize=8)
    return _save(fig, Path(out))


def _plot_per_batch(table: pa.Table, out: str | Path, panels: Sequence[tuple[str, str, str]],
                    xlabel: str = "labeled samples when the batch was selected (% of the pool)") -> Path:
    """One panel per ``(column, y label, title)``: the column of each selected batch against
    the labeled fraction at selection time, per variant (and per (dataset, budget) group
    when there are several), mean +- std over seeds."""
    plt = _pyplot()
    rows = [r for r in _records(table) if r.get("num_selected")]
    variants = _order({r["variant"] for r in rows})
    colors = _colors(_order(set(variant_labels(table)))) if table.num_rows else {}
    keys = sorted({(r["dataset"], r["budget"]) for r in rows}, key=lambda k: (str(k[0]), k[1] or 0))
    styles = ["-", "--", ":", "-."]
    cols = min(len(panels), 2)
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6.25 * cols, 4.2 * nrows), dpi=120, squeeze=False)
    drawn = False
    for ax, (col, label, title) in zip(axes.flat, panels):
        for v in variants:
            for g, key in enumerate(keys):
                by: dict[float, list[float]] = {}
                for r in rows:
                    if (r["variant"] == v and (r["dataset"], r["budget"]) == key and r.get(col) is not None
                            and math.isfinite(r[col])):
                        by.setdefault(r["frac"], []).append(r[col])
                if not by:
                    continue
                drawn = True
                fr = np.array(sorted(by))
                m = np.array([np.mean(by[f]) for f in fr])
                sd = np.array([np.std(by[f]) for f in fr])
                name = v if len(keys) == 1 else f"{v}, {key[0]} budget {key[1]}"
                ax.plot(100 * fr, m, marker="o", ms=3.5, color=colors.get(v), linestyle=styles[g % len(styles)],
                        label=name)
                ax.fill_between(100 * fr, m - sd, m + sd, color=colors.get(v), alpha=0.15, linewidth=0)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel(label, fontsize=9)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if drawn:  # one legend for every variant of every panel (a panel may lack some: core-set has no score)
        seen: dict[str, Any] = {}
        for ax in axes.flat:
            for handle, name in zip(*ax.get_legend_handles_labels()):
                seen.setdefault(name, handle)
        axes.flat[cols - 1].legend(list(seen.values()), list(seen), fontsize=7, loc="center left",
                                   bbox_to_anchor=(1.02, 0.5))
    return _save(fig, Path(out))


def plot_redundancy(table: pa.Table, out: str | Path) -> Path:
    """Selected-batch redundancy against the labeled fraction at selection time, per variant,
    mean +- std over seeds: cosine similarity (left) and class entropy (right)."""
    return _plot_per_batch(table, out, [
        ("batch_cosine", "mean pairwise cosine similarity of the batch's features",
         "redundancy of each selected batch (higher = more overlap)"),
        ("batch_class_entropy", "class entropy of the batch (1 = balanced)", "class coverage of each selected batch"),
    ])


def plot_informativeness(table: pa.Table, out: str | Path) -> Path:
    """The informativeness diagnostics of each cycle's score and batch, per variant."""
    return _plot_per_batch(table, out, [
        ("auroc_wrong", "AUROC of the score for a misclassified sample", "does the score find the model's errors? "
                                                                         "(0.5 = no)"),
        ("spearman_loss", "Spearman rho of the score with the sample's loss", "score vs loss"),
        ("spearman_entropy", "Spearman rho of the score with predictive entropy", "score vs uncertainty"),
        ("batch_labeled_distance", "mean distance of the batch to the labeled set", "how far the batch reaches"),
    ])


def plot_win_tie_loss(table: pa.Table, out: str | Path, alpha: float = 0.05) -> Path:
    """The win/tie/loss matrix (:func:`win_tie_loss`) as a heat map of wins minus losses."""
    plt = _pyplot()
    variants, counts = win_tie_loss(table, alpha)
    n = max(1, len(variants))
    fig, ax = plt.subplots(figsize=(1.1 * n + 3, 0.8 * n + 2), dpi=120)
    net = counts[..., 0] - counts[..., 2] if variants else np.zeros((1, 1))
    lim = max(1, int(np.abs(net).max()))
    ax.imshow(net, cmap="RdYlGn", vmin=-lim, vmax=lim)
    for i in range(len(variants)):
        for j in range(len(variants)):
            ax.text(j, i, "-" if i == j else "/".join(map(str, counts[i, j])), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(variants)), variants, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(variants)), variants, fontsize=8)
    ax.set_title(f"row vs column: wins/ties/losses (paired t-test on AULC, {alpha:g})", fontsize=10)
    return _save(fig, Path(out))


# ====================================================================== whole report
@dataclass
class Report:
    """What :func:`build_report` wrote: the text and the figure paths."""

    text: str
    table: pa.Table
    figures: dict[str, Path] = field(default_factory=dict)
    text_path: Optional[Path] = None


def build_report(run_dir: str | Path, out_dir: Optional[str | Path] = None, reference: str = "random") -> Report:
    """Read every result under ``run_dir`` and write the figures and ``report.txt`` into
    ``out_dir`` (default ``run_dir/report``).

    Raises:
        ConfigError: ``run_dir`` does not exist or holds no results.
    """
    table = load_run(run_dir)
    if not table.num_rows:
        raise ConfigError(f"{run_dir} holds no results ({RESULTS_FILE}); run `daal-ray run` or `daal-ray sweep` first")
    out = Path(out_dir) if out_dir else Path(run_dir) / REPORT_DIR
    figures = {
        "learning_curves": plot_learning_curves(table, out / "learning_curves.png"),
        "budget_panels": plot_budget_panels(table, out / "budget_panels.png"),
        "ablation_bars": plot_ablation_bars(table, out / "ablation_bars.png"),
        "batch_redundancy": plot_redundancy(table, out / "batch_redundancy.png"),
        "informativeness": plot_informativeness(table, out / "informativeness.png"),
        "win_tie_loss": plot_win_tie_loss(table, out / "win_tie_loss.png"),
    }
    text = format_report(table, reference)
    path = out / "report.txt"
    atomic_write_text(path, text + "\n")
    return Report(text=text, table=conform(table), figures=figures, text_path=path)


__all__ = [
    "PairedDifference", "Report", "SCHEMA", "aulc", "aulc_summary", "build_report", "curve_summary",
    "diagnostics_summary", "format_diagnostics", "format_paired", "format_redundancy", "format_report",
    "format_table", "format_win_tie_loss", "groups", "load_run", "paired_differences", "paired_tests", "per_seed",
    "plot_ablation_bars", "plot_budget_panels", "plot_informativeness", "plot_learning_curves", "plot_redundancy",
    "plot_win_tie_loss", "redundancy_summary", "variant_labels", "win_tie_loss",
]
