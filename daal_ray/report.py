"""Reports of a run directory: the paper's figures, tables and batch-redundancy diagnostics.

    daal-ray report runs/sweep              # figures + report.txt into runs/sweep/report/
    daal-ray report runs/sweep --reference random,coreset

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
* ``report.txt``: the metric at each labeled fraction, AULC, the runs that are incomplete,
  each strategy's paired difference against each reference (random, entropy and margin,
  those that ran, or ``--reference a,b``; one table per reference) over seeds with the
  p-values of a paired t-test and a Wilcoxon signed-rank test and a plain verdict, the
  mean redundancy and informativeness, and the win/tie/loss matrix.

Comparisons are honest about what they cover:

* Two variants are paired seed by seed over the labeled fractions *every* one of their
  paired runs has, so a run that is incomplete (still running, or stopped early) is never
  integrated over a shorter range than its partner; the text says the range ("paired over
  10%-30% of 10%-40%"). A pair with fewer than 2 common fractions has no AULC and is
  refused with the reason (:func:`compare` raises :class:`ConfigError`). The AULC table
  is over the range every run of the group has.
* A run is *incomplete* when it has fewer cycles than its config's protocol implies,
  fewer than the longest run of its group, or no final row (the loop's last row selects
  nothing); the report lists them.
* With few seeds a rank test cannot be significant: 5 seeds give an exact two-sided
  Wilcoxon p of at least 2/32 = 0.0625. Each table states the smallest p attainable.
* A difference that is the same nonzero number on every seed (2 or more) has no spread:
  its t statistic is unbounded and ``p (t)`` is reported as 0 (printed ``0``), a win or
  loss by its sign; a difference of 0 on every seed is a tie.

A *variant* is a strategy plus every param that differs between the experiments of that
strategy in the table or from the strategy's defaults (``daal[use_rdis=False]``), so
ablations of one strategy get one curve and one bar each and no non-default run carries a
bare strategy name; params that only size a fit (:func:`run_length_params`) are named only
when they differ between experiments. Standard deviations are over seeds, population form
(ddof=0).
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
from daal_ray.config import ExperimentConfig
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
    except (ValueError, AttributeError, TypeError):
        return {}


def run_length_params(params_cls: Optional[type]) -> frozenset[str]:
    """The params of ``params_cls`` a label leaves out when they only differ from the
    default: those its ``RUN_LENGTH_PARAMS`` declares (:class:`daal_ray.settings.Config`),
    which change when or how a result is written but not the result itself."""
    return frozenset(getattr(params_cls, "RUN_LENGTH_PARAMS", frozenset()))


class _StrategyParams:
    """One strategy's default params and run-length set, and recorded params resolved
    against them (a param left out and one set to its default read alike; ``2`` and
    ``2.0`` for a float param too)."""

    def __init__(self, strategy: str) -> None:
        try:
            self.cls: Optional[type] = get_strategy_class(strategy).Params
            self.defaults = self.cls().to_dict()
        except Exception:  # a strategy no longer registered: compare the params as recorded
            self.cls, self.defaults = None, {}
        self.run_length = run_length_params(self.cls)

    def resolve(self, recorded: dict[str, Any]) -> dict[str, Any]:
        if self.cls is not None:
            try:
                return self.cls.from_dict(recorded).to_dict()
            except Exception:  # a param the class no longer has: merge as recorded
                pass
        return {**self.defaults, **recorded}


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def variant_labels(table: pa.Table) -> list[str]:
    """One label per row: the strategy, plus (sorted by name) every param that differs
    between the rows of that strategy or from the strategy's class defaults, e.g.
    ``daal[use_rdis=False]``; a row is never labelled by the bare strategy name when it ran
    with non-default params.

    Params that only size the fit (:func:`run_length_params`) are left out when they merely
    differ from the default, so a long run and the short default read alike; they are named
    when rows of the strategy differ in them, since those are different experiments.
    """
    strategies = table["strategy"].to_pylist()
    configs = table["config"].to_pylist() if "config" in table.column_names else [None] * table.num_rows
    info = {s: _StrategyParams(s) for s in set(strategies)}
    cache: dict[tuple[str, Optional[str]], dict[str, Any]] = {}
    params = []
    for s, c in zip(strategies, configs):
        if (s, c) not in cache:
            cache[(s, c)] = info[s].resolve(_params_of(c))
        params.append(cache[(s, c)])
    named: dict[str, list[str]] = {}
    for s in set(strategies):
        mine = [p for p, t in zip(params, strategies) if t == s]
        keys = sorted({k for p in mine for k in p})
        varying = {k for k in keys if len({json.dumps(p.get(k), sort_keys=True, default=str) for p in mine}) > 1}
        off_default = {k for k in keys if k not in info[s].run_length and k in info[s].defaults
                       and any(not _same(p.get(k), info[s].defaults[k]) for p in mine)}
        named[s] = sorted(varying | off_default)
    labels = []
    for s, p in zip(strategies, params):
        keys = named[s]
        labels.append(f"{s}[{','.join(f'{k}={p.get(k)}' for k in keys)}]" if keys else s)
    return labels


def _records(table: pa.Table) -> list[dict[str, Any]]:
    """Rows as dicts with a ``variant`` label and a rounded fraction."""
    rows = table.to_pylist()
    for r, label in zip(rows, variant_labels(table)):
        r["variant"] = label
        r["frac"] = round(r["labeled_fraction"], FRACTION_DECIMALS)
    return rows


def _order(variants: set[str], reference: str | Sequence[str] = "random") -> list[str]:
    """Variants sorted by name, the reference(s) first, in the order given."""
    refs = [reference] if isinstance(reference, str) else list(reference)
    rank = {r: i for i, r in enumerate(refs)}
    return sorted(variants, key=lambda v: (rank.get(v, len(refs)), v))


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


def _group_key(r: dict[str, Any]) -> tuple[Any, Any]:
    return r.get("dataset"), r.get("budget")


# ====================================================================== summaries
# A run's curve: rounded labeled fraction -> (exact labeled fraction, metric).
Curve = dict[float, tuple[float, float]]


def _curves(rows: list[dict[str, Any]]) -> dict[str, dict[int, Curve]]:
    """Per variant and seed, the run's learning curve."""
    out: dict[str, dict[int, Curve]] = {}
    for r in rows:
        out.setdefault(r["variant"], {}).setdefault(r["seed"], {})[r["frac"]] = (r["labeled_fraction"], r["value"])
    return out


def _run_numbers(curve: Curve, fractions: Optional[Sequence[float]] = None) -> tuple[float, float]:
    """``(AULC, metric at the largest fraction)`` of one run, over ``fractions`` (rounded
    fractions the run has; default: all of its own)."""
    keys = sorted(curve if fractions is None else (f for f in fractions if f in curve))
    if not keys:
        return float("nan"), float("nan")
    f = np.array([curve[k][0] for k in keys])
    v = np.array([curve[k][1] for k in keys])
    return aulc(f, v), float(v[-1])


def _common(curves: dict[str, dict[int, Curve]], variants: Sequence[str], seeds: Sequence[int]) -> list[float]:
    """The labeled fractions every run of ``variants`` x ``seeds`` has."""
    sets = [set(curves[v][s]) for v in variants for s in seeds if s in curves[v]]
    return sorted(set.intersection(*sets)) if sets else []


def _span(curves: dict[str, dict[int, Curve]], variants: Sequence[str]) -> tuple[float, float]:
    fr = [f for v in variants for c in curves[v].values() for f in c]
    return (min(fr), max(fr)) if fr else (float("nan"), float("nan"))


def _pct_range(lo: float, hi: float) -> str:
    return f"{100 * lo:.4g}%-{100 * hi:.4g}%" if hi != lo else f"{100 * lo:.4g}%"


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


def per_seed(table: pa.Table, fractions: Optional[Sequence[float]] = None) -> dict[str, dict[int, tuple[float, float]]]:
    """Per variant and seed: ``(AULC, metric at the largest labeled fraction)``, each run
    over its own fractions, or over those of ``fractions`` (rounded to
    :data:`FRACTION_DECIMALS`) it has."""
    curves = _curves(_records(table))
    keep = None if fractions is None else [round(f, FRACTION_DECIMALS) for f in fractions]
    return {v: {s: _run_numbers(curves[v][s], keep) for s in sorted(curves[v])} for v in _order(set(curves))}


def common_fractions(table: pa.Table) -> list[float]:
    """The labeled fractions (rounded) every run of ``table`` has."""
    curves = _curves(_records(table))
    return _common(curves, list(curves), sorted({s for c in curves.values() for s in c}))


def aulc_summary(table: pa.Table) -> dict[str, tuple[float, float, int]]:
    """Per variant: mean and std over seeds of each seed's AULC, and the seed count.

    The AULCs are over the labeled fractions every run of the table has, so a run that
    stopped early is not compared over a shorter range than the others; when the runs
    share fewer than 2 fractions each run is over its own range (:func:`format_table` says
    which).
    """
    common = common_fractions(table)
    out = {}
    for variant, seeds in per_seed(table, common if len(common) >= 2 else None).items():
        a = np.array([v[0] for v in seeds.values()])
        out[variant] = (float(a.mean()), float(a.std()), int(a.size))
    return {k: out[k] for k in _order(set(out))}


# ====================================================================== completeness
@dataclass(frozen=True)
class RunCoverage:
    """How far one run (a variant and seed of a (dataset, budget) group) got.

    Attributes:
        variant, seed: the run.
        dataset, budget: its group.
        cycles: the cycles it recorded.
        expected: the cycles its config's protocol implies (None when the rows carry no
            protocol to judge by).
        longest: the cycles of the longest run of its group.
        finished: its last row selects nothing (the loop's final row); None when the rows
            do not record ``num_selected``.
        span: its smallest and largest labeled fraction.
        incomplete: fewer cycles than its protocol implies or than the group's longest run,
            or no final row.
    """

    variant: str
    seed: int
    dataset: Any
    budget: Any
    cycles: int
    expected: Optional[int]
    finished: Optional[bool]
    span: tuple[float, float]
    incomplete: bool
    longest: int = 0

    def describe(self) -> str:
        """``entropy seed 1: 2 of 4 cycles (10%-20%), no final row (still running or stopped)``:
        of the cycles its protocol implies, or else of its group's longest run."""
        target = self.expected or self.longest
        of = f" of {target}" if target and target > self.cycles else ""
        end = "" if self.finished is not False else ", no final row (still running or stopped)"
        return f"{self.variant} seed {self.seed}: {self.cycles}{of} cycles ({_pct_range(*self.span)}){end}"


def _expected_cycles(rows: list[dict[str, Any]]) -> Optional[int]:
    """The cycles a run's protocol implies (its selection rounds + the final row), from the
    config its rows carry and the pool size its labeled counts imply."""
    try:
        cfg = json.loads(rows[0].get("config") or "{}")
    except (ValueError, TypeError):
        return None
    if not isinstance(cfg, dict) or "initial_fraction" not in cfg or "final_fraction" not in cfg:
        return None
    protocol = {k: cfg[k] for k in ("initial_fraction", "step_fraction", "final_fraction", "budget") if k in cfg}
    pools = {round(r["num_labeled"] / r["labeled_fraction"]) for r in rows
             if r.get("num_labeled") and r.get("labeled_fraction")}
    if len(pools) != 1:
        return None
    try:
        _, _, rounds = ExperimentConfig(**protocol).schedule(pools.pop())
    except (ConfigError, TypeError, ValueError):
        return None
    return rounds + 1


def _coverage(rows: list[dict[str, Any]]) -> list[RunCoverage]:
    runs: dict[tuple[Any, Any, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        runs.setdefault((*_group_key(r), r["variant"], r["seed"]), []).append(r)
    longest: dict[tuple[Any, Any], int] = {}
    for (d, b, _, _), mine in runs.items():
        longest[(d, b)] = max(longest.get((d, b), 0), len({r["cycle"] if "cycle" in r else r["frac"] for r in mine}))
    out = []
    for (d, b, variant, seed), mine in sorted(runs.items(), key=lambda kv: (str(kv[0][0]), kv[0][1] or 0,
                                                                            kv[0][2], kv[0][3])):
        mine = sorted(mine, key=lambda r: r["frac"])
        cycles = len({r["cycle"] if "cycle" in r else r["frac"] for r in mine})
        expected = _expected_cycles(mine)
        selected = [r.get("num_selected") for r in mine]
        finished = None if all(n is None for n in selected) else selected[-1] == 0
        incomplete = (cycles < longest[(d, b)] or (expected is not None and cycles < expected)
                      or finished is False)
        out.append(RunCoverage(variant, seed, d, b, cycles, expected, finished,
                               (mine[0]["frac"], mine[-1]["frac"]), incomplete, longest[(d, b)]))
    return out


def run_coverage(table: pa.Table) -> list[RunCoverage]:
    """Every run of ``table`` (variant x seed x (dataset, budget) group) and whether it is
    complete: a run is incomplete when it has fewer cycles than its config's protocol
    implies or than the longest run of its group, or when its last row still selected a
    batch (the loop's final row, which selects nothing, is missing)."""
    return _coverage(_records(table))


def incomplete_runs(table: pa.Table) -> list[RunCoverage]:
    """The runs of :func:`run_coverage` that are incomplete."""
    return [c for c in run_coverage(table) if c.incomplete]


# ====================================================================== paired comparisons
@dataclass(frozen=True)
class PairedDifference:
    """One variant minus the reference, seed by seed (only seeds both have), over the
    labeled fractions every one of those runs has.

    Attributes:
        aulc_mean, aulc_std: mean and std over seeds of the per-seed AULC difference.
        final_mean, final_std: the same for the metric at the largest paired fraction.
        wins: seeds where the variant's AULC is higher than the reference's.
        n: the number of paired seeds.
        p_t: two-sided p-value of the paired t-test on the per-seed AULCs (NaN below 2
            seeds or when every difference is 0; 0.0 when every seed's difference is the
            same nonzero number, the limit of an unbounded t statistic).
        p_wilcoxon: two-sided p-value of the Wilcoxon signed-rank test on them (exact for
            small n; NaN below 2 seeds or when every difference is 0).
        fractions: the labeled fractions the AULCs are over (rounded).
        span: the smallest and largest labeled fraction either variant's runs reached.
        refused: why the pair is not compared (fewer than 2 common fractions); empty when
            it is, and then the numbers are NaN.
    """

    aulc_mean: float
    aulc_std: float
    final_mean: float
    final_std: float
    wins: int
    n: int
    p_t: float = float("nan")
    p_wilcoxon: float = float("nan")
    fractions: tuple[float, ...] = ()
    span: tuple[float, float] = (float("nan"), float("nan"))
    refused: str = ""

    @property
    def partial(self) -> bool:
        """The pairing covers less than the range the runs reached."""
        return bool(self.fractions) and (self.fractions[0], self.fractions[-1]) != tuple(self.span)

    def paired_over(self) -> str:
        """``10%-30% of 10%-40%`` (or ``10%-40%`` when that is the whole range)."""
        if not self.fractions:
            return "-"
        own = _pct_range(self.fractions[0], self.fractions[-1])
        return f"{own} of {_pct_range(*self.span)}" if self.partial else own


def wilcoxon_min_p(n: int) -> float:
    """The smallest two-sided p-value the exact Wilcoxon signed-rank test can give on ``n``
    nonzero paired differences: all of one sign, ``2 / 2**n`` (n = 5: 0.0625, so 5 seeds
    can never reach 0.05)."""
    return float("nan") if n < 1 else min(1.0, 2.0 / 2.0 ** n)


def paired_tests(diffs: np.ndarray) -> tuple[float, float]:
    """Two-sided p-values of the paired t-test and the Wilcoxon signed-rank test on the
    per-seed differences ``diffs``.

    NaN where a test is undefined: fewer than 2 seeds, or every difference 0 (a tie). A
    difference that is the same nonzero number on every seed has no spread, so its t
    statistic is unbounded: ``p_t`` is reported as 0.0 (the limit), and the Wilcoxon test,
    which only ranks, gives its smallest attainable p (:func:`wilcoxon_min_p`).
    """
    d = np.asarray(diffs, dtype=np.float64)
    if d.size < 2:
        return float("nan"), float("nan")
    # Rounding: AULCs of identical curves can differ in the last bits, and a difference
    # that is the same on every seed can show a spread of 1e-17.
    if np.all(np.abs(d) <= 1e-12):
        return float("nan"), float("nan")
    sd = d.std(ddof=1)
    constant = sd <= 1e-9 * float(np.abs(d).max())
    p_t = 0.0 if constant else float(2.0 * stats.t.sf(abs(d.mean()) / (sd / math.sqrt(d.size)), df=d.size - 1))
    try:
        p_w = float(stats.wilcoxon(d, alternative="two-sided").pvalue)
    except ValueError:
        p_w = float("nan")
    return p_t, p_w


def _compare(curves: dict[str, dict[int, Curve]], variant: str, reference: str) -> Optional[PairedDifference]:
    """``variant`` minus ``reference`` over their common seeds and the labeled fractions all
    those runs have; None without a common seed, ``refused`` set without 2 common fractions."""
    seeds = sorted(set(curves[variant]) & set(curves[reference]))
    if not seeds:
        return None
    pair = [variant, reference]
    fracs = _common(curves, pair, seeds)
    span = _span(curves, pair)
    if len(fracs) < 2:
        runs = "; ".join(f"{v} seed {s}: {_pct_range(min(curves[v][s]), max(curves[v][s]))}"
                         for v in pair for s in seeds)
        nan = float("nan")
        return PairedDifference(nan, nan, nan, nan, 0, len(seeds), fractions=tuple(fracs), span=span, refused=(
            f"{variant} and {reference} share {len(fracs)} labeled fraction(s) over seed(s) "
            f"{', '.join(map(str, seeds))} ({runs}); an AULC needs at least 2: let the incomplete runs finish "
            f"(re-run them under the same name to resume) before comparing them"))
    a = {s: _run_numbers(curves[variant][s], fracs) for s in seeds}
    b = {s: _run_numbers(curves[reference][s], fracs) for s in seeds}
    da = np.array([a[s][0] - b[s][0] for s in seeds])
    dfin = np.array([a[s][1] - b[s][1] for s in seeds])
    return PairedDifference(float(da.mean()), float(da.std()), float(dfin.mean()), float(dfin.std()),
                            int((da > 0).sum()), len(seeds), *paired_tests(da), fractions=tuple(fracs), span=span)


def compare(table: pa.Table, variant: str, reference: str) -> PairedDifference:
    """``variant`` minus ``reference`` seed by seed, over the labeled fractions every one of
    their paired runs has.

    Raises:
        ConfigError: either variant is not in ``table``, they share no seed, or their
            paired runs share fewer than 2 labeled fractions (no AULC to compare).
    """
    curves = _curves(_records(table))
    for v in (variant, reference):
        if v not in curves:
            raise ConfigError(f"{v!r} is not a variant of this table; variants: {', '.join(_order(set(curves)))}")
    d = _compare(curves, variant, reference)
    if d is None:
        raise ConfigError(f"{variant} and {reference} share no seed: run both with the same seeds to pair them")
    if d.refused:
        raise ConfigError(d.refused)
    return d


def paired_differences(table: pa.Table, reference: str = "random") -> dict[str, PairedDifference]:
    """Each variant against ``reference`` over the seeds both ran (same initial pool) and
    the labeled fractions all those runs have; a pair without 2 such fractions is there
    with ``refused`` set (:func:`compare` raises for it instead)."""
    curves = _curves(_records(table))
    if reference not in curves:
        return {}
    out = {}
    for variant in _order(set(curves), reference):
        if variant == reference:
            continue
        d = _compare(curves, variant, reference)
        if d is not None:
            out[variant] = d
    return out


def _outcome(d: PairedDifference, alpha: float) -> int:
    """0 win, 1 tie, 2 loss: the sign of the mean AULC difference where the paired t-test
    is below ``alpha`` (a constant nonzero difference has p 0), a tie otherwise (a constant
    zero difference included)."""
    return 1 if not d.p_t < alpha else (0 if d.aulc_mean > 0 else 2)


def win_tie_loss(table: pa.Table, alpha: float = 0.05) -> tuple[list[str], np.ndarray]:
    """Pairwise comparison of every two variants (Luth et al. 2023), over every (dataset,
    budget) group where both ran at least 2 common seeds with at least 2 labeled fractions
    in common (:func:`compare`): ``A`` wins against ``B`` in a group when its per-seed AULC
    is higher by a paired t-test at ``alpha`` (or by the same amount on every seed), loses
    when it is lower, and ties otherwise.

    Returns:
        ``(variants, counts)``: ``counts[i, j] = (wins, ties, losses)`` of variant ``i``
        against ``j``, summed over the groups.
    """
    rows = _records(table)  # variants labelled over the whole table, so every group names them alike
    variants = _order({r["variant"] for r in rows})
    index = {v: i for i, v in enumerate(variants)}
    counts = np.zeros((len(variants), len(variants), 3), dtype=np.int64)
    for key in sorted({_group_key(r) for r in rows}, key=lambda k: (str(k[0]), k[1] or 0)):
        curves = _curves([r for r in rows if _group_key(r) == key])
        for a in curves:
            for b in curves:
                if a == b:
                    continue
                d = _compare(curves, a, b)
                if d is None or d.refused or d.n < 2:
                    continue
                counts[index[a], index[b], _outcome(d, alpha)] += 1
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
    # The range goes on each row, so the table keeps one shape whether or not the runs agree.
    common = common_fractions(table)
    full = _pct_range(fracs[0], fracs[-1])
    if len(common) < 2:
        note = f"; each run over its own range: the runs share fewer than 2 of the fractions {full}"
    elif (common[0], common[-1]) != (fracs[0], fracs[-1]):
        note = f"; over {_pct_range(common[0], common[-1])} of {full}, the range every run has"
    else:
        note = ""
    lines.append("area under the learning curve (mean +- std over seeds)")
    for variant, (m, sd, n) in aulc_summary(table).items():
        lines.append(f"{variant:<{width}}{100 * m:>10.2f} +- {100 * sd:.2f}  (n={n}{note})")
    return "\n".join(lines)


def format_coverage(table: pa.Table) -> str:
    """The incomplete runs of ``table``, one line each, or an empty string when none is."""
    runs = incomplete_runs(table)
    if not runs:
        return ""
    return "\n".join(["incomplete runs (fewer cycles than their protocol or the group's longest run, or no final "
                      "row): every comparison below pairs only the labeled fractions both sides have"]
                     + [f"  {c.describe()}" for c in runs])


def format_paired(table: pa.Table, reference: str = "random") -> str:
    """Each variant minus ``reference``, seed by seed, in metric points, over the labeled
    fractions every paired run has; the smallest p each test can reach with the seeds there."""
    diffs = paired_differences(table, reference)
    if not diffs:
        return f"(no paired seeds against {reference})"
    width = max(14, 2 + max(map(len, diffs)))
    over = max(11, 2 + max(len(d.paired_over()) for d in diffs.values()))
    lines = [f"paired difference against {reference} over seeds (mean +- std of per-seed differences, points; "
             f"over the labeled fractions every paired run has; final: at the largest of them; "
             f"p: two-sided paired t-test and Wilcoxon signed-rank on the AULCs)",
             f"{'strategy':<{width}}{'AULC':>18}{'final':>18}{'AULC wins':>11}{'p (t)':>9}{'p (W)':>9}"
             f"{'paired over':>{over}}  verdict"]
    refused = []
    for variant, d in diffs.items():
        if d.refused:
            refused.append(f"  {variant}: not compared: {d.refused}")
            lines.append(f"{variant:<{width}}{'-':>18}{'-':>18}{'-':>11}{'-':>9}{'-':>9}{'-':>{over}}  "
                         f"not compared (no common range, see below)")
            continue
        lines.append(f"{variant:<{width}}{_pct(d.aulc_mean, True) + ' +- ' + _pct(d.aulc_std):>18}"
                     f"{_pct(d.final_mean, True) + ' +- ' + _pct(d.final_std):>18}{f'{d.wins}/{d.n}':>11}"
                     f"{_p(d.p_t):>9}{_p(d.p_wilcoxon):>9}{d.paired_over():>{over}}  {_verdict(d, reference)}")
    lines += refused
    for n in sorted({d.n for d in diffs.values() if not d.refused and d.n >= 2}):
        lines.append(f"with n={n} seeds the smallest two-sided Wilcoxon p is {wilcoxon_min_p(n):.3g}"
                     + (" (it cannot reach 0.05)" if wilcoxon_min_p(n) >= 0.05 else "")
                     + f"; the paired t-test has no such floor ({n - 1} degree(s) of freedom)")
    if any(d.p_t == 0.0 for d in diffs.values()):
        lines.append("p (t) = 0: the same nonzero AULC difference on every seed (no spread, an unbounded t), "
                     "a win or loss by its sign")
    return "\n".join(lines)


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "-"
    return "0" if p == 0 else (f"{p:.3f}" if p >= 0.001 else "<0.001")


def _verdict(d: PairedDifference, reference: str) -> str:
    """Plain words: better or worse than the reference only where the t-test says so at 5%
    (or the difference is the same nonzero number on every seed)."""
    if d.refused:
        return "not compared: no common range of labeled fractions"
    if d.n < 2:
        return f"too few seeds to tell ({d.n})"
    if abs(d.aulc_mean) <= 1e-12 and d.aulc_std <= 1e-12:
        return f"identical to {reference} on every seed (a tie)"
    if not math.isfinite(d.p_t):
        return f"no test over {d.n} seeds"
    if d.p_t >= 0.05:
        return f"not distinguishable from {reference}"
    return f"{'beats' if d.aulc_mean > 0 else 'trails'} {reference}" + (
        " (by the same amount on every seed)" if d.p_t == 0 else "")


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


# The strategies each variant is paired against by default, those of them that ran.
DEFAULT_REFERENCES = ("random", "entropy", "margin")


def parse_references(reference: Optional[str | Sequence[str]]) -> tuple[tuple[str, ...], bool]:
    """``(references, explicit)`` from ``"random,entropy"``, a sequence of names, or None
    (the :data:`DEFAULT_REFERENCES`, not explicit)."""
    if reference is None:
        return DEFAULT_REFERENCES, False
    names = reference.split(",") if isinstance(reference, str) else list(reference)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ConfigError(f"--reference {reference!r} names no strategy; pass e.g. --reference random,entropy")
    return tuple(dict.fromkeys(names)), True


def _reference_variants(variants: Sequence[str], name: str) -> list[str]:
    """The variants ``name`` stands for: itself, or else every variant of the strategy
    ``name`` (``entropy[...]`` when entropy ran with non-default params)."""
    if name in variants:
        return [name]
    return [v for v in variants if v.startswith(name + "[")]


def format_report(table: pa.Table, reference: Optional[str | Sequence[str]] = None) -> str:
    """The whole text report: one block per (dataset, budget), with one paired-difference
    table per reference (default: random, entropy and margin, those that ran)."""
    if not table.num_rows:
        return "(no results)"
    references, explicit = parse_references(reference)
    blocks = []
    for key, sub in groups(table):
        present = set(variant_labels(sub))
        parts = [f"== {_group_title(key, sub)} ==", format_table(sub)]
        coverage = format_coverage(sub)
        if coverage:
            parts.append(coverage)
        for name in references:
            chosen = _reference_variants(sorted(present), name)
            if not chosen and explicit:
                parts.append(f"({name} did not run in this group: no paired difference against it; "
                             f"strategies here: {', '.join(_order(present))})")
            parts += [format_paired(sub, ref) for ref in chosen]
        parts += [format_redundancy(sub), format_diagnostics(sub)]
        blocks.append("\n\n".join(parts))
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
            common = common_fractions(sub)  # the range every run of the group has, as in report.txt
            seeds = per_seed(sub, common if len(common) >= 2 else None)
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


def build_report(run_dir: str | Path, out_dir: Optional[str | Path] = None,
                 reference: Optional[str | Sequence[str]] = None) -> Report:
    """Read every result under ``run_dir`` and write the figures and ``report.txt`` into
    ``out_dir`` (default ``run_dir/report``).

    Args:
        reference: the variants every other is paired against, a comma list or a sequence
            (:func:`parse_references`); default random, entropy and margin, those that ran.

    Raises:
        ConfigError: ``run_dir`` does not exist or holds no results, or ``reference`` names
            no strategy.
    """
    parse_references(reference)  # a bad --reference fails before any figure is drawn
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
    "DEFAULT_REFERENCES", "PairedDifference", "Report", "RunCoverage", "SCHEMA", "aulc",
    "aulc_summary", "build_report", "common_fractions", "compare", "curve_summary", "diagnostics_summary",
    "format_coverage", "format_diagnostics", "format_paired", "format_redundancy", "format_report", "format_table",
    "format_win_tie_loss", "groups", "incomplete_runs", "load_run", "paired_differences", "paired_tests",
    "parse_references", "per_seed", "plot_ablation_bars", "plot_budget_panels", "plot_informativeness",
    "plot_learning_curves", "plot_redundancy", "plot_win_tie_loss", "redundancy_summary", "run_coverage",
    "run_length_params", "variant_labels", "wilcoxon_min_p", "win_tie_loss",
]
