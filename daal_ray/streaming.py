"""Scoring pools larger than memory: parquet shards streamed through Ray Data.

A pool of millions of samples is never held by one process. It lives on disk as parquet
shards of one of two kinds:

* **precomputed features**: ``sample_id`` (integer), ``features`` (a fixed-length float
  vector per row: a list, fixed-size list or Ray tensor column), optionally ``label``
  (null for unlabeled rows) and ``probs`` (class probabilities, for strategies that read
  them). Feature extraction is skipped (:func:`select_from_features`).
* **image references**: ``sample_id`` of a configured dataset's ``train`` split; the
  cycle's task model extracts features through the existing
  :class:`~daal_ray.inference.PoolPredictor` (:func:`select_from_images`).

``ray.data.read_parquet`` streams the shards in blocks; each batch is validated, given its
``labeled`` flag (the labeled ids are small: a sorted array travels with the task and
``searchsorted`` flags each batch), scored by an actor pool of
``ScaleConfig.inference_actors`` actors and reduced to its own top-K; the driver merges the
per-batch top-Ks with :class:`~daal_ray.selection.StreamingTopK`. Order: score descending,
then ``sample_id`` ascending, so the result equals a full sort of the pool whatever the
blocks. Memory: O(K + batch) in the merge, Ray Data's bounded in-flight blocks elsewhere.

A strategy that trains (DAAL) is fitted on every labeled row plus a bounded uniform sample
of unlabeled rows (:func:`fit_features`): the ``m`` unlabeled ids of smallest
``hash_uniform(sample_id, key)``, kept in a streaming bottom-``m`` buffer, so the sample is
deterministic, independent of the blocks, and costs O(m d) memory. The sample is chosen in
a pass over the ids alone (:func:`fit_sample_ids`), so only its rows' features travel to the
fitting process (or through the task model).

Duplicate ``sample_id`` checks are bounded too: within every batch, and across the whole
pool among the rows that reach the merged top-K (an exact global check would hold every
id). Duplicates that neither share a batch nor reach the top-K are not detected.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from daal_ray.acquisition.base import FitContext, Strategy
from daal_ray.acquisition.random import hash_uniform
from daal_ray.config import ScaleConfig
from daal_ray.errors import ConfigError, DataError
from daal_ray.selection import StreamingTopK, iter_feature_batches
from daal_ray.shards import (
    PATH_COLUMN,
    PoolSchema,
    Source,
    inspect_feature_shards,
    inspect_id_shards,
    labeled_flags,
    prepare_feature_batch,
    keep_ids,
    prepare_id_batch,
    shard_paths,
)

logger = logging.getLogger(__name__)

__all__ = ["BottomKSample", "PoolSchema", "PoolSelection", "fit_features", "fit_sample_ids", "labeled_flags",
           "merge_topk", "read_feature_pool", "read_id_pool", "score_stage", "select_from_features",
           "select_from_images", "shard_paths"]


def _sorted_ids(ids: Optional[Iterable[int]]) -> Optional[np.ndarray]:
    return None if ids is None else np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))


def read_feature_pool(source: Source, labeled_ids: Optional[Iterable[int]] = None,
                      scale: Optional[ScaleConfig] = None) -> tuple[Any, PoolSchema]:
    """The pool's feature shards as a lazy Ray Dataset ``{sample_id, labeled, features[, probs]}``.

    Args:
        source: folder, file or list of parquet files.
        labeled_ids: the labeled sample ids; ``None`` takes the rows whose ``label`` is not
            null (no row is labeled when there is no ``label`` column).
        scale: ``inference_batch_size`` sets the rows per validated batch.

    Raises:
        DataError: a shard's schema is wrong (here) or a batch is bad (when it streams).
    """
    import ray.data

    scale = scale or ScaleConfig()
    paths = shard_paths(source)
    schema = inspect_feature_shards(paths)
    columns = ["sample_id", "features"] + (["label"] if schema.has_label else []) + (["probs"] if schema.has_probs else [])
    ds = ray.data.read_parquet(paths, include_paths=True).select_columns(columns + [PATH_COLUMN])
    ds = ds.map_batches(prepare_feature_batch, batch_format="pyarrow", batch_size=scale.inference_batch_size,
                        fn_kwargs=dict(dim=schema.dim, labeled_ids=_sorted_ids(labeled_ids),
                                       use_label=schema.has_label, probs=schema.has_probs),
                        zero_copy_batch=True)
    return ds, schema


def read_id_pool(source: Source, labeled_ids: Optional[Iterable[int]] = None,
                 scale: Optional[ScaleConfig] = None) -> Any:
    """The pool's id shards as a lazy Ray Dataset ``{sample_id, labeled}``."""
    import ray.data

    scale = scale or ScaleConfig()
    paths = shard_paths(source)
    inspect_id_shards(paths)
    ds = ray.data.read_parquet(paths, include_paths=True).select_columns(["sample_id", PATH_COLUMN])
    return ds.map_batches(prepare_id_batch, batch_format="pyarrow", batch_size=scale.inference_batch_size,
                          fn_kwargs=dict(labeled_ids=_sorted_ids(labeled_ids)), zero_copy_batch=True)


# ====================================================================== bounded fit sample
class BottomKSample:
    """The ``m`` rows of smallest ``hash_uniform(sample_id, key)`` seen so far.

    A uniform sample without replacement that depends only on the ids and the key: any
    split of the stream into batches gives the same rows. Memory O(m d): candidates are
    appended while their hash is below the current m-th smallest, and the buffer is cut
    back to m whenever it reaches 2m.
    """

    def __init__(self, m: int, key: int) -> None:
        if m < 1:
            raise ValueError(f"m must be >= 1, got {m}")
        self.m, self.key = m, key
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._held = 0
        self._threshold = np.inf
        self.seen = 0

    def push(self, ids: np.ndarray, x: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        self.seen += ids.size
        u = hash_uniform(ids, self.key)
        keep = u <= self._threshold
        if not keep.any():
            return
        self._parts.append((u[keep], ids[keep], np.asarray(x)[keep].astype(np.float32, copy=True)))
        self._held += int(keep.sum())
        if self._held >= 2 * self.m:
            self._compact()

    def _compact(self) -> None:
        u = np.concatenate([p[0] for p in self._parts])
        ids = np.concatenate([p[1] for p in self._parts])
        x = np.concatenate([p[2] for p in self._parts])
        if u.size > self.m:
            order = np.lexsort((ids, u))[: self.m]  # ties in the hash (~never) go to the smaller id
            u, ids, x = u[order], ids[order], x[order]
            self._threshold = float(u.max())
        self._parts = [(u, ids, x)]
        self._held = u.size

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, features)`` of the sample, sorted by ``sample_id``."""
        if not self._parts:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        self._compact()
        _, ids, x = self._parts[0]
        order = np.argsort(ids, kind="stable")
        return ids[order], x[order]


def fit_features(features: Any, max_unlabeled: int, key: int, rank: int = 0, world: int = 1,
                 batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """This rank's strided shard of every labeled feature and of a bounded unlabeled sample.

    One streaming pass over ``features`` (a Ray Dataset, a dict of arrays or a list of
    them, with ``sample_id``, ``labeled`` and ``features``): labeled rows are all kept;
    unlabeled rows are sampled by :class:`BottomKSample` (``max_unlabeled``; 0 keeps all).
    Both come back sorted by ``sample_id`` and strided by rank, so when the pool has at
    most ``max_unlabeled`` unlabeled rows the result is exactly the whole pool's split.

    Returns:
        ``(labeled_features, unlabeled_features)``, float32, this rank's rows.

    Raises:
        DataError: a feature is NaN or infinite.
    """
    lab_ids: list[np.ndarray] = []
    lab_x: list[np.ndarray] = []
    un_ids: list[np.ndarray] = []
    un_x: list[np.ndarray] = []
    sample = BottomKSample(max_unlabeled, key) if max_unlabeled > 0 else None
    for batch in _unwrapped(iter_feature_batches(features, ("sample_id", "labeled", "features"), batch_size)):
        ids = np.asarray(batch["sample_id"], dtype=np.int64)
        lab = np.asarray(batch["labeled"], dtype=bool)
        x = np.asarray(batch["features"], dtype=np.float32)
        x = x.reshape(x.shape[0], -1)
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            raise DataError(f"features of sample ids {ids[~finite][:5].tolist()} are NaN or infinite; "
                            f"check the task model of this cycle")
        lab_ids.append(ids[lab])
        lab_x.append(x[lab].copy())
        if sample is not None:
            sample.push(ids[~lab], x[~lab])
        else:
            un_ids.append(ids[~lab])
            un_x.append(x[~lab].copy())
    dim = next((a.shape[1] for a in lab_x + un_x if a.size), 0)

    def _sorted(ids_parts: list[np.ndarray], x_parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if not ids_parts:
            return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
        ids, x = np.concatenate(ids_parts), np.concatenate(x_parts)
        order = np.argsort(ids, kind="stable")
        return ids[order], x[order]

    _, xl = _sorted(lab_ids, lab_x)
    if sample is not None:
        _, xu = sample.result()
        logger.info("fit sample: %d of %d unlabeled rows (max_fit_unlabeled=%d), %d labeled", len(xu), sample.seen,
                    max_unlabeled, len(xl))
    else:
        _, xu = _sorted(un_ids, un_x)
    return xl[rank::world], xu[rank::world]


# ====================================================================== scoring
class ScoreActor:
    """Ray Data actor: scores the unlabeled rows of each batch and keeps their top ``k``.

    The strategy (its fitted state) is unpickled once per actor, not once per batch.
    """

    def __init__(self, strategy: Strategy, k: int, threads: int = 1) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.strategy, self.k = strategy, k

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from daal_ray.inference import _score_block

        return _score_block(batch, self.strategy, self.k)


class PredictScoreActor:
    """Ray Data actor for id shards: the task model's output (a
    :class:`~daal_ray.inference.PoolPredictor`), the strategy's scores and the batch's
    top ``k`` in one process, so features and probabilities never leave the actor.
    Labeled rows are dropped before the model runs."""

    def __init__(self, predictor: Mapping[str, Any], strategy: Strategy, k: int) -> None:
        from daal_ray.inference import PoolPredictor

        self.predictor = PoolPredictor(**predictor)
        self.strategy, self.k = strategy, k

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from daal_ray.inference import _score_block

        keep = ~np.asarray(batch["labeled"], dtype=bool)
        return _score_block(self.predictor({name: np.asarray(col)[keep] for name, col in batch.items()}),
                            self.strategy, self.k)


def score_stage(pool: Any, strategy: Strategy, k: int, scale: ScaleConfig) -> Any:
    """Map ``pool`` to per-batch top-``k`` rows ``{sample_id, score}`` on an actor pool of
    ``scale.inference_actors`` actors, each reserving ``cpus_per_inference_actor`` CPUs
    (its torch threads) and, with ``use_gpu``, ``gpus_per_inference_actor`` GPUs."""
    import ray.data

    use_gpu = scale.use_gpu and scale.gpus_per_inference_actor > 0
    return pool.map_batches(ScoreActor, fn_constructor_kwargs=dict(strategy=strategy, k=k,
                                                                   threads=max(1, int(scale.cpus_per_inference_actor))),
                            compute=ray.data.ActorPoolStrategy(size=scale.inference_actors),
                            batch_size=scale.inference_batch_size, batch_format="numpy",
                            num_cpus=scale.cpus_per_inference_actor,
                            num_gpus=scale.gpus_per_inference_actor if use_gpu else 0)


def _unwrapped(batches: Iterable[Any]) -> Iterable[Any]:
    """``batches``, with a daal-ray error raised in a Ray worker re-raised as itself
    (not inside Ray's task-error wrappers), so its message reaches the user."""
    import re

    from daal_ray import errors
    from daal_ray.driver import _unwrap

    try:
        yield from batches
    except Exception as exc:
        inner = _unwrap(exc)
        if inner is not exc:
            raise inner from None
        # Ray Data keeps only the text of an exception raised in a UDF: rebuild it from there.
        found = re.search(r"daal_ray\.errors\.(\w+): (.+)", str(exc))
        cls = getattr(errors, found.group(1), None) if found else None
        if isinstance(cls, type) and issubclass(cls, errors.DaalRayError):
            raise cls(found.group(2).strip()) from None
        raise


def merge_topk(reduced: Any, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Merge per-batch top-K rows (a Ray Dataset) into the exact top ``k``, best first.

    Raises:
        DataError: a sample id reaches the merge twice (it has more than one row).
    """
    merger = StreamingTopK(k)
    merge_s = 0.0
    for batch in _unwrapped(reduced.iter_batches(batch_size=None, batch_format="numpy")):
        t0 = time.perf_counter()
        ids = np.asarray(batch["sample_id"], dtype=np.int64)
        both = np.concatenate([merger.ids, ids])
        srt = np.sort(both)
        dup = srt[1:][srt[1:] == srt[:-1]]
        if dup.size:
            raise DataError(f"sample ids {np.unique(dup)[:5].tolist()} appear in more than one row of the pool; "
                            f"every sample needs one row")
        merger.push(ids, batch["score"])
        merge_s += time.perf_counter() - t0
    ids, scores = merger.result()
    return ids, scores, merge_s


@dataclass
class PoolSelection:
    """The outcome of scoring a pool from storage.

    Attributes:
        ids: the selected sample ids, best first (score descending, then id ascending).
        scores: their scores.
        seconds: wall seconds per step (``fit``, ``score``, ``merge``).
    """

    ids: np.ndarray
    scores: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)


def _check_needs(strategy: Strategy, available: set[str], where: str) -> None:
    missing = sorted(set(strategy.needs) - available)
    if missing:
        raise ConfigError(f"strategy {strategy.name!r} reads {', '.join(missing)}, which {where} lacks; "
                          f"add the column(s) to the shards or pick a strategy that reads only "
                          f"{', '.join(sorted(available)) or 'ids'}")


def _fit(strategy: Strategy, features: Any, labeled_ids: Optional[np.ndarray], device: Any,
         run_dir: Optional[str]) -> float:
    t0 = time.perf_counter()
    n_labeled = int(labeled_ids.size) if labeled_ids is not None else 0
    strategy.fit(FitContext(features=features, num_labeled=n_labeled, cycle=strategy.cycle, run_dir=run_dir,
                            device=device, labeled_ids=labeled_ids))
    return time.perf_counter() - t0


def _check_topk(strategy: Strategy) -> None:
    if type(strategy).select is not Strategy.select:
        raise ConfigError(f"strategy {strategy.name!r} selects by its own method over the whole pool "
                          f"(O(N d) memory), not by a top-K of scores; it cannot score a pool from storage")


def _topk_from(pool: Any, strategy: Strategy, k: int, scale: ScaleConfig) -> tuple[np.ndarray, np.ndarray, float]:
    _check_topk(strategy)
    return merge_topk(score_stage(pool, strategy, k, scale), k)


def select_from_features(source: Source, strategy: Strategy, k: int, labeled_ids: Optional[Iterable[int]] = None,
                         scale: Optional[ScaleConfig] = None, *, fit: bool = True, device: Any = None,
                         run_dir: Optional[str] = None) -> PoolSelection:
    """Select the top ``k`` unlabeled samples of a pool of precomputed-feature shards.

    Args:
        source: folder, file or list of parquet shards (``sample_id``, ``features``,
            optional ``label`` and ``probs``).
        strategy: a built strategy (:func:`daal_ray.acquisition.build_strategy`); one that
            trains (DAAL) is fitted first on the labeled rows plus its bounded unlabeled
            sample, streamed from the shards.
        k: how many to select.
        labeled_ids: the labeled sample ids; ``None`` takes rows with a non-null ``label``.
        scale: batch size, scoring actors and their CPUs/GPUs.
        fit: call ``strategy.fit`` first when it trains (False: it is fitted already).
        device: torch device for the fit.
        run_dir: where the fit may checkpoint.

    Raises:
        DataError: bad shards (named), duplicate ids, NaN or ragged features.
        ConfigError: the strategy reads a column the shards lack, or selects by its own
            whole-pool method (core-set, Suggestive Annotation).
    """
    scale = scale or ScaleConfig()
    pool, schema = read_feature_pool(source, labeled_ids, scale)
    available = {"features"} | ({"probs"} if schema.has_probs else set())
    _check_needs(strategy, available, f"the shards of {source}")
    _check_topk(strategy)
    seconds = {}
    lab = _sorted_ids(labeled_ids)
    if fit and strategy.trains:
        if lab is None and schema.has_label:
            # The labeled ids are small (the annotated set): one pass over two columns finds them.
            lab = _sorted_ids(np.concatenate([b["sample_id"][b["labeled"]] for b in _unwrapped(
                iter_feature_batches(pool, ("sample_id", "labeled"), 65536))] or [np.zeros(0, np.int64)]))
        t0 = time.perf_counter()
        fit_rows = _fit_rows(pool, read_id_pool(source, lab, scale), strategy, lab)
        _fit(strategy, fit_rows, lab, device, run_dir)
        seconds["fit"] = time.perf_counter() - t0  # the id pass, the sample's pass and the fit
    t0 = time.perf_counter()
    ids, scores, merge_s = _topk_from(pool, strategy, k, scale)
    seconds["score"] = time.perf_counter() - t0 - merge_s
    seconds["merge"] = merge_s
    logger.info("selected %d of %d rows from %s (%s)", ids.size, schema.num_rows, source,
                ", ".join(f"{n} {s:.1f}s" for n, s in seconds.items()))
    return PoolSelection(ids, scores, seconds)


def fit_sample_ids(pool_ids: Any, labeled_ids: np.ndarray, max_unlabeled: int, key: int) -> np.ndarray:
    """The ids a fit reads from an id pool: every labeled id plus the bounded unlabeled
    sample :func:`fit_features` would keep, found from the ids alone (so features are
    extracted for those rows only)."""
    sample = BottomKSample(max_unlabeled, key) if max_unlabeled > 0 else None
    unl: list[np.ndarray] = []
    for batch in _unwrapped(iter_feature_batches(pool_ids, ("sample_id", "labeled"), 65536)):
        ids = np.asarray(batch["sample_id"], dtype=np.int64)[~np.asarray(batch["labeled"], dtype=bool)]
        if sample is not None:
            sample.push(ids, np.zeros((ids.size, 0), np.float32))
        else:
            unl.append(ids)
    chosen = sample.result()[0] if sample is not None else np.concatenate(unl or [np.zeros(0, np.int64)])
    return np.union1d(np.asarray(labeled_ids, dtype=np.int64), chosen)


def _fit_rows(pool: Any, ids_pool: Any, strategy: Strategy, labeled_ids: Optional[np.ndarray]) -> Any:
    """The rows of ``pool`` a bounded fit reads: every labeled row and the strategy's
    unlabeled sample, chosen in one pass over the ids alone (``ids_pool``), so only those
    rows travel to the fitting process (or through the task model). A strategy without
    ``max_fit_unlabeled`` (or with 0) reads the whole pool."""
    limit = int(getattr(strategy.params, "max_fit_unlabeled", 0))
    if limit <= 0 or not hasattr(strategy, "fit_sample_key"):
        return pool
    lab = labeled_ids if labeled_ids is not None else np.zeros(0, np.int64)
    wanted = fit_sample_ids(ids_pool, lab, limit, strategy.fit_sample_key())
    return pool.map_batches(keep_ids, fn_kwargs=dict(ids=wanted), batch_format="numpy")


def select_from_images(source: Source, strategy: Strategy, k: int, labeled_ids: Iterable[int], *, data: Any,
                       model_name: str, num_classes: int, in_channels: int, checkpoint: str,
                       scale: Optional[ScaleConfig] = None, acquisition: Any = None, fit: bool = True,
                       device: Any = None, run_dir: Optional[str] = None) -> PoolSelection:
    """Select the top ``k`` of a pool of id shards, features extracted by the task model.

    The ids (``sample_id`` of ``data``'s ``train`` split) stream from the shards into
    ``scale.inference_actors`` :class:`PredictScoreActor` actors (the task model, the
    strategy's scores and each batch's top-K in one process; ``cpus_per_inference_actor``
    torch threads, ``gpus_per_inference_actor`` GPUs with ``use_gpu``). A strategy that trains is fitted on the features of
    the labeled ids and of its bounded unlabeled sample only, chosen from the ids before
    any image is read (:func:`fit_sample_ids`).
    """
    import ray.data

    from daal_ray.inference import extract_features

    scale = scale or ScaleConfig()
    lab = _sorted_ids(labeled_ids)
    ids_pool = read_id_pool(source, lab, scale)
    _check_needs(strategy, {"features", "probs"}, "the task model's output")
    _check_topk(strategy)
    extract = dict(data=data, model_name=model_name, num_classes=num_classes, in_channels=in_channels,
                   checkpoint=checkpoint, scale=scale, acquisition=acquisition,
                   predictor_options=strategy.predictor_options())
    seconds = {}
    if fit and strategy.trains:
        t0 = time.perf_counter()
        _fit(strategy, extract_features(_fit_rows(ids_pool, ids_pool, strategy, lab), **extract), lab, device, run_dir)
        seconds["fit"] = time.perf_counter() - t0  # the id pass, the sample's extraction and the fit
    use_gpu = scale.use_gpu and scale.gpus_per_inference_actor > 0
    predictor = dict(data=data.to_dict(), model_name=model_name, num_classes=num_classes, in_channels=in_channels,
                     checkpoint=checkpoint, threads=max(1, int(scale.cpus_per_inference_actor)), use_gpu=use_gpu,
                     acquisition=acquisition.to_dict() if acquisition is not None else None,
                     **strategy.predictor_options())
    t0 = time.perf_counter()
    reduced = ids_pool.map_batches(PredictScoreActor, fn_constructor_kwargs=dict(predictor=predictor, strategy=strategy,
                                                                                 k=k),
                                   compute=ray.data.ActorPoolStrategy(size=scale.inference_actors),
                                   batch_size=scale.inference_batch_size, batch_format="numpy",
                                   num_cpus=scale.cpus_per_inference_actor,
                                   num_gpus=scale.gpus_per_inference_actor if use_gpu else 0)
    ids, scores, merge_s = merge_topk(reduced, k)
    seconds["score"] = time.perf_counter() - t0 - merge_s
    seconds["merge"] = merge_s
    return PoolSelection(ids, scores, seconds)



# ====================================================================== command line
def read_id_file(path: str) -> np.ndarray:
    """Sample ids from ``.npy``, ``.parquet`` (a ``sample_id`` column) or text (one per line).

    Raises:
        DataError: the file is missing or holds something else than integer ids.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"labeled-ids file {p} does not exist")
    try:
        if p.suffix == ".npy":
            ids = np.load(p, allow_pickle=False)
        elif p.suffix == ".parquet":
            table = pq.read_table(p)
            if "sample_id" not in table.column_names:
                raise DataError(f"{p} needs a sample_id column; it has {', '.join(table.column_names)}")
            ids = table.column("sample_id").to_numpy()
        else:
            ids = np.loadtxt(p, dtype=np.int64, ndmin=1)
    except (ValueError, OSError) as exc:
        raise DataError(f"{p} does not hold integer sample ids ({exc})") from exc
    if not np.issubdtype(np.asarray(ids).dtype, np.integer):
        raise DataError(f"{p} holds {np.asarray(ids).dtype} values; sample ids are integers")
    return np.asarray(ids, dtype=np.int64).reshape(-1)


def add_score_arguments(p: Any) -> None:
    """Arguments of ``daal-ray score``."""
    p.add_argument("--features", required=True, metavar="DIR",
                   help="parquet shards (a folder or file): sample_id, features, optional label and probs")
    p.add_argument("--strategy", default="daal", help="registered strategy (default: daal); see `daal-ray strategies`")
    p.add_argument("--params", default="{}", metavar="JSON", help="the strategy's settings as JSON, e.g. '{\"epochs\": 5}'")
    p.add_argument("--k", type=int, required=True, help="how many samples to select")
    p.add_argument("--labeled-ids", default=None, metavar="FILE",
                   help="labeled sample ids (.npy, .parquet with sample_id, or one per line); "
                        "default: the rows whose label is not null")
    p.add_argument("--out", required=True, metavar="FILE", help="selection output: .parquet or .csv (rank, sample_id, score)")
    p.add_argument("--seed", type=int, default=0, help="seeds the strategy's fit and its sample (default: 0)")
    p.add_argument("--cycle", type=int, default=0, help="cycle number mixed into the seeds (default: 0)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per Ray Data batch (default: 512)")
    p.add_argument("--inference-actors", type=int, default=None, help="scoring actors (default: 1)")
    p.add_argument("--cpus-per-actor", type=float, default=None, help="CPUs (torch threads) per scoring actor")
    p.add_argument("--use-gpu", action="store_true", help="fit on a GPU and reserve GPUs for the scoring actors")
    p.add_argument("--gpus-per-actor", type=float, default=None, help="GPUs per scoring actor with --use-gpu")
    p.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of a locally started Ray")


def score_from_args(args: Any) -> int:
    """``daal-ray score``: select from precomputed-feature shards and write the selection."""
    import json

    import torch

    from daal_ray.acquisition import build_strategy
    from daal_ray.config import AcquisitionConfig
    from daal_ray.runtime import init_ray, quiet_ray_data

    try:
        params = json.loads(args.params)
    except ValueError as exc:
        raise ConfigError(f"--params must be a JSON object, got {args.params!r} ({exc})") from None
    if not isinstance(params, dict):
        raise ConfigError(f"--params must be a JSON object, got {args.params!r}")
    if args.k < 1:
        raise ConfigError(f"--k must be >= 1, got {args.k}")
    out = Path(args.out)
    if out.suffix not in (".parquet", ".csv"):
        raise ConfigError(f"--out must end in .parquet or .csv, got {out}")
    given = {"inference_batch_size": args.batch_size, "inference_actors": args.inference_actors,
             "cpus_per_inference_actor": args.cpus_per_actor, "gpus_per_inference_actor": args.gpus_per_actor}
    scale = ScaleConfig.from_dict({"use_gpu": bool(args.use_gpu), **{k: v for k, v in given.items() if v is not None}})
    strategy = build_strategy(AcquisitionConfig(strategy=args.strategy, params=params), seed=args.seed, cycle=args.cycle)
    labeled = read_id_file(args.labeled_ids) if args.labeled_ids else None
    init_ray(num_cpus=args.num_cpus)
    quiet_ray_data()
    device = torch.device("cuda" if args.use_gpu and torch.cuda.is_available() else "cpu")
    result = select_from_features(args.features, strategy, args.k, labeled, scale, device=device)
    table = pa.table({"rank": np.arange(result.ids.size, dtype=np.int64), "sample_id": result.ids,
                      "score": result.scores})
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        pq.write_table(table, out)
    else:
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, out)
    print(f"selected {result.ids.size} samples with {args.strategy}: {out}")
    return 0
