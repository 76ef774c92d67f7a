"""``daal-ray import``: labels people gave, checked against the pending batch and committed.

Two formats, told apart by the file's suffix:

* CSV (``.csv``) with a header holding ``sample_id`` and ``label`` (other columns are
  ignored, so a filled-in copy of ``batch_NNN.csv`` with an added ``label`` column
  works). ``label`` is the **class name**, exactly as in the project's class list (names
  are unambiguous; an index column is easy to get wrong by one).
* Label Studio's JSON export (``.json``): a list of tasks; each task's label is
  ``annotations[].result[].value.choices[0]`` of its annotations that were not
  cancelled, and the task is mapped back through ``data.sample_id``. Tasks without an
  annotation are not labeled yet.

Every problem is reported, each naming its sample id (or line / task when the id itself
is unreadable): ids outside the pending batch, unknown classes, malformed rows, pending
ids the file does not label (unless ``partial``), and one id given two labels. Nothing is
committed while any problem remains. Labels of ids labeled earlier are checked, not
applied again: importing one file twice changes nothing, and the second import says so.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from daal_ray.errors import DataError
from daal_ray.labeling.batches import batch_strategy
from daal_ray.labeling.project import ProblemsError, open_project
from daal_ray.rundir import hold_run_dir

logger = logging.getLogger(__name__)


@dataclass
class LabelEntry:
    """One label the file gives: the sample id (None if unreadable), the class name, where."""

    sample_id: Optional[int]
    label: str
    where: str


@dataclass
class ImportSummary:
    """What an import did."""

    cycle: Optional[int]
    committed: int = 0
    already: int = 0
    still_pending: int = 0
    cycle_complete: bool = False

    @property
    def changed(self) -> bool:
        return self.committed > 0


def _parse_id(raw: Any) -> Optional[int]:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    try:
        return int(str(raw).strip())
    except (TypeError, ValueError):
        return None


def read_csv_labels(path: Path) -> tuple[list[LabelEntry], list[str]]:
    """Entries and malformed-row problems of a ``sample_id,label`` CSV."""
    entries, problems = [], []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        missing = [c for c in ("sample_id", "label") if c not in columns]
        if missing:
            raise DataError(f"{path}: the header must name the columns sample_id and label "
                            f"(missing: {', '.join(missing)}; found: {', '.join(columns) or 'none'})")
        for rec in reader:
            line = reader.line_num
            raw_id, label = rec.get("sample_id"), rec.get("label")
            sid = _parse_id(raw_id) if raw_id is not None else None
            name = f"sample_id {sid}" if sid is not None else f"line {line}"
            if None in rec:
                problems.append(f"{name} (line {line}): more fields than the header has columns")
            elif raw_id is None or label is None:
                problems.append(f"{name} (line {line}): fewer fields than the header has columns")
            elif sid is None:
                problems.append(f"line {line}: sample_id {raw_id!r} is not an integer")
            elif not label.strip():
                problems.append(f"sample_id {sid} (line {line}): the label is empty")
            else:
                entries.append(LabelEntry(sid, label.strip(), f"line {line}"))
    return entries, problems


def read_label_studio(path: Path) -> tuple[list[LabelEntry], list[str]]:
    """Entries and malformed-task problems of a Label Studio JSON export (choices)."""
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(tasks, list):
        raise DataError(f"{path}: a Label Studio export is a JSON list of tasks, got {type(tasks).__name__}")
    entries, problems = [], []
    for i, task in enumerate(tasks):
        ref = f"task {task.get('id', i)}" if isinstance(task, dict) else f"task #{i}"
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict) or "sample_id" not in data:
            problems.append(f"{ref}: no data.sample_id (export the tasks daal-ray wrote, with their data)")
            continue
        sid = _parse_id(data["sample_id"])
        if sid is None:
            problems.append(f"{ref}: data.sample_id {data['sample_id']!r} is not an integer")
            continue
        for annotation in task.get("annotations") or []:
            if not isinstance(annotation, dict) or annotation.get("was_cancelled"):
                continue
            for result in annotation.get("result") or []:
                value = result.get("value") if isinstance(result, dict) else None
                if not isinstance(value, dict) or "choices" not in value:
                    continue  # not a choice (a comment, a region): not a class label
                choices = value["choices"]
                if not isinstance(choices, list) or not choices or not isinstance(choices[0], str):
                    problems.append(f"sample_id {sid} ({ref}): malformed choices {choices!r}")
                    continue
                entries.append(LabelEntry(sid, choices[0].strip(), f"{ref}, annotation {annotation.get('id', '?')}"))
    return entries, problems


def read_labels(path: Path) -> tuple[list[LabelEntry], list[str]]:
    """Entries and malformed-row problems of a label file, by its suffix."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"label file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_csv_labels(path)
    if suffix == ".json":
        return read_label_studio(path)
    raise DataError(f"label file {path}: unknown format {suffix!r}; use a sample_id,label .csv or a Label Studio "
                    f".json export")


def import_labels(project_dir: str | Path, file: str | Path, *, partial: bool = False) -> ImportSummary:
    """``daal-ray import``: check every label of ``file`` and commit the new ones.

    Without ``partial`` the file must label every still-pending id of the batch; with it,
    the labeled part is committed and the rest stays pending.

    Raises:
        ProblemsError: listing every problem (nothing is committed);
        RunLockedError: another command holds the project.
    """
    project = open_project(project_dir)
    entries, problems = read_labels(Path(file))
    index = {c: i for i, c in enumerate(project.classes)}
    with hold_run_dir(project.dir):
        keeper = project.keeper()
        state = keeper.state
        cycle = state.pending_cycle
        pos_of = {int(s): i for i, s in enumerate(state.sample_ids.tolist())}
        test_ids = set(project.dataset.sample_ids("test").tolist())
        given: dict[int, LabelEntry] = {}
        for e in entries:
            first = given.setdefault(e.sample_id, e)
            if first.label != e.label:
                problems.append(f"sample_id {e.sample_id}: conflicting labels {first.label!r} ({first.where}) and "
                                f"{e.label!r} ({e.where})")
        new_ids, new_labels, already = [], [], 0
        for sid, e in given.items():
            if e.label not in index:
                problems.append(f"sample_id {sid} ({e.where}): unknown class {e.label!r}; classes: "
                                f"{', '.join(project.classes)}")
                continue
            pos = pos_of.get(sid)
            if pos is None:
                what = "a held-out test image, labeled at init" if sid in test_ids else "not an image of this project"
                problems.append(f"sample_id {sid} ({e.where}): not in the pending batch ({what})")
            elif state.labeled_cycle[pos] >= 0:
                have = project.classes[state.label[pos]] if 0 <= state.label[pos] < len(project.classes) else "?"
                if have != e.label:
                    problems.append(f"sample_id {sid} ({e.where}): labeled {have!r} in cycle "
                                    f"{state.labeled_cycle[pos]} already, the file says {e.label!r}; labels are final")
                else:
                    already += 1
            elif not state.pending[pos]:
                problems.append(f"sample_id {sid} ({e.where}): not in the pending batch"
                                + ("" if cycle is not None else " (no batch is pending)"))
            else:
                new_ids.append(sid)
                new_labels.append(index[e.label])
        pending = state.pending_ids()
        missing = np.setdiff1d(pending, np.asarray(new_ids, dtype=np.int64))
        advice = ""
        if new_ids and missing.size and not partial:
            problems.extend(f"sample_id {sid}: pending in batch {cycle} but not labeled by the file"
                            for sid in missing.tolist())
            advice = (f"{missing.size} of {pending.size} pending id(s) have no label; label them, or commit "
                      f"the labeled part with --partial")
        if problems:
            raise ProblemsError(f"labels {file}", problems, advice)
        summary = ImportSummary(cycle=cycle, already=already, still_pending=int(pending.size))
        if not new_ids:
            logger.info("import %s: nothing new (%d label(s) imported already)", file, already)
            return summary
        ids, labels = np.asarray(new_ids, dtype=np.int64), np.asarray(new_labels, dtype=np.int64)
        complete = missing.size == 0
        keeper.commit(cycle, ids, labels, strategy=batch_strategy(project, cycle), partial=not complete)
        summary.committed, summary.still_pending, summary.cycle_complete = int(ids.size), int(missing.size), complete
        logger.info("import %s: %d new label(s) committed to batch %d, %d still pending", file, ids.size, cycle,
                    missing.size)
        return summary

