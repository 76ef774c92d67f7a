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
    compare,
    curve_summary,
    format_paired,
    format_report,
    format_table,
    groups,
    incomplete_runs,
    paired_differences,
    paired_tests,
    per_seed,
    redundancy_summary,
    run_coverage,
    variant_labels,
    wilcoxon_min_p,
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


def test_variants_name_the_params_that_differ_between_runs_or_from_the_defaults():
    epochs = DAALParams().epochs + 5
    values = {"daal": {0: (0.5, 0.6, 0.7)}}
    a = results_rows(values=values, params={"daal": {"epochs": epochs, "use_rdis": True}})
    b = results_rows(values={"daal": {0: (0.5, 0.5, 0.5)}}, params={"daal": {"epochs": epochs, "use_rdis": False}})
    for r in b:
        r["experiment"] += "-nordis"
    table = _table(a + b + results_rows(values={"random": VALUES["random"]}))
    labels = variant_labels(table)
    # epochs is the same in both runs but not the default: a run with it is not "daal"
    assert set(labels) == {f"daal[epochs={epochs},use_rdis=True]", f"daal[epochs={epochs},use_rdis=False]", "random"}
    summary = curve_summary(table)
    assert summary[f"daal[epochs={epochs},use_rdis=False]"][1] == pytest.approx([0.5, 0.5, 0.5])
    assert summary[f"daal[epochs={epochs},use_rdis=True]"][1] == pytest.approx([0.5, 0.6, 0.7])


def test_a_non_default_run_never_carries_the_bare_strategy_name():
    tuned = results_rows(values={"daal": {0: (0.5, 0.6, 0.7)}}, params={"daal": {"sigma": 0.25}})
    assert DAALParams().sigma != 0.25
    assert set(variant_labels(_table(tuned))) == {"daal[sigma=0.25]"}
    # a param that only sets when the fit's resume point is written is not part of the name
    assert "checkpoint_every_s" in DAALParams.RUN_LENGTH_PARAMS
    slow = results_rows(values={"daal": {0: (0.5, 0.6, 0.7)}}, params={"daal": {"checkpoint_every_s": 600.0}})
    assert set(variant_labels(_table(slow))) == {"daal"}
    # ... unless two runs in the table differ in it
    both = slow + [dict(r, experiment=r["experiment"] + "-b", seed=1) for r in results_rows(
        values={"daal": {0: (0.5, 0.6, 0.7)}}, params={"daal": {"checkpoint_every_s": 5.0}})]
    assert set(variant_labels(_table(both))) == {"daal[checkpoint_every_s=600.0]", "daal[checkpoint_every_s=5.0]"}


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
                              "10%-40%", "not", "distinguishable", "from", "random"]
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


# --------------------------------------------------------------------------- unequal runs
def _stop_after(rows, strategy, seed, cycles):
    """The rows of ``strategy``'s ``seed`` run cut to its first ``cycles`` cycles: a run
    stopped or still going (its last row selected a batch; the final row never came)."""
    return [r for r in rows if not (r["strategy"] == strategy and r["seed"] == seed and r["cycle"] >= cycles)]


def test_an_incomplete_run_is_paired_only_over_the_common_range_and_listed():
    # entropy seed 1 stopped after 2 of 3 cycles. Paired over 10%-20% only (AULC = the mean of
    # the two values): random 0.60, 0.65; entropy 0.65, 0.675 -> differences 0.05, 0.025.
    rows = _stop_after(results_rows(), "entropy", 1, 2)
    table = _table(rows)
    d = paired_differences(table)["entropy"]
    assert d.fractions == (0.1, 0.2) and d.span == (0.1, 0.4)
    assert d.aulc_mean == pytest.approx(0.0375) and d.aulc_std == pytest.approx(0.0125)
    assert d.final_mean == pytest.approx(0.075)  # at 20%: 0.80 - 0.70 and 0.75 - 0.70
    assert d.n == 2 and d.wins == 2
    # Pairing each run over its own range would have compared entropy's 10%-20% with
    # random's 10%-40% and found a loss for seed 1 that does not exist.
    own = per_seed(table)
    assert own["entropy"][1][0] - own["random"][1][0] < 0 < d.aulc_mean
    assert compare(table, "entropy", "random") == d
    text = format_report(table, "random")
    assert "incomplete runs" in text
    assert "entropy seed 1: 2 of 3 cycles (10%-20%), no final row (still running or stopped)" in text
    line = next(t for t in text.splitlines() if t.startswith("entropy ") and "2/2" in t)
    assert "10%-20% of 10%-40%" in line
    assert [c.describe().split(":")[0] for c in incomplete_runs(table)] == ["entropy seed 1"]
    # the AULC table is over the range every run has, and says so
    assert aulc_summary(table)["random"][0] == pytest.approx(0.625)
    assert "over 10%-20% of 10%-40%, the range every run has" in format_table(table)


def test_a_run_still_going_is_incomplete_against_its_protocol_even_when_all_are_alike():
    # Every run is at cycle 1 of a protocol of 4 (10% -> 40% by 10% of a pool of 1000): no
    # run is shorter than the others, but none has finished.
    protocol = {"initial_fraction": 0.1, "step_fraction": 0.1, "final_fraction": 0.4}
    rows = [r for r in results_rows(protocol=protocol) if r["cycle"] < 2]
    for r in rows:
        r["num_selected"] = 100  # each still selecting: the final row has not come
    cov = run_coverage(_table(rows))
    assert len(cov) == 4 and all(c.incomplete and c.expected == 4 and c.cycles == 2 for c in cov)
    complete = results_rows(protocol={"initial_fraction": 0.1, "step_fraction": 0.1, "final_fraction": 0.4},
                            fractions=(0.1, 0.2, 0.3, 0.4),
                            values={"margin": {0: (0.5, 0.6, 0.7, 0.8)}})
    assert not any(c.incomplete for c in run_coverage(_table(complete)))


def test_a_pair_without_a_common_range_is_refused_with_the_reason():
    rows = _stop_after(results_rows(), "entropy", 0, 1)
    rows = _stop_after(rows, "entropy", 1, 1)  # entropy has 10% only
    table = _table(rows)
    with pytest.raises(ConfigError, match="share 1 labeled fraction"):
        compare(table, "entropy", "random")
    d = paired_differences(table)["entropy"]
    assert d.refused and np.isnan(d.aulc_mean)
    text = format_report(table, "random")
    assert "not compared" in text and "let the incomplete runs finish" in text
    variants, counts = win_tie_loss(table)
    assert counts.sum() == 0  # no outcome from a pair that was not compared
    with pytest.raises(ConfigError, match="share no seed"):
        compare(_table(results_rows(values={"random": {0: VALUES["random"][0]}, "entropy": {1: VALUES["entropy"][1]}})),
                "entropy", "random")


# --------------------------------------------------------------------------- small samples
def test_a_constant_nonzero_difference_is_a_win_and_a_zero_one_a_tie():
    seeds = range(3)
    values = {"random": {s: (0.5, 0.6 + 0.01 * s, 0.7) for s in seeds},
              "entropy": {s: (0.5, 0.65 + 0.01 * s, 0.75) for s in seeds},  # +0.05 at 20% and 40% on every seed
              "margin": {s: (0.5, 0.6 + 0.01 * s, 0.7) for s in seeds}}  # identical to random
    table = _table(results_rows(values=values))
    diffs = paired_differences(table)
    assert diffs["entropy"].aulc_std == pytest.approx(0.0, abs=1e-12) and diffs["entropy"].p_t == 0.0
    assert _verdict(diffs["entropy"], "random").startswith("beats random")
    assert np.isnan(diffs["margin"].p_t)
    assert "a tie" in _verdict(diffs["margin"], "random")
    variants, counts = win_tie_loss(table)
    i = {v: n for n, v in enumerate(variants)}
    assert tuple(counts[i["entropy"], i["random"]]) == (1, 0, 0)
    assert tuple(counts[i["random"], i["entropy"]]) == (0, 0, 1)
    assert tuple(counts[i["margin"], i["random"]]) == (0, 1, 0)
    assert all(np.isnan(paired_tests(np.zeros(3))))
    assert paired_tests(np.full(3, -0.2))[0] == 0.0


def test_the_smallest_attainable_wilcoxon_p_is_stated():
    assert wilcoxon_min_p(5) == pytest.approx(0.0625)
    # the floor is the p of n differences all of one sign
    assert wilcoxon_min_p(6) == pytest.approx(stats.wilcoxon(np.arange(1.0, 7.0)).pvalue)
    seeds = range(5)
    values = {"random": {s: (0.5, 0.6 + 0.013 * s, 0.7) for s in seeds},
              "entropy": {s: (0.5, 0.7 + 0.011 * s, 0.8 + 0.002 * s) for s in seeds}}
    text = format_paired(_table(results_rows(values=values)))
    assert "with n=5 seeds the smallest two-sided Wilcoxon p is 0.0625 (it cannot reach 0.05)" in text


def test_reports_pair_against_random_entropy_and_margin_by_default():
    seeds = range(2)
    values = {"random": {s: (0.5, 0.6 + 0.01 * s, 0.7) for s in seeds},
              "entropy": {s: (0.5, 0.7 + 0.01 * s, 0.8) for s in seeds},
              "margin": {s: (0.5, 0.72 + 0.01 * s, 0.8) for s in seeds},
              "coreset": {s: (0.5, 0.65 + 0.02 * s, 0.75) for s in seeds}}
    text = format_report(_table(results_rows(values=values)))
    for ref in ("random", "entropy", "margin"):
        assert f"paired difference against {ref} over seeds" in text
    assert "paired difference against coreset" not in text
    only = format_report(_table(results_rows(values=values)), "coreset,bald")
    assert "paired difference against coreset" in only and "paired difference against random" not in only
    assert "(bald did not run in this group" in only
    with pytest.raises(ConfigError, match="names no strategy"):
        format_report(_table(results_rows(values=values)), " , ")
