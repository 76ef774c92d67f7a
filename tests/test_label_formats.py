"""``daal-ray import`` of Label Studio's three export formats, and the consensus rule.

The records are what Label Studio 1.23 writes for tasks daal-ray exported (JSON: tasks
with ``data`` and ``annotations``; JSON-MIN: one flat record per annotation, the Choices
value at the top level under the tag's name; CSV: the same records as columns). No Ray:
the project's first batch is a random cold start.
"""

from __future__ import annotations

import csv
import json

import pytest
from labeling_helpers import CLASSES, _state, _truth, make_cold_project

from daal_ray.cli import main
from daal_ray.errors import DataError
from daal_ray.labeling import ProblemsError, import_labels
from daal_ray.labeling.labels import LabelEntry, choices_name, decide
from daal_ray.labeling.project import LABEL_CONFIG_FILE


@pytest.fixture
def cold_project(tmp_path):
    return make_cold_project(tmp_path)


def _tasks(project):
    return json.loads((project / "batches" / "batch_000_label_studio.json").read_text())


def _full(task, annotations):
    """A task of the full JSON export with ``annotations``: (label, annotator, updated_at)."""
    return {"id": task["id"], "data": task["data"], "annotations": [
        {"id": 100 * task["id"] + i, "was_cancelled": False, "completed_by": who, "updated_at": at,
         "created_at": at, "result": [{"from_name": "class", "to_name": "image", "type": "choices",
                                       "value": {"choices": [label]}}]}
        for i, (label, who, at) in enumerate(annotations)]}


def _min_records(task, annotations, name="class"):
    """JSON-MIN records of ``task``: one per annotation, the task's data at the top level."""
    return [{**task["data"], "id": task["id"], name: label, "annotator": who, "annotation_id": 7 + i,
             "created_at": at, "updated_at": at, "lead_time": 3.5}
            for i, (label, who, at) in enumerate(annotations)] or [{**task["data"], "id": task["id"]}]


T0, T1, T2 = "2026-11-30T10:00:00.000000Z", "2026-11-30T11:00:00.000000Z", "2026-11-30T12:00:00.000000Z"


def test_json_min_export_imports_with_sample_id_at_the_top_level(cold_project, tmp_path):
    project, batch = cold_project
    tasks = _tasks(project)
    records = []
    for t in tasks[:5]:
        records += _min_records(t, [(_truth(t["data"]["path"]), 1, T0)])
    records += _min_records(tasks[5], [])  # not annotated yet: no label field
    path = tmp_path / "min.json"
    path.write_text(json.dumps(records))
    with pytest.raises(ProblemsError, match="1 of 6 pending id"):
        import_labels(project, path)
    res = import_labels(project, path, partial=True)
    assert (res.committed, res.still_pending) == (5, 1)
    state = _state(project)
    truth = {int(t["data"]["sample_id"]): CLASSES.index(_truth(t["data"]["path"])) for t in tasks[:5]}
    assert dict(zip(state.labeled_ids().tolist(), state.labeled_labels().tolist())) == truth
    assert state.pending_ids().tolist() == [int(tasks[5]["data"]["sample_id"])]


def test_csv_export_reads_the_column_named_after_the_choices_tag(cold_project, tmp_path):
    project, _ = cold_project
    tasks = _tasks(project)
    assert choices_name(project) == "class", "the project's label_config.xml names its Choices tag"
    assert '<Choice value="green"/>' in (project / LABEL_CONFIG_FILE).read_text()
    records = [r for t in tasks for r in _min_records(t, [(_truth(t["data"]["path"]), "ann@x.org", T0)])]
    columns = list(records[0])
    path = tmp_path / "export.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        w.writerows(records)
    assert main(["import", str(project), str(path)]) == 0
    state = _state(project)
    assert state.pending_cycle is None and state.labeled_ids().size == 6
    # a Choices tag renamed in Label Studio: the column is named with --label-column
    (project / LABEL_CONFIG_FILE).write_text('<View><Choices name="kind" toName="image"/></View>')
    assert choices_name(project) == "kind"
    renamed = tmp_path / "renamed.csv"
    renamed.write_text(path.read_text().replace(",class,", ",species,", 1))
    with pytest.raises(DataError, match="--label-column"):
        import_labels(project, renamed)
    assert not import_labels(project, renamed, label_column="species").changed  # the same labels: nothing new


def test_consensus_refuse_majority_and_latest(cold_project, tmp_path):
    project, _ = cold_project
    tasks = _tasks(project)
    truth = [_truth(t["data"]["path"]) for t in tasks]
    other = ["blue" if c != "blue" else "red" for c in truth]
    export = [_full(t, [(truth[i], "a", T0)]) for i, t in enumerate(tasks)]
    export[0] = _full(tasks[0], [(truth[0], "a", T0), (other[0], "b", T1), (truth[0], "c", T2)])  # 2 to 1
    export[1] = _full(tasks[1], [(truth[1], "a", T0), (other[1], "b", T1)])                        # 1 to 1
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    sid0, sid1 = (int(t["data"]["sample_id"]) for t in tasks[:2])
    with pytest.raises(ProblemsError) as ei:
        import_labels(project, path)  # the default refuses every disagreement
    assert {p.split(":")[0] for p in ei.value.problems} == {f"sample_id {sid0}", f"sample_id {sid1}"}
    assert "--consensus majority" in str(ei.value)
    with pytest.raises(ProblemsError) as ei:
        import_labels(project, path, consensus="majority")
    assert len(ei.value.problems) == 1 and f"sample_id {sid1}: a tie" in ei.value.problems[0]
    assert f"task {tasks[1]['id']}" in ei.value.problems[0], "the tie names the task"
    assert _state(project).labeled_ids().size == 0, "nothing committed while the tie stands"
    with pytest.raises(ProblemsError, match="a tie"):
        import_labels(project, path, consensus="majority", partial=True)  # --partial does not skip a tie
    without_tie = tmp_path / "without_tie.json"
    without_tie.write_text(json.dumps(export[:1] + export[2:]))
    res = import_labels(project, without_tie, consensus="majority", partial=True)
    assert (res.committed, res.resolved, res.still_pending) == (5, 1, 1)
    state = _state(project)
    got = dict(zip(state.labeled_ids().tolist(), state.labeled_labels().tolist()))
    assert got[sid0] == CLASSES.index(truth[0]), "the majority's label"
    with open(res.decisions_file, newline="") as fh:
        rows = {int(r["sample_id"]): r for r in csv.DictReader(fh)}
    assert set(rows) == set(got)
    assert rows[sid0]["rule"] == "majority" and json.loads(rows[sid0]["votes"]) == {truth[0]: 2, other[0]: 1}
    assert rows[sid0]["annotations"] == "3" and "--consensus majority" in rows[sid0]["source"]
    assert {rows[s]["rule"] for s in got if s != sid0} == {"single"}
    # the tie by the latest annotation: the second one, updated an hour later
    res = import_labels(project, path, consensus="latest")
    assert (res.committed, res.cycle_complete) == (1, True)
    state = _state(project)
    assert dict(zip(state.labeled_ids().tolist(), state.labeled_labels().tolist()))[sid1] == CLASSES.index(other[1])
    with open(res.decisions_file, newline="") as fh:
        rows = {int(r["sample_id"]): r for r in csv.DictReader(fh)}
    assert rows[sid1]["rule"] == "latest" and rows[sid0]["rule"] == "majority", "earlier decisions are kept"


def test_decide_names_what_it_cannot_decide():
    e = [LabelEntry(1, "cat", "task 1, annotation 1", "a", T0), LabelEntry(1, "dog", "task 1, annotation 2", "b", T0),
         LabelEntry(2, "cat", "line 3"), LabelEntry(2, "dog", "line 4")]
    decided, problems = decide(e, "latest")
    assert not decided and len(problems) == 2
    assert "sample_id 1: --consensus latest finds two annotations updated at the same time" in problems[0]
    assert "sample_id 2: --consensus latest needs each annotation's updated_at" in problems[1]
    with pytest.raises(DataError, match="refuse, majority, latest"):
        decide(e, "vote")
    decided, problems = decide([LabelEntry(3, "cat", "l1"), LabelEntry(3, "cat", "l2")], "refuse")
    assert not problems and decided[3].rule == "unanimous" and decided[3].votes == {"cat": 2}


def test_several_classes_chosen_or_several_choices_tags_are_named(cold_project, tmp_path):
    project, _ = cold_project
    tasks = _tasks(project)
    t = _full(tasks[0], [("red", "a", T0)])
    t["annotations"][0]["result"][0]["value"]["choices"] = ["red", "green"]
    u = _full(tasks[1], [("red", "a", T0)])
    u["annotations"][0]["result"].append({"from_name": "quality", "type": "choices", "value": {"choices": ["ok"]}})
    w = _full(tasks[2], [("red", "a", T0)])
    w["annotations"][0]["result"][0]["from_name"] = "colour"
    w["annotations"][0]["result"].append({"from_name": "quality", "type": "choices", "value": {"choices": ["ok"]}})
    path = tmp_path / "x.json"
    path.write_text(json.dumps([t, u, w]))
    with pytest.raises(ProblemsError) as ei:
        import_labels(project, path, partial=True)
    sids = [tasks[i]["data"]["sample_id"] for i in range(3)]
    assert len(ei.value.problems) == 2, ei.value.problems
    assert f"sample_id {sids[0]}" in ei.value.problems[0] and "2 classes chosen (red, green)" in ei.value.problems[0]
    assert f"sample_id {sids[2]}" in ei.value.problems[1] and "several Choices tags (colour, quality)" in \
        ei.value.problems[1]
    # w's class tag is named with --label-column (t has one tag: it needs no name)
    t["annotations"][0]["result"][0]["value"]["choices"] = ["red"]
    path.write_text(json.dumps([t, w]))
    assert import_labels(project, path, partial=True, label_column="colour").committed == 2
    # u's class tag is the project's Choices name: its other tag is ignored without a flag
    path.write_text(json.dumps([u]))
    assert import_labels(project, path, partial=True).committed == 1
    assert _state(project).labeled_ids().size == 3


def test_import_takes_a_file_or_a_label_studio_project_not_both(cold_project, tmp_path, capsys):
    project, _ = cold_project
    assert main(["import", str(project)]) == 2
    assert "give the label FILE to import, or --label-studio URL --ls-project N" in capsys.readouterr().err
    assert main(["import", str(project), "--label-studio", "http://127.0.0.1:9"]) == 2
    assert "give --label-studio URL and --ls-project N together" in capsys.readouterr().err
    (tmp_path / "x.csv").write_text("sample_id,label\n")
    assert main(["import", str(project), str(tmp_path / "x.csv"), "--label-studio", "http://127.0.0.1:9",
                 "--ls-project", "1"]) == 2
    assert "not both" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["import", str(project), str(tmp_path / "x.csv"), "--consensus", "vote"])
    assert "invalid choice: 'vote'" in capsys.readouterr().err
