"""Strategy registry (the built-in strategies and the baselines, with their descriptions),
the default select hook, entropy scores, and the random strategy's id hash."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from strategy_helpers import ctx_of, make, pool, split

from daal_ray.acquisition import (
    NoParams,
    Strategy,
    build_strategy,
    get_strategy_class,
    strategy_descriptions,
    strategy_names,
)
from daal_ray.acquisition.coreset import CoresetStrategy
from daal_ray.acquisition.entropy import EntropyStrategy, predictive_entropy
from daal_ray.acquisition.mc_dropout import MCDropoutStrategy
from daal_ray.acquisition.random import RandomStrategy, hash_uniform
from daal_ray.acquisition.suggestive import SuggestiveStrategy
from daal_ray.config import AcquisitionConfig
from daal_ray.errors import ConfigError
from daal_ray.selection import topk_arrays


# --------------------------------------------------------------------------- registry
def test_registry_lists_random_and_entropy():
    names = strategy_names()
    assert {"random", "entropy"} <= set(names)
    assert names == sorted(names)
    desc = strategy_descriptions()
    assert set(desc) == set(names)
    assert desc["random"] and desc["entropy"]


def test_get_strategy_class():
    assert get_strategy_class("random") is RandomStrategy
    assert get_strategy_class("entropy") is EntropyStrategy
    assert issubclass(RandomStrategy, Strategy) and issubclass(EntropyStrategy, Strategy)


def test_unknown_strategy_names_registered_ones():
    with pytest.raises(ConfigError) as ei:
        get_strategy_class("coreset-typo")
    msg = str(ei.value)
    assert "'coreset-typo'" in msg
    for name in strategy_names():
        assert name in msg


def test_needs():
    assert RandomStrategy.needs == frozenset()  # scored on ids alone: no inference pass
    assert EntropyStrategy.needs == frozenset({"probs"})


def test_baselines_are_registered_with_descriptions():
    names = set(strategy_names())
    assert {"coreset", "mc_dropout", "suggestive", "entropy_rss"} <= names
    assert get_strategy_class("suggestive") is SuggestiveStrategy
    assert get_strategy_class("coreset") is CoresetStrategy and get_strategy_class("mc_dropout") is MCDropoutStrategy
    desc = strategy_descriptions()
    for name in ("coreset", "mc_dropout", "suggestive", "entropy_rss"):
        assert len(desc[name]) > 20 and "\n" not in desc[name], name


# --------------------------------------------------------------------------- build_strategy
@pytest.mark.parametrize("name,cls", [("random", RandomStrategy), ("entropy", EntropyStrategy)])
def test_build_strategy(name, cls):
    s = build_strategy(AcquisitionConfig(strategy=name), seed=3, cycle=2)
    assert type(s) is cls
    assert s.seed == 3 and s.cycle == 2
    assert isinstance(s.params, NoParams)


@pytest.mark.parametrize("name", ["random", "entropy"])
def test_build_strategy_bad_params_refused(name):
    # AcquisitionConfig refuses them up front ...
    with pytest.raises(ConfigError, match="'lr'"):
        AcquisitionConfig(strategy=name, params={"lr": 0.1})
    # ... and build_strategy checks them itself for a config that slipped through.
    bad = SimpleNamespace(strategy=name, params={"lr": 0.1})
    with pytest.raises(ConfigError, match="'lr'") as ei:
        build_strategy(bad, seed=0, cycle=1)  # type: ignore[arg-type]
    assert name in str(ei.value)


def test_build_strategy_unknown_name():
    with pytest.raises(ConfigError, match="registered strategies"):
        build_strategy(SimpleNamespace(strategy="nope", params={}), seed=0, cycle=0)  # type: ignore[arg-type]


def test_base_strategy_score_not_implemented():
    with pytest.raises(NotImplementedError):
        Strategy(NoParams(), seed=0, cycle=0).score({"sample_id": np.arange(3)})


# --------------------------------------------------------------------------- the default select hook
def test_default_select_is_the_streaming_top_k():
    p = pool()
    s = make("entropy")
    ids, scores, _ = s.select(ctx_of(p), 17)
    unl = ~p["labeled"]
    h = predictive_entropy(p["probs"][unl])
    expected = p["sample_id"][unl][np.lexsort((p["sample_id"][unl], -h))][:17]
    assert np.array_equal(ids, expected)
    assert np.array_equal(make("entropy").select(ctx_of(p, split(p, 7)), 17)[0], expected)


# --------------------------------------------------------------------------- entropy
PROBS = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])


def test_entropy_known_values():
    h = predictive_entropy(PROBS)
    np.testing.assert_allclose(h, [0.0, math.log(2), math.log(3)], atol=1e-9)


def test_entropy_prefers_uniform_prediction():
    s = build_strategy(AcquisitionConfig(strategy="entropy"), seed=0, cycle=1)
    ids = np.array([0, 1, 2], dtype=np.int64)
    scores = s.score({"sample_id": ids, "probs": PROBS, "features": np.zeros((3, 4))})
    assert scores.shape == (3,)
    np.testing.assert_array_equal(np.argsort(-scores, kind="stable"), [2, 1, 0])
    top, _ = topk_arrays(ids, scores, 3)
    np.testing.assert_array_equal(top, [2, 1, 0])


def test_entropy_is_finite_with_zero_probabilities():
    probs = np.eye(4)
    h = predictive_entropy(probs)
    assert np.isfinite(h).all()
    np.testing.assert_allclose(h, 0.0, atol=1e-9)


def test_entropy_segmentation_shape_is_pixel_mean():
    # [n, C, H, W]: per-pixel entropy averaged to one score per sample.
    probs = np.zeros((2, 2, 2, 2))
    probs[0, 0] = 1.0                     # sample 0: certain everywhere
    probs[1, :, 0, :] = 0.5               # sample 1: half its pixels uniform ...
    probs[1, 0, 1, :] = 1.0               # ... the other half certain
    np.testing.assert_allclose(predictive_entropy(probs), [0.0, math.log(2) / 2], atol=1e-9)


# --------------------------------------------------------------------------- random
def test_hash_uniform_range_and_dtype():
    ids = np.concatenate([np.arange(50_000), np.array([0, 2**63 - 1, -1, -(2**63)])])
    u = hash_uniform(ids, key=12345)
    assert u.dtype == np.float64 and u.shape == ids.shape
    assert (u >= 0.0).all() and (u < 1.0).all()


def test_hash_uniform_deterministic():
    ids = np.arange(1000, dtype=np.int64) * 7919
    np.testing.assert_array_equal(hash_uniform(ids, 3), hash_uniform(ids.copy(), 3))


def test_hash_uniform_depends_on_id_not_grouping():
    rng = np.random.default_rng(0)
    ids = rng.choice(10**12, size=5000, replace=False).astype(np.int64)
    whole = hash_uniform(ids, key=42)
    perm = rng.permutation(ids.size)
    np.testing.assert_array_equal(hash_uniform(ids[perm], key=42), whole[perm])
    pieces = np.concatenate([hash_uniform(chunk, key=42) for chunk in np.array_split(ids, 17)])
    np.testing.assert_array_equal(pieces, whole)
    one_by_one = np.array([hash_uniform(ids[i:i + 1], key=42)[0] for i in range(0, ids.size, 97)])
    np.testing.assert_array_equal(one_by_one, whole[::97])


def test_hash_uniform_roughly_uniform():
    u = hash_uniform(np.arange(100_000, dtype=np.int64), key=7)
    assert abs(u.mean() - 0.5) < 0.01
    assert abs(u.var() - 1 / 12) < 0.005
    counts = np.histogram(u, bins=10, range=(0.0, 1.0))[0]
    assert (np.abs(counts - 10_000) < 500).all()
    # Neighbouring ids are not correlated.
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.02
    assert np.unique(u).size > 99_990


def test_hash_uniform_differs_across_keys():
    ids = np.arange(10_000, dtype=np.int64)
    a, b, c = hash_uniform(ids, 0), hash_uniform(ids, 1), hash_uniform(ids, 1_000_003)
    for x, y in ((a, b), (a, c), (b, c)):
        assert (x == y).mean() < 0.001
        assert abs(np.corrcoef(x, y)[0, 1]) < 0.05


def test_random_strategy_seeded_per_seed_and_cycle():
    ids = np.arange(2000, dtype=np.int64)
    batch = {"sample_id": ids}

    def pick(seed, cycle):
        s = build_strategy(AcquisitionConfig(strategy="random"), seed=seed, cycle=cycle)
        scores = s.score(batch)
        assert scores.shape == ids.shape and np.isfinite(scores).all()
        return set(topk_arrays(ids, scores, 50)[0].tolist())

    assert pick(0, 1) == pick(0, 1)
    assert len(pick(0, 1) & pick(0, 2)) < 25
    assert len(pick(0, 1) & pick(1, 1)) < 25


def test_random_strategy_score_independent_of_other_rows():
    s = build_strategy(AcquisitionConfig(strategy="random"), seed=5, cycle=3)
    ids = np.arange(100, 200, dtype=np.int64)
    full = s.score({"sample_id": ids})
    np.testing.assert_array_equal(s.score({"sample_id": ids[40:60]}), full[40:60])


# --------------------------------------------------------------------------- margin, least confidence
def test_margin_and_least_confidence_by_hand():
    from daal_ray.acquisition.uncertainty import sample_margin, top_two

    probs = np.array([[0.5, 0.5, 0.0, 0.0, 0.0],  # a two-way tie: margin 0, top-1 0.5
                      [0.4, 0.15, 0.15, 0.15, 0.15],  # spread out: margin 0.25, top-1 0.4
                      [0.9, 0.05, 0.05, 0.0, 0.0]])  # confident: margin 0.85, top-1 0.9
    np.testing.assert_allclose(sample_margin(probs), [0.0, 0.25, 0.85])
    np.testing.assert_allclose(top_two(probs)[1], [0.5, 0.15, 0.05])
    batch = {"sample_id": np.array([10, 11, 12]), "probs": probs}
    np.testing.assert_allclose(make("margin").score(batch), [0.0, -0.25, -0.85])
    np.testing.assert_allclose(make("least_confidence").score(batch), [0.5, 0.6, 0.1])
    # The three scores disagree on the first two rows: margin puts the tie first, entropy and
    # least confidence the spread-out row.
    h = predictive_entropy(probs)
    assert h[1] > h[0] and make("margin").score(batch)[0] > make("margin").score(batch)[1]
    assert make("margin").needs == make("least_confidence").needs == frozenset({"probs"})
    assert top_two(np.array([[1.0], [1.0]]))[1].tolist() == [0.0, 0.0]  # one class: no second


@pytest.mark.parametrize("name", ["margin", "least_confidence"])
def test_margin_strategies_pick_the_hesitant_samples_any_block_layout(name):
    """A tenth of the pool hesitates between two classes (top-2 0.45 / 0.44), the rest is
    confident. The top 30 are all hesitant ones, whatever the blocks; a uniform draw of 30
    gets about 3 (at most 12 in 1,000 seeded draws)."""
    p = pool(n=400, n_labeled=40, classes=5, seed=4)
    rng = np.random.default_rng(0)
    hesitant = rng.random(400) < 0.1
    confident = rng.dirichlet(np.full(5, 0.2), 400) * 0.3 + np.eye(5)[rng.integers(0, 5, 400)] * 0.7
    tie = np.tile([0.45, 0.44, 0.04, 0.04, 0.03], (400, 1))
    p["probs"] = np.where(hesitant[:, None], tie, confident).astype(np.float32)
    want = set(p["sample_id"][hesitant & ~p["labeled"]].tolist())
    strategy = make(name)
    ids, _, _ = strategy.select(ctx_of(p), 30)
    assert len(set(ids.tolist()) & want) == 30
    ids_blocks, _, _ = strategy.select(ctx_of(p, features=split(p, 7)), 30)
    np.testing.assert_array_equal(ids, ids_blocks)
    unlabeled = p["sample_id"][~p["labeled"]]
    uniform = [len(set(np.random.default_rng(s).choice(unlabeled, 30, replace=False).tolist()) & want)
               for s in range(1000)]
    assert max(uniform) <= 12


def test_the_readme_strategy_table_names_every_registered_strategy():
    """README's strategy table (what each is, where it comes from) cannot drift from the registry."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = text.split("<!-- strategy-table -->", 1)[1].strip().split("\n\n", 1)[0].splitlines()[2:]
    named = set()
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 3 and all(cells), row  # a name, what it is, where it comes from
        tokens = re.findall(r"`([A-Za-z_]+)`", cells[0])
        suffix = next((t[1:] for t in tokens if t.startswith("X_")), "")
        named |= {t + suffix.lstrip("_") if t.endswith("_") else t for t in tokens if not t.startswith("X_")}
    assert named == set(strategy_names())
    for name in ("daal_paper", "margin", "least_confidence", "bald", "bald_power"):
        assert len(strategy_descriptions()[name]) > 20, name
