"""The one pool-scoring path: Ray Data over the pool, in the cycle loop and over shards alike.

The pool travels as a Ray Dataset of ``sample_id`` (and a ``labeled`` flag) in blocks:
built from the pool state in the cycle loop (:func:`pool_dataset`), or streamed from
parquet shards on disk for pools of millions (:func:`read_feature_pool`,
:func:`read_id_pool`). Then, whatever the source:

1. **features**: a :class:`PoolPredictor` (the cycle's task model, loaded once per actor or
   per worker process) maps ids to ``features`` and ``probs`` (:func:`extract_features`;
   its options come from one builder, :func:`predictor_kwargs`);
2. **scores**: each batch's unlabeled rows are scored by the strategy and reduced to their
   own top-K before they leave the worker (:func:`daal_ray.selection.score_batch`);
3. **merge**: the driver merges the reduced batches exactly (score descending, then
   ``sample_id`` ascending; :class:`daal_ray.selection.StreamingTopK`), so the result
   equals a full sort of the pool, and no process holds more than O(K + batch) of it.

:func:`select_topk` is steps 2-3 over a Dataset of inference output (the cycle loop's
``FitContext.scorer``); :func:`select_from_features` and :func:`select_from_images` run
the whole path over shards (``daal-ray score``), fitting a strategy that trains on every
labeled row plus a bounded uniform sample (:mod:`daal_ray.sampling`) first.

Duplicate ``sample_id`` checks are bounded: within every batch of shards, and across the
pool among the rows that reach the merged top-K (an exact global check would hold every
id). Duplicates that neither share a batch nor reach the top-K are not detected.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import pyarrow as pa
import ray
import ray.data
import torch

from daal_ray.acquisition import FitContext, Strategy, build_strategy
from daal_ray.acquisition.bald import EXPECTED_ENTROPY
from daal_ray.atomic_io import file_generation
from daal_ray.config import AcquisitionConfig
from daal_ray.data import get_dataset
from daal_ray.errors import ConfigError, reraise_unwrapped
from daal_ray.models import build_model
from daal_ray.runtime import derive_seed
from daal_ray.sampling import fit_sample_ids
from daal_ray.selection import iter_feature_batches, merge_topk, score_batch, topk_local
from daal_ray.settings import DataConfig, ScaleConfig
from daal_ray.shards import (
    PATH_COLUMN,
    PoolSchema,
    Source,
    inspect_feature_shards,
    inspect_id_shards,
    keep_ids,
    prepare_feature_batch,
    prepare_id_batch,
    shard_paths,
)
from daal_ray.training import load_state_dict

logger = logging.getLogger(__name__)

__all__ = ["PoolPredictor", "PoolSchema", "PoolSelection", "extract_features", "merge_scored", "pixel_mean_entropy",
           "pool_dataset", "predictor_columns", "predictor_kwargs", "read_feature_pool", "read_id_pool",
           "reduce_passes", "select_from_features", "select_from_images", "select_topk"]


# ====================================================================== the pool
def pool_dataset(sample_ids: np.ndarray, labeled_ids: np.ndarray, scale: ScaleConfig) -> ray.data.Dataset:
    """The pool as a Ray Dataset ``{sample_id, labeled}`` in enough blocks for the actors."""
    ids = np.asarray(sample_ids, dtype=np.int64)
    labeled = np.isin(ids, np.asarray(labeled_ids, dtype=np.int64), assume_unique=True)
    n_blocks = max(2 * scale.inference_actors, math.ceil(len(ids) / (8 * scale.inference_batch_size)))
    n_blocks = max(1, min(n_blocks, len(ids)))
    tables = [pa.table({"sample_id": i, "labeled": m})
              for i, m in zip(np.array_split(ids, n_blocks), np.array_split(labeled, n_blocks))]
    return ray.data.from_arrow(tables)


def pixel_mean_entropy(probs: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Predictive entropy of ``probs [n, C, ...]`` per location, averaged per sample ``[n]``
    (float64; clipped like :func:`daal_ray.acquisition.entropy.predictive_entropy`)."""
    if probs.dim() == 2:  # one location per sample: no pixel map to keep small
        p = probs.double().clamp(eps, 1.0)
        return -(p * p.log()).sum(1)
    out = torch.empty(probs.shape[0], dtype=torch.float64, device=probs.device)
    for i in range(probs.shape[0]):  # one image at a time: the float64 copy is one image's
        # Out of place: a float64 input would otherwise be clipped where the caller holds it.
        p = probs[i].double().clamp(eps, 1.0)
        out[i] = (-(p * p.log()).sum(0)).mean()
    return out


def reduce_passes(passes: Iterable[torch.Tensor], expected_entropy: bool = False,
                  ) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Reduce MC dropout passes, one at a time, to ``(mean softmax, entropy of the mean,
    mean per-pass entropy)``.

    Args:
        passes: the per-pass softmax ``[n, C, ...]`` (float64), consumed as it comes, so only
            the running sums are held, never all T passes.
        expected_entropy: also return the two entropies (per sample, ``[n]``, float64,
            pixel means for dense predictions, :func:`pixel_mean_entropy`); ``(None, None)``
            otherwise, so strategies that read only the mean pay no entropy per pass.

    Both entropies come from the same function on float64 tensors: for one pass (what the
    predictor runs without dropout) their difference, BALD's mutual information, is
    exactly 0; for T identical passes it is 0 up to the rounding of the sum.
    """
    total: Optional[torch.Tensor] = None
    entropy_sum: Optional[torch.Tensor] = None
    count = 0
    for p in passes:
        total = p if total is None else total + p
        if expected_entropy:
            h = pixel_mean_entropy(p)
            entropy_sum = h if entropy_sum is None else entropy_sum + h
        count += 1
    if total is None:
        raise ValueError("reduce_passes needs at least one pass")
    mean = total / count
    if not expected_entropy:
        return mean, None, None
    return mean, pixel_mean_entropy(mean), entropy_sum / count


class PoolPredictor:
    """Stateful Ray Data predictor: the dataset and the model are loaded once per actor.

    Output columns: ``sample_id``, ``labeled``, ``features`` ``[n, d]`` and ``probs``
    ``[n, C]``. For dense predictions (segmentation logits ``[n, C, H, W]``) the pixels are
    reduced per image before anything leaves the predictor: ``probs`` is the mean pixel
    softmax, and the column ``entropy`` ``[n]`` is the mean pixel predictive entropy (under
    MC dropout, of the mean softmax over the passes), which the entropy-based strategies
    score when it is present. With ``mc_expected_entropy`` (BALD) the output also has
    ``entropy`` for classification and ``expected_entropy`` ``[n]``, the mean over the passes
    of each pass's predictive entropy (pixel means for dense predictions), both float64.

    Args:
        data: the experiment's DataConfig as a dict.
        model_name, num_classes, in_channels: the task model to build.
        checkpoint: path of the cycle's ``model.pt`` (a state_dict, loaded weights-only).
        threads: torch intra-op threads for this actor.
        use_gpu: run on the actor's GPU.
        acquisition: the AcquisitionConfig as a dict; when its strategy trains a joint head
            (:meth:`Strategy.task_head`), the head is loaded from the checkpoint's directory
            and its output is added as the column ``head.output_column``.
        mc_passes: MC dropout: when > 0, ``probs`` is the mean softmax of this many passes
            through the classifier head (:meth:`TaskModel.classify`) with dropout
            ``mc_dropout`` on the head's input (the penultimate features, or a segmentation
            model's last map); the backbone runs once.
        mc_dropout: the dropout probability of those passes; with 0 every pass is the same,
            so one is run.
        mc_seed: seeds the dropout masks (with each batch's ids), so a rerun repeats them.
        mc_expected_entropy: also emit ``entropy`` and ``expected_entropy`` (above), computed
            in the same loop over the passes (:func:`reduce_passes`); needs ``mc_passes >= 1``.

    Raises:
        ConfigError: ``mc_expected_entropy`` without MC dropout passes.
    """

    def __init__(self, data: Mapping[str, Any], model_name: str, num_classes: int, in_channels: int,
                 checkpoint: str, threads: int = 1, use_gpu: bool = False,
                 acquisition: Optional[Mapping[str, Any]] = None, mc_passes: int = 0, mc_dropout: float = 0.0,
                 mc_seed: int = 0, mc_expected_entropy: bool = False) -> None:
        if mc_expected_entropy and int(mc_passes) < 1:
            raise ConfigError(f"PoolPredictor: mc_expected_entropy averages the entropy over MC dropout passes; "
                              f"set mc_passes >= 1 (got {mc_passes})")
        torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.dataset = get_dataset(DataConfig.from_dict(data))
        self.model = build_model(model_name, num_classes=num_classes, in_channels=in_channels)
        self.model.load_state_dict(load_state_dict(checkpoint))
        self.model.to(self.device).eval()
        self.mc_passes, self.mc_dropout, self.mc_seed = int(mc_passes), float(mc_dropout), int(mc_seed)
        self.mc_expected_entropy = bool(mc_expected_entropy)
        self.head = None
        if acquisition is not None:
            strategy = build_strategy(AcquisitionConfig.from_dict(acquisition), seed=0, cycle=0)
            self.head = strategy.task_head(self.model)
            if self.head is not None:
                self.head.load_state_dict(load_state_dict(Path(checkpoint).parent / self.head.checkpoint_file))
                self.head.to(self.device).eval()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = batch["sample_id"]
        with torch.inference_mode():
            x = self.dataset.images("train", ids).to(self.device, non_blocking=True)
            head_in = None
            if self.head is not None:
                taps, feats, logits = self.model.forward_taps(x)
                head_out = self.head(taps).float().cpu().numpy()
            elif self.mc_passes > 0:
                head_in, feats, logits = self.model.forward_head_input(x)
            else:
                feats, logits = self.model.forward_features(x)
            probs = torch.softmax(logits.float(), dim=1)
            entropy = expected_entropy = None
            if self.mc_passes > 0:
                probs, entropy, expected_entropy = self._mc_probs(feats if head_in is None else head_in, ids)
            if probs.dim() > 2:
                # Dense predictions are reduced per image here: pixel maps never enter Ray Data.
                if entropy is None:
                    entropy = pixel_mean_entropy(probs)
                probs = probs.flatten(2).mean(2)
        out = {
            "sample_id": ids,
            "labeled": batch["labeled"],
            "features": feats.float().cpu().numpy(),
            "probs": probs.cpu().numpy(),
        }
        if entropy is not None:
            out["entropy"] = entropy.cpu().numpy()
        if expected_entropy is not None:
            out[EXPECTED_ENTROPY] = expected_entropy.cpu().numpy()
        if self.head is not None:
            out[self.head.output_column] = head_out
        return out

    def _mc_probs(self, feats: torch.Tensor, ids: np.ndarray,
                  ) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Mean softmax over ``mc_passes`` passes of the head with dropout on ``feats`` (the
        head's input), and with ``mc_expected_entropy`` the two entropies of
        :func:`reduce_passes` (else ``None``)."""
        gen = torch.Generator(device=self.device)
        gen.manual_seed(derive_seed(self.mc_seed, int(ids[0]) if len(ids) else 0, len(ids)))
        keep = 1.0 - self.mc_dropout
        # Without dropout every pass is the deterministic head: one pass is all of them, and
        # its mean is that pass exactly, so MC dropout with p = 0 equals entropy bit for bit.
        passes = self.mc_passes if self.mc_dropout > 0 else 1

        def softmax_passes() -> Iterable[torch.Tensor]:
            for _ in range(passes):
                if self.mc_dropout > 0:
                    mask = torch.rand(feats.shape, generator=gen, device=self.device) < keep
                    f = feats * mask / keep
                else:
                    f = feats
                # Summed in float64: T passes add no rounding of their own to the mean.
                yield torch.softmax(self.model.classify(f).float(), dim=1).double()

        mean, entropy, expected_entropy = reduce_passes(softmax_passes(), self.mc_expected_entropy)
        return mean.float(), entropy, expected_entropy


_TASK_PREDICTORS: dict[str, PoolPredictor] = {}


def _predict_in_task(batch: dict[str, np.ndarray], **kwargs: Any) -> dict[str, np.ndarray]:
    """Task-mode body: the same PoolPredictor, built once per worker process and cycle.

    Ray reuses task worker processes, so after the first cycle torch is already imported
    and only the checkpoint is loaded; an actor pool pays a fresh process per execution.
    """
    key = f"{sorted(kwargs.items())}:{file_generation(kwargs['checkpoint'])}"  # a retrained cycle's model is new
    predictor = _TASK_PREDICTORS.get(key)
    if predictor is None:
        _TASK_PREDICTORS.clear()  # one cycle's model per process at a time
        predictor = _TASK_PREDICTORS[key] = PoolPredictor(**kwargs)
    return predictor(batch)


def predictor_kwargs(*, data: DataConfig, model_name: str, num_classes: int, in_channels: int, checkpoint: str,
                     scale: ScaleConfig, acquisition: Optional[AcquisitionConfig] = None,
                     strategy: Optional[Strategy] = None) -> dict[str, Any]:
    """The :class:`PoolPredictor` arguments of one cycle: the one place they are built.

    ``scale`` gives the predictor's torch threads (``cpus_per_inference_actor``) and its
    device (a GPU with ``use_gpu`` and ``gpus_per_inference_actor > 0``). With
    ``acquisition``, a strategy's joint head adds its column; ``strategy``'s
    :meth:`~daal_ray.acquisition.Strategy.predictor_options` (MC dropout's passes) go to the
    predictor as they are.
    """
    return dict(data=data.to_dict(), model_name=model_name, num_classes=num_classes, in_channels=in_channels,
                checkpoint=checkpoint, threads=max(1, int(scale.cpus_per_inference_actor)),
                use_gpu=_inference_gpu(scale), acquisition=acquisition.to_dict() if acquisition is not None else None,
                **(strategy.predictor_options() if strategy is not None else {}))


def predictor_columns(predictor: Mapping[str, Any]) -> set[str]:
    """The columns a strategy may read (its ``needs``) that a :class:`PoolPredictor` built
    from ``predictor`` (:func:`predictor_kwargs`) emits."""
    columns = {"features", "probs"}
    if predictor.get("mc_expected_entropy"):
        columns |= {"entropy", EXPECTED_ENTROPY}
    return columns


def _inference_gpu(scale: ScaleConfig) -> bool:
    return scale.use_gpu and scale.gpus_per_inference_actor > 0


def _resources(scale: ScaleConfig) -> dict[str, Any]:
    """What each predictor actor or task reserves, and its batch size."""
    return dict(batch_size=scale.inference_batch_size, batch_format="numpy", num_cpus=scale.cpus_per_inference_actor,
                num_gpus=scale.gpus_per_inference_actor if _inference_gpu(scale) else 0)


def _map_on_actors(ds: Any, actor: type, kwargs: Mapping[str, Any], scale: ScaleConfig) -> Any:
    return ds.map_batches(actor, fn_constructor_kwargs=dict(kwargs),
                          compute=ray.data.ActorPoolStrategy(size=scale.inference_actors), **_resources(scale))


def extract_features(pool: ray.data.Dataset, predictor: Mapping[str, Any], scale: ScaleConfig) -> ray.data.Dataset:
    """Map the pool to ``{sample_id, labeled, features, probs}`` (lazily; nothing runs yet).

    ``predictor`` is :func:`predictor_kwargs`. ``scale.inference_compute`` picks the
    execution: ``actors`` (default) runs :class:`PoolPredictor` in an actor pool of
    ``scale.inference_actors``; ``tasks`` runs the same predictor in Ray tasks, cached per
    worker process, which saves the actor start-up on small pools.
    """
    if scale.inference_compute == "tasks":
        # At most inference_actors tasks at once, as many as the actors would be: the same
        # few worker processes then take every batch and keep their predictor and imports
        # warm, where unbounded tasks start a cold process (torch, the dataset) per CPU.
        return pool.map_batches(_predict_in_task, fn_kwargs=dict(predictor),
                                compute=ray.data.TaskPoolStrategy(size=scale.inference_actors), **_resources(scale))
    return _map_on_actors(pool, PoolPredictor, predictor, scale)


# ====================================================================== scores and the merge
class PredictScoreActor:
    """Ray Data actor for id shards: the task model's output (a :class:`PoolPredictor`),
    the strategy's scores and the batch's top ``k`` in one process, so features and
    probabilities never leave the actor. Labeled rows are dropped before the model runs."""

    def __init__(self, predictor: Mapping[str, Any], strategy: Strategy, k: int) -> None:
        self.predictor = PoolPredictor(**predictor)
        self.strategy, self.k = strategy, k

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keep = ~np.asarray(batch["labeled"], dtype=bool)
        return score_batch(self.predictor({name: np.asarray(col)[keep] for name, col in batch.items()}),
                           self.strategy.score, self.k)



def merge_scored(reduced: Any, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Merge per-batch top-K rows (a Ray Dataset ``{sample_id, score}``) into the exact top
    ``k``, best first; ``(ids, scores, merge_seconds)``.

    Raises:
        DataError: a sample id reaches the merge twice (it has more than one row), or the
            error a Ray worker raised, unwrapped.
    """
    return merge_topk(reraise_unwrapped(reduced.iter_batches(batch_size=None, batch_format="numpy")), k, unique=True)


def select_topk(features: Any, strategy: Strategy, k: int, scale: Optional[ScaleConfig] = None,
                ) -> tuple[np.ndarray, np.ndarray, float]:
    """Exact top ``k`` unlabeled ids of ``features`` (the pool's inference output) under ``strategy``.

    Returns ``(ids, scores, merge_seconds)``, best first; ``merge_seconds`` is the time
    spent merging the per-batch top-Ks (the selection proper). A Ray Dataset is scored in
    Ray Data tasks (``scale.cpus_per_inference_actor`` CPUs each, 1 if 0; the strategy's fitted
    state travels once through the object store), each batch reduced to its own top-K
    before it leaves its worker; a mapping of arrays, or a list of them (unit tests,
    benches), is scored batch by batch in this process through the same merge.
    """
    if isinstance(features, (Mapping, list, tuple)):
        return topk_local(features, strategy.score, k)
    scale = scale or ScaleConfig()
    # Scores are NumPy/PyTorch on CPU: the tasks reserve CPUs only, never a GPU a Train worker may hold.
    reduced = features.map_batches(score_batch, fn_kwargs={"score": strategy.score, "k": k},
                                   batch_size=scale.inference_batch_size, batch_format="numpy",
                                   num_cpus=scale.cpus_per_inference_actor or 1)
    return merge_scored(reduced, k)


# ====================================================================== pools from storage
def _sorted_ids(ids: Optional[Iterable[int]]) -> Optional[np.ndarray]:
    return None if ids is None else np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))


FOOTER_ACTORS_ENV = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"
FILES_PER_FOOTER_READER = 100
_footer_env = threading.Lock()


def footer_readers(num_files: int) -> int:
    """How many footer-reading actors a read of ``num_files`` parquet shards starts: one per
    :data:`FILES_PER_FOOTER_READER` files, at least 1 and at most Ray Data's own 32."""
    return max(1, min(32, math.ceil(num_files / FILES_PER_FOOTER_READER)))


def read_shards(paths: list[str]) -> Any:
    """``ray.data.read_parquet(paths, include_paths=True)`` with its footer readers sized to
    the shards (:func:`footer_readers`).

    Ray Data reads every file's footer on a pool of ``FooterReader`` actors that it starts
    for each read: 32 of them by default (``RAY_DATA_PARQUET_FOOTER_NUM_ACTORS``), whatever
    the number of files. On a small machine their start-up was most of what a scoring
    call cost before its first batch (bench/pool_scoring.py in BENCHMARKS.md). Each actor
    keeps many footer reads in flight, so a few serve thousands of shards. A value set in
    the environment wins.
    """
    with _footer_env:  # the variable is read when the read is planned, in this process
        if FOOTER_ACTORS_ENV in os.environ:
            return ray.data.read_parquet(paths, include_paths=True)
        os.environ[FOOTER_ACTORS_ENV] = str(footer_readers(len(paths)))
        try:
            return ray.data.read_parquet(paths, include_paths=True)
        finally:
            os.environ.pop(FOOTER_ACTORS_ENV, None)


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
    scale = scale or ScaleConfig()
    paths = shard_paths(source)
    schema = inspect_feature_shards(paths)
    columns = ["sample_id", "features"] + (["label"] if schema.has_label else []) + (["probs"] if schema.has_probs else [])
    ds = read_shards(paths).select_columns(columns + [PATH_COLUMN])
    ds = ds.map_batches(prepare_feature_batch, batch_format="pyarrow", batch_size=scale.inference_batch_size,
                        fn_kwargs=dict(dim=schema.dim, labeled_ids=_sorted_ids(labeled_ids),
                                       use_label=schema.has_label, probs=schema.has_probs),
                        zero_copy_batch=True)
    return ds, schema


def read_id_pool(source: Source, labeled_ids: Optional[Iterable[int]] = None,
                 scale: Optional[ScaleConfig] = None) -> Any:
    """The pool's id shards as a lazy Ray Dataset ``{sample_id, labeled}``."""
    scale = scale or ScaleConfig()
    paths = shard_paths(source)
    inspect_id_shards(paths)
    ds = read_shards(paths).select_columns(["sample_id", PATH_COLUMN])
    return ds.map_batches(prepare_id_batch, batch_format="pyarrow", batch_size=scale.inference_batch_size,
                          fn_kwargs=dict(labeled_ids=_sorted_ids(labeled_ids)), zero_copy_batch=True)


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
                          f"{', '.join(sorted(available)) or 'ids'}{strategy.needs_hint}")


def _fit(strategy: Strategy, features: Any, labeled_ids: Optional[np.ndarray], device: Any,
         run_dir: Optional[str]) -> float:
    t0 = time.perf_counter()
    n_labeled = int(labeled_ids.size) if labeled_ids is not None else 0
    strategy.fit(FitContext(features=features, num_labeled=n_labeled, cycle=strategy.cycle, run_dir=run_dir,
                            device=device, labeled_ids=labeled_ids))
    return time.perf_counter() - t0


def _check_streams(strategy: Strategy) -> None:
    if not strategy.streams:
        raise ConfigError(f"strategy {strategy.name!r} selects by its own method over the whole pool "
                          f"(O(N d) memory), not by a top-K of scores; it cannot score a pool from storage")


def _check_topk(strategy: Strategy) -> None:
    _check_streams(strategy)
    if type(strategy).select is not Strategy.select:
        raise ConfigError(f"strategy {strategy.name!r} selects in two passes over the features; id shards "
                          f"have none to read back: extract the features to shards and use "
                          f"select_from_features (daal-ray score --features)")


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
            whole-pool method (core-set, Suggestive Annotation, BADGE).
    """
    _check_streams(strategy)
    scale = scale or ScaleConfig()
    pool, schema = read_feature_pool(source, labeled_ids, scale)
    available = {"features"} | ({"probs"} if schema.has_probs else set())
    _check_needs(strategy, available, f"the shards of {source}")
    seconds = {}
    lab = _sorted_ids(labeled_ids)
    if fit and strategy.trains:
        if lab is None and schema.has_label:
            # The labeled ids are small (the annotated set): one pass over two columns finds them.
            lab = _sorted_ids(np.concatenate([b["sample_id"][b["labeled"]] for b in reraise_unwrapped(
                iter_feature_batches(pool, ("sample_id", "labeled"), 65536))] or [np.zeros(0, np.int64)]))
        t0 = time.perf_counter()
        fit_rows = _fit_rows(pool, read_id_pool(source, lab, scale), strategy, lab)
        _fit(strategy, fit_rows, lab, device, run_dir)
        seconds["fit"] = time.perf_counter() - t0  # the id pass, the sample's pass and the fit
    t0 = time.perf_counter()
    # The strategy's own select (a top-K, or top-K then a diverse K of the candidates, whose
    # rows a second pass reads back) over the shards; every top-K is the Ray Data pass.
    ctx = FitContext(features=pool, num_labeled=int(lab.size) if lab is not None else 0, cycle=strategy.cycle,
                     run_dir=run_dir, device=device, labeled_ids=lab,
                     scorer=lambda feats, strat, n: select_topk(feats, strat, n, scale))
    ids, scores, merge_s = strategy.select(ctx, k)
    seconds["score"] = time.perf_counter() - t0 - merge_s
    seconds["merge"] = merge_s
    logger.info("selected %d of %d rows from %s (%s)", ids.size, schema.num_rows, source,
                ", ".join(f"{n} {s:.1f}s" for n, s in seconds.items()))
    return PoolSelection(ids, scores, seconds)


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
    scale = scale or ScaleConfig()
    lab = _sorted_ids(labeled_ids)
    ids_pool = read_id_pool(source, lab, scale)
    predictor = predictor_kwargs(data=data, model_name=model_name, num_classes=num_classes, in_channels=in_channels,
                                 checkpoint=checkpoint, scale=scale, acquisition=acquisition, strategy=strategy)
    _check_needs(strategy, predictor_columns(predictor), "the task model's output")
    _check_topk(strategy)
    seconds = {}
    if fit and strategy.trains:
        t0 = time.perf_counter()
        _fit(strategy, extract_features(_fit_rows(ids_pool, ids_pool, strategy, lab), predictor, scale), lab, device,
             run_dir)
        seconds["fit"] = time.perf_counter() - t0  # the id pass, the sample's extraction and the fit
    t0 = time.perf_counter()
    reduced = _map_on_actors(ids_pool, PredictScoreActor, dict(predictor=predictor, strategy=strategy, k=k), scale)
    ids, scores, merge_s = merge_scored(reduced, k)
    seconds["score"] = time.perf_counter() - t0 - merge_s
    seconds["merge"] = merge_s
    return PoolSelection(ids, scores, seconds)
