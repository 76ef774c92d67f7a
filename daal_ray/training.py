"""Per-worker training and evaluation of the task model (runs inside Ray Train workers).

Flat, explicit functions in the torchvision-references style: :func:`fit_task_model`
retrains a model from scratch on the labeled ids with DDP when the worker group has more
than one rank, and :func:`evaluate` returns a confusion matrix all-reduced over ranks.
They also run in a plain process (world size 1), which is how the unit tests call them.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from daal_ray.atomic_io import atomic_write_bytes
from daal_ray.data.base import PoolDataset
from daal_ray.errors import ConfigError, DataError
from daal_ray.models import JointHead, TaskModel, build_model
from daal_ray.runtime import seed_everything, world
from daal_ray.settings import TrainConfig

logger = logging.getLogger(__name__)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ConfigError(f"Invalid optimizer {cfg.optimizer!r}. Only sgd and adam are supported.")


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch."""
    if cfg.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.milestones), gamma=cfg.gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def _collate(items):
    xs, ys = zip(*items)
    return torch.stack(xs), torch.stack(ys)


@dataclass
class FitStats:
    """What a task-model fit did; ``head`` is the trained joint head, if one was trained."""

    epochs: int
    steps: int
    first_loss: float
    last_loss: float
    seconds: float
    head: Optional[JointHead] = None


HeadFactory = Callable[[TaskModel], Optional[JointHead]]


class JointNet(nn.Module):
    """The task model and a :class:`JointHead` as one module, so DDP syncs both.

    ``forward(x, detach)`` returns ``(logits, head_output)``; with ``detach`` the head's
    gradient stops at the taps and the backbone learns from the task loss alone.
    """

    def __init__(self, model: TaskModel, head: JointHead) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x: torch.Tensor, detach: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        taps, _, logits = self.model.forward_taps(x)
        if detach:
            taps = [t.detach() for t in taps]
        return logits, self.head(taps)


def per_sample_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per sample ``[n]``; dense targets average their non-ignored (255) pixels."""
    loss = F.cross_entropy(logits, y, ignore_index=255, reduction="none")
    if loss.dim() == 1:
        return loss
    valid = (y != 255).reshape(y.shape[0], -1).float()
    return (loss.reshape(loss.shape[0], -1) * valid).sum(1) / valid.sum(1).clamp(min=1.0)


def augment_batch(x: torch.Tensor, kind: str, pad: int = 4) -> torch.Tensor:
    """Standard image augmentation of a training batch ``[n, C, H, W]`` (torch's global RNG,
    seeded per cycle by :func:`daal_ray.runtime.seed_everything`).

    ``crop_flip``: zero-pad ``pad`` pixels on each side, crop a random ``H x W`` window, and
    flip left-right with probability 1/2, per image (the CIFAR recipe of He et al. 2016).
    ``none``: ``x`` unchanged.
    """
    if kind == "none":
        return x
    if kind != "crop_flip":
        raise ConfigError(f"unknown augmentation {kind!r}; choose none or crop_flip")
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,)).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,)).tolist()
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    flip = torch.rand(n) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    device: torch.device, *, head: Optional[JointHead] = None, epoch: int = 0,
                    epochs: int = 1, augment: str = "none") -> tuple[float, int]:
    """One pass over ``loader``; returns (mean loss, steps).

    With ``head``, ``model`` is a (possibly DDP-wrapped) :class:`JointNet` holding it, and
    the loss is the mean task loss plus ``head.loss``. ``augment`` is applied to each
    batch's images (:func:`augment_batch`).
    """
    model.train()
    total, steps = 0.0, 0
    detach = head is not None and head.detach_taps(epoch, epochs)
    for x, y in loader:
        x = augment_batch(x, augment)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if head is None:
            # The mean over non-void targets; a batch whose pixels are all void (255) gives
            # 0, not NaN (and still runs backward, so DDP ranks stay in step).
            loss = F.cross_entropy(model(x), y, ignore_index=255, reduction="sum") / (y != 255).sum().clamp(min=1)
        else:
            logits, out = model(x, detach)
            sample_loss = per_sample_loss(logits, y)
            loss = sample_loss.mean() + head.loss(out, sample_loss, epoch, epochs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach())  # a CPU-GPU sync point, once per step; fine at these sizes
        steps += 1
    return total / max(steps, 1), steps


def fit_task_model(dataset: PoolDataset, ids: np.ndarray, targets: np.ndarray, cfg: TrainConfig, *,
                   seed: int, device: torch.device,
                   head_factory: Optional[HeadFactory] = None) -> tuple[TaskModel, FitStats]:
    """Train a fresh task model on ``ids`` (with their ``targets``) and return it.

    Under a process group each rank trains on its shard of every epoch (DistributedSampler)
    and DDP averages the gradients; the batch size per rank is ``cfg.batch_size`` divided
    by the world size. The returned model is the unwrapped module.

    Args:
        head_factory: builds a :class:`JointHead` for the fresh model (or returns None),
            e.g. :meth:`Strategy.task_head`; the head is trained jointly with the model by
            the same optimiser and returned in ``FitStats.head``.
    """
    rank, size = world()
    if len(ids) == 0:
        raise DataError("no labeled samples to train on")
    if cfg.augment != "none" and dataset.task != "classification":
        raise ConfigError(f"TrainConfig.augment={cfg.augment!r} transforms images only, not their dense targets; "
                          f"use augment='none' for {dataset.task} datasets")
    seed_everything(seed)  # identical initial weights on every rank
    model = build_model(cfg.model, num_classes=dataset.num_classes, in_channels=dataset.in_channels).to(device)
    head = head_factory(model) if head_factory is not None else None
    net: nn.Module = model if head is None else JointNet(model, head.to(device))
    if size > 1:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    train_set = dataset.torch_dataset("train", ids, targets)
    sampler = DistributedSampler(train_set, num_replicas=size, rank=rank, shuffle=True, seed=seed % 2**31, drop_last=False)
    per_rank = max(1, cfg.batch_size // size)
    loader = DataLoader(train_set, batch_size=per_rank, sampler=sampler, collate_fn=_collate,
                        pin_memory=device.type == "cuda")
    optimizer = make_optimizer(net, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    t0 = time.perf_counter()
    first = last = math.nan
    steps = 0
    for epoch in range(cfg.epochs):
        sampler.set_epoch(epoch)
        loss, n = train_one_epoch(net, loader, optimizer, device, head=head, epoch=epoch, epochs=cfg.epochs,
                                  augment=cfg.augment)
        scheduler.step()
        steps += n
        first = loss if epoch == 0 else first
        last = loss
    if head is not None:
        head.eval()
    return model, FitStats(cfg.epochs, steps, first, last, time.perf_counter() - t0, head)


@torch.inference_mode()
def evaluate(model: TaskModel, dataset: PoolDataset, *, device: torch.device, batch_size: int = 512) -> np.ndarray:
    """Confusion matrix ``[num_classes, num_classes]`` (rows = truth) over the test split.

    Each rank scores its shard of the test ids; the matrices are summed over ranks, so
    every rank returns the same full matrix. Targets equal to 255 are ignored.
    """
    rank, size = world()
    ids = dataset.sample_ids("test")[rank::size]
    c = dataset.num_classes
    conf = torch.zeros(c * c, dtype=torch.int64, device=device)
    model.eval()
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        x = dataset.images("test", chunk).to(device)
        y = torch.as_tensor(dataset.targets("test", chunk), device=device)
        pred = model(x).argmax(1)
        keep = y != 255
        conf += torch.bincount(y[keep].flatten() * c + pred[keep].flatten(), minlength=c * c)
    if size > 1:
        dist.all_reduce(conf)
    return conf.view(c, c).cpu().numpy()


def accuracy(confusion: np.ndarray) -> float:
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else float("nan")


def mean_iou(confusion: np.ndarray) -> float:
    """Mean intersection-over-union over classes that occur in truth or prediction."""
    inter = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - inter
    valid = union > 0
    return float((inter[valid] / union[valid]).mean()) if valid.any() else float("nan")


METRICS = {"accuracy": accuracy, "miou": mean_iou}


# ------------------------------------------------------------------ checkpoints
def _state_bytes(module: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, buf)
    return buf.getvalue()


def save_checkpoint(model: nn.Module, directory: Path, meta: dict, head: Optional[JointHead] = None) -> Path:
    """Write ``model.pt`` (a state_dict of tensors only) and ``meta.json`` atomically.

    A joint ``head`` goes to its ``checkpoint_file`` in the same directory, written before
    ``meta.json`` so a checkpoint that looks complete holds it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    files = [("model.pt", _state_bytes(model))]
    if head is not None:
        files.append((head.checkpoint_file, _state_bytes(head)))
    files.append(("meta.json", json.dumps(meta, sort_keys=True).encode()))
    for name, data in files:
        atomic_write_bytes(directory / name, data)
    return directory


def load_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """Load a state_dict with ``weights_only=True``: a checkpoint carrying a pickled object is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"checkpoint {path} is unreadable or holds more than tensors ({exc})") from exc


def load_checkpoint_meta(directory: Path) -> Optional[dict]:
    """The meta of a complete checkpoint in ``directory``, or None if there is none."""
    meta, model = directory / "meta.json", directory / "model.pt"
    if not (meta.is_file() and model.is_file()):
        return None
    try:
        return json.loads(meta.read_text())
    except ValueError:
        return None
