"""The experiment's configuration: what one active-learning run is.

:class:`ExperimentConfig` gathers a dataset (:class:`DataConfig`), a training recipe
(:class:`TrainConfig`), a strategy (:class:`AcquisitionConfig`), resources
(:class:`ScaleConfig`) and the paper's protocol. It sits one layer above the strategies,
because choosing a strategy is validated against their registry at construction: an
unknown name or a bad param is refused before anything runs. The base class and the
sections that need nothing above them live in :mod:`daal_ray.settings` and are
re-exported here, so users import every config from this module.

Defaults follow the paper where it states a value (initial fraction 0.10, step 0.05,
final 0.40); per-dataset training recipes live with each dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from daal_ray.acquisition import get_strategy_class
from daal_ray.data import get_dataset_class
from daal_ray.errors import ConfigError
from daal_ray.models import build_model, check_model_name
from daal_ray.settings import Config, DataConfig, ScaleConfig, TrainConfig, check

__all__ = ["MAX_NAME_LEN", "AcquisitionConfig", "Config", "DataConfig", "ExperimentConfig", "ScaleConfig", "TrainConfig", "check",
           "resolve_config"]


# Longest experiment name (its run directory's name, its MLflow run's, its Tune trial's tag):
# well under the 255 bytes a file name may have.
MAX_NAME_LEN = 120


@dataclass(frozen=True)
class AcquisitionConfig(Config):
    """How the next batch is chosen.

    Attributes:
        strategy: a registered strategy (``daal-ray strategies`` lists them).
        params: strategy-specific settings, validated by the strategy itself.
    """

    strategy: str = "random"
    params: dict = field(default_factory=dict)

    def validate(self) -> None:
        cls = get_strategy_class(self.strategy)
        cls.Params.from_dict(self.params, where=f"AcquisitionConfig.params ({self.strategy})")


@dataclass(frozen=True)
class ExperimentConfig(Config):
    """One active-learning experiment: a dataset, a strategy, a seed and a protocol.

    The protocol is the paper's by default: a random ``initial_fraction`` of the training
    set is labeled, each cycle adds ``step_fraction`` of it (or exactly ``budget`` samples
    when set) until ``final_fraction`` is reached.

    Attributes:
        name: run name, stable across re-runs so a re-run resumes (no timestamps).
        seed: seeds the initial labeled pool, model initialisation, data order and
            stochastic strategies. Experiments with one dataset and seed share the
            initial pool whatever their strategy.
        initial_fraction, step_fraction, final_fraction: the protocol, as fractions of
            the training set, each in (0, 1).
        budget: per-cycle number of samples to label; 0 = ``step_fraction`` of the pool.
        metric: the evaluation metric recorded per cycle.
    """

    name: str = "experiment"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    acquisition: AcquisitionConfig = field(default_factory=AcquisitionConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    initial_fraction: float = 0.10
    step_fraction: float = 0.05
    final_fraction: float = 0.40
    budget: int = 0
    metric: Literal["accuracy", "miou"] = "accuracy"

    def validate(self) -> None:
        for name in ("initial_fraction", "step_fraction", "final_fraction"):
            v = getattr(self, name)
            check(0.0 < v < 1.0, f"ExperimentConfig.{name} must be in (0, 1), got {v}")
        check(
            self.final_fraction >= self.initial_fraction,
            f"ExperimentConfig.final_fraction ({self.final_fraction}) must be >= initial_fraction ({self.initial_fraction})",
        )
        check(self.budget >= 0, f"ExperimentConfig.budget must be >= 0, got {self.budget}")
        check(bool(self.name) and "/" not in self.name and self.name not in (".", ".."),
               f"ExperimentConfig.name must be a plain non-empty name, got {self.name!r}")
        check(len(self.name.encode()) <= MAX_NAME_LEN,
              f"ExperimentConfig.name must be at most {MAX_NAME_LEN} bytes (it names the run directory), got "
              f"{len(self.name.encode())}: {self.name[:40]!r}...")

    def schedule(self, pool_size: int) -> tuple[int, int, int]:
        """Return ``(initial, per_cycle, selection_rounds)`` for a pool of ``pool_size``.

        The rounds label up to the target, ``round(final_fraction x pool_size)``, and never
        past it: every batch is ``per_cycle`` samples but the last, which is what remains
        to the target (:meth:`batch_size`). The number of rounds is the nearest whole
        number of batches to the target, as the initial pool rounds to the nearest sample:
        a remainder of less than half a batch is not worth a training cycle of its own (the
        run then stops short of the target by it), one of half a batch or more gets one.

        Raises:
            ConfigError: when the budget is larger than the pool or the protocol
                labels nothing.
        """
        if pool_size < 2:
            raise ConfigError(f"the training pool has {pool_size} samples; at least 2 are needed")
        initial = max(1, int(round(self.initial_fraction * pool_size)))
        target = self.target(pool_size)
        per_cycle = self.budget or max(1, int(round(self.step_fraction * pool_size)))
        if per_cycle > pool_size - initial:
            raise ConfigError(
                f"budget of {per_cycle} per cycle is larger than the unlabeled pool "
                f"({pool_size - initial} of {pool_size} samples after the initial {initial}); "
                f"lower ExperimentConfig.budget or step_fraction"
            )
        # Nearest whole number of batches, halves up, in integers.
        rounds = max(0, (2 * (target - initial) + per_cycle) // (2 * per_cycle))
        if rounds == 0:
            raise ConfigError(
                f"the protocol labels nothing: the target of {target} samples (final_fraction "
                f"{self.final_fraction} of {pool_size}) is less than half a batch of {per_cycle} beyond the initial "
                f"{initial}; raise ExperimentConfig.final_fraction or lower step_fraction / budget"
            )
        return initial, per_cycle, rounds

    def target(self, pool_size: int) -> int:
        """How many samples are labeled when the protocol ends: ``final_fraction`` of the
        pool, rounded like the initial pool (at least the initial pool)."""
        initial = max(1, int(round(self.initial_fraction * pool_size)))
        return min(pool_size, max(initial, int(round(self.final_fraction * pool_size))))

    def batch_size(self, pool_size: int, num_labeled: int) -> int:
        """How many samples a selection round with ``num_labeled`` labeled ones takes: the
        per-cycle budget, or what remains to the target (0 once it is reached)."""
        _, per_cycle, _ = self.schedule(pool_size)
        return max(0, min(per_cycle, self.target(pool_size) - num_labeled))


def resolve_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """Fill the dataset's default model in when none is named; check the model fits the task.

    Raises:
        ConfigError: an unknown model, or a classifier named for a segmentation dataset
            (or the reverse).
    """
    cls = get_dataset_class(cfg.data.name)
    if not cfg.train.model:
        cfg = cfg.replace(train=cfg.train.replace(model=cls.default_model))
    check_model_name(cfg.train.model)
    # Datasets may be registered as factories: read their attributes with the protocol's defaults.
    data_task = getattr(cls, "task", "classification")
    model = build_model(cfg.train.model, num_classes=2, in_channels=getattr(cls, "in_channels", 3))
    model_task = getattr(model, "task", "classification")
    if model_task != data_task:
        raise ConfigError(f"model {cfg.train.model!r} is a {model_task} model but dataset {cfg.data.name!r} is "
                          f"{data_task}; pick a {data_task} model (its default is "
                          f"{getattr(cls, 'default_model', '?')!r}, see `daal-ray models`)")
    return cfg
