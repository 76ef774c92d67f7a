"""Stochastic batch acquisition for any per-sample scorer: ``<name>_power``.

Kirsch et al. (2023, "Stochastic Batch Acquisition") show that sampling the batch with
probability proportional to ``score ** (1 / T)`` instead of taking the top-K of the score
spreads the batch at no cost (baal's ``PowerSampling``). K draws without replacement are
made with the Gumbel-top-K trick: each sample's key is ``log(score) / T + G``, ``G`` a
standard Gumbel draw, and the top-K keys are an exact sample. ``G`` comes from a hash of
the sample's id and the cycle's seed (:func:`daal_ray.sampling.hash_uniform`), so every
key depends on its own sample only: the streaming top-K merge over any split of the pool
returns the same sample, and a rerun the same batch.

Scores must be non-negative (entropy, DAAL's sigmoid score, MC dropout's entropy, BALD's
mutual information); a score of 0 is never drawn while a positive one remains.

``bald_power`` is PowerBALD (Kirsch et al. 2023), the project's batch-aware BALD, in place
of exact BatchBALD (Kirsch et al. 2019). BatchBALD picks the batch greedily by the mutual
information of the *joint* prediction of the batch, whose entropy it estimates over
sampled class configurations: O(K N S) work for a batch of K from N samples with S
configurations, and every greedy step needs the whole pool's per-pass probabilities in
one process. At this project's pool sizes (tens of thousands to millions, K in the
thousands) that is out of reach, and it does not stream. Top-K BALD instead fills the
batch with near-duplicates that disagree in the same way; drawing the batch with
probability proportional to BALD^(1/T) spreads it, and Kirsch et al. (2023) found it
matches BatchBALD at the cost of top-K BALD.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from daal_ray.acquisition.bald import BALDStrategy
from daal_ray.acquisition.base import Strategy, derive_variant
from daal_ray.acquisition.daal import DAALStrategy
from daal_ray.acquisition.entropy import EntropyStrategy
from daal_ray.acquisition.mc_dropout import MCDropoutStrategy
from daal_ray.errors import DataError
from daal_ray.runtime import derive_seed
from daal_ray.sampling import hash_uniform
from daal_ray.settings import check

__all__ = ["PowerMixin", "gumbel_keys", "power_variant"]

_SALT = 0x9A55


def gumbel_keys(scores: np.ndarray, ids: np.ndarray, temperature: float, key: int) -> np.ndarray:
    """``log(scores) / temperature + Gumbel(ids, key)``: the top-K of these keys is a draw of
    K ids without replacement with probability proportional to ``scores ** (1 / temperature)``.

    Raises:
        DataError: a score is negative or not finite.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    bad = ~np.isfinite(s) | (s < 0)
    if bad.any():
        raise DataError(f"power sampling needs non-negative finite scores; sample ids "
                        f"{np.asarray(ids)[bad][:5].tolist()} have {s[bad][:5].tolist()}")
    u = np.clip(hash_uniform(ids, key), 2.0 ** -53, 1.0 - 2.0 ** -53)
    with np.errstate(divide="ignore"):
        return np.log(s) / temperature - np.log(-np.log(u))


class PowerMixin:
    """Replaces the score of the scorer it precedes by its Gumbel key (:func:`gumbel_keys`)."""

    params: Any
    seed: int
    cycle: int

    def score(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        base = super().score(batch)  # type: ignore[misc]
        keys = gumbel_keys(base, batch["sample_id"], self.params.temperature,
                           derive_seed(self.seed, self.cycle, _SALT))
        # -inf (a zero score) would be refused by the merge: it ranks below every real key.
        return np.where(np.isneginf(keys), -1e300, keys)

    def diagnostic_score(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        """The base strategy's score, without the Gumbel noise the draw adds."""
        return super().score(batch)  # type: ignore[misc]


def _check_power(params: Any) -> None:
    check(params.temperature > 0, f"{type(params).__name__}.temperature must be > 0, got {params.temperature}")


def power_variant(base: type[Strategy], name: Optional[str] = None, register: bool = True,
                  note: str = "") -> type[Strategy]:
    """Derive (and register) the stochastic version of the per-sample scorer ``base``,
    named ``<base.name>_power``; call it once, at import time. ``note`` is appended to
    its description (where the variant comes from).

    Raises:
        TypeError: ``base`` selects by its own method, not by a top-K of its scores.
    """
    return derive_variant(
        base, PowerMixin, suffix="power", tag="Power", fields=[("temperature", float, 1.0)], validate=_check_power,
        what="power: K drawn without replacement with probability proportional to score^(1/T)" + note,
        params_doc=f"{base.Params.__name__} plus ``temperature`` T: samples are drawn with probability "
                   f"proportional to score ** (1 / T).",
        name=name, register=register, scorers_only=True)


for _base in (DAALStrategy, EntropyStrategy, MCDropoutStrategy):
    power_variant(_base)
power_variant(BALDStrategy, note=" (PowerBALD, Kirsch et al. 2023: the stochastic stand-in for exact BatchBALD, "
                                 "whose joint entropies cost O(K N samples) per batch)")
