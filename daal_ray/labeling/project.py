"""A labeling project: its frozen config, its images, and ``daal-ray init``.

A project directory holds::

    project.json          the ProjectConfig (written last by init: its presence marks a project)
    images.parquet        every image: sample_id, absolute path, split (train = pool, test = held out), label
    pool_state.parquet    the PoolState (labels people gave, the pending batch), with .prev
    checkpoints/cycle_NNN the task model of each cycle
    batches/              batch_NNN.csv / .parquet / _label_studio.json, one set per selected batch,
                          and batch_NNN_labels.csv: each imported label's consensus decision
    label_config.xml      a Label Studio labeling config for the project's classes
    .lock                 the run-directory lock every writing command holds

``sample_id`` is :func:`~daal_ray.data.imagefolder.path_sample_id` of the image's path
relative to the image root (the ``--images`` folder, or the manifest's folder), or of its
absolute path when it lies outside that root.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence
from xml.sax.saxutils import escape as xml_escape

import numpy as np
import pyarrow.parquet as pq

from daal_ray.atomic_io import atomic_write_bytes
from daal_ray.config import (
    AcquisitionConfig,
    Config,
    DataConfig,
    ExperimentConfig,
    ScaleConfig,
    TrainConfig,
    check,
    resolve_config,
)
from daal_ray.data import open_dataset
from daal_ray.data.imagefolder import IMAGE_SUFFIXES, path_sample_id, verify_image
from daal_ray.data.manifest import write_manifest
from daal_ray.driver import PoolKeeper
from daal_ray.errors import ConfigError, DaalRayError, DataError
from daal_ray.pool import PoolState
from daal_ray.rundir import STATE_FILE, hold_run_dir
from daal_ray.runtime import derive_seed

logger = logging.getLogger(__name__)

PROJECT_FILE = "project.json"
PROJECT_FORMAT = "daal-ray/labeling-project"
BATCH_DIR = "batches"
LABEL_CONFIG_FILE = "label_config.xml"
CHECKPOINT_DIR = "checkpoints"
INITIAL = "initial"  # strategy recorded for the labels given at init (they spend no budget)
UNLABELED_FOLDER = "unlabeled"
DEFAULT_STRATEGY = "entropy"
_MAX_LISTED = 50


class LabelingError(DaalRayError, ValueError):
    """A labeling command cannot go on; the message says what to do instead."""


class ProblemsError(DataError):
    """Bad input with several problems; ``problems`` lists every one, each naming its row or id,
    and ``advice`` (not counted as one) says what to do about them."""

    def __init__(self, what: str, problems: Sequence[str], advice: str = "") -> None:
        self.problems = list(problems)
        self.advice = advice
        shown = self.problems[:_MAX_LISTED]
        more = len(self.problems) - len(shown)
        text = "\n  ".join(shown) + (f"\n  ... and {more} more" if more else "")
        super().__init__(f"{what}: {len(self.problems)} problem(s), nothing was written:\n  {text}"
                         + (f"\n{advice}" if advice else ""))


@dataclass(frozen=True)
class ProjectConfig(Config):
    """Settings of one labeling project, fixed at ``daal-ray init`` (saved in project.json).

    Attributes:
        name: the project's name (its folder's name by default).
        classes: the class names, in label-index order.
        image_root: the folder image paths are taken relative to (ids, Label Studio URLs).
        project_id: identity of the pool state file (name plus a hash of the pool's ids).
        image_size: side length, in pixels, images are resized to for the task model.
        budget: images selected per cycle (``daal-ray select --budget`` overrides it).
        total_budget: images people may be asked to label over all cycles; 0 = no limit.
            Labels given at init are not counted.
        test_fraction: share of each class's labeled images held out at init as the test
            set the task model is scored on (floor per class; 0 = no test set).
        seed: seeds the held-out split, the cold-start batch, model initialisation and
            stochastic strategies.
        train: the task-model recipe, retrained from scratch on all labels each cycle.
        acquisition: the strategy that picks each batch (``--strategy`` overrides it).
        scale: resources; ``num_workers`` Ray Train workers train and select.
        image_root_url: prefix of the ``image`` URL in Label Studio task files; the
            image's path relative to ``image_root`` is appended, URL-quoted. Empty = the
            absolute file path.
    """

    name: str = "project"
    classes: tuple[str, ...] = ()
    image_root: str = ""
    project_id: str = ""
    image_size: int = 32
    budget: int = 20
    total_budget: int = 0
    test_fraction: float = 0.2
    seed: int = 0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(model="small_cnn"))
    acquisition: AcquisitionConfig = field(default_factory=lambda: AcquisitionConfig(strategy=DEFAULT_STRATEGY))
    scale: ScaleConfig = field(default_factory=lambda: ScaleConfig(num_workers=1))
    image_root_url: str = ""

    def validate(self) -> None:
        check(bool(self.name) and "/" not in self.name and self.name not in (".", ".."),
               f"ProjectConfig.name must be a plain non-empty name, got {self.name!r}")
        check(len(self.classes) >= 2, f"ProjectConfig.classes must name at least 2 classes, got {list(self.classes)}")
        blank = [i for i, c in enumerate(self.classes) if not c.strip() or c != c.strip()]
        check(not blank, f"ProjectConfig.classes: class names must be non-empty without surrounding spaces "
                          f"(positions {blank})")
        dup = sorted({c for c in self.classes if self.classes.count(c) > 1})
        check(not dup, f"ProjectConfig.classes names a class twice: {', '.join(dup)}")
        check(self.image_size >= 4, f"ProjectConfig.image_size must be >= 4 pixels, got {self.image_size}")
        check(self.budget >= 1, f"ProjectConfig.budget must be >= 1, got {self.budget}")
        check(self.total_budget >= 0, f"ProjectConfig.total_budget must be >= 0, got {self.total_budget}")
        check(0.0 <= self.test_fraction < 1.0, f"ProjectConfig.test_fraction must be in [0, 1), got {self.test_fraction}")

    def experiment(self, project_dir: Path, strategy: Optional[str] = None,
                   num_workers: Optional[int] = None) -> ExperimentConfig:
        """The ExperimentConfig that training, inference and the strategies read."""
        acquisition = self.acquisition
        if strategy and strategy != acquisition.strategy:
            acquisition = AcquisitionConfig(strategy=strategy)
        scale = self.scale if num_workers is None else self.scale.replace(num_workers=num_workers)
        return ExperimentConfig(
            name=self.name, seed=self.seed, budget=self.budget, train=self.train, acquisition=acquisition, scale=scale,
            data=DataConfig(name="manifest", root=str(Path(project_dir).resolve()), image_size=self.image_size),
        )


# ---------------------------------------------------------------------- files
def save_project_config(project_dir: Path, cfg: ProjectConfig) -> None:
    doc = {"format": PROJECT_FORMAT, "version": 1, "config": cfg.to_dict()}
    atomic_write_bytes(project_dir / PROJECT_FILE, json.dumps(doc, indent=2, sort_keys=True).encode())


def load_project_config(project_dir: Path) -> ProjectConfig:
    """Read ``project_dir/project.json``; errors name the file and the fix."""
    path = Path(project_dir) / PROJECT_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise LabelingError(f"{project_dir} is not a labeling project ({path} is missing); "
                            f"create one with `daal-ray init {project_dir} --images DIR --classes a,b`") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != PROJECT_FORMAT:
        raise ConfigError(f"{path} is not a daal-ray labeling project file")
    return ProjectConfig.from_dict(doc.get("config", {}), where=f"{path}")


# ---------------------------------------------------------------------- scanning
@dataclass(frozen=True)
class ImageRow:
    """One image named by the input: its file, the key its id hashes, its label, and where
    the input names it (for messages)."""

    path: Path
    key: str
    label: Optional[str]
    where: str


def _key(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def scan_folder(images: Path, classes: Sequence[str]) -> tuple[list[ImageRow], list[str]]:
    """Rows of an image folder, and its problems: files at the top level (or under
    ``unlabeled/``) are unlabeled, files under a folder named like a class carry that
    class. Any other folder is a problem naming it."""
    images = Path(images).expanduser().resolve()
    if not images.is_dir():
        raise DataError(f"--images {images} does not exist or is not a folder")
    rows, problems = [], []
    for entry in sorted(images.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if entry.name in classes:
                label: Optional[str] = entry.name
            elif entry.name == UNLABELED_FOLDER:
                label = None
            else:
                problems.append(f"folder {entry}: {entry.name!r} is not a class ({', '.join(classes)}); rename it to "
                                f"a class, move its images to the top level or to {UNLABELED_FOLDER}/, or add the class")
                continue
            files = sorted(f for f in entry.rglob("*") if f.is_file())
        else:
            label, files = None, [entry]
        for f in files:
            if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."):
                rows.append(ImageRow(f, _key(f, images), label, str(f)))
    return rows, problems


def _read_table_rows(path: Path) -> tuple[list[dict[str, Any]], list[str], str]:
    """Rows of a parquet or CSV manifest as dicts, its columns, and the word for a row."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for bad files
            raise DataError(f"manifest {path} is not a readable parquet file ({exc})") from exc
        return table.to_pylist(), table.column_names, "row"
    if suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            return list(reader), list(reader.fieldnames or []), "line"
    raise DataError(f"manifest {path}: unknown format {suffix!r}; use .parquet, .csv or .tsv")


def scan_manifest(manifest: Path) -> tuple[list[ImageRow], list[str]]:
    """Rows of a manifest with a ``path`` and an optional ``label`` column (a class name;
    empty = unlabeled), and its malformed rows. Relative paths are taken from the
    manifest's folder."""
    manifest = Path(manifest).expanduser().resolve()
    if not manifest.is_file():
        raise DataError(f"--manifest {manifest} does not exist")
    records, columns, word = _read_table_rows(manifest)
    if "path" not in columns:
        raise DataError(f"manifest {manifest} has no 'path' column (columns: {', '.join(columns) or 'none'})")
    root = manifest.parent
    rows, problems = [], []
    for i, rec in enumerate(records):
        where = f"{word} {i + 2 if word == 'line' else i + 1}"
        if None in rec:  # csv.DictReader: more fields than the header
            problems.append(f"{where}: more fields than the header has columns")
            continue
        raw_path = rec.get("path")
        if raw_path is None or not str(raw_path).strip():
            problems.append(f"{where}: empty path")
            continue
        p = Path(str(raw_path).strip()).expanduser()
        p = (p if p.is_absolute() else root / p).resolve()
        label = rec.get("label")
        label = None if label is None or (isinstance(label, float) and np.isnan(label)) or not str(label).strip() \
            else str(label).strip()
        rows.append(ImageRow(p, _key(p, root), label, f"{where} ({raw_path})"))
    return rows, problems


def check_rows(rows: Sequence[ImageRow], classes: Sequence[str], source: str,
               problems: Sequence[str] = ()) -> np.ndarray:
    """Every problem of ``rows`` at once, after those the scan found (``problems``):
    duplicate images or ids, missing or unreadable files, labels outside the class list.
    Returns the sample ids."""
    problems = list(problems)
    if not rows and not problems:
        raise DataError(f"{source} holds no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    by_path: dict[Path, str] = {}
    by_id: dict[int, ImageRow] = {}
    ids = np.zeros(len(rows), dtype=np.int64)
    known = set(classes)
    for i, row in enumerate(rows):
        sid = path_sample_id(row.key)
        ids[i] = sid
        if row.path in by_path:
            problems.append(f"{row.where}: the same image as {by_path[row.path]} ({row.path})")
            continue
        by_path[row.path] = row.where
        if sid in by_id:
            problems.append(f"{row.where}: sample_id {sid} collides with {by_id[sid].where}; rename one of the files")
            continue
        by_id[sid] = row
        if row.label is not None and row.label not in known:
            problems.append(f"{row.where}: label {row.label!r} is not a class ({', '.join(classes)})")
        if not row.path.is_file():
            problems.append(f"{row.where}: {row.path} does not exist")
            continue
        try:
            verify_image(row.path)
        except DataError as exc:
            problems.append(f"{row.where}: {exc}")
    if problems:
        raise ProblemsError(source, problems)
    return ids


def read_classes(classes: Optional[str], classes_file: Optional[str]) -> tuple[str, ...]:
    """The class list from ``--classes a,b,c`` or ``--classes-file`` (one name per line;
    blank lines and lines starting with # are skipped)."""
    if bool(classes) == bool(classes_file):
        raise ConfigError("give the class list with exactly one of --classes a,b,c or --classes-file FILE")
    if classes:
        return tuple(c.strip() for c in classes.split(","))
    try:
        lines = Path(classes_file).expanduser().read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"--classes-file {classes_file} is unreadable ({exc})") from None
    return tuple(s.strip() for s in lines if s.strip() and not s.strip().startswith("#"))


def held_out(labels: np.ndarray, ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Mask of the labeled rows held out as the test set: ``floor(fraction * n)`` of each
    class's ``n`` labeled images, drawn with ``seed``, so every class keeps most of its
    labels for training."""
    mask = np.zeros(labels.size, dtype=bool)
    rng = np.random.default_rng(derive_seed(seed, 0x7E57))
    for c in np.unique(labels[labels >= 0]):
        rows = np.flatnonzero(labels == c)
        rows = rows[np.argsort(ids[rows])]  # by id, so the draw does not depend on input order
        n = int(np.floor(fraction * rows.size))
        if n:
            mask[rng.choice(rows, size=n, replace=False)] = True
    return mask


# ---------------------------------------------------------------------- init
@dataclass
class InitSummary:
    """What ``daal-ray init`` wrote."""

    project_dir: Path
    config: ProjectConfig
    num_pool: int
    num_labeled: int
    num_test: int


def init_project(project_dir: str | Path, *, classes: Sequence[str], images: Optional[str | Path] = None,
                 manifest: Optional[str | Path] = None, settings: Optional[dict[str, Any]] = None) -> InitSummary:
    """Create a labeling project from an image folder or a manifest.

    Every input problem is found before anything is written: duplicate images or ids,
    missing or unreadable images, labels outside ``classes`` (each named by its row).
    Labels given in the input are committed as cycle 0, minus the held-out test images.

    Args:
        project_dir: the folder to create (it must not hold a project yet).
        classes: the class names, in label-index order.
        images: a folder: class subfolders hold labeled images, top-level files (or an
            ``unlabeled/`` subfolder) unlabeled ones.
        manifest: a parquet or CSV file with a ``path`` and an optional ``label`` column.
        settings: further ProjectConfig fields (strategy, train, budget, ...).

    Raises:
        DataError / ConfigError: bad input, naming every problem; LabelingError if the
        folder holds a project already.
    """
    project_dir = Path(project_dir).expanduser().resolve()
    if (images is None) == (manifest is None):
        raise ConfigError("give exactly one of --images DIR or --manifest FILE")
    if (project_dir / PROJECT_FILE).exists():
        raise LabelingError(f"{project_dir} holds a labeling project already; use another folder, or "
                            f"`daal-ray status {project_dir}`")
    settings = dict(settings or {})
    image_root = Path(images if images is not None else Path(manifest).parent).expanduser().resolve()
    if images is not None and (project_dir == image_root or image_root in project_dir.parents):
        # its files (checkpoints, batches) would be scanned as images by a later init
        raise ConfigError(f"the project folder {project_dir} must lie outside the image folder {image_root}")
    probe = ProjectConfig.from_dict({**settings, "classes": list(classes), "name": settings.get("name") or
                                     project_dir.name, "image_root": str(image_root)})
    classes = probe.classes

    resolve_config(probe.experiment(project_dir))  # an unknown model (or one for another task) fails here
    if images is not None:
        (rows, problems), source = scan_folder(Path(images), classes), f"--images {image_root}"
    else:
        (rows, problems), source = scan_manifest(Path(manifest)), f"--manifest {Path(manifest).expanduser().resolve()}"
    ids = check_rows(rows, classes, source, problems)
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[r.label] if r.label is not None else -1 for r in rows], dtype=np.int64)
    test = held_out(labels, ids, probe.test_fraction, probe.seed)
    pool_ids = ids[~test]
    if pool_ids.size < 2:
        raise DataError(f"{source}: the pool has {pool_ids.size} image(s) besides the held-out test set; "
                        f"at least 2 are needed")
    digest = hashlib.sha1(np.sort(ids).tobytes()).hexdigest()[:10]
    cfg = probe.replace(project_id=f"{probe.name}-{digest}")

    project_dir.mkdir(parents=True, exist_ok=True)
    with hold_run_dir(project_dir):
        if (project_dir / PROJECT_FILE).exists():  # another init won the race for the lock
            raise LabelingError(f"{project_dir} holds a labeling project already")
        write_manifest(project_dir, ids, [str(r.path) for r in rows], ["test" if t else "train" for t in test],
                       labels, classes)
        state = PoolState(pool_ids, run_id=cfg.project_id)
        seeds = ~test & (labels >= 0)
        if seeds.any():
            got = state.propose(0, ids[seeds], expected_size=int(seeds.sum()))
            state.commit(0, ids[seeds], labels[seeds], strategy=INITIAL)
            assert got.size == int(seeds.sum())
        state.save(project_dir / STATE_FILE)
        write_label_config(project_dir, classes)
        save_project_config(project_dir, cfg)  # last: a folder without it is no project yet
    logger.info("init %s: %d pool images (%d labeled), %d held-out test images, classes %s", project_dir,
                pool_ids.size, int(seeds.sum()), int(test.sum()), ", ".join(classes))
    return InitSummary(project_dir, cfg, int(pool_ids.size), int(seeds.sum()), int(test.sum()))


def label_config_xml(classes: Sequence[str], choices: str = "class") -> str:
    """A Label Studio labeling config: the image and one single-choice Choices tag named
    ``choices`` whose values are ``classes``."""
    values = "\n".join(f'    <Choice value="{xml_escape(c, {chr(34): "&quot;"})}"/>' for c in classes)
    return (f'<View>\n  <Image name="image" value="$image"/>\n'
            f'  <Choices name="{choices}" toName="image" choice="single" showInline="true" required="true">\n'
            f"{values}\n  </Choices>\n</View>\n")


def write_label_config(project_dir: Path, classes: Sequence[str]) -> Path:
    """Write ``label_config.xml`` unless it is there (a user may have edited it)."""
    path = Path(project_dir) / LABEL_CONFIG_FILE
    if not path.exists():
        atomic_write_bytes(path, label_config_xml(classes).encode())
    return path


# ---------------------------------------------------------------------- open
@dataclass
class Project:
    """An opened project: its folder, config and dataset."""

    dir: Path
    config: ProjectConfig
    dataset: Any

    @property
    def classes(self) -> tuple[str, ...]:
        return self.config.classes

    @property
    def pool_ids(self) -> np.ndarray:
        return self.dataset.sample_ids("train")

    def keeper(self) -> Any:
        """The project's :class:`~daal_ray.driver.PoolKeeper` (loads the pool state)."""
        return PoolKeeper(str(self.dir), self.config.project_id, self.pool_ids)

    def batch_path(self, cycle: int, suffix: str) -> Path:
        return self.dir / BATCH_DIR / f"batch_{cycle:03d}{suffix}"

    def checkpoint_dir(self, cycle: int) -> Path:
        return self.dir / CHECKPOINT_DIR / f"cycle_{cycle:03d}"


def open_project(project_dir: str | Path) -> Project:
    """Load a project's config and dataset (no lock; callers that write take it)."""
    project_dir = Path(project_dir).expanduser().resolve()
    cfg = load_project_config(project_dir)
    dataset = open_dataset(cfg.experiment(project_dir).data)
    if list(dataset.classes) != list(cfg.classes):
        raise DataError(f"{project_dir}: the class list of images.parquet differs from project.json; "
                        f"the project was edited by hand")
    return Project(project_dir, cfg, dataset)
