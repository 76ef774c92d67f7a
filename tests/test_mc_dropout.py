"""MC dropout: with dropout off it equals entropy exactly, its passes are stochastic and
seeded, the classifier head it reruns is the head of ``forward_features``, and its params
are validated."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from strategy_helpers import make

from daal_ray.acquisition import build_strategy
from daal_ray.acquisition.entropy import EntropyStrategy
from daal_ray.acquisition.mc_dropout import MCDropoutStrategy
from daal_ray.config import AcquisitionConfig
from daal_ray.errors import ConfigError
from daal_ray.models import build_model


def test_mc_dropout_with_dropout_off_equals_entropy_exactly(digits_predictor):
    plain = digits_predictor()
    ids = plain.dataset.sample_ids("train")[:100]
    batch = {"sample_id": ids, "labeled": np.zeros(100, bool)}
    plain = plain(batch)
    s = make("mc_dropout", passes=7, dropout=0.0)
    mc = digits_predictor(**s.predictor_options())(batch)
    assert np.array_equal(mc["probs"], plain["probs"])
    assert np.array_equal(s.score(mc), make("entropy").score(plain))


def test_mc_dropout_passes_are_stochastic_and_seeded(digits_predictor):
    plain = digits_predictor()
    batch = {"sample_id": plain.dataset.sample_ids("train")[:64], "labeled": np.zeros(64, bool)}
    plain = plain(batch)["probs"]
    opts = make("mc_dropout", passes=10, dropout=0.5).predictor_options()
    a, b = digits_predictor(**opts)(batch)["probs"], digits_predictor(**opts)(batch)["probs"]
    assert np.array_equal(a, b), "same seed, same masks"
    assert not np.allclose(a, plain, atol=1e-4)
    np.testing.assert_allclose(a.sum(1), 1.0, atol=1e-5)
    other = build_strategy(AcquisitionConfig(strategy="mc_dropout", params={"passes": 10, "dropout": 0.5}),
                           seed=1, cycle=3).predictor_options()
    assert not np.array_equal(digits_predictor(**other)(batch)["probs"], a)


@pytest.mark.parametrize("name,shape", [("small_cnn", (3, 1, 8, 8)), ("wrn28_2", (2, 3, 32, 32))])
def test_classify_is_the_head_of_forward_features(name, shape):
    model = build_model(name, num_classes=10, in_channels=shape[1]).eval()
    with torch.no_grad():
        f, logits = model.forward_features(torch.randn(*shape))
        assert torch.equal(model.classify(f), logits)


def test_mc_dropout_params_are_validated():
    with pytest.raises(ConfigError, match="dropout"):
        AcquisitionConfig(strategy="mc_dropout", params={"dropout": 1.0})
    with pytest.raises(ConfigError, match="passes"):
        AcquisitionConfig(strategy="mc_dropout", params={"passes": 0})
    assert MCDropoutStrategy.needs == EntropyStrategy.needs
