"""Ray Data over the pool: features and probabilities, scores, per-block top-K.

The pool travels as a Ray Dataset of ``sample_id`` (and a ``labeled`` flag) in blocks;
each inference actor loads the dataset and the cycle's checkpoint once, then maps batches
of ids to ``features`` and ``probs``. Scoring maps the strategy over those batches and
reduces every block to its own top-K, so the process that merges them holds O(K) rows.
No process ever holds the whole pool's features unless the strategy asks to fit on them.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import ray
import ray.data
import torch

from daal_ray.acquisition.base import Strategy
from daal_ray.config import DataConfig, ScaleConfig
from daal_ray.selection import StreamingTopK, topk_arrays

logger = logging.getLogger(__name__)


def pool_dataset(sample_ids: np.ndarray, labeled_ids: np.ndarray, scale: ScaleConfig) -> ray.data.Dataset:
    """The pool as a Ray Dataset ``{sample_id, labeled}`` in enough blocks for the actors."""
    ids = np.asarray(sample_ids, dtype=np.int64)
    labeled = np.isin(ids, np.asarray(labeled_ids, dtype=np.int64), assume_unique=True)
    n_blocks = max(2 * scale.inference_actors, math.ceil(len(ids) / (8 * scale.inference_batch_size)))
    n_blocks = max(1, min(n_blocks, len(ids)))
    tables = [pa.table({"sample_id": i, "labeled": m})
              for i, m in zip(np.array_split(ids, n_blocks), np.array_split(labeled, n_blocks))]
    return ray.data.from_arrow(tables)


class PoolPredictor:
    """Stateful Ray Data predictor: the dataset and the model are loaded once per actor.

    Args:
        data: the experiment's DataConfig as a dict.
        model_name, num_classes, in_channels: the task model to build.
        checkpoint: path of the cycle's ``model.pt`` (a state_dict, loaded weights-only).
        threads: torch intra-op threads for this actor.
        use_gpu: run on the actor's GPU.
    """

    def __init__(self, data: Mapping[str, Any], model_name: str, num_classes: int, in_channels: int,
                 checkpoint: str, threads: int = 1, use_gpu: bool = False) -> None:
        from daal_ray.data import get_dataset
        from daal_ray.models import build_model
        from daal_ray.training import load_state_dict

        torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.dataset = get_dataset(DataConfig.from_dict(data))
        self.model = build_model(model_name, num_classes=num_classes, in_channels=in_channels)
        self.model.load_state_dict(load_state_dict(checkpoint))
        self.model.to(self.device).eval()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = batch["sample_id"]
        with torch.inference_mode():
            x = self.dataset.images("train", ids).to(self.device, non_blocking=True)
            feats, logits = self.model.forward_features(x)
            probs = torch.softmax(logits.float(), dim=1)
        return {
            "sample_id": ids,
            "labeled": batch["labeled"],
            "features": feats.float().cpu().numpy(),
            "probs": probs.cpu().numpy(),
        }


_TASK_PREDICTORS: dict[str, PoolPredictor] = {}


def _predict_in_task(batch: dict[str, np.ndarray], **kwargs: Any) -> dict[str, np.ndarray]:
    """Task-mode body: the same PoolPredictor, built once per worker process and cycle.

    Ray reuses task worker processes, so after the first cycle torch is already imported
    and only the checkpoint is loaded; an actor pool pays a fresh process per execution.
    """
    import os

    key = f"{sorted(kwargs.items())}:{os.stat(kwargs['checkpoint']).st_mtime_ns}"
    predictor = _TASK_PREDICTORS.get(key)
    if predictor is None:
        _TASK_PREDICTORS.clear()  # one cycle's model per process at a time
        predictor = _TASK_PREDICTORS[key] = PoolPredictor(**kwargs)
    return predictor(batch)


def extract_features(pool: ray.data.Dataset, *, data: DataConfig, model_name: str, num_classes: int,
                     in_channels: int, checkpoint: str, scale: ScaleConfig) -> ray.data.Dataset:
    """Map the pool to ``{sample_id, labeled, features, probs}`` (lazily; nothing runs yet).

    ``scale.inference_compute`` picks the execution: ``actors`` (default) runs
    :class:`PoolPredictor` in an actor pool of ``scale.inference_actors``; ``tasks`` runs
    the same predictor in Ray tasks, cached per worker process, which saves the actor
    start-up on small pools.
    """
    use_gpu = scale.use_gpu and scale.gpus_per_inference_actor > 0
    kwargs = dict(data=data.to_dict(), model_name=model_name, num_classes=num_classes, in_channels=in_channels,
                  checkpoint=checkpoint, threads=max(1, int(scale.cpus_per_inference_actor)), use_gpu=use_gpu)
    common = dict(batch_size=scale.inference_batch_size, num_cpus=scale.cpus_per_inference_actor,
                  num_gpus=scale.gpus_per_inference_actor if use_gpu else 0, batch_format="numpy")
    if scale.inference_compute == "tasks":
        return pool.map_batches(_predict_in_task, fn_kwargs=kwargs, **common)
    return pool.map_batches(PoolPredictor, fn_constructor_kwargs=kwargs,
                            compute=ray.data.ActorPoolStrategy(size=scale.inference_actors), **common)


def _score_block(batch: dict[str, np.ndarray], strategy: Strategy, k: int) -> dict[str, np.ndarray]:
    """Score the unlabeled rows of one batch and keep its top ``k``."""
    keep = ~np.asarray(batch["labeled"], dtype=bool)
    rows = {key: np.asarray(v)[keep] for key, v in batch.items()}
    if rows["sample_id"].size == 0:
        return {"sample_id": np.zeros(0, np.int64), "score": np.zeros(0, np.float64)}
    scores = np.asarray(strategy.score(rows), dtype=np.float64).reshape(-1)
    ids, top = topk_arrays(rows["sample_id"], scores, k)
    return {"sample_id": ids, "score": top}


def select_topk(scored_input: ray.data.Dataset, strategy: Strategy, k: int, scale: ScaleConfig,
                ) -> tuple[np.ndarray, np.ndarray, float]:
    """Exact top ``k`` unlabeled ids of ``scored_input`` under ``strategy``.

    Returns ``(ids, scores, merge_seconds)``, best first; ``merge_seconds`` is the time
    spent merging the per-batch top-Ks here (the selection proper). Scoring runs as Ray Data
    tasks; each batch is reduced to its own top-K before it leaves its worker.
    """
    reduced = scored_input.map_batches(
        _score_block,
        fn_kwargs={"strategy": strategy, "k": k},
        batch_size=scale.inference_batch_size,
        batch_format="numpy",
        num_cpus=scale.cpus_per_inference_actor or 1,
    )
    merger = StreamingTopK(k)
    merge_s = 0.0
    for batch in reduced.iter_batches(batch_size=None, batch_format="numpy"):
        t0 = time.perf_counter()
        merger.push(batch["sample_id"], batch["score"])
        merge_s += time.perf_counter() - t0
    ids, scores = merger.result()
    return ids, scores, merge_s
