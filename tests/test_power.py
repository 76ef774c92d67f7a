"""Stochastic batch acquisition (``<name>_power``): K drawn without replacement with
probability proportional to score^(1/T), by the Gumbel-top-K trick on per-sample keys.

Known answers: the single-draw frequencies over many seeds match the target
probabilities (chi-square), a higher temperature flattens them, and the streaming merge
over any block layout returns the same draw (each key depends on its own sample only).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from strategy_helpers import assert_valid_selection, ctx_of, make, pool, split

from daal_ray.acquisition import strategy_names
from daal_ray.acquisition.power import gumbel_keys
from daal_ray.errors import ConfigError, DataError
from daal_ray.runtime import derive_seed


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_single_draw_frequencies_match_score_to_the_one_over_t(temperature):
    scores = np.array([0.05, 0.1, 0.2, 0.25, 0.4])
    ids = np.arange(100, 105, dtype=np.int64)
    draws = 20_000
    # One draw per cycle key; keys are derive_seed outputs, as every strategy's are.
    picks = np.array([ids[np.argmax(gumbel_keys(scores, ids, temperature, derive_seed(3, key)))]
                      for key in range(draws)])
    counts = np.array([(picks == i).sum() for i in ids])
    target = scores ** (1 / temperature) / (scores ** (1 / temperature)).sum()
    chi2 = stats.chisquare(counts, draws * target)
    assert chi2.pvalue > 1e-3, (counts / draws, target)
    # The same test rejects what a wrong draw would give: uniform picks, picks proportional
    # to the score whatever T, and the top score always.
    wrong = {"uniform": np.full(5, 0.2), "score": scores / scores.sum(), "top": np.r_[np.full(4, 1e-9), 1.0]}
    if temperature == 1.0:
        del wrong["score"]
    for name, q in wrong.items():
        assert stats.chisquare(counts, draws * q / q.sum()).pvalue < 1e-12, (name, counts / draws)


def test_a_zero_score_is_drawn_last_and_a_negative_one_refused():
    keys = gumbel_keys(np.array([0.0, 1e-9, 0.5]), np.array([1, 2, 3]), 1.0, 7)
    assert keys[0] == -np.inf and np.isfinite(keys[1:]).all()
    with pytest.raises(DataError, match="non-negative"):
        gumbel_keys(np.array([0.2, -0.1]), np.array([1, 2]), 1.0, 7)


def test_power_draw_is_seeded_and_independent_of_the_block_layout():
    p = pool(n=400, seed=5)
    a, _, _ = make("entropy_power").select(ctx_of(p), 20)
    b, _, _ = make("entropy_power").select(ctx_of(p, split(p, 9)), 20)
    assert np.array_equal(a, b)
    assert_valid_selection(a, p, 20)
    plain, _, _ = make("entropy").select(ctx_of(p), 20)
    assert not np.array_equal(np.sort(a), np.sort(plain)), "a draw, not the top-K"
    # A very low temperature concentrates the draw on the top-K.
    cold, _, _ = make("entropy_power", temperature=1e-4).select(ctx_of(p), 20)
    assert np.array_equal(np.sort(cold), np.sort(plain))


def test_power_variants_are_registered_and_params_validated():
    for name in ("daal_power", "entropy_power", "mc_dropout_power"):
        assert name in strategy_names()
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        make("entropy_power", temperature=0.0)


def test_the_diagnostics_read_the_score_without_the_noise():
    p = pool(n=50, seed=1)
    power, plain = make("entropy_power"), make("entropy")
    np.testing.assert_array_equal(power.diagnostic_score(p), plain.score(p))
    assert not np.allclose(power.score(p), plain.score(p))
