"""Baselines: core-set, RSS, MC dropout, Suggestive Annotation, and the select hook.

Pure tests check known answers (k-center's farthest-first and a brute-force k-center,
RSS's subset, MC dropout with dropout off = entropy, max-cover on constructed clusters);
the Ray tests run core-set and suggestive through the real cycle loop on digits and the
CIFAR job scripts on a tiny fixture in the official layout.
"""

from __future__ import annotations

import importlib.util
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from daal_ray.acquisition import FitContext, build_strategy, get_strategy_class, strategy_descriptions, strategy_names
from daal_ray.acquisition.coreset import CoresetStrategy
from daal_ray.acquisition.entropy import EntropyStrategy, predictive_entropy
from daal_ray.acquisition.mc_dropout import MCDropoutStrategy
from daal_ray.acquisition.rss import random_subset, rss_variant
from daal_ray.acquisition.suggestive import SuggestiveStrategy, ensemble_variance, max_cover_greedy
from daal_ray.config import AcquisitionConfig
from daal_ray.errors import ConfigError, DataError
from daal_ray.selection import gather_features, k_center_greedy, min_sq_distances

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers
def brute_force_k_center(xu: np.ndarray, xl: np.ndarray, k: int) -> list[int]:
    """Textbook k-center greedy with the full distance matrix (float64)."""
    xu, xl = np.asarray(xu, np.float64), np.asarray(xl, np.float64)
    centres = list(xl)
    picks: list[int] = []
    for _ in range(k):
        d = np.full(len(xu), np.inf) if not centres else np.sqrt(
            ((xu[:, None, :] - np.asarray(centres)[None, :, :]) ** 2).sum(-1)).min(1)
        d[picks] = -1.0
        i = int(np.argmax(d))  # first maximum = smaller position
        picks.append(i)
        centres.append(xu[i])
    return picks


def pool(n: int = 300, d: int = 8, n_labeled: int = 30, classes: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """A synthetic pool's inference output, ids shuffled and not contiguous."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(np.arange(n, dtype=np.int64) * 3 + 7)
    labeled = np.zeros(n, bool)
    labeled[rng.choice(n, n_labeled, replace=False)] = True
    logits = rng.normal(size=(n, classes)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return {"sample_id": ids, "labeled": labeled, "features": rng.normal(size=(n, d)).astype(np.float32),
            "probs": probs.astype(np.float32)}


def split(batch: dict[str, np.ndarray], parts: int) -> list[dict[str, np.ndarray]]:
    """The pool as ``parts`` uneven blocks (a different block layout)."""
    cuts = np.sort(np.random.default_rng(parts).choice(np.arange(1, len(batch["sample_id"])), parts - 1, replace=False))
    return [{k: v[a:b] for k, v in batch.items()} for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(batch["sample_id"])])]


def ctx_of(p: dict[str, np.ndarray], features=None, **kw) -> FitContext:
    lab = p["labeled"]
    return FitContext(features=p if features is None else features, num_labeled=int(lab.sum()), cycle=0,
                      labeled_ids=np.sort(p["sample_id"][lab]), pool_ids=np.sort(p["sample_id"]), **kw)


def make(name: str, **params):
    return build_strategy(AcquisitionConfig(strategy=name, params=params), seed=1, cycle=2)


def assert_valid_selection(ids: np.ndarray, p: dict[str, np.ndarray], k: int) -> None:
    assert ids.size == k and np.unique(ids).size == k
    assert np.isin(ids, p["sample_id"][~p["labeled"]]).all(), "selected a labeled or unknown id"


# --------------------------------------------------------------------------- registry and select hook
def test_baselines_are_registered_with_descriptions():
    names = set(strategy_names())
    assert {"coreset", "mc_dropout", "suggestive", "entropy_rss"} <= names
    assert get_strategy_class("suggestive") is SuggestiveStrategy
    assert get_strategy_class("coreset") is CoresetStrategy and get_strategy_class("mc_dropout") is MCDropoutStrategy
    desc = strategy_descriptions()
    for name in ("coreset", "mc_dropout", "suggestive", "entropy_rss"):
        assert len(desc[name]) > 20 and "\n" not in desc[name], name


def test_default_select_is_the_streaming_top_k():
    p = pool()
    s = make("entropy")
    ids, scores, _ = s.select(ctx_of(p), 17)
    unl = ~p["labeled"]
    h = predictive_entropy(p["probs"][unl])
    expected = p["sample_id"][unl][np.lexsort((p["sample_id"][unl], -h))][:17]
    assert np.array_equal(ids, expected)
    assert np.array_equal(make("entropy").select(ctx_of(p, split(p, 7)), 17)[0], expected)


# --------------------------------------------------------------------------- k-center
def test_k_center_picks_the_farthest_point_first():
    xl = np.zeros((1, 2), np.float32)  # one labeled centre at the origin
    xu = np.array([[1, 0], [0, 5], [3, 0], [0, -4.9]], np.float32)
    pos, dist = k_center_greedy(xu, xl, 2)
    assert pos[0] == 1 and dist[0] == pytest.approx(5.0)
    # then farthest from {origin, (0, 5)}: (0, -4.9) at 4.9
    assert pos[1] == 3 and dist[1] == pytest.approx(4.9, rel=1e-6)


def test_k_center_ties_go_to_the_smaller_position_and_never_repeat():
    xl = np.zeros((1, 2))
    xu = np.array([[0, 2], [2, 0], [-2, 0], [0, -2]], np.float64)
    assert k_center_greedy(xu, xl, 1, dtype=torch.float64)[0].tolist() == [0]
    same = np.ones((5, 3))  # all duplicates: every distance 0 after the first pick
    pos, _ = k_center_greedy(same, np.zeros((0, 3)), 5, dtype=torch.float64)
    assert sorted(pos.tolist()) == [0, 1, 2, 3, 4] and pos[0] == 0


@pytest.mark.parametrize("seed", range(4))
def test_k_center_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    xu, xl = rng.normal(size=(120, 6)), rng.normal(size=(rng.integers(0, 15), 6))
    k = 25
    pos, dist = k_center_greedy(xu, xl, k, dtype=torch.float64, chunk_elems=37)  # many small tiles
    assert pos.tolist() == brute_force_k_center(xu, xl, k)
    assert np.all(np.diff(dist) <= 1e-12), "pick distances must not increase"
    pos32, _ = k_center_greedy(xu.astype(np.float32), xl.astype(np.float32), k)
    assert pos32.tolist() == pos.tolist()


def test_min_sq_distances_tiles_equal_dense():
    rng = np.random.default_rng(5)
    p, c = torch.as_tensor(rng.normal(size=(50, 4))), torch.as_tensor(rng.normal(size=(23, 4)))
    dense = ((p[:, None] - c[None]) ** 2).sum(-1).min(1).values
    for chunk in (1, 7, 100, 10_000):
        assert torch.allclose(min_sq_distances(p, c, chunk), dense, atol=1e-10)


def test_coreset_select_equals_brute_force_on_a_shuffled_blocked_pool():
    p = pool(n=200, d=5, n_labeled=20, seed=3)
    k = 15
    order = np.argsort(p["sample_id"])
    lab, xs, ids = p["labeled"][order], p["features"][order], p["sample_id"][order]
    expected = ids[~lab][brute_force_k_center(xs[~lab], xs[lab], k)]
    for features in (p, split(p, 6)):
        got, dist, _ = make("coreset", chunk_elems=64).select(ctx_of(p, features), k)
        assert_valid_selection(got, p, k)
        assert got.tolist() == expected.tolist()


def test_gather_features_checks_counts_and_values():
    p = pool(n=40, n_labeled=4)
    with pytest.raises(DataError, match="expected"):
        gather_features(p, 5, 35)
    bad = dict(p, features=p["features"].copy())
    bad["features"][np.flatnonzero(~p["labeled"])[0], 1] = np.nan
    with pytest.raises(DataError, match="NaN"):
        gather_features(bad, 4, 36)


# --------------------------------------------------------------------------- RSS
def test_random_subset_depends_on_the_ids_only():
    ids = np.arange(1000, dtype=np.int64) * 2
    a = random_subset(ids, 100, key=11)
    b = random_subset(np.random.default_rng(0).permutation(ids), 100, key=11)
    assert a.size == 100 and np.array_equal(a, b) and np.isin(a, ids).all()
    assert not np.array_equal(a, random_subset(ids, 100, key=12))
    assert np.array_equal(random_subset(ids, 5000, key=11), ids)


def test_entropy_rss_selects_the_top_k_inside_its_subset_only():
    p = pool(n=400, n_labeled=40, seed=2)
    s = make("entropy_rss", rss_subset=50)
    ctx = ctx_of(p)
    subset = s.rss_subset(ctx)
    assert subset.size == 50 and not np.isin(subset, p["sample_id"][p["labeled"]]).any()
    ids, _, _ = s.select(ctx, 10)
    assert_valid_selection(ids, p, 10)
    assert np.isin(ids, subset).all()
    inside = np.isin(p["sample_id"], subset)
    h = predictive_entropy(p["probs"][inside])
    expected = p["sample_id"][inside][np.lexsort((p["sample_id"][inside], -h))][:10]
    assert np.array_equal(ids, expected)
    # the whole pool's top-10 is not inside a 50-of-360 subset: RSS really restricted it
    assert not np.array_equal(ids, make("entropy").select(ctx, 10)[0])
    # any block layout gives the same subset and picks
    assert np.array_equal(make("entropy_rss", rss_subset=50).select(ctx_of(p, split(p, 9)), 10)[0], ids)


def test_rss_with_a_subset_as_large_as_the_pool_is_the_wrapped_strategy():
    p = pool(n=100, n_labeled=10)
    assert np.array_equal(make("entropy_rss", rss_subset=10_000).select(ctx_of(p), 9)[0],
                          make("entropy").select(ctx_of(p), 9)[0])


def test_rss_params_and_a_subset_smaller_than_k():
    assert make("entropy_rss").params.rss_subset == 10_000  # the paper's
    with pytest.raises(ConfigError, match="rss_subset"):
        AcquisitionConfig(strategy="entropy_rss", params={"rss_subset": 0})
    with pytest.raises(ConfigError, match="raise AcquisitionConfig.params.rss_subset"):
        make("entropy_rss", rss_subset=5).select(ctx_of(pool()), 6)


def test_rss_variant_wraps_any_strategy_and_keeps_its_params():
    cls = rss_variant(CoresetStrategy, register=False)
    assert cls.name == "coreset_rss" and issubclass(cls, CoresetStrategy)
    params = cls.Params.from_dict({"chunk_elems": 16, "rss_subset": 30})
    assert params.chunk_elems == 16 and params.rss_subset == 30
    s = cls(params, seed=0, cycle=1)
    p = pool(n=150, n_labeled=15)
    ids, _, _ = s.select(ctx_of(p), 8)
    assert_valid_selection(ids, p, 8)
    assert np.isin(ids, s.rss_subset(ctx_of(p))).all()
    # strategies cross into Ray workers pickled by reference to their class
    again = pickle.loads(pickle.dumps(make("entropy_rss", rss_subset=7)))
    assert type(again) is get_strategy_class("entropy_rss") and again.params.rss_subset == 7


# --------------------------------------------------------------------------- MC dropout
@pytest.fixture
def digits_predictor(tmp_path):
    from daal_ray.config import DataConfig
    from daal_ray.inference import PoolPredictor
    from daal_ray.models import build_model

    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, in_channels=1)
    torch.save(model.state_dict(), tmp_path / "model.pt")

    def build(**options):
        return PoolPredictor(DataConfig().to_dict(), "small_cnn", 10, 1, str(tmp_path / "model.pt"), **options)

    return build


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
    from daal_ray.models import build_model

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


# --------------------------------------------------------------------------- suggestive
def test_max_cover_prefers_coverage_over_redundancy():
    # cluster A: 4 nearly parallel rows, cluster B: 3, and a lone row C; all mutually orthogonal
    a = np.array([[1, 0, 0]] * 4) + np.array([[0, 0, 0], [0, .01, 0], [0, 0, .01], [0, .01, .01]])
    b = np.array([[0, 1, 0]] * 3) + np.array([[.01, 0, 0], [0, 0, 0], [0, 0, .01]])
    x = np.vstack([a, b, [[0, 0, 1]]])
    pos, gains = max_cover_greedy(x, 3, neighbours=100)
    assert pos[0] in range(4) and pos[1] in range(4, 7) and pos[2] == 7
    assert gains[0] > gains[1] > gains[2] > 0
    assert pos[0] == 3  # the A row also nearest to B and C (their tiny similarities count when dense)
    # a sparse neighbourhood drops those tiny similarities but still covers each cluster once
    sparse = max_cover_greedy(x, 3, neighbours=4)[0]
    assert sparse[0] in range(4) and sparse[1] in range(4, 7) and sparse[2] == 7


def test_max_cover_ties_go_to_the_smaller_position():
    x = np.eye(4)  # every row covers only itself: all gains equal
    assert max_cover_greedy(x, 4, neighbours=4)[0].tolist() == [0, 1, 2, 3]


def _two_class_pool():
    """Labeled: two classes around (-2, 0) and (2, 0). Unlabeled: far, confident rows and two
    groups on the decision boundary x = 0 (at y = +3 and y = -3)."""
    rng = np.random.default_rng(0)
    xl = np.vstack([rng.normal([-2, 0], 0.7, (12, 2)), rng.normal([2, 0], 0.7, (12, 2))])
    yl = np.r_[np.zeros(12), np.ones(12)].astype(np.int64)
    far = np.vstack([rng.normal([-8, 0], 0.3, (20, 2)), rng.normal([8, 0], 0.3, (20, 2))])
    top = rng.normal([0, 3], 0.05, (5, 2))
    bottom = rng.normal([0, -3], 0.05, (5, 2))
    xu = np.vstack([far, top, bottom])
    x = np.vstack([xl, xu]).astype(np.float32)
    n_l = len(xl)
    ids = np.arange(len(x), dtype=np.int64) + 100
    labeled = np.arange(len(x)) < n_l
    p = {"sample_id": ids, "labeled": labeled, "features": x}
    boundary_top, boundary_bottom = ids[n_l + 40:n_l + 45], ids[n_l + 45:]
    return p, yl, boundary_top, boundary_bottom


def test_suggestive_picks_uncertain_then_representative():
    p, yl, top, bottom = _two_class_pool()
    s = make("suggestive", candidates=10, neighbours=64)
    ctx = ctx_of(p, labeled_labels=yl)
    s.fit(ctx)
    unc = s.score({"sample_id": p["sample_id"], "features": p["features"]})
    boundary = np.isin(p["sample_id"], np.r_[top, bottom])
    far = ~p["labeled"] & ~boundary
    assert unc[boundary].min() > unc[far].max(), "the bootstrapped heads disagree most on the boundary"
    ids, gains, _ = s.select(ctx, 2)
    assert_valid_selection(ids, p, 2)
    # candidates = the 10 boundary rows; max-cover takes one from each boundary group
    assert len(set(ids) & set(top)) == 1 and len(set(ids) & set(bottom)) == 1
    # the same on another block layout
    s2 = make("suggestive", candidates=10, neighbours=64)
    ctx2 = ctx_of(p, split(p, 5), labeled_labels=yl)
    s2.fit(ctx2)
    assert np.array_equal(s2.select(ctx2, 2)[0], ids)


def test_ensemble_variance_is_zero_for_identical_members():
    w = np.random.default_rng(0).normal(size=(1, 3, 4)).astype(np.float32)
    v = ensemble_variance(np.ones((5, 3), np.float32), np.repeat(w, 3, 0), np.zeros((3, 4), np.float32))
    assert np.allclose(v, 0.0)


def test_suggestive_needs_labels():
    p, _, _, _ = _two_class_pool()
    with pytest.raises(DataError, match="labels"):
        make("suggestive").fit(ctx_of(p))


# --------------------------------------------------------------------------- through the cycle loop (Ray)
def _state(run_root, cfg):
    from daal_ray.driver import STATE_FILE
    from daal_ray.pool import PoolState

    return PoolState.load(run_root / cfg.name / STATE_FILE)


def _check_invariants(state, k):
    labeled, unlabeled = state.labeled_ids(), state.unlabeled_ids()
    assert np.intersect1d(labeled, unlabeled).size == 0
    assert np.array_equal(np.sort(np.concatenate([labeled, unlabeled])), state.sample_ids)
    for c in range(1, len(state.history)):
        batch = state.ids_of_cycle(c)
        earlier = state.sample_ids[(state.labeled_cycle >= 0) & (state.labeled_cycle < c)]
        assert batch.size == k and np.unique(batch).size == k and np.intersect1d(batch, earlier).size == 0


@pytest.mark.ray
def test_rss_and_coreset_select_on_a_ray_dataset(ray_session):
    """The Ray Dataset paths (lazy RSS filter, Ray Data scoring, streamed gathering) pick
    what the in-memory paths pick."""
    import ray.data

    p = pool(n=300, n_labeled=30, seed=4)
    rows = [{k: v[i] for k, v in p.items()} for i in range(len(p["sample_id"]))]
    ds = ray.data.from_items(rows, override_num_blocks=4)
    for name, params in (("entropy_rss", {"rss_subset": 40}), ("coreset", {})):
        expected = make(name, **params).select(ctx_of(p), 12)[0]
        got = make(name, **params).select(ctx_of(p, ds), 12)[0]
        assert np.array_equal(got, expected), name


@pytest.mark.ray
def test_coreset_through_the_cycle_loop(ray_session, tiny_config, tmp_path):
    """Two cycles on digits; the first batch is the brute-force k-center of cycle 0's features."""
    from daal_ray.data import get_dataset
    from daal_ray.driver import run_experiment
    from daal_ray.models import build_model
    from daal_ray.training import load_state_dict

    cfg = tiny_config("coreset")
    run_experiment(cfg, tmp_path)
    state = _state(tmp_path, cfg)
    _, k, rounds = cfg.schedule(len(state))
    assert rounds == 2 and len(state.history) == 3
    _check_invariants(state, k)
    ds = get_dataset(cfg.data)
    model = build_model(cfg.train.model, num_classes=10, in_channels=1)
    model.load_state_dict(load_state_dict(tmp_path / cfg.name / "checkpoints" / "cycle_000" / "model.pt"))
    model.eval()
    lab0 = state.labeled_cycle == 0
    with torch.no_grad():
        feats = model.forward_features(ds.images("train", state.sample_ids))[0].double().numpy()
    picks = brute_force_k_center(feats[~lab0], feats[lab0], k)
    assert np.array_equal(np.sort(state.ids_of_cycle(1)), np.sort(state.sample_ids[~lab0][picks]))


@pytest.mark.ray
@pytest.mark.parametrize("strategy", ["suggestive", "mc_dropout"])
def test_suggestive_and_mc_dropout_through_the_cycle_loop(ray_session, tiny_config, tmp_path, strategy):
    from daal_ray.driver import run_experiment

    cfg = tiny_config(strategy, final_fraction=0.10)
    run_experiment(cfg, tmp_path)
    state = _state(tmp_path, cfg)
    _, k, _ = cfg.schedule(len(state))
    assert len(state.history) == 2
    _check_invariants(state, k)


# --------------------------------------------------------------------------- CIFAR job scripts
def _load_job(name: str):
    spec = importlib.util.spec_from_file_location(f"job_{name}", ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _fake_cifar(root: Path, name: str, n_train: int = 40, n_test: int = 12) -> None:
    rng = np.random.default_rng(0)
    classes = 10 if name == "cifar10" else 100
    key = b"labels" if name == "cifar10" else b"fine_labels"

    def batch(n):
        return {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                key: [int(v) for v in rng.integers(0, classes, size=n)]}

    if name == "cifar10":
        base = root / "cifar-10-batches-py"
        base.mkdir(parents=True)
        for i in range(1, 6):
            (base / f"data_batch_{i}").write_bytes(pickle.dumps(batch(n_train // 5), protocol=2))
        (base / "test_batch").write_bytes(pickle.dumps(batch(n_test), protocol=2))
    else:
        base = root / "cifar-100-python"
        base.mkdir(parents=True)
        (base / "train").write_bytes(pickle.dumps(batch(n_train), protocol=2))
        (base / "test").write_bytes(pickle.dumps(batch(n_test), protocol=2))


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_jobs_accept_every_strategy(name, tmp_path):
    from daal_ray.cli import configs_from_args

    _fake_cifar(tmp_path, name)
    job = _load_job(name)
    names = strategy_names()
    args = job.build_parser().parse_args(["--data-root", str(tmp_path), "--strategy", ",".join(names)])
    configs = configs_from_args(args, dataset=name, strategy_params=job.strategy_params(args))
    assert args.seeds == 3 and len(configs) == 3 * len(names)  # the paper's 3 repeats
    assert {c.acquisition.strategy for c in configs} == set(names)
    for c in configs:
        assert c.data.name == name and c.data.root == str(tmp_path)
        assert c.train.model == "wrn28_2" and c.train.epochs == 150 and c.train.milestones == (80, 120)
        assert (c.initial_fraction, c.step_fraction, c.final_fraction) == (0.10, 0.05, 0.40)
    daal = next(c for c in configs if c.acquisition.strategy == "daal")
    assert daal.acquisition.params["epochs"] == 150
    with pytest.raises(SystemExit):
        job.build_parser().parse_args(["--no-such-flag"])


@pytest.mark.ray
def test_cifar10_job_smoke_test_runs_on_a_tiny_fixture(ray_session, tmp_path, capsys):
    _fake_cifar(tmp_path / "data", "cifar10", n_train=40, n_test=10)
    job = _load_job("cifar10")
    rc = job.main(["--smoke-test", "--data-root", str(tmp_path / "data"), "--run-dir", str(tmp_path / "runs"),
                   "--strategy", "coreset", "--num-workers", "0", "--batch-size", "16", "--concurrency", "1"])
    assert rc == 0
    state = _state(tmp_path / "runs", type("C", (), {"name": "cifar10-coreset-seed0"})())
    assert len(state.history) >= 2
    _check_invariants(state, state.history[1].num_added)
