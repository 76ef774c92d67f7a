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
from typing import Any, Mapping, Optional

import numpy as np
import pyarrow as pa
import ray
import ray.data
import torch

from daal_ray.acquisition.base import Strategy
from daal_ray.config import AcquisitionConfig, DataConfig, ScaleConfig
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


def pixel_mean_entropy(probs: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Predictive entropy of ``probs [n, C, ...]`` per location, averaged per sample ``[n]``
    (float64; clipped like :func:`daal_ray.acquisition.entropy.predictive_entropy`)."""
    out = torch.empty(probs.shape[0], dtype=torch.float64, device=probs.device)
    for i in range(probs.shape[0]):  # one image at a time: the float64 copy is one image's
        p = probs[i].double().clamp_(eps, 1.0)
        out[i] = (-(p * p.log()).sum(0)).mean()
    return out


class PoolPredictor:
    """Stateful Ray Data predictor: the dataset and the model are loaded once per actor.

    Output columns: ``sample_id``, ``labeled``, ``features`` ``[n, d]`` and ``probs``
    ``[n, C]``. For dense predictions (segmentation logits ``[n, C, H, W]``) the pixels are
    reduced per image before anything leaves the predictor: ``probs`` is the mean pixel
    softmax, and the column ``entropy`` ``[n]`` is the mean pixel predictive entropy (under
    MC dropout, of the mean softmax over the passes), which the entropy-based strategies
    score when it is present.

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
        mc_dropout: the dropout probability of those passes.
        mc_seed: seeds the dropout masks (with each batch's ids), so a rerun repeats them.
    """

    def __init__(self, data: Mapping[str, Any], model_name: str, num_classes: int, in_channels: int,
                 checkpoint: str, threads: int = 1, use_gpu: bool = False,
                 acquisition: Optional[Mapping[str, Any]] = None, mc_passes: int = 0, mc_dropout: float = 0.0,
                 mc_seed: int = 0) -> None:
        from daal_ray.data import get_dataset
        from daal_ray.models import build_model
        from daal_ray.training import load_state_dict

        torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.dataset = get_dataset(DataConfig.from_dict(data))
        self.model = build_model(model_name, num_classes=num_classes, in_channels=in_channels)
        self.model.load_state_dict(load_state_dict(checkpoint))
        self.model.to(self.device).eval()
        self.mc_passes, self.mc_dropout, self.mc_seed = int(mc_passes), float(mc_dropout), int(mc_seed)
        self.head = None
        if acquisition is not None:
            from pathlib import Path

            from daal_ray.acquisition import build_strategy

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
            if self.mc_passes > 0:
                probs = self._mc_probs(feats if head_in is None else head_in, ids)
            entropy = None
            if probs.dim() > 2:
                # Dense predictions are reduced per image here: pixel maps never enter Ray Data.
                entropy = pixel_mean_entropy(probs).cpu().numpy()
                probs = probs.flatten(2).mean(2)
        out = {
            "sample_id": ids,
            "labeled": batch["labeled"],
            "features": feats.float().cpu().numpy(),
            "probs": probs.cpu().numpy(),
        }
        if entropy is not None:
            out["entropy"] = entropy
        if self.head is not None:
            out[self.head.output_column] = head_out
        return out


    def _mc_probs(self, feats: torch.Tensor, ids: np.ndarray) -> torch.Tensor:
        """Mean softmax over ``mc_passes`` passes of the head with dropout on ``feats`` (the head's input)."""
        from daal_ray.training import derive_seed

        gen = torch.Generator(device=self.device)
        gen.manual_seed(derive_seed(self.mc_seed, int(ids[0]) if len(ids) else 0, len(ids)))
        keep = 1.0 - self.mc_dropout
        total: Optional[torch.Tensor] = None
        for _ in range(self.mc_passes):
            if self.mc_dropout > 0:
                mask = torch.rand(feats.shape, generator=gen, device=self.device) < keep
                f = feats * mask / keep
            else:
                f = feats
            # Summed in float64: with dropout off the mean of identical passes is exactly
            # the one-pass softmax, so MC dropout with p = 0 equals entropy bit for bit.
            p = torch.softmax(self.model.classify(f).float(), dim=1).double()
            total = p if total is None else total + p
        return (total / self.mc_passes).float()


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
                     in_channels: int, checkpoint: str, scale: ScaleConfig,
                     acquisition: Optional[AcquisitionConfig] = None,
                     predictor_options: Optional[Mapping[str, Any]] = None) -> ray.data.Dataset:
    """Map the pool to ``{sample_id, labeled, features, probs}`` (lazily; nothing runs yet).

    ``scale.inference_compute`` picks the execution: ``actors`` (default) runs
    :class:`PoolPredictor` in an actor pool of ``scale.inference_actors``; ``tasks`` runs
    the same predictor in Ray tasks, cached per worker process, which saves the actor
    start-up on small pools. With ``acquisition``, a strategy's joint head adds its column.
    ``predictor_options`` (:meth:`Strategy.predictor_options`) go to the predictor as they are.
    """
    use_gpu = scale.use_gpu and scale.gpus_per_inference_actor > 0
    kwargs = dict(data=data.to_dict(), model_name=model_name, num_classes=num_classes, in_channels=in_channels,
                  checkpoint=checkpoint, threads=max(1, int(scale.cpus_per_inference_actor)), use_gpu=use_gpu,
                  acquisition=acquisition.to_dict() if acquisition is not None else None,
                  **dict(predictor_options or {}))
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


def select_topk(scored_input: Any, strategy: Strategy, k: int, scale: Optional[ScaleConfig] = None,
                ) -> tuple[np.ndarray, np.ndarray, float]:
    """Exact top ``k`` unlabeled ids of ``scored_input`` under ``strategy``.

    Returns ``(ids, scores, merge_seconds)``, best first; ``merge_seconds`` is the time
    spent merging the per-batch top-Ks here (the selection proper). Scoring runs as Ray Data
    tasks; each batch is reduced to its own top-K before it leaves its worker. A mapping of
    arrays, or a list of them (unit tests, benches), is scored batch by batch in this process.
    """
    merger = StreamingTopK(k)
    merge_s = 0.0
    if isinstance(scored_input, (Mapping, list, tuple)):
        for batch in [scored_input] if isinstance(scored_input, Mapping) else scored_input:
            top = _score_block(dict(batch), strategy, k)
            t0 = time.perf_counter()
            merger.push(top["sample_id"], top["score"])
            merge_s += time.perf_counter() - t0
        ids, scores = merger.result()
        return ids, scores, merge_s
    scale = scale or ScaleConfig()
    reduced = scored_input.map_batches(
        _score_block,
        fn_kwargs={"strategy": strategy, "k": k},
        batch_size=scale.inference_batch_size,
        batch_format="numpy",
        num_cpus=scale.cpus_per_inference_actor or 1,
    )
    for batch in reduced.iter_batches(batch_size=None, batch_format="numpy"):
        t0 = time.perf_counter()
        merger.push(batch["sample_id"], batch["score"])
        merge_s += time.perf_counter() - t0
    ids, scores = merger.result()
    return ids, scores, merge_s
