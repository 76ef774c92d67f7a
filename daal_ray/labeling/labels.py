"""``daal-ray import``: labels people gave, checked against the pending batch and committed.

Label files, told apart by their suffix and content:

* CSV (``.csv``) with a ``sample_id`` column and a label column: ``label`` (a filled-in
  copy of ``batch_NNN.csv`` with an added ``label`` column works), or Label Studio's CSV
  export, whose label column is named after the labeling config's Choices tag (``class``
  in the config daal-ray writes, ``label_config.xml``). ``--label-column`` names another.
  The label is the **class name**, exactly as in the project's class list (names are
  unambiguous; an index column is easy to get wrong by one).
* Label Studio's JSON export (``.json``): a list of tasks; each task's labels are the
  ``annotations[].result[].value.choices`` of its annotations that were not cancelled,
  mapped back through ``data.sample_id``. Tasks without an annotation are not labeled yet.
* Label Studio's JSON-MIN export (``.json``): one flat record per annotation, the task's
  data (``sample_id``) and the Choices tag's value at the top level.

Several annotations of one task (an overlap of annotators) are resolved by the consensus
rule: ``refuse`` (the default: a disagreement is a problem), ``majority`` (the most given
label; a tie is a problem naming the task) or ``latest`` (the label of the annotation
updated last). Every committed label's decision (the rule, the votes, the source) is
recorded in ``batches/batch_NNN_labels.csv`` before the labels are committed.

Every problem is reported, each naming its sample id (or line / task when the id itself
is unreadable): ids outside the pending batch, unknown classes, malformed rows, pending
ids the file does not label (unless ``partial``), and unresolved disagreements. Nothing is
committed while any problem remains. Labels of ids labeled earlier are checked, not
applied again: importing one file twice changes nothing, and the second import says so.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import numpy as np

from daal_ray.atomic_io import atomic_write_bytes
from daal_ray.errors import DataError
from daal_ray.labeling.batches import batch_strategy
from daal_ray.labeling.project import LABEL_CONFIG_FILE, ProblemsError, Project, open_project
from daal_ray.rundir import hold_run_dir

logger = logging.getLogger(__name__)

CONSENSUS_RULES = ("refuse", "majority", "latest")
Consensus = Literal["refuse", "majority", "latest"]
DEFAULT_CHOICES_NAME = "class"
# Columns Label Studio's JSON-MIN and CSV exports add to every record besides the task's data.
_LS_META = ("id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time", "agreement")
_DATA_COLUMNS = ("image", "sample_id", "path", "score", "batch_id")


@dataclass
class LabelEntry:
    """One label a file gives: the sample id (None if unreadable), the class name, where it
    is, and, when the file says, who gave it and when (for the consensus rule)."""

    sample_id: Optional[int]
    label: str
    where: str
    annotator: str = ""
    updated_at: str = ""


@dataclass
class Decision:
    """How one id's label was decided from the entries the file gives for it."""

    sample_id: int
    label: str
    rule: str
    votes: dict[str, int]
    entries: int


@dataclass
class ImportSummary:
    """What an import did."""

    cycle: Optional[int]
    committed: int = 0
    already: int = 0
    still_pending: int = 0
    cycle_complete: bool = False
    resolved: int = 0  # committed ids whose annotations disagreed, decided by the consensus rule
    decisions_file: Optional[Path] = None

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


def choices_name(project_dir: Path) -> str:
    """The name of the Choices tag in the project's ``label_config.xml`` (``class`` when
    the file is absent or names none)."""
    path = Path(project_dir) / LABEL_CONFIG_FILE
    try:
        root = ET.fromstring(path.read_text(encoding="utf-8"))
    except (OSError, ET.ParseError):
        return DEFAULT_CHOICES_NAME
    tag = root if root.tag == "Choices" else root.find(".//Choices")
    return tag.get("name", DEFAULT_CHOICES_NAME) if tag is not None else DEFAULT_CHOICES_NAME


def _choice_of(value: Any, sid: int, ref: str, problems: list[str]) -> Optional[str]:
    """The one class name of a Choices value (``["cat"]``, ``"cat"`` or ``{"choices": [...]}``)."""
    if isinstance(value, dict):
        value = value.get("choices")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        problems.append(f"sample_id {sid} ({ref}): malformed choices {value!r}")
        return None
    if len(value) > 1:
        problems.append(f"sample_id {sid} ({ref}): {len(value)} classes chosen ({', '.join(value)}); "
                        f"an image takes one")
        return None
    return value[0].strip()


def read_csv_labels(path: Path, label_column: Optional[str] = None,
                    choices: str = DEFAULT_CHOICES_NAME) -> tuple[list[LabelEntry], list[str]]:
    """Entries and malformed-row problems of a CSV: daal-ray's ``sample_id,label`` or Label
    Studio's CSV export (label column ``choices``; its ``annotator`` and ``updated_at``
    columns feed the consensus rule)."""
    entries, problems = [], []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        wanted = [label_column] if label_column else ["label", choices]
        column = next((c for c in wanted if c in columns), None)
        if "sample_id" not in columns or column is None:
            missing = [c for c in ("sample_id",) if c not in columns]
            if column is None:
                missing.append(" or ".join(wanted) if not label_column else label_column)
            raise DataError(f"{path}: the header must name the column sample_id and a label column "
                            f"(missing: {', '.join(missing)}; found: {', '.join(columns) or 'none'}); name the "
                            f"label column with --label-column")
        from_studio = "annotation_id" in columns  # Label Studio lists unannotated tasks with an empty label
        for rec in reader:
            line = reader.line_num
            raw_id, label = rec.get("sample_id"), rec.get(column)
            sid = _parse_id(raw_id) if raw_id is not None else None
            name = f"sample_id {sid}" if sid is not None else f"line {line}"
            if None in rec:
                problems.append(f"{name} (line {line}): more fields than the header has columns")
            elif raw_id is None or label is None:
                problems.append(f"{name} (line {line}): fewer fields than the header has columns")
            elif sid is None:
                problems.append(f"line {line}: sample_id {raw_id!r} is not an integer")
            elif not label.strip():
                if not from_studio:
                    problems.append(f"sample_id {sid} (line {line}): the label is empty")
            else:
                text = label.strip()
                if text.startswith(("[", "{")):  # several choices, written as JSON by Label Studio
                    try:
                        text = _choice_of(json.loads(text), sid, f"line {line}", problems)
                    except ValueError:
                        pass
                if text is not None:
                    entries.append(LabelEntry(sid, text, f"line {line}", str(rec.get("annotator") or ""),
                                              str(rec.get("updated_at") or rec.get("created_at") or "")))
    return entries, problems


def _task_entries(task: dict[str, Any], ref: str, sid: int, choices: str, label_column: Optional[str],
                  problems: list[str]) -> list[LabelEntry]:
    """The entries of one task of Label Studio's full JSON export."""
    out = []
    for annotation in task.get("annotations") or []:
        if not isinstance(annotation, dict) or annotation.get("was_cancelled"):
            continue
        where = f"{ref}, annotation {annotation.get('id', '?')}"
        picked: dict[str, Any] = {}
        for result in annotation.get("result") or []:
            value = result.get("value") if isinstance(result, dict) else None
            if isinstance(value, dict) and "choices" in value:  # else a comment, a region: not a class label
                picked.setdefault(str(result.get("from_name", "")), value["choices"])
        if not picked:
            continue
        if len(picked) > 1:
            name = label_column or choices
            if name not in picked:
                problems.append(f"sample_id {sid} ({where}): several Choices tags ({', '.join(sorted(picked))}); "
                                f"name the one holding the class with --label-column")
                continue
            picked = {name: picked[name]}
        label = _choice_of(next(iter(picked.values())), sid, where, problems)
        if label is not None:
            who = annotation.get("completed_by")
            if isinstance(who, dict):
                who = who.get("email") or who.get("id")
            out.append(LabelEntry(sid, label, where, "" if who is None else str(who),
                                  str(annotation.get("updated_at") or annotation.get("created_at") or "")))
    return out


def task_entries(tasks: Any, source: str, label_column: Optional[str] = None,
                 choices: str = DEFAULT_CHOICES_NAME) -> tuple[list[LabelEntry], list[str]]:
    """Entries and malformed-task problems of Label Studio tasks: the full JSON export
    (records with ``data``) or JSON-MIN (flat records with ``sample_id``), as loaded from
    ``source`` (a file, or a server's task list)."""
    if not isinstance(tasks, list):
        raise DataError(f"{source}: a Label Studio export is a JSON list of tasks, got {type(tasks).__name__}")
    entries, problems = [], []
    for i, task in enumerate(tasks):
        ref = f"task {task.get('id', i)}" if isinstance(task, dict) else f"task #{i}"
        if not isinstance(task, dict):
            problems.append(f"{ref}: not a JSON object")
            continue
        flat = not isinstance(task.get("data"), dict)
        data = task if flat else task["data"]
        if "sample_id" not in data:
            problems.append(f"{ref}: no sample_id (neither data.sample_id nor a top-level one); export the tasks "
                            f"daal-ray wrote, with their data")
            continue
        sid = _parse_id(data["sample_id"])
        if sid is None:
            problems.append(f"{ref}: sample_id {data['sample_id']!r} is not an integer")
            continue
        if not flat:
            entries.extend(_task_entries(task, ref, sid, choices, label_column, problems))
            continue
        where = f"{ref}, annotation {task.get('annotation_id', '?')}"
        keys = [label_column] if label_column else [choices, "label"]
        key = next((k for k in keys if k in task), None)
        if key is None:
            others = [k for k in task if k not in _LS_META and k not in _DATA_COLUMNS]
            if others and task.get("annotation_id") is not None:
                problems.append(f"sample_id {sid} ({where}): no {' or '.join(keys)} field (found: "
                                f"{', '.join(others)}); name the label field with --label-column")
            continue  # a task nobody annotated yet
        label = _choice_of(task[key], sid, where, problems)
        if label is not None:
            entries.append(LabelEntry(sid, label, where, str(task.get("annotator") or ""),
                                      str(task.get("updated_at") or task.get("created_at") or "")))
    return entries, problems


def read_label_studio(path: Path, label_column: Optional[str] = None,
                      choices: str = DEFAULT_CHOICES_NAME) -> tuple[list[LabelEntry], list[str]]:
    """Entries and malformed-task problems of a Label Studio JSON or JSON-MIN export file."""
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(f"{path} is not valid JSON ({exc})") from None
    return task_entries(tasks, str(path), label_column, choices)


def read_labels(path: Path, label_column: Optional[str] = None,
                choices: str = DEFAULT_CHOICES_NAME) -> tuple[list[LabelEntry], list[str]]:
    """Entries and malformed-row problems of a label file, by its suffix."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"label file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_csv_labels(path, label_column, choices)
    if suffix == ".json":
        return read_label_studio(path, label_column, choices)
    raise DataError(f"label file {path}: unknown format {suffix!r}; use a .csv (sample_id and a label column) or a "
                    f"Label Studio .json export (JSON or JSON-MIN)")


def _timestamp(text: str) -> Optional[datetime]:
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00")) if text.strip() else None
    except ValueError:
        return None


def decide(entries: Sequence[LabelEntry], rule: Consensus) -> tuple[dict[int, Decision], list[str]]:
    """One label per sample id from ``entries`` under the consensus ``rule``; the problems
    (disagreements under ``refuse``, ties under ``majority``, missing or equal times under
    ``latest``) each name the id and where its labels are."""
    if rule not in CONSENSUS_RULES:
        raise DataError(f"unknown consensus rule {rule!r}; choose one of {', '.join(CONSENSUS_RULES)}")
    by_id: dict[int, list[LabelEntry]] = {}
    for e in entries:
        by_id.setdefault(e.sample_id, []).append(e)
    decisions, problems = {}, []
    for sid, group in by_id.items():
        votes = Counter(e.label for e in group)
        listed = ", ".join(f"{e.label!r} ({e.where}{', by ' + e.annotator if e.annotator else ''})" for e in group)
        if len(votes) == 1:
            decisions[sid] = Decision(sid, group[0].label, "unanimous" if len(group) > 1 else "single",
                                      dict(votes), len(group))
        elif rule == "refuse":
            problems.append(f"sample_id {sid}: conflicting labels {listed}; resolve them in the tool, or import "
                            f"with --consensus majority or latest")
        elif rule == "majority":
            (top, n), (_, second) = votes.most_common(2)
            if n == second:
                tied = sorted(label for label, c in votes.items() if c == n)
                problems.append(f"sample_id {sid}: a tie under --consensus majority ({n} each for "
                                f"{', '.join(map(repr, tied))}): {listed}; add an annotation or resolve it")
            else:
                decisions[sid] = Decision(sid, top, "majority", dict(votes), len(group))
        else:
            times = [_timestamp(e.updated_at) for e in group]
            if any(t is None for t in times):
                problems.append(f"sample_id {sid}: --consensus latest needs each annotation's updated_at, "
                                f"missing in {listed}")
                continue
            ordered = sorted(zip(times, range(len(group))), key=lambda x: x[0])
            if ordered[-1][0] == ordered[-2][0] and group[ordered[-1][1]].label != group[ordered[-2][1]].label:
                problems.append(f"sample_id {sid}: --consensus latest finds two annotations updated at the same "
                                f"time: {listed}")
                continue
            decisions[sid] = Decision(sid, group[ordered[-1][1]].label, "latest", dict(votes), len(group))
    return decisions, problems


DECISION_COLUMNS = ("sample_id", "label", "rule", "votes", "annotations", "source")


def record_decisions(project: Project, cycle: int, decisions: Sequence[Decision], source: str) -> Path:
    """Add ``decisions`` to ``batches/batch_NNN_labels.csv`` (atomically, replacing rows of
    the same ids: only still-pending ids are decided again)."""
    path = project.batch_path(cycle, "_labels.csv")
    rows: dict[str, dict[str, str]] = {}
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as fh:
            rows = {r["sample_id"]: r for r in csv.DictReader(fh)}
    for d in decisions:
        rows[str(d.sample_id)] = {"sample_id": str(d.sample_id), "label": d.label, "rule": d.rule,
                                  "votes": json.dumps(d.votes, sort_keys=True), "annotations": str(d.entries),
                                  "source": source}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=DECISION_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows.values())
    return atomic_write_bytes(path, buf.getvalue().encode())


def import_labels(project_dir: str | Path, file: Optional[str | Path] = None, *, tasks: Optional[list] = None,
                  source: Optional[str] = None, partial: bool = False, consensus: Consensus = "refuse",
                  label_column: Optional[str] = None) -> ImportSummary:
    """``daal-ray import``: check every label of ``file`` (or of ``tasks``, Label Studio
    tasks in its JSON export's shape, e.g. pulled from a server) and commit the new ones.

    Without ``partial`` the labels must cover every still-pending id of the batch; with it,
    the labeled part is committed and the rest stays pending. Several labels for one id are
    resolved by ``consensus`` (``refuse``, ``majority`` or ``latest``); each committed
    label's decision is recorded in ``batches/batch_NNN_labels.csv`` first.

    Raises:
        ProblemsError: listing every problem (nothing is committed);
        RunLockedError: another command holds the project.
    """
    if (file is None) == (tasks is None):
        raise DataError("import needs exactly one of a label file or a task list")
    project = open_project(project_dir)
    choices = choices_name(project.dir)
    if tasks is not None:
        source = source or "tasks"
        entries, problems = task_entries(tasks, source, label_column, choices)
    else:
        source = source or str(file)
        entries, problems = read_labels(Path(file), label_column, choices)
    decided, disagreements = decide(entries, consensus)
    problems.extend(disagreements)
    index = {c: i for i, c in enumerate(project.classes)}
    with hold_run_dir(project.dir):
        keeper = project.keeper()
        state = keeper.state
        cycle = state.pending_cycle
        pos_of = {int(s): i for i, s in enumerate(state.sample_ids.tolist())}
        test_ids = set(project.dataset.sample_ids("test").tolist())
        where = {e.sample_id: e.where for e in entries}
        new: list[Decision] = []
        already = 0
        for sid, d in decided.items():
            if d.label not in index:
                problems.append(f"sample_id {sid} ({where[sid]}): unknown class {d.label!r}; classes: "
                                f"{', '.join(project.classes)}")
                continue
            pos = pos_of.get(sid)
            if pos is None:
                what = "a held-out test image, labeled at init" if sid in test_ids else "not an image of this project"
                problems.append(f"sample_id {sid} ({where[sid]}): not in the pending batch ({what})")
            elif state.labeled_cycle[pos] >= 0:
                have = project.classes[state.label[pos]] if 0 <= state.label[pos] < len(project.classes) else "?"
                if have != d.label:
                    problems.append(f"sample_id {sid} ({where[sid]}): labeled {have!r} in cycle "
                                    f"{state.labeled_cycle[pos]} already, the labels say {d.label!r}; labels are "
                                    f"final")
                else:
                    already += 1
            elif not state.pending[pos]:
                problems.append(f"sample_id {sid} ({where[sid]}): not in the pending batch"
                                + ("" if cycle is not None else " (no batch is pending)"))
            else:
                new.append(d)
        pending = state.pending_ids()
        new_ids = np.asarray([d.sample_id for d in new], dtype=np.int64)
        missing = np.setdiff1d(pending, new_ids)
        advice = ""
        if new and missing.size and not partial:
            undecided = {e.sample_id for e in entries}  # an undecided id has its problem already
            problems.extend(f"sample_id {sid}: pending in batch {cycle} but not labeled" for sid in missing.tolist()
                            if sid not in undecided)
            advice = (f"{missing.size} of {pending.size} pending id(s) have no label; label them, or commit "
                      f"the labeled part with --partial")
        if problems:
            raise ProblemsError(f"labels {source}", problems, advice)
        summary = ImportSummary(cycle=cycle, already=already, still_pending=int(pending.size))
        if not new:
            logger.info("import %s: nothing new (%d label(s) imported already)", source, already)
            return summary
        labels = np.asarray([index[d.label] for d in new], dtype=np.int64)
        # The decisions are durable before the labels: a crash between the two leaves rows
        # for still-pending ids, which the next import of them replaces.
        summary.decisions_file = record_decisions(project, cycle, new, f"{source} (--consensus {consensus})")
        complete = missing.size == 0
        keeper.commit(cycle, new_ids, labels, strategy=batch_strategy(project, cycle), partial=not complete)
        summary.committed, summary.still_pending, summary.cycle_complete = int(new_ids.size), int(missing.size), complete
        summary.resolved = sum(len(d.votes) > 1 for d in new)
        logger.info("import %s: %d new label(s) committed to batch %d (%d by --consensus %s), %d still pending",
                    source, new_ids.size, cycle, summary.resolved, consensus, missing.size)
        return summary
