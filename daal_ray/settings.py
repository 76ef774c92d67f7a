"""Frozen, validated configuration: the base class and the sections that need nothing else.

Configs are built once (in a job script or the CLI), passed explicitly, converted to
plain dicts only when they cross into Ray, and saved with every result. ``from_dict``
is strict: unknown keys and wrong types are refused with the allowed set named.

This module is the bottom layer of configuration: :class:`Config` (strict ``from_dict`` /
``to_dict`` for frozen dataclasses, which strategies subclass for their params),
:func:`check`, and :class:`DataConfig`, :class:`TrainConfig` and :class:`ScaleConfig`.
The experiment as a whole (:class:`~daal_ray.config.ExperimentConfig`) and the strategy
choice (:class:`~daal_ray.config.AcquisitionConfig`, validated against the strategy
registry) live in :mod:`daal_ray.config`, one layer above the strategies. Per-dataset
training recipes live with each dataset (``PoolDataset.default_train`` in :mod:`daal_ray.data`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Mapping, Optional, TypeVar, Union

from daal_ray.errors import ConfigError

T = TypeVar("T", bound="Config")


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in canonical form."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where} must be {_type_name(tp)}, got {type(value).__name__} ({value!r})")
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{where} must be one of {allowed}; got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {type(value).__name__} ({value!r})")
        item_tp = args[0] if args else Any
        return tuple(_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping of {tp.__name__} fields, got {type(value).__name__}")
        return tp.from_dict(value, where=where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be bool, got {type(value).__name__} ({value!r})")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be int, got {type(value).__name__} ({value!r})")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be float, got {type(value).__name__} ({value!r})")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be finite, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be str, got {type(value).__name__} ({value!r})")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {where}")


class Config:
    """Base of every config dataclass: strict ``from_dict`` / ``to_dict`` for frozen dataclasses.

    Subclasses are ``@dataclass(frozen=True)``; fields are type-checked and coerced on
    construction, then :meth:`validate` runs its range checks.

    ``RUN_LENGTH_PARAMS`` names the fields that change how a result is computed but not
    what it is (a checkpoint interval, a chunk size): reports leave them out of a
    strategy's label (:func:`daal_ray.report.variant_labels`). Every other field that
    differs from its default is named in the label.
    """

    RUN_LENGTH_PARAMS: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            where = f"{type(self).__name__}.{f.name}"
            object.__setattr__(self, f.name, _coerce(getattr(self, f.name), hints[f.name], where))
        self.validate()

    def validate(self) -> None:
        """Range checks; subclasses raise :class:`ConfigError` naming the field."""

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any], where: str | None = None) -> T:
        where = where or cls.__name__
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(
                f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in {where}; "
                f"allowed: {', '.join(names)}"
            )
        hints = typing.get_type_hints(cls)
        kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Config):
                v = v.to_dict()
            elif isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, dict):
                v = dict(v)
            out[f.name] = v
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)


def check(cond: bool, msg: str) -> None:
    """Raise :class:`ConfigError` with ``msg`` unless ``cond`` holds."""
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class DataConfig(Config):
    """Which dataset, and where it lives.

    Attributes:
        name: a registered dataset (``daal-ray datasets`` lists them).
        root: directory holding the dataset's official on-disk layout (not needed for
            ``digits``, which ships with scikit-learn).
        download: let torchvision download CIFAR into ``root`` when it is missing.
        split_seed: seed of the train/test split for datasets without an official one
            (digits). Fixed across experiment seeds so every seed is scored on one test set.
        test_fraction: share of samples held out for testing where the split is ours.
        image_size: side length, in pixels, that ``imagefolder`` images are resized to; for
            ``cityscapes`` the height (the width is twice it).
    """

    name: str = "digits"
    root: Optional[str] = None
    download: bool = False
    split_seed: int = 0
    test_fraction: float = 0.2
    image_size: int = 32

    def validate(self) -> None:
        check(0.0 < self.test_fraction < 1.0, f"DataConfig.test_fraction must be in (0, 1), got {self.test_fraction}")
        check(self.image_size >= 4, f"DataConfig.image_size must be >= 4 pixels, got {self.image_size}")


@dataclass(frozen=True)
class TrainConfig(Config):
    """Task-model training recipe; retrained from scratch each cycle as in the paper.

    Attributes:
        model: a registered task model (``daal-ray models``); empty = the dataset's default.
        epochs: training epochs per cycle.
        batch_size: global batch size, split evenly over the Ray Train workers.
        optimizer: ``sgd`` or ``adam``.
        lr: initial learning rate.
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        schedule: ``multistep`` (x ``gamma`` at each of ``milestones``), ``cosine`` or ``constant``.
        milestones: epochs at which ``multistep`` decays the learning rate.
        gamma: decay factor of ``multistep``.
        augment: training-image augmentation: ``none`` (the DAAL paper's recipe, and the
            default) or ``crop_flip`` (random crop after 4-pixel zero padding and a random
            horizontal flip, the standard CIFAR recipe; classification datasets only).
            Compare strategies on one recipe at a time.
    """

    model: str = ""
    epochs: int = 30
    batch_size: int = 64
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["multistep", "cosine", "constant"] = "constant"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    augment: Literal["none", "crop_flip"] = "none"

    def validate(self) -> None:
        check(self.epochs >= 1, f"TrainConfig.epochs must be >= 1, got {self.epochs}")
        check(self.batch_size >= 1, f"TrainConfig.batch_size must be >= 1, got {self.batch_size}")
        check(self.lr > 0, f"TrainConfig.lr must be > 0, got {self.lr}")
        check(self.weight_decay >= 0, f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay}")
        check(all(m > 0 for m in self.milestones), f"TrainConfig.milestones must be positive epochs, got {self.milestones}")


@dataclass(frozen=True)
class ScaleConfig(Config):
    """Resources. Every figure the system asks Ray for comes from here.

    Attributes:
        num_workers: Ray Train workers (DDP ranks) for the task model and acquisition nets.
            0 runs the training function in the calling process (tests, debugging).
        use_gpu: train (and infer) on GPUs.
        cpus_per_worker: logical CPUs each Train worker reserves.
        gpus_per_worker: GPUs each Train worker reserves when ``use_gpu``.
        torch_threads: intra-op threads per process (0 = ``cpus_per_worker``).
        inference_actors: Ray Data actors that extract features and score the pool.
        inference_compute: ``actors`` (a stateful predictor per actor; the default) or
            ``tasks`` (the same predictor cached per Ray worker process; saves the actor
            start-up each cycle on small pools).
        inference_batch_size: rows per Ray Data batch.
        cpus_per_inference_actor: logical CPUs each inference actor reserves.
        gpus_per_inference_actor: GPUs each inference actor reserves (fractions share a GPU).
        trial_concurrency: experiments run at once by sweeps and the main jobs (0 = no limit).
        placement_strategy: how Ray places one experiment's Train workers: ``PACK`` (as few
            nodes as possible: the fastest all-reduce), ``SPREAD`` (across nodes, so losing
            one node loses fewer workers), or their ``STRICT_`` forms, which wait until the
            cluster can place them so.
    """

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    torch_threads: int = 0
    inference_actors: int = 1
    inference_compute: Literal["actors", "tasks"] = "actors"
    inference_batch_size: int = 512
    cpus_per_inference_actor: float = 1.0
    gpus_per_inference_actor: float = 0.0
    trial_concurrency: int = 0
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"

    def validate(self) -> None:
        check(self.num_workers >= 0, f"ScaleConfig.num_workers must be >= 0, got {self.num_workers}")
        check(self.cpus_per_worker > 0, f"ScaleConfig.cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        check(self.gpus_per_worker >= 0, "ScaleConfig.gpus_per_worker must be >= 0")
        check(self.torch_threads >= 0, "ScaleConfig.torch_threads must be >= 0")
        check(self.inference_actors >= 1, f"ScaleConfig.inference_actors must be >= 1, got {self.inference_actors}")
        check(self.inference_batch_size >= 1, "ScaleConfig.inference_batch_size must be >= 1")
        check(self.cpus_per_inference_actor >= 0, "ScaleConfig.cpus_per_inference_actor must be >= 0")
        check(self.gpus_per_inference_actor >= 0, "ScaleConfig.gpus_per_inference_actor must be >= 0")
        check(self.trial_concurrency >= 0, "ScaleConfig.trial_concurrency must be >= 0")

    @property
    def threads(self) -> int:
        return self.torch_threads or max(1, int(self.cpus_per_worker))
