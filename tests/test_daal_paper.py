"""``daal_paper``: DAAL exactly as the paper prints it, registered apart from the project's
improved default ``daal``, so results and figures never call one by the other's name."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from daal_ray.acquisition import build_strategy, get_strategy_class, strategy_names
from daal_ray.acquisition.base import FitContext
from daal_ray.acquisition.daal import DAALPaperParams, DAALPaperStrategy, DAALParams, DAALStrategy
from daal_ray.acquisition.daal.fit import daal_inputs, train_daal
from daal_ray.config import AcquisitionConfig
from daal_ray.errors import ConfigError

# Paper Sec. 3-4 and Alg. 1, field by field: what daal_paper must run with.
PAPER = {
    "lr": 5e-4, "batch_size": 128, "sigma": 0.2,  # Sec. 4.2
    "dropout": 0.4, "vae_dropout": 0.4,  # "dropout 0.4 after each MLP layer" of ScoreNet and the VAE
    "confidence_weight": 0.0, "normalize": False,  # the input is the task model's deep features
    "updates": "sequential", "rater_adversarial": False, "weighted_gan": False,  # Alg. 1's three updates
    "gan_form": "saturating",  # Eq. 4
    "udis_fake": "reconstruction",  # uDis: labeled vs the uncertainty branch's reconstruction
    "w_recon": 1.0, "w_prior": 1.0, "w_gan": 1.0, "w_length": 1.0, "w_dpp": 1.0,  # every loss weight 1
    "w_feature_recon": 0.0, "dpp_per_item": False,  # Eq. 3 alone; Eq. 7 as a sum
    "use_udis": True, "use_rdis": True, "use_length_loss": True, "use_dpp_loss": True,
    "margin_weight": 0.0, "class_balance": False,  # one-stage top-K of ScoreNet's score
}
SMALL = dict(epochs=3, batch_size=32, score_hidden=(16, 16, 8, 8), disc_hidden=(16, 16, 8, 8),
             vae_hidden=(16, 16, 16, 8, 8, 8), latent_dim=4)


def test_daal_paper_is_registered_apart_from_daal():
    assert {"daal", "daal_paper"} <= set(strategy_names())
    assert get_strategy_class("daal_paper") is DAALPaperStrategy
    assert get_strategy_class("daal") is DAALStrategy
    s = build_strategy(AcquisitionConfig(strategy="daal_paper"), seed=0, cycle=0)
    assert s.name == "daal_paper" and type(s.params) is DAALPaperParams


def test_daal_paper_runs_every_setting_the_paper_states():
    p = DAALPaperParams()
    assert {k: getattr(p, k) for k in PAPER} == PAPER
    # and daal departs from it in exactly the documented places, nowhere else
    d = DAALParams()
    differ = {f.name for f in dataclasses.fields(DAALParams) if getattr(p, f.name) != getattr(d, f.name)}
    assert differ == {"dropout", "vae_dropout", "confidence_weight", "normalize", "updates", "rater_adversarial",
                      "weighted_gan", "gan_form", "udis_fake", "w_gan", "w_dpp", "w_feature_recon", "dpp_per_item",
                      "margin_weight", "class_balance"}


def test_daal_paper_reads_the_raw_features_alone():
    batch = {"features": np.array([[3.0, 4.0], [0.5, 0.0]], np.float32),
             "probs": np.array([[0.1, 0.9], [0.5, 0.5]], np.float32)}
    np.testing.assert_array_equal(daal_inputs(batch, DAALPaperParams()), batch["features"])
    assert DAALPaperStrategy(DAALPaperParams(), seed=0, cycle=0).needs == {"features"}


def _pool(seed=0, n=240, n_labeled=40, dim=6):
    rng = np.random.default_rng(seed)
    return {"sample_id": np.arange(n, dtype=np.int64) * 5 + 2, "labeled": np.arange(n) < n_labeled,
            "features": (rng.standard_normal((n, dim)) * 3).astype(np.float32)}


def test_daal_paper_scores_depend_on_the_feature_scale_and_daal_normalised_not():
    """Without normalisation the ScoreNet sees the feature's length: scaling the pool's
    features changes its scores. With daal's unit-norm input (features alone) it cannot."""
    table = _pool()
    unlabeled = {k: v[~table["labeled"]] for k, v in table.items()}
    scaled = dict(unlabeled, features=unlabeled["features"] * 10)
    for cls, params, scale_free in ((DAALPaperStrategy, DAALPaperParams(**SMALL), False),
                                    (DAALStrategy, DAALParams(confidence_weight=0, margin_weight=0, class_balance=False, **SMALL), True)):
        s = cls(params, seed=0, cycle=0)
        s.fit(FitContext(features=table, num_labeled=int(table["labeled"].sum()), cycle=0))
        a, b = s.score(unlabeled), s.score(scaled)
        assert a.shape == (200,) and np.all((a >= 0) & (a <= 1))
        assert np.allclose(a, b, atol=1e-6) is scale_free, cls.name


def test_daal_paper_trains_by_alg1_as_printed():
    """Alg. 1's sequential updates and Eq. 4's saturating, unweighted form run: the
    discriminators learn (their maximised L_GAN grows from the first epoch to the last)."""
    table = _pool(seed=1)
    x = table["features"]
    nets, history = train_daal(x[table["labeled"]], x[~table["labeled"]], DAALPaperParams(**{**SMALL, "epochs": 30}),
                               seed=0)
    assert len(history) == 30
    assert np.isfinite([h.gan for h in history]).all()
    assert np.mean([h.gan for h in history[-5:]]) > np.mean([h.gan for h in history[:5]])
    assert nets.score.training is False


def test_the_paper_params_refuse_bad_values_like_daals():
    with pytest.raises(ConfigError, match="dropout"):
        DAALPaperParams(dropout=1.0)
