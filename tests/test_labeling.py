"""Labeling with people: init, select, export, import, status on small generated images.

Images are 12x12 PNGs of three colours (red, green, blue) with noise, so a small CNN tells
them apart after a few epochs and every image's true class is in its file name. Most
tests need no Ray: a project without labels draws its first batch at random (no model).
The loop tests train through Ray Train: in-process (``num_workers=0``) for the two-cycle
loop, and one selection on the shipped default (one Ray Train worker).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from labeling_helpers import CLASSES, FAST, RGB, _images, _png, _state, _truth, make_cold_project  # noqa: F401

from daal_ray.cli import main
from daal_ray.data.imagefolder import path_sample_id
from daal_ray.errors import ConfigError, DataError, PoolStateError, RunLockedError
from daal_ray.labeling import (
    LabelingError,
    ProblemsError,
    import_labels,
    init_project,
    open_project,
    project_status,
    select_next_batch,
)
from daal_ray.pool import PoolState


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_labels(path: Path, rows: list[tuple]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sample_id", "label"])
        w.writerows(rows)
    return path


def _batch_rows(project: Path, cycle: int) -> list[dict]:
    with open(project / "batches" / f"batch_{cycle:03d}.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _label_studio_export(tasks: list[dict], label_of) -> list[dict]:
    """What Label Studio's JSON export gives for ``tasks`` labeled with one Choices tag."""
    return [{"id": 500 + i, "data": t["data"], "annotations": [
        {"id": 900 + i, "was_cancelled": False, "result": [
            {"from_name": "class", "to_name": "image", "type": "choices", "value": {"choices": [label_of(t)]}}]}]}
        for i, t in enumerate(tasks)]


@pytest.fixture
def cold_project(tmp_path):
    """A project of 24 unlabeled images (a flat folder) with a random first batch of 6 pending."""
    return make_cold_project(tmp_path)


# ====================================================================== PoolState partial commit
def _pending_state() -> PoolState:
    state = PoolState(np.arange(20, dtype=np.int64) * 5 + 1, "r")
    state.propose(0, [1, 6, 11], expected_size=3)
    state.commit(0, [1, 6, 11], [0, 1, 0], strategy="initial")
    state.propose(1, [16, 21, 26, 31], expected_size=4)
    return state


def test_partial_commit_labels_part_and_keeps_the_rest_pending(tmp_path):
    state = _pending_state()
    assert state.commit(1, [26, 16], [2, 1], strategy="entropy", partial=True)
    assert state.pending_cycle == 1 and state.next_cycle == 1, "the cycle stays open"
    assert state.pending_ids().tolist() == [21, 31]
    assert state.labeled_ids().tolist() == [1, 6, 11, 16, 26]
    assert state.label[state.sample_ids == 16][0] == 1 and state.label[state.sample_ids == 26][0] == 2
    state.save(tmp_path / "s.parquet")  # invariants hold with a partly labeled batch
    again = PoolState.load(tmp_path / "s.parquet")
    assert again.pending_ids().tolist() == [21, 31]
    # the rest, by a plain commit: the cycle closes with all four ids
    assert again.commit(1, [31, 21], [0, 0], strategy="entropy")
    assert again.pending_cycle is None and again.next_cycle == 2
    assert again.history[1].num_added == 4 and again.history[1].num_labeled == 7
    assert sorted(again.ids_of_cycle(1).tolist()) == [16, 21, 26, 31]
    again.check()


def test_partial_commit_is_idempotent_and_labels_are_final():
    state = _pending_state()
    assert state.commit(1, [16], [1], partial=True)
    assert not state.commit(1, [16], [1], partial=True), "repeating a partial commit changes nothing"
    with pytest.raises(PoolStateError, match="other labels"):
        state.commit(1, [16], [2], partial=True)
    with pytest.raises(PoolStateError, match="neither pending nor labeled"):
        state.commit(1, [36], [0], partial=True)
    with pytest.raises(PoolStateError, match="nothing is pending"):
        state.commit(2, [36], [0], partial=True)
    assert state.commit(1, [21, 26, 31], [0, 1, 2], partial=True)  # the last ids close the cycle
    assert state.pending_cycle is None and state.history[1].num_added == 4
    assert not state.commit(1, [16, 21], [1, 0], partial=True), "a committed cycle: nothing new"


# ====================================================================== init
def test_init_from_folder_commits_seeds_as_cycle_0_and_holds_out_a_test_set(tmp_path):
    images = _images(tmp_path / "imgs", labeled=5, unlabeled=3)
    done = init_project(tmp_path / "p", classes=CLASSES, images=images, settings={**FAST, "test_fraction": 0.4})
    # floor(0.4 * 5) = 2 of each class's 5 labeled images are held out
    assert (done.num_pool, done.num_labeled, done.num_test) == (15 + 9 - 6, 9, 6)
    project = open_project(tmp_path / "p")
    state = _state(tmp_path / "p")
    assert state.next_cycle == 1 and state.history[0].strategy == "initial" and state.pending_cycle is None
    paths = dict(zip(project.pool_ids.tolist(), project.dataset.paths("train", project.pool_ids)))
    for sid, lab in zip(state.labeled_ids().tolist(), state.labeled_labels().tolist()):
        assert paths[sid].parent.name == CLASSES[lab], "a seed carries its folder's class"
    for sid in state.unlabeled_ids().tolist():
        assert paths[sid].parent == images
    test_ids = project.dataset.sample_ids("test")
    assert np.intersect1d(test_ids, project.pool_ids).size == 0
    test_labels = project.dataset.targets("test", test_ids)
    assert np.bincount(test_labels, minlength=3).tolist() == [2, 2, 2]
    for sid, lab, p in zip(test_ids, test_labels, project.dataset.paths("test", test_ids)):
        assert p.parent.name == CLASSES[lab] and sid == path_sample_id(p.relative_to(images).as_posix())
    cfg = project.config
    assert cfg.classes == CLASSES and cfg.image_root == str(images.resolve()) and cfg.train.epochs == 4
    with pytest.raises(LabelingError, match="already"):
        init_project(tmp_path / "p", classes=CLASSES, images=images)


def test_init_from_manifests_with_relative_and_absolute_paths(tmp_path):
    images = _images(tmp_path / "imgs", labeled=2, unlabeled=2)
    files = sorted(images.rglob("*.png"))
    rows = [{"path": (f.relative_to(tmp_path).as_posix() if i % 2 else str(f)),
             "label": f.parent.name if f.parent != images else ""} for i, f in enumerate(files)]
    with open(tmp_path / "m.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["path", "label"])
        w.writeheader()
        w.writerows(rows)
    pq.write_table(pa.table({"path": [r["path"] for r in rows],
                             "label": [r["label"] or None for r in rows]}), tmp_path / "m.parquet")
    for name in ("m.csv", "m.parquet"):
        done = init_project(tmp_path / f"p_{name}", classes=CLASSES, manifest=tmp_path / name,
                            settings={**FAST, "test_fraction": 0.0})
        assert (done.num_pool, done.num_labeled, done.num_test) == (12, 6, 0)
        project = open_project(tmp_path / f"p_{name}")
        expect = sorted(path_sample_id(f.relative_to(tmp_path).as_posix()) for f in files)
        assert project.pool_ids.tolist() == expect, "ids hash the path relative to the manifest's folder"
        state = _state(tmp_path / f"p_{name}")
        got = {p.name: CLASSES[lab] for p, lab in zip(project.dataset.paths("train", state.labeled_ids()),
                                                      state.labeled_labels())}
        assert got == {f.name: f.parent.name for f in files if f.parent != images}


def test_init_names_every_bad_row_and_writes_nothing(tmp_path):
    images = _images(tmp_path / "imgs", labeled=1, unlabeled=1)
    (images / "broken.png").write_bytes(b"not a png at all")
    good = sorted(images.rglob("*.png"))[0]
    with open(tmp_path / "m.csv", "w", newline="") as fh:
        fh.write("path,label\n")
        fh.write("imgs/red/red_s0.png,red\n")     # line 2
        fh.write(f"{images / 'red' / 'red_s0.png'},red\n")  # line 3: the same image again
        fh.write("imgs/broken.png,\n")             # line 4: unreadable
        fh.write("imgs/green/green_s0.png,purple\n")  # line 5: not a class
        fh.write("imgs/missing.png,blue\n")        # line 6: no such file
        fh.write(f"{good},red,extra\n")            # line 7: too many fields
    project = tmp_path / "p"
    with pytest.raises(ProblemsError) as ei:
        init_project(project, classes=CLASSES, manifest=tmp_path / "m.csv")
    text = str(ei.value)
    assert len(ei.value.problems) == 5, ei.value.problems
    assert "line 7: more fields than the header" in text
    assert "line 3" in text and "same image as line 2" in text
    assert "line 4" in text and "unreadable image" in text
    assert "line 5" in text and "'purple' is not a class" in text
    assert "line 6" in text and "does not exist" in text
    assert not project.exists(), "nothing is written when the input has problems"
    (images / "cats").mkdir()
    with pytest.raises(ProblemsError, match="'cats' is not a class"):
        init_project(project, classes=CLASSES, images=images)
    with pytest.raises(ConfigError, match="names a class twice"):
        init_project(project, classes=("a", "b", "a"), images=images)
    with pytest.raises(ConfigError, match="unknown model 'resnet9000'"):
        init_project(project, classes=CLASSES, images=images, settings={"train": {"model": "resnet9000"}})
    with pytest.raises(ConfigError, match="unknown strategy 'oracle'"):
        init_project(project, classes=CLASSES, images=images, settings={"acquisition": {"strategy": "oracle"}})
    assert not project.exists()


# ====================================================================== select / import without a model
def test_cold_start_draws_a_random_batch_and_never_selects_twice(cold_project):
    project, first = cold_project
    state = _state(project)
    assert state.pending_cycle == 0 and sorted(state.pending_ids().tolist()) == sorted(first.sample_ids.tolist())
    assert not (project / "checkpoints").exists(), "no labels: no model is trained"
    before = _digest(project / "pool_state.parquet")
    with pytest.raises(LabelingError, match="batch 0 is pending"):
        select_next_batch(project)
    assert _digest(project / "pool_state.parquet") == before
    (project / "batches" / "batch_000.csv").unlink()
    again = select_next_batch(project, reexport=True)
    assert again.reexported and sorted(again.sample_ids.tolist()) == sorted(first.sample_ids.tolist())
    assert (project / "batches" / "batch_000.csv").is_file()
    assert _digest(project / "pool_state.parquet") == before


def test_a_crash_before_the_batch_is_recorded_spends_nothing(tmp_path, monkeypatch):
    import daal_ray.driver as driver_mod

    rng = np.random.default_rng(5)
    for c in CLASSES:
        for i in range(4):
            _png(tmp_path / "flat" / f"{c}_{i}.png", c, rng)
    project = tmp_path / "proj"
    init_project(project, classes=CLASSES, images=tmp_path / "flat", settings={**FAST, "budget": 5})
    real_propose = driver_mod.PoolKeeper.propose

    def crash(*args, **kwargs):
        raise RuntimeError("injected crash before propose")

    monkeypatch.setattr(driver_mod.PoolKeeper, "propose", crash)
    with pytest.raises(RuntimeError, match="injected crash"):
        select_next_batch(project)
    monkeypatch.setattr(driver_mod.PoolKeeper, "propose", real_propose)
    state = _state(project)
    assert state.pending_cycle is None and state.next_cycle == 0 and state.labeled_ids().size == 0
    assert not (project / "batches" / "batch_000.csv").exists(), "nothing is handed out before it is recorded"
    assert project_status(project).budget_used == 0
    out = select_next_batch(project)  # the re-run selects and records the batch once
    assert out.sample_ids.size == 5 and sorted(_state(project).pending_ids().tolist()) == sorted(out.sample_ids.tolist())
    assert project_status(project).budget_used == 5


def test_import_reports_every_problem_by_sample_id(cold_project, tmp_path, capsys):
    project, batch = cold_project
    rows = _batch_rows(project, 0)
    ids = [int(r["sample_id"]) for r in rows]
    test_outsider = next(i for i in _state(project).unlabeled_ids().tolist() if i not in ids)
    bad = _write_labels(tmp_path / "bad.csv", [
        (ids[0], _truth(rows[0]["path"])),
        (ids[1], "purple"),                       # unknown class
        (test_outsider, "red"),                   # in the pool, not in the batch
        (42, "red"),                              # not an image of the project
        ("x17", "red"),                           # malformed id
        (ids[2], ""),                             # empty label
        (ids[3], "red"), (ids[3], "blue"),        # one id, two labels
    ])                                            # ids[4], ids[5] missing
    before = _digest(project / "pool_state.parquet")
    with pytest.raises(ProblemsError) as ei:
        import_labels(project, bad)
    text = str(ei.value)
    for needle in (f"sample_id {ids[1]} (line 3): unknown class 'purple'",
                   f"sample_id {test_outsider} (line 4): not in the pending batch",
                   "sample_id 42 (line 5): not in the pending batch (not an image of this project)",
                   "line 6: sample_id 'x17' is not an integer",
                   f"sample_id {ids[2]} (line 7): the label is empty",
                   f"sample_id {ids[3]}: conflicting labels 'red' (line 8), 'blue' (line 9)",
                   f"sample_id {ids[4]}: pending in batch 0 but not labeled",
                   f"sample_id {ids[5]}: pending in batch 0 but not labeled"):
        assert needle in text, (needle, text)
    assert _digest(project / "pool_state.parquet") == before, "nothing is committed while a problem remains"
    assert main(["import", str(project), str(bad), "--partial"]) == 2
    err = capsys.readouterr().err
    assert "daal-ray: error:" in err and f"sample_id {ids[1]}" in err and f"sample_id {ids[4]}" not in err
    with open(tmp_path / "short.csv", "w") as fh:
        fh.write(f"sample_id,label\n{ids[0]}\n{ids[1]},red,extra\n")
    with pytest.raises(ProblemsError) as ei:
        import_labels(project, tmp_path / "short.csv", partial=True)
    assert f"sample_id {ids[0]} (line 2): fewer fields" in str(ei.value)
    assert f"sample_id {ids[1]} (line 3): more fields" in str(ei.value)
    (tmp_path / "h.csv").write_text(f"id,class\n{ids[0]},red\n")
    with pytest.raises(DataError, match="must name the column sample_id and a label column"):
        import_labels(project, tmp_path / "h.csv")
    assert _digest(project / "pool_state.parquet") == before


def test_partial_import_leaves_the_rest_pending_and_importing_twice_changes_nothing(cold_project, tmp_path):
    project, batch = cold_project
    rows = _batch_rows(project, 0)
    part = _write_labels(tmp_path / "part.csv", [(r["sample_id"], _truth(r["path"])) for r in rows[:4]])
    with pytest.raises(ProblemsError, match="2 of 6 pending id") as ei:
        import_labels(project, part)
    assert len(ei.value.problems) == 2 and ": 2 problem(s)," in str(ei.value)  # the advice is not counted
    first = import_labels(project, part, partial=True)
    assert (first.committed, first.still_pending, first.cycle_complete) == (4, 2, False)
    state = _state(project)
    assert state.pending_cycle == 0 and sorted(state.pending_ids().tolist()) == sorted(int(r["sample_id"]) for r in rows[4:])
    assert state.labeled_ids().size == 4
    digest = _digest(project / "pool_state.parquet")
    second = import_labels(project, part, partial=True)
    assert not second.changed and second.already == 4
    assert _digest(project / "pool_state.parquet") == digest, "a second import changes no byte"
    assert main(["import", str(project), str(part), "--partial"]) == 0
    assert _digest(project / "pool_state.parquet") == digest
    status = project_status(project)
    assert (status.pending_cycle, status.pending_size, status.pending_labeled) == (0, 6, 4)
    # the whole file (old and new labels) completes the batch without --partial
    full = _write_labels(tmp_path / "full.csv", [(r["sample_id"], _truth(r["path"])) for r in rows])
    done = import_labels(project, full)
    assert (done.committed, done.already, done.cycle_complete) == (2, 4, True)
    state = _state(project)
    assert state.pending_cycle is None and state.next_cycle == 1 and state.history[0].num_added == 6
    assert state.history[0].strategy == "random"
    truth = {int(r["sample_id"]): CLASSES.index(_truth(r["path"])) for r in rows}
    assert dict(zip(state.labeled_ids().tolist(), state.labeled_labels().tolist())) == truth
    digest = _digest(project / "pool_state.parquet")
    assert not import_labels(project, full).changed
    assert _digest(project / "pool_state.parquet") == digest
    wrong = _write_labels(tmp_path / "wrong.csv", [(rows[0]["sample_id"], "blue" if _truth(rows[0]["path"]) != "blue"
                                                   else "red")])
    with pytest.raises(ProblemsError, match="labels are final"):
        import_labels(project, wrong)


def test_label_studio_export_maps_back_through_sample_id(cold_project, tmp_path):
    project, batch = cold_project
    tasks = json.loads((project / "batches" / "batch_000_label_studio.json").read_text())
    assert [t["data"]["sample_id"] for t in tasks] == [str(i) for i in batch.sample_ids.tolist()]
    export = _label_studio_export(tasks, lambda t: _truth(t["data"]["path"]))
    export[0]["annotations"].append({"id": 1, "was_cancelled": True, "result": [  # skipped: cancelled
        {"type": "choices", "value": {"choices": ["purple"]}}]})
    export[1]["annotations"] = []  # not labeled yet
    export[2]["annotations"].append({"id": 2, "result": [{"type": "choices", "value": {"choices": ["purple"]}}]})
    export.append({"id": 77, "data": {"image": "x.png"}, "annotations": []})
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    with pytest.raises(ProblemsError) as ei:
        import_labels(project, path, partial=True)
    text = str(ei.value)
    sid2 = tasks[2]["data"]["sample_id"]
    assert f"sample_id {sid2}: conflicting labels" in text and "purple" in text
    assert "task 77: no sample_id" in text
    assert len(ei.value.problems) == 2, ei.value.problems
    export[2]["annotations"].pop()
    export.pop()
    path.write_text(json.dumps(export))
    res = import_labels(project, path, partial=True)
    assert (res.committed, res.still_pending) == (5, 1)
    missing = int(tasks[1]["data"]["sample_id"])
    assert _state(project).pending_ids().tolist() == [missing]


def test_status_counts_budget_used_and_left(cold_project, capsys):
    project, _ = cold_project
    cfg_path = project / "project.json"
    doc = json.loads(cfg_path.read_text())
    doc["config"]["total_budget"] = 10
    cfg_path.write_text(json.dumps(doc))
    status = project_status(project)
    assert (status.budget_used, status.budget_left, status.num_labeled, status.model) == (6, 4, 0, None)
    assert main(["status", str(project)]) == 0
    out = capsys.readouterr().out
    assert "6 labels asked of people (10 total, 4 left)" in out and "batch 0: 6 ids, 0 labeled so far" in out


def test_help_lists_the_labeling_verbs(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for verb in ("init", "select", "import", "status"):
        assert f"    {verb} " in out


def test_a_held_lock_refuses_a_second_writer(cold_project, tmp_path):
    import fcntl

    project, batch = cold_project
    labels = _write_labels(tmp_path / "l.csv", [(r["sample_id"], _truth(r["path"])) for r in _batch_rows(project, 0)])
    before = _digest(project / "pool_state.parquet")
    with open(project / ".lock", "a+") as held:  # a live writer: flock conflicts across open files
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(RunLockedError):
            select_next_batch(project, reexport=True)
        with pytest.raises(RunLockedError):
            import_labels(project, labels)
    assert _digest(project / "pool_state.parquet") == before
    assert import_labels(project, labels).cycle_complete, "the lock is free again once its holder lets go"


# ====================================================================== the loop, with Ray
@pytest.mark.ray
@pytest.mark.slow
def test_two_cycles_with_people(ray_session, tmp_path):
    """init -> select -> label a CSV -> import -> select (trains on the new labels) ->
    label in Label Studio -> import its export -> status."""
    images = _images(tmp_path / "imgs", labeled=4, unlabeled=8)
    project = tmp_path / "proj"
    assert main(["init", str(project), "--images", str(images), "--classes", ",".join(CLASSES), "--budget", "6",
                 "--test-fraction", "0.25", "--epochs", "4", "--image-size", "12", "--num-workers", "0",
                 "--strategy", "entropy", "--image-root-url", "/data/local-files/?d=imgs/"]) == 0
    state0 = _state(project)
    seeds = state0.labeled_ids()
    assert seeds.size == 9  # 4 per class, 1 held out

    # ---- cycle 1: select, check the exports, label by CSV, import
    out = select_next_batch(project, num_workers=0)
    assert out.cycle == 1 and out.strategy == "entropy" and out.sample_ids.size == 6
    ids1 = out.sample_ids
    assert np.intersect1d(ids1, seeds).size == 0
    meta0 = json.loads((project / "checkpoints" / "cycle_000" / "meta.json").read_text())
    assert meta0["num_labeled"] == 9
    rows = _batch_rows(project, 1)
    table = pq.read_table(project / "batches" / "batch_001.parquet")
    assert table.column_names == ["sample_id", "path", "score", "batch_id"]
    assert list(rows[0]) == ["sample_id", "path", "score", "batch_id"]
    assert [int(r["sample_id"]) for r in rows] == table["sample_id"].to_pylist() == ids1.tolist()
    assert [r["path"] for r in rows] == table["path"].to_pylist()
    assert set(table["batch_id"].to_pylist()) == {1} and {r["batch_id"] for r in rows} == {"1"}
    scores = table["score"].to_numpy()
    assert np.all(np.diff(scores) <= 0), "pick order: highest entropy first"
    assert np.allclose([float(r["score"]) for r in rows], scores)
    assert np.all(scores > 0) and np.all(scores <= np.log(3) + 1e-6)
    for r in rows:
        assert Path(r["path"]).parent == images.resolve(), "only unlabeled images are selected"
        assert path_sample_id(Path(r["path"]).relative_to(images.resolve()).as_posix()) == int(r["sample_id"])
    tasks = json.loads((project / "batches" / "batch_001_label_studio.json").read_text())
    assert [t["data"]["sample_id"] for t in tasks] == [r["sample_id"] for r in rows]
    assert [t["data"]["image"] for t in tasks] == [f"/data/local-files/?d=imgs/{Path(r['path']).name}" for r in rows]
    assert len({t["id"] for t in tasks}) == len(tasks) and all(set(t) == {"id", "data"} for t in tasks)
    assert sorted(_state(project).pending_ids().tolist()) == sorted(ids1.tolist())
    with pytest.raises(LabelingError, match="pending"):
        select_next_batch(project, num_workers=0)

    labels1 = _write_labels(tmp_path / "batch1.csv", [(r["sample_id"], _truth(r["path"])) for r in rows])
    assert main(["import", str(project), str(labels1)]) == 0
    digest = _digest(project / "pool_state.parquet")
    assert main(["import", str(project), str(labels1)]) == 0
    assert _digest(project / "pool_state.parquet") == digest, "importing the same file twice changes nothing"

    # ---- cycle 2: trains on seeds + batch 1, selects none of them
    out2 = select_next_batch(project, num_workers=0)
    meta1 = json.loads((project / "checkpoints" / "cycle_001" / "meta.json").read_text())
    assert meta1["num_labeled"] == 15, "the new labels are in the training set"
    assert meta1["value"] == pytest.approx(1.0), "three colours: the held-out images are classified right"
    ids2 = out2.sample_ids
    assert out2.cycle == 2 and ids2.size == 6
    assert np.intersect1d(ids2, np.concatenate([seeds, ids1])).size == 0, "labeled images are never selected"

    # ---- label batch 2 in Label Studio: its export holds batch 1's tasks too (same labels)
    tasks2 = json.loads((project / "batches" / "batch_002_label_studio.json").read_text())
    export = _label_studio_export(tasks + tasks2, lambda t: _truth(t["data"]["path"]))
    (tmp_path / "ls.json").write_text(json.dumps(export))
    res = import_labels(project, tmp_path / "ls.json")
    assert (res.cycle, res.committed, res.already, res.cycle_complete) == (2, 6, 6, True)
    state = _state(project)
    assert state.next_cycle == 3 and state.pending_cycle is None and state.labeled_ids().size == 21
    assert [r.strategy for r in state.history] == ["initial", "entropy", "entropy"]
    status = project_status(project)
    assert status.budget_used == 12 and status.model["cycle"] == 1 and status.num_test == 3
    assert any("held-out test accuracy 1.0000 (3 images)" in line for line in status.lines())


@pytest.mark.cluster
@pytest.mark.ray
@pytest.mark.slow
def test_select_as_shipped_and_too_few_cpus_refused_at_once(ray_session, tmp_path, capsys):
    """``select`` as shipped (one Ray Train worker). With one logical CPU the worker held it
    and the pool scoring it started waited forever; now ``select --num-cpus 1`` (in its own
    process and Ray instance, under a timeout) refuses at once naming the fix, and nothing is
    selected. The same project then selects on the suite's Ray."""
    images = _images(tmp_path / "imgs", labeled=3, unlabeled=4)
    project = tmp_path / "proj"
    assert main(["init", str(project), "--images", str(images), "--classes", ",".join(CLASSES),
                 "--epochs", "2", "--budget", "5"]) == 0
    cfg = open_project(project).config
    assert cfg.scale.num_workers == 1 and cfg.acquisition.strategy == "entropy"
    env = {**os.environ, "DAAL_RAY_DASHBOARD": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    refused = subprocess.run([sys.executable, "-m", "daal_ray.cli", "select", str(project), "--num-cpus", "1"],
                             env=env, capture_output=True, text=True, timeout=240)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "would wait forever" in refused.stderr and "--num-cpus 3 or more" in refused.stderr, refused.stderr[-2000:]
    assert _state(project).pending_cycle is None, "nothing was selected"
    capsys.readouterr()
    assert main(["select", str(project)]) == 0
    assert "batch 1: 5 images selected by entropy" in capsys.readouterr().out
    assert _state(project).pending_ids().size == 5
