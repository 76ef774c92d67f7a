"""Results table: keyed upserts, the text summary and the learning-curve figure."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from daal_ray.atomic_io import atomic_write_table
from daal_ray.report import aulc, aulc_summary, curve_summary, format_table, plot_learning_curves
from daal_ray.results import SCHEMA, read_results, upsert_rows


def _row(experiment, cycle, value, strategy="random", seed=0, fraction=None, **extra):
    r = {"experiment": experiment, "strategy": strategy, "dataset": "digits", "seed": seed, "budget": 50,
         "cycle": cycle, "num_labeled": 100 + 50 * cycle,
         "labeled_fraction": fraction if fraction is not None else 0.10 + 0.05 * cycle,
         "metric": "accuracy", "value": value, "num_selected": 50 if cycle else 100, "train_s": 1.0, "config": "{}"}
    r.update(extra)
    return r


def _table(rows):
    return pa.Table.from_pylist([{c: r.get(c) for c in SCHEMA.names} for r in rows], schema=SCHEMA)


def _key_values(table):
    return {(r["experiment"], r["cycle"]): r["value"] for r in table.to_pylist()}


# --------------------------------------------------------------------------- upsert
def test_read_missing_results_is_empty(tmp_path):
    t = read_results(tmp_path / "results.parquet")
    assert t.num_rows == 0 and t.schema == SCHEMA
    assert read_results(tmp_path).num_rows == 0  # a directory without results.parquet


def test_upsert_inserts_then_replaces_same_key(tmp_path):
    path = tmp_path / "results.parquet"
    upsert_rows(path, [_row("a", 0, 0.5), _row("a", 1, 0.6), _row("b", 0, 0.7, strategy="entropy")])
    assert _key_values(read_results(path)) == {("a", 0): 0.5, ("a", 1): 0.6, ("b", 0): 0.7}

    written = upsert_rows(path, [_row("a", 1, 0.65, train_s=9.0)])
    on_disk = read_results(path)
    assert written.equals(on_disk)
    assert on_disk.num_rows == 3
    assert _key_values(on_disk) == {("a", 0): 0.5, ("a", 1): 0.65, ("b", 0): 0.7}
    replaced = [r for r in on_disk.to_pylist() if (r["experiment"], r["cycle"]) == ("a", 1)]
    assert len(replaced) == 1 and replaced[0]["train_s"] == 9.0
    others = [r for r in on_disk.to_pylist() if r["experiment"] == "b"]
    assert others[0]["strategy"] == "entropy"


def test_upsert_same_cycle_other_experiment_is_a_new_row(tmp_path):
    path = tmp_path / "results.parquet"
    upsert_rows(path, [_row("a", 0, 0.5)])
    upsert_rows(path, [_row("b", 0, 0.9)])
    upsert_rows(path, [_row("a", 2, 0.8)])
    assert _key_values(read_results(path)) == {("a", 0): 0.5, ("b", 0): 0.9, ("a", 2): 0.8}


def test_upsert_is_idempotent_and_sorted(tmp_path):
    path = tmp_path / "results.parquet"
    rows = [_row("b", 1, 0.3), _row("a", 1, 0.2), _row("b", 0, 0.1), _row("a", 0, 0.0)]
    first = upsert_rows(path, rows)
    second = upsert_rows(path, rows)
    assert first.equals(second) and second.num_rows == 4
    keys = list(zip(second["experiment"].to_pylist(), second["cycle"].to_pylist()))
    assert keys == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]


def test_upsert_leaves_no_temp_files(tmp_path):
    path = tmp_path / "results.parquet"
    upsert_rows(path, [_row("a", 0, 0.5)])
    upsert_rows(path, [_row("a", 0, 0.6)])
    assert os.listdir(tmp_path) == ["results.parquet"]


def test_missing_columns_are_null(tmp_path):
    path = tmp_path / "results.parquet"
    t = upsert_rows(path, [_row("a", 0, 0.5)])
    assert t["cycle_s"].to_pylist() == [None]


# --------------------------------------------------------------------------- summary
def _hand_table():
    return _table([
        _row("r0", 0, 0.80, strategy="random", seed=0, fraction=0.10),
        _row("r1", 0, 0.90, strategy="random", seed=1, fraction=0.10),
        _row("r0", 1, 0.85, strategy="random", seed=0, fraction=0.15),
        _row("r1", 1, 0.95, strategy="random", seed=1, fraction=0.15),
        _row("e0", 0, 0.70, strategy="entropy", seed=0, fraction=0.10),
    ])


def test_curve_summary():
    s = curve_summary(_hand_table())
    assert set(s) == {"random", "entropy"}
    fr, mean, std, n = s["random"]
    assert fr.tolist() == [0.10, 0.15]
    assert mean == pytest.approx([0.85, 0.90])
    assert std == pytest.approx([0.05, 0.05])
    assert n.tolist() == [2, 2]
    fr, mean, std, n = s["entropy"]
    assert fr.tolist() == [0.10] and mean == pytest.approx([0.70]) and n.tolist() == [1]


def test_format_table_mean_std_strings():
    text = format_table(_hand_table())
    lines = text.splitlines()
    assert lines[0] == "accuracy (mean +- std over seeds) at each labeled fraction"
    header = lines[1].split()
    assert header == ["strategy", "10%", "15%"]
    blank = lines.index("")
    body = {line.split()[0]: line for line in lines[2:blank]}
    assert set(body) == {"random", "entropy"}
    assert lines[blank + 1] == "area under the learning curve (mean +- std over seeds)"
    assert {line.split()[0] for line in lines[blank + 2:]} == {"random", "entropy"}
    assert "85.00 +- 5.00" in body["random"] and "90.00 +- 5.00" in body["random"]
    assert body["random"].index("85.00") < body["random"].index("90.00")
    assert "70.00 +- 0.00" in body["entropy"]
    assert body["entropy"].rstrip().endswith("-")  # no entropy result at 15%
    # Columns line up under the header.
    assert len(lines[1]) == len(body["random"])


def test_format_table_empty():
    assert format_table(SCHEMA.empty_table()) == "(no results)"


# --------------------------------------------------------------------------- plot
def test_plot_learning_curves_writes_png(tmp_path):
    from PIL import Image

    out = plot_learning_curves(_hand_table(), tmp_path / "figs" / "curves.png", title="test")
    assert out == tmp_path / "figs" / "curves.png"
    assert out.stat().st_size > 1000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(out) as im:
        w, h = im.size
        assert w > 100 and h > 100


def test_aulc_by_hand():
    # trapezoids over fractions 0.1, 0.2, 0.4 with values 0.5, 0.7, 0.9:
    # (0.6 * 0.1 + 0.8 * 0.2) / 0.3 = 0.22 / 0.3
    assert aulc(np.array([0.4, 0.1, 0.2]), np.array([0.9, 0.5, 0.7])) == pytest.approx(0.22 / 0.3)
    assert aulc(np.array([0.1]), np.array([0.8])) == pytest.approx(0.8)


def test_aulc_summary_over_seeds():
    import pyarrow as pa


    rows = []
    for seed, top in ((0, 0.9), (1, 0.7)):
        for f, v in ((0.1, 0.5), (0.2, top)):
            rows.append({"strategy": "x", "seed": seed, "labeled_fraction": f, "value": v})
    summary = aulc_summary(pa.Table.from_pylist(rows))
    mean, std, n = summary["x"]
    assert n == 2 and mean == pytest.approx((0.7 + 0.6) / 2) and std == pytest.approx(0.05)


def test_file_written_before_the_redundancy_columns_still_reads(tmp_path):
    import math

    import pyarrow.parquet as pq

    old_schema = pa.schema([f for f in SCHEMA if f.name not in ("batch_cosine", "batch_class_entropy")])
    rows = (_row("a", 0, 0.5), _row("a", 1, 0.6))
    old = pa.Table.from_pylist([{c: r.get(c) for c in old_schema.names} for r in rows], schema=old_schema)
    pq.write_table(old, tmp_path / "results.parquet")
    t = read_results(tmp_path)
    assert t.schema == SCHEMA and t["value"].to_pylist() == [0.5, 0.6]
    assert all(math.isnan(v) for v in t["batch_cosine"].to_pylist() + t["batch_class_entropy"].to_pylist())
    # and a new row goes in beside them
    upsert_rows(tmp_path / "results.parquet", [_row("a", 2, 0.7, batch_cosine=0.25)])
    assert read_results(tmp_path)["batch_cosine"].to_pylist()[2] == 0.25


@pytest.mark.faults
# --------------------------------------------------------------------------- torn reads
def test_a_reader_never_sees_a_torn_or_mixed_generation_while_the_file_is_replaced(tmp_path):
    """One thread replaces results.parquet a thousand times (each generation g holds g % 7 + 1
    rows, every value g); another reads it all the while. Every read is one whole generation."""
    import threading

    path = tmp_path / "results.parquet"
    upsert_rows(path, [_row("a", 0, 0.0)])
    done = threading.Event()
    errors, reads = [], []

    def write() -> None:
        try:
            for g in range(1, 1001):
                table = _table([_row("a", c, float(g)) for c in range(g % 7 + 1)])
                atomic_write_table(table, path)
        finally:
            done.set()

    def read() -> None:
        while not done.is_set():
            try:
                rows = read_results(path).to_pylist()
            except Exception as exc:  # a torn read
                errors.append(repr(exc))
                continue
            values = {r["value"] for r in rows}
            reads.append((len(rows), values))

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(reads) > 50, "the reader ran alongside the writer"
    for n, values in reads:
        assert len(values) == 1, f"a read mixed generations: {values}"
        g = int(values.pop())
        assert g == 0 and n == 1 or n == g % 7 + 1
