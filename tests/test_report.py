"""Reports from hand-made results tables (hand-computed answers): AULC, paired
differences against random, tables, redundancy summaries, groups and variants, and the
whole report from a run directory."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from report_helpers import VALUES, results_rows
from scipy import stats

from daal_ray.acquisition.daal import DAALParams
from daal_ray.errors import ConfigError
from daal_ray.report import (
    PairedDifference,
    _verdict,
    aulc_summary,
    build_report,
    curve_summary,
    format_report,
    format_table,
    groups,
    paired_differences,
    paired_tests,
    per_seed,
    redundancy_summary,
    variant_labels,
    win_tie_loss,
)
from daal_ray.results import SCHEMA, upsert_rows


def _table(rows):
    return pa.Table.from_pylist([{c: r.get(c) for c in SCHEMA.names} for r in rows], schema=SCHEMA)


# --------------------------------------------------------------------------- numbers
def test_aulc_per_seed_by_hand():
    seeds = per_seed(_table(results_rows()))
    # trapezoids over 0.1, 0.2, 0.4, divided by the range 0.3
    # random 0: (0.6 * 0.1 + 0.8 * 0.2) / 0.3 = 0.22 / 0.3
    assert seeds["random"][0] == pytest.approx((0.22 / 0.3, 0.90))
    # random 1: (0.65 * 0.1 + 0.75 * 0.2) / 0.3 = 0.215 / 0.3
    assert seeds["random"][1] == pytest.approx((0.215 / 0.3, 0.80))
    # entropy 0: (0.65 * 0.1 + 0.875 * 0.2) / 0.3 = 0.24 / 0.3
    assert seeds["entropy"][0] == pytest.approx((0.24 / 0.3, 0.95))
    # entropy 1: (0.675 * 0.1 + 0.8 * 0.2) / 0.3 = 0.2275 / 0.3
    assert seeds["entropy"][1] == pytest.approx((0.2275 / 0.3, 0.85))

    summary = aulc_summary(_table(results_rows()))
    assert list(summary) == ["random", "entropy"]  # the reference first
    assert summary["random"] == pytest.approx((0.725, 0.025 / 3, 2))
    assert summary["entropy"] == pytest.approx((0.4675 / 0.6, 0.0125 / 0.6, 2))


def test_paired_difference_against_random_by_hand():
    diffs = paired_differences(_table(results_rows()))
    assert set(diffs) == {"entropy"}
    d = diffs["entropy"]
    # per-seed AULC differences: 0.02 / 0.3 and 0.0125 / 0.3
    assert d.aulc_mean == pytest.approx(0.01625 / 0.3)
    assert d.aulc_std == pytest.approx(0.00375 / 0.3)
    assert d.final_mean == pytest.approx(0.05) and d.final_std == pytest.approx(0.0)
    assert (d.wins, d.n) == (2, 2)
    assert paired_differences(_table(results_rows()), reference="nonexistent") == {}


def test_paired_difference_uses_only_common_seeds():
    values = {"random": {0: (0.5, 0.6, 0.7)}, "entropy": {0: (0.5, 0.6, 0.6), 1: (0.9, 0.9, 0.9)}}
    d = paired_differences(_table(results_rows(values=values)))["entropy"]
    assert d.n == 1 and d.wins == 0
    assert d.final_mean == pytest.approx(-0.1)
    assert d.aulc_mean == pytest.approx(-0.01 / 0.3)  # only the 0.2 -> 0.4 trapezoid differs: (0.6 - 0.65) * 0.2


def test_table_values_and_aulc_text():
    text = format_table(_table(results_rows()))
    lines = text.splitlines()
    assert lines[1].split() == ["strategy", "10%", "20%", "40%"]
    body = {line.split()[0]: line for line in lines[2:4]}
    assert body["random"].split()[1:] == ["55.00", "+-", "5.00", "70.00", "+-", "0.00", "85.00", "+-", "5.00"]
    assert body["entropy"].split()[1:] == ["55.00", "+-", "5.00", "77.50", "+-", "2.50", "90.00", "+-", "5.00"]
    aulc_lines = {line.split()[0]: line.split() for line in lines[6:8]}
    assert aulc_lines["random"][1:4] == ["72.50", "+-", "0.83"]
    assert aulc_lines["entropy"][1:4] == ["77.92", "+-", "2.08"]


def test_redundancy_summary_skips_the_final_row_and_missing_values():
    summary = redundancy_summary(_table(results_rows()))
    assert summary["random"] == pytest.approx((0.3, 0.1, 0.9, 0.0, 4))
    assert summary["entropy"] == pytest.approx((0.7, 0.1, 0.5, 0.0, 4))
    rows = results_rows()
    for r in rows:
        if r["strategy"] == "random":
            r["batch_cosine"] = float("nan")  # e.g. a file written before the column existed
    assert set(redundancy_summary(_table(rows))) == {"entropy"}


def test_budgets_and_datasets_are_separate_groups():
    table = _table(results_rows(budget=50) + results_rows(budget=200) + results_rows(budget=50, dataset="cifar10"))
    keys = [k for k, _ in groups(table)]
    assert keys == [("cifar10", 50), ("digits", 50), ("digits", 200)]
    for _, sub in groups(table):
        assert sub.num_rows == 12


def test_variants_name_only_the_params_that_differ():
    values = {"daal": {0: (0.5, 0.6, 0.7)}}
    a = results_rows(values=values, params={"daal": {"epochs": 15, "use_rdis": True}})
    b = results_rows(values={"daal": {0: (0.5, 0.5, 0.5)}}, params={"daal": {"epochs": 15, "use_rdis": False}})
    for r in b:
        r["experiment"] += "-nordis"
    table = _table(a + b + results_rows(values={"random": VALUES["random"]}))
    labels = variant_labels(table)
    assert set(labels) == {"daal[use_rdis=True]", "daal[use_rdis=False]", "random"}
    summary = curve_summary(table)
    assert summary["daal[use_rdis=False]"][1] == pytest.approx([0.5, 0.5, 0.5])
    assert summary["daal[use_rdis=True]"][1] == pytest.approx([0.5, 0.6, 0.7])


def test_a_param_left_out_reads_as_its_default():
    assert DAALParams().use_rdis is True and DAALParams().use_udis is True
    full = results_rows(values={"daal": {0: (0.5, 0.6, 0.7)}}, params={"daal": {}})
    ablated = results_rows(values={"daal": {0: (0.5, 0.5, 0.5)}},
                           params={"daal": {"use_rdis": False, "use_udis": True}})
    for r in ablated:
        r["experiment"] += "-nordis"
    assert set(variant_labels(_table(full + ablated))) == {"daal[use_rdis=True]", "daal[use_rdis=False]"}



# --------------------------------------------------------------------------- whole report
def test_build_report_from_run_dir(tmp_path):
    run = tmp_path / "sweep"
    rows = results_rows()
    for name in sorted({r["experiment"] for r in rows}):
        upsert_rows(run / name / "results.parquet", [r for r in rows if r["experiment"] == name])
    report = build_report(run)
    assert report.table.num_rows == 12
    assert (run / "results.parquet").exists()  # combined from the experiments' own files
    text = (run / "report" / "report.txt").read_text()
    assert text.startswith("== digits, budget 50 per cycle, 2 seed(s) ==")
    paired = next(line for line in text.splitlines() if line.startswith("entropy") and "2/2" in line)
    # AULC differences 6.67 and 4.17 points: t = 5.42 / (1.77 / sqrt 2) = 4.33 on 1 df (Cauchy),
    # p = 1 - 2 atan(4.33) / pi = 0.144;
    # Wilcoxon with n = 2, both positive: p = 2 x (1/4) = 0.5.
    assert paired.split() == ["entropy", "+5.42", "+-", "1.25", "+5.00", "+-", "0.00", "2/2", "0.144", "0.500",
                              "not", "distinguishable", "from", "random"]
    red = next(line for line in text.splitlines() if line.startswith("random") and line.rstrip().endswith(" 4"))
    assert red.split() == ["random", "0.300", "+-", "0.100", "0.900", "+-", "0.000", "4"]
    from PIL import Image

    assert set(report.figures) == {"learning_curves", "budget_panels", "ablation_bars", "batch_redundancy",
                                   "informativeness", "win_tie_loss"}
    assert "pairwise wins/ties/losses" in text and "(no informativeness diagnostics recorded)" in text
    for path in report.figures.values():
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 500 and im.size[1] > 300


def test_report_of_an_empty_directory_names_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="holds no results"):
        build_report(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        build_report(tmp_path / "missing")


# --------------------------------------------------------------------------- significance
def test_paired_tests_match_scipy_and_the_hand_values():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.8, 0.02, 7), rng.normal(0.79, 0.02, 7)
    p_t, p_w = paired_tests(a - b)
    assert p_t == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert p_w == pytest.approx(stats.wilcoxon(a - b).pvalue)
    # n = 2, differences 1 and 3: t = 2 / (sqrt 2 / sqrt 2) = 2 on 1 df
    assert paired_tests(np.array([1.0, 3.0]))[0] == pytest.approx(2 * stats.t.sf(2.0, 1))
    assert all(np.isnan(paired_tests(np.array([0.5]))))
    assert np.isnan(paired_tests(np.zeros(4))[1])


def test_paired_differences_carry_their_p_values():
    d = paired_differences(_table(results_rows()))["entropy"]
    diffs = np.array([0.02, 0.0125]) / 0.3
    assert d.p_t == pytest.approx(stats.ttest_rel(diffs, np.zeros(2)).pvalue)
    assert d.p_wilcoxon == pytest.approx(0.5)


def test_the_verdict_says_plainly_when_a_strategy_does_not_beat_random():
    common = dict(aulc_std=0.01, final_mean=0.0, final_std=0.0, wins=3, n=5)
    assert _verdict(PairedDifference(aulc_mean=0.02, p_t=0.01, **common), "random") == "beats random"
    assert _verdict(PairedDifference(aulc_mean=-0.02, p_t=0.01, **common), "random") == "trails random"
    assert _verdict(PairedDifference(aulc_mean=0.02, p_t=0.2, **common), "random") == \
        "not distinguishable from random"
    one = dict(common, n=1)
    assert _verdict(PairedDifference(aulc_mean=0.02, **one), "random").startswith("too few seeds")


def test_win_tie_loss_counts_significant_pairs_per_group():
    seeds = range(5)
    values = {"random": {s: (0.5, 0.6 + 0.01 * s, 0.7) for s in seeds},
              "entropy": {s: (0.5, 0.7 + 0.01 * s, 0.8 + 0.001 * s) for s in seeds},  # clearly better
              "coreset": {s: (0.5, 0.6 + 0.01 * s + (0.01 if s % 2 else -0.01), 0.7) for s in seeds}}  # a tie
    rows = results_rows(values=values) + results_rows(values=values, budget=100)
    variants, counts = win_tie_loss(_table(rows))
    i = {v: n for n, v in enumerate(variants)}
    assert tuple(counts[i["entropy"], i["random"]]) == (2, 0, 0)  # wins in both budget groups
    assert tuple(counts[i["random"], i["entropy"]]) == (0, 0, 2)
    assert tuple(counts[i["coreset"], i["random"]]) == (0, 2, 0)
    assert counts[i["random"], i["random"]].sum() == 0


def test_win_tie_loss_names_a_variant_alike_in_every_group():
    # entropy_diverse runs with beta=2 at one budget and beta=8 at the other: the two are
    # distinct variants over the whole table, and each group must use those names.
    values = {"random": {s: (0.5, 0.6 + 0.01 * s, 0.7) for s in range(3)},
              "entropy_diverse": {s: (0.5, 0.7 + 0.01 * s, 0.8 + 0.002 * s) for s in range(3)}}
    rows = (results_rows(values=values, params={"entropy_diverse": {"beta": 2.0}})
            + results_rows(values=values, budget=100, params={"entropy_diverse": {"beta": 8.0}}))
    variants, counts = win_tie_loss(_table(rows))
    assert set(variants) == {"random", "entropy_diverse[beta=2.0]", "entropy_diverse[beta=8.0]"}
    i = {v: n for n, v in enumerate(variants)}
    assert tuple(counts[i["entropy_diverse[beta=2.0]"], i["random"]]) == (1, 0, 0)
    assert tuple(counts[i["entropy_diverse[beta=8.0]"], i["random"]]) == (1, 0, 0)
    assert "pairwise wins" in format_report(_table(rows))
