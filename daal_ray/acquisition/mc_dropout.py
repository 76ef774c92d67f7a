"""MC dropout (Gal, Islam & Ghahramani 2017): predictive entropy under dropout.

The pool predictor runs the backbone once and the task model's classifier head
(:meth:`~daal_ray.models.TaskModel.classify`) ``passes`` times over the penultimate
features with dropout ``dropout``, and emits the mean softmax as ``probs``; this strategy
scores the entropy of that mean. It is the same inference loop as every other strategy,
configured through :meth:`Strategy.predictor_options`, not a second predictor.

Choices: dropout sits before the head only, so T passes cost T small matrix products,
not T backbone passes; the task models train without that dropout (the usual recipe for
post-hoc MC dropout baselines when the model has none), so ``dropout`` is an
inference-time setting. With ``dropout = 0`` every pass is the deterministic head (the
predictor then runs one) and the scores equal the ``entropy`` strategy's exactly. The
masks are seeded per experiment, cycle and batch, so a rerun repeats them. For
segmentation the dropout falls on the map the 1 x 1 head reads, each pass is that head
plus the upsampling, and the score is the mean pixel entropy of the mean softmax (the
predictor's ``entropy`` column).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from daal_ray.acquisition.base import Strategy, register_strategy
from daal_ray.acquisition.entropy import sample_entropy
from daal_ray.runtime import derive_seed
from daal_ray.settings import Config, check


@dataclass(frozen=True)
class MCDropoutParams(Config):
    """MC dropout settings.

    Attributes:
        passes: stochastic passes T through the classifier head.
        dropout: dropout probability p on the penultimate features in those passes.
    """

    passes: int = 20
    dropout: float = 0.5

    def validate(self) -> None:
        name = type(self).__name__  # BALD's params and the derived variants' share these checks
        check(self.passes >= 1, f"{name}.passes must be >= 1, got {self.passes}")
        check(0.0 <= self.dropout < 1.0, f"{name}.dropout must be in [0, 1), got {self.dropout}")


@register_strategy
class MCDropoutStrategy(Strategy):
    """Highest entropy of the mean softmax over T dropout passes through the classifier head."""

    name = "mc_dropout"
    description = "MC dropout: highest entropy of the mean softmax over T dropout passes of the classifier head"
    Params = MCDropoutParams
    needs = frozenset({"probs"})

    def predictor_options(self) -> dict[str, Any]:
        return {"mc_passes": self.params.passes, "mc_dropout": self.params.dropout,
                "mc_seed": derive_seed(self.seed, self.cycle, 0x3C)}

    def score(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        return sample_entropy(batch)
