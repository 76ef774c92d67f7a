"""``daal-ray select``: train on the labels so far, pick the next batch, export it.

One selection is one Ray Train worker group (``ProjectConfig.scale.num_workers``) running
:func:`select_loop`: every rank trains the cycle's task model on all labels
(:func:`daal_ray.cycle.train_cycle_model`), rank 0 scores the pool and picks ``k`` ids
(:func:`daal_ray.cycle.select_batch`, the same steps as the experiment loop) and writes
them with their scores to ``batches/.scores_NNN.parquet``. The calling process, which
holds the project lock, then records them as the pending batch (``propose``, durable
before anything is exported) and writes the exports:

* ``batches/batch_NNN.csv`` and ``.parquet``: ``sample_id, path, score, batch_id``
* ``batches/batch_NNN_label_studio.json``: Label Studio tasks
  ``{"id": ..., "data": {"image": URL, "sample_id": "...", "path": ..., "score": ..., "batch_id": ...}}``

``sample_id`` is a string in the Label Studio tasks: ids use 63 bits, more than a
JavaScript number holds exactly. Without any label yet (a folder of unlabeled images),
the first batch is drawn at random with the project's seed and no model is trained.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import ray.train
import torch

from daal_ray.atomic_io import atomic_write_bytes, atomic_write_table, read_table_once
from daal_ray.config import ExperimentConfig
from daal_ray.cycle import initial_pool, select_batch, train_cycle_model
from daal_ray.data import open_dataset
from daal_ray.experiment import run_on_worker_group
from daal_ray.labeling.project import BATCH_DIR, INITIAL, LabelingError, Project, open_project, write_label_config
from daal_ray.rundir import hold_run_dir
from daal_ray.runtime import barrier, init_ray, quiet_ray_data, world

logger = logging.getLogger(__name__)

COLD_START = "random"  # the strategy recorded for a batch drawn before any label exists
_SCORES_META = b"daal_ray"


@dataclass
class BatchExport:
    """A pending batch and the files it was exported to."""

    cycle: int
    strategy: str
    sample_ids: np.ndarray
    scores: np.ndarray
    files: dict[str, Path]
    reexported: bool = False


def scores_path(project: Project, cycle: int) -> Path:
    return project.dir / BATCH_DIR / f".scores_{cycle:03d}.parquet"


def write_scores(path: Path, ids: np.ndarray, scores: np.ndarray, strategy: str, extra: dict[str, Any]) -> None:
    """The selection of one cycle, in pick order, before it is proposed."""
    table = pa.table({"sample_id": pa.array(np.asarray(ids, np.int64), pa.int64()),
                      "score": pa.array(np.asarray(scores, np.float64), pa.float64())})
    meta = {"strategy": strategy, **extra}
    atomic_write_table(table.replace_schema_metadata({_SCORES_META: json.dumps(meta).encode()}), path)


def read_scores(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    table = read_table_once(path)
    meta = json.loads((table.schema.metadata or {}).get(_SCORES_META, b"{}"))
    return table["sample_id"].to_numpy().astype(np.int64), table["score"].to_numpy().astype(np.float64), meta


def batch_strategy(project: Project, cycle: int) -> str:
    """The strategy that selected ``cycle``'s batch (recorded when it was selected)."""
    path = scores_path(project, cycle)
    return read_scores(path)[2].get("strategy", "") if path.is_file() else ""


# ---------------------------------------------------------------------- the worker
def select_loop(loop_config: dict[str, Any]) -> None:
    """Per-worker body of one selection: train on every label, select ``k``, write the scores."""

    cfg = ExperimentConfig.from_dict(loop_config["config"])
    project_dir = Path(loop_config["project_dir"])
    rank, _ = world()
    torch.set_num_threads(cfg.scale.threads)
    device = ray.train.torch.get_device() if cfg.scale.use_gpu else torch.device("cpu")
    quiet_ray_data()
    dataset = open_dataset(cfg.data)
    labeled = np.asarray(loop_config["labeled_ids"], dtype=np.int64)
    labels = np.asarray(loop_config["labels"], dtype=np.int64)
    cycle, k = int(loop_config["cycle"]), int(loop_config["k"])
    ckpt_dir = Path(loop_config["checkpoint_dir"])
    value, train_s, _ = train_cycle_model(cfg, dataset, labeled, labels, cycle, ckpt_dir, device)
    row: dict[str, Any] = {}
    picked = select_batch(cfg, dataset, dataset.sample_ids("train"), labeled, cycle, k, ckpt_dir, project_dir, row,
                          device, labels=labels)
    if rank == 0:
        ids, scores = picked.ids, picked.scores
        write_scores(Path(loop_config["scores_path"]), ids, scores, cfg.acquisition.strategy,
                     {"model_cycle": cycle, "num_labeled": int(labeled.size), "train_s": train_s, **row})
        logger.info("cycle %d: trained on %d labels (%.1fs), selected %d by %s", cycle, labeled.size, train_s,
                    ids.size, cfg.acquisition.strategy)
    barrier()


# ---------------------------------------------------------------------- select
def plan_budget(project: Project, state: Any, budget: Optional[int]) -> int:
    """How many ids the next batch holds: the per-cycle budget, capped by what is left of
    the total budget and of the unlabeled pool."""
    cfg = project.config
    k = cfg.budget if budget is None else budget
    if k < 1:
        raise LabelingError(f"--budget must be >= 1, got {k}")
    unlabeled = int(state.unlabeled_ids().size)
    if unlabeled == 0:
        raise LabelingError(f"every image of {project.dir} is labeled; nothing is left to select")
    k = min(k, unlabeled)
    if cfg.total_budget:
        left = cfg.total_budget - budget_used(state)
        if left <= 0:
            raise LabelingError(f"the total budget of {cfg.total_budget} labels is spent")
        k = min(k, left)
    return k


def budget_used(state: Any) -> int:
    """Labels asked of people so far: every selected id, labeled or pending (not init's)."""
    seeds = sum(r.num_added for r in state.history if r.strategy == INITIAL)
    return int((state.labeled_cycle >= 0).sum()) - seeds + int(state.pending.sum())


def select_next_batch(project_dir: str | Path, *, strategy: Optional[str] = None, budget: Optional[int] = None,
                      reexport: bool = False, num_workers: Optional[int] = None,
                      image_root_url: Optional[str] = None) -> BatchExport:
    """``daal-ray select``: pick the next batch, record it as pending, export it.

    Refuses while a batch is pending (``reexport`` writes the files of its still
    unlabeled ids again instead), so a batch is never selected twice.

    Raises:
        LabelingError: a batch is pending, the budget is spent or the pool is labeled;
            RunLockedError: another command holds the project.
    """
    project = open_project(project_dir)
    with hold_run_dir(project.dir):
        keeper = project.keeper()
        state = keeper.state
        url = project.config.image_root_url if image_root_url is None else image_root_url
        if state.pending_cycle is not None:
            cycle = state.pending_cycle
            if not reexport:
                done = int((state.labeled_cycle == cycle).sum())
                raise LabelingError(
                    f"batch {cycle} is pending ({state.pending_ids().size} ids to label, {done} labeled so far; "
                    f"files: {project.batch_path(cycle, '.csv')}); import its labels with `daal-ray import "
                    f"{project.dir} FILE` first, or write its files again with `daal-ray select {project.dir} "
                    f"--reexport`")
            return export_batch(project, cycle, state.pending_ids(), url, reexported=True)
        if reexport:
            raise LabelingError(f"no batch is pending in {project.dir}; run `daal-ray select {project.dir}` to pick one")
        k = plan_budget(project, state, budget)
        cycle = state.next_cycle
        scores_file = scores_path(project, cycle)
        labeled = state.labeled_ids()
        if labeled.size == 0:
            ids = initial_pool(state.unlabeled_ids(), k, project.config.seed)
            write_scores(scores_file, ids, np.zeros(ids.size), COLD_START, {"num_labeled": 0})
            logger.info("no labels yet: the first batch of %d is drawn at random", k)
        else:
            cfg = project.config.experiment(project.dir, strategy=strategy, num_workers=num_workers)
            init_ray()
            model_cycle = state.next_cycle - 1
            t0 = time.perf_counter()
            run_on_worker_group(select_loop, {"config": cfg.to_dict(), "project_dir": str(project.dir), "labeled_ids": labeled,
                               "labels": state.labeled_labels(), "cycle": model_cycle, "k": k,
                               "checkpoint_dir": str(project.checkpoint_dir(model_cycle)),
                               "scores_path": str(scores_file)},
                 cfg.scale, project.dir / "ray_train" / "select")
            logger.info("selection of batch %d took %.1fs", cycle, time.perf_counter() - t0)
        ids, _, _ = read_scores(scores_file)
        keeper.propose(cycle, ids, expected_size=ids.size)  # durable before any file is handed out
        return export_batch(project, cycle, keeper.state.pending_ids(), url)


# ---------------------------------------------------------------------- export
def image_url(path: Path, root: Path, prefix: str) -> str:
    """The ``image`` value of a Label Studio task: ``prefix`` + the path relative to
    ``root`` (URL-quoted), or the absolute path when no prefix is set."""
    if not prefix:
        return str(path)
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        rel = path.as_posix().lstrip("/")
    return prefix + quote(rel)


def export_batch(project: Project, cycle: int, pending: np.ndarray, url_prefix: str,
                 reexported: bool = False) -> BatchExport:
    """Write the CSV, parquet and Label Studio files of ``cycle``'s ``pending`` ids, in
    pick order, each atomically."""
    path = scores_path(project, cycle)
    if path.is_file():
        ids, scores, meta = read_scores(path)
    else:  # the scores of a batch are kept with it; without them the export still works
        ids, scores, meta = np.sort(pending), np.full(pending.size, np.nan), {}
    keep = np.isin(ids, pending)
    ids, scores = ids[keep], scores[keep]
    paths = [str(p) for p in project.dataset.paths("train", ids)]
    strategy = str(meta.get("strategy", ""))
    table = pa.table({"sample_id": pa.array(ids, pa.int64()), "path": pa.array(paths, pa.string()),
                      "score": pa.array(scores, pa.float64()), "batch_id": pa.array(np.full(ids.size, cycle), pa.int64())})
    files = {"parquet": project.batch_path(cycle, ".parquet"), "csv": project.batch_path(cycle, ".csv"),
             "label_studio": project.batch_path(cycle, "_label_studio.json")}

    atomic_write_table(table.replace_schema_metadata({_SCORES_META: json.dumps({"strategy": strategy}).encode()}),
                       files["parquet"])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["sample_id", "path", "score", "batch_id"])
    for sid, p, s in zip(ids.tolist(), paths, scores.tolist()):
        writer.writerow([sid, p, repr(float(s)), cycle])
    atomic_write_bytes(files["csv"], buf.getvalue().encode())
    root = Path(project.config.image_root)
    tasks = [{"id": cycle * 1_000_000 + i + 1,
              "data": {"image": image_url(Path(p), root, url_prefix), "sample_id": str(sid), "path": p,
                       "score": float(s) if np.isfinite(s) else None, "batch_id": cycle}}
             for i, (sid, p, s) in enumerate(zip(ids.tolist(), paths, scores.tolist()))]
    atomic_write_bytes(files["label_studio"], json.dumps(tasks, indent=1).encode())
    files["label_config"] = write_label_config(project.dir, project.classes)
    logger.info("batch %d: %d ids exported to %s", cycle, ids.size, files["csv"].parent)
    return BatchExport(cycle, strategy, ids, scores, files, reexported)
