"""BALD (Houlsby et al. 2011; Gal, Islam & Ghahramani 2017): mutual information under MC dropout.

The score is the mutual information between a sample's prediction and the model's
weights, estimated from T dropout passes ``p_t`` through the classifier head::

    I = H(mean_t p_t) - mean_t H(p_t)

The first term is MC dropout's predictive entropy; the second, the *expected entropy*,
is what every pass is unsure of on its own (noise in the sample itself). Their difference
is large only where the passes disagree while each is confident: where more labels would
change the weights, not where the label is ambiguous anyway. Entropy picks both kinds of
sample; BALD only the first.

The passes are MC dropout's (:mod:`daal_ray.acquisition.mc_dropout`): the same pool
predictor loop, the same params, the same seeds, so ``bald`` and ``mc_dropout`` of one run
see the same masks. BALD also asks the predictor (``mc_expected_entropy``) for the mean
per-pass entropy, the column ``expected_entropy``, and for the entropy of the mean,
``entropy``, both float64 from one function, reduced while the passes stream by
(:func:`daal_ray.scoring.reduce_passes`); other strategies do not pay for them. For
segmentation both are pixel means, so the score is the mean pixel mutual information.

By Jensen's inequality ``I >= 0``; the rounding of the two sums can leave ``-1e-16``,
clipped to 0. With ``dropout = 0`` every pass is the same and ``I`` is exactly 0.

The batch-aware version is ``bald_power`` (:mod:`daal_ray.acquisition.power`): exact
BatchBALD (Kirsch et al. 2019) is left out, see there why. Precomputed feature shards
carry no passes, so BALD scores pools through the task model only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from daal_ray.acquisition.base import register_strategy
from daal_ray.acquisition.entropy import sample_entropy
from daal_ray.acquisition.mc_dropout import MCDropoutParams, MCDropoutStrategy
from daal_ray.errors import DataError

__all__ = ["BALDParams", "BALDStrategy", "EXPECTED_ENTROPY", "mutual_information"]

# The pool predictor's column of the mean per-pass predictive entropy.
EXPECTED_ENTROPY = "expected_entropy"


@dataclass(frozen=True)
class BALDParams(MCDropoutParams):
    """BALD settings: MC dropout's.

    Attributes:
        passes: stochastic passes T through the classifier head.
        dropout: dropout probability p on the head's input in those passes.
    """


def mutual_information(batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """``H(mean p) - mean H(p)`` per row of a batch of the pool predictor's output, clipped at 0.

    Reads ``expected_entropy`` and the entropy of the mean softmax (the ``entropy`` column,
    else computed from ``probs``).

    Raises:
        DataError: the batch has no ``expected_entropy`` column.
    """
    if EXPECTED_ENTROPY not in batch:
        raise DataError(f"BALD reads the column {EXPECTED_ENTROPY!r}, which this batch lacks (columns: "
                        f"{', '.join(sorted(batch))}); build the pool predictor with the strategy's "
                        f"predictor_options() (mc_expected_entropy=True)")
    expected = np.asarray(batch[EXPECTED_ENTROPY], dtype=np.float64).reshape(-1)
    return np.maximum(sample_entropy(batch) - expected, 0.0)


@register_strategy
class BALDStrategy(MCDropoutStrategy):
    """Highest mutual information between the prediction and the weights over T dropout passes."""

    name = "bald"
    description = ("BALD: highest mutual information H(mean p) - mean H(p) over T dropout passes of the "
                   "classifier head (Houlsby et al. 2011; Gal et al. 2017)")
    Params = BALDParams
    needs = frozenset({"probs", EXPECTED_ENTROPY})
    needs_hint = ("; BALD's expected entropy comes from the task model's dropout passes, which precomputed "
                  "features cannot give: run it in the cycle loop, or score id shards through the model")

    def predictor_options(self) -> dict[str, Any]:
        return {**super().predictor_options(), "mc_expected_entropy": True}

    def score(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        return mutual_information(batch)
