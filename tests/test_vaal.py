"""VAAL on images and on task features: networks, the adversarial game on a constructed
case, selection invariants, and one Ray run through the cycle loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from selection_helpers import check_selection, fit_context, select

from daal_ray.acquisition import FitContext, build_strategy
from daal_ray.acquisition.rss import random_subset
from daal_ray.acquisition.vaal import (
    MLPVAE,
    ConvVAE,
    LatentDiscriminator,
    VAALFeatureStrategy,
    VAALImageStrategy,
    VAALParams,
    train_vaal,
    unlabeled_probability,
    vaal_image_size,
)
from daal_ray.config import AcquisitionConfig, ExperimentConfig
from daal_ray.data import open_dataset
from daal_ray.errors import ConfigError
from daal_ray.experiment import run_experiment
from daal_ray.pool import PoolState
from daal_ray.rundir import STATE_FILE
from daal_ray.runtime import derive_seed


# --------------------------------------------------------------------------- networks and params
@pytest.mark.parametrize("c,native,side", [(1, 8, 8), (3, 32, 32), (3, 28, 32)])
def test_conv_vae_adapts_to_the_image_size(c, native, side):
    p = VAALParams()
    assert vaal_image_size(native, p) == side
    vae = ConvVAE(c, side, p.conv_widths, p.latent_dim)
    recon, mu, logvar = vae(torch.randn(4, c, side, side))
    assert recon.shape == (4, c, side, side) and mu.shape == logvar.shape == (4, 32)
    assert vaal_image_size(native, VAALParams(image_size=64)) == 64


def test_params_are_checked():
    with pytest.raises(ConfigError, match="image_size"):
        AcquisitionConfig("vaal", {"image_size": 12})  # not a multiple of 2 ** 3
    with pytest.raises(ConfigError, match="'margin'"):
        AcquisitionConfig("vaal_tf", {"margin": 1.0})
    with pytest.raises(ValueError, match="multiple of 8"):
        ConvVAE(1, 12)


def test_eval_mode_encodes_the_mean():
    torch.manual_seed(0)
    vae = MLPVAE(6, (8,), 3).eval()
    x = torch.randn(5, 6)
    r1, mu, _ = vae(x)
    r2, _, _ = vae(x)
    assert torch.equal(r1, r2) and torch.allclose(r1, vae.decode(mu))


# --------------------------------------------------------------------------- the game, known answer
def _blobs(n: int, bright_top: bool, seed: int) -> torch.Tensor:
    """8x8 one-channel images: a bright top (cluster A) or bottom (cluster B) half, plus noise."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.randn(n, 1, 8, 8, generator=g)
    if bright_top:
        x[:, :, :4] += 1.0
    else:
        x[:, :, 4:] += 1.0
    return x


def test_discriminator_scores_an_unlabeled_looking_cluster_above_labeled_looking_ones():
    """Labeled = cluster A only; unlabeled = A and B. After the game, fresh B images look
    unlabeled and fresh A images look labeled."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    p = VAALParams(epochs=15, batch_size=32, conv_widths=(8, 16, 32), latent_dim=8, disc_hidden=(32, 32))
    xl = _blobs(48, True, 1)
    xu = torch.cat([_blobs(48, True, 2), _blobs(48, False, 3)])
    vae, dis = ConvVAE(1, 8, p.conv_widths, p.latent_dim), LatentDiscriminator(p.latent_dim, p.disc_hidden)
    history = train_vaal(vae, dis, lambda r: xl[torch.as_tensor(r)], len(xl), lambda r: xu[torch.as_tensor(r)],
                         len(xu), p, seed=0)
    assert len(history) == 15 and history[-1].recon < history[0].recon
    p_a = unlabeled_probability(vae, dis, _blobs(40, True, 4))
    p_b = unlabeled_probability(vae, dis, _blobs(40, False, 5))
    assert p_b.min() - p_a.max() > 0.05  # a clear gap (an untrained pair scores both ~0.52)


def test_vaal_tf_scores_an_unlabeled_only_cluster_first():
    """Features: labeled come from one Gaussian cluster, the unlabeled pool holds 10 points of
    a second cluster among 50 of the first; the top 10 are the second cluster's points."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    d = 12
    ca, cb = np.zeros(d), np.zeros(d)
    ca[0], cb[1] = 1.0, 1.0
    xl = ca + 0.05 * rng.normal(size=(40, d))
    xu = np.concatenate([ca + 0.05 * rng.normal(size=(50, d)), cb + 0.05 * rng.normal(size=(10, d))])
    feats = np.concatenate([xl, xu]).astype(np.float32)
    labeled = np.r_[np.ones(40, bool), np.zeros(60, bool)]
    ids = np.arange(1000, 1100, dtype=np.int64)
    batch = {"sample_id": ids, "labeled": labeled, "features": feats}
    s = build_strategy(AcquisitionConfig("vaal_tf", {"epochs": 20, "batch_size": 32, "disc_hidden": [32, 32],
                                                     "mlp_hidden": [32]}), seed=0, cycle=1)
    assert isinstance(s, VAALFeatureStrategy) and s.trains and s.needs == frozenset({"features"})
    s.fit(FitContext(features=batch, num_labeled=40, cycle=1))
    picked = select(s, batch, 10)
    check_selection(picked, batch, 10)
    assert set(picked.tolist()) == set(ids[90:].tolist())


def test_vaal_tf_survives_pickling_for_ray_data():
    import pickle

    rng = np.random.default_rng(1)
    batch = {"sample_id": np.arange(30, dtype=np.int64), "labeled": np.arange(30) < 10,
             "features": rng.normal(size=(30, 5)).astype(np.float32)}
    s = build_strategy(AcquisitionConfig("vaal_tf", {"epochs": 1, "batch_size": 8}), seed=0, cycle=0)
    s.fit(FitContext(features=batch, num_labeled=10, cycle=0))
    before = s.score(batch)
    clone = pickle.loads(pickle.dumps(s))
    assert clone._cached is None
    assert np.array_equal(clone.score(batch), before)


@pytest.mark.parametrize("name,base", [("vaal_rss", VAALImageStrategy), ("vaal_tf_rss", VAALFeatureStrategy)])
def test_rss_versions_are_registered_with_the_papers_subset(name, base):
    s = build_strategy(AcquisitionConfig(name), seed=0, cycle=0)
    assert isinstance(s, base) and s.params.rss_subset == 10_000
    assert s.needs == base.needs and s.trains


def test_vaal_tf_rss_selects_inside_its_subset():
    rng = np.random.default_rng(2)
    batch = {"sample_id": np.arange(500, 560, dtype=np.int64), "labeled": np.arange(60) % 4 == 0,
             "features": rng.normal(size=(60, 6)).astype(np.float32)}
    s = build_strategy(AcquisitionConfig("vaal_tf_rss", {"epochs": 1, "batch_size": 8, "rss_subset": 12}),
                       seed=1, cycle=3)
    s.fit(fit_context(batch, cycle=3))
    ids = select(s, batch, 4)
    check_selection(ids, batch, 4)
    subset = random_subset(batch["sample_id"][~batch["labeled"]], 12, derive_seed(1, 3, 0x525353))
    assert np.isin(ids, subset).all()
    scores = s.score({"features": batch["features"][np.isin(batch["sample_id"], subset)]})
    assert set(ids.tolist()) == set(subset[np.argsort(-scores)[:4]].tolist())


# --------------------------------------------------------------------------- vaal on images (no Ray)
def test_vaal_reads_images_through_the_dataset_and_selects_unlabeled_ids():
    torch.set_num_threads(1)
    cfg = ExperimentConfig(acquisition=AcquisitionConfig("vaal", {"epochs": 1, "batch_size": 64}))
    ds = open_dataset(cfg.data)
    pool = np.sort(ds.sample_ids("train"))
    labeled = pool[::10]
    s = build_strategy(cfg.acquisition, seed=0, cycle=0)
    assert isinstance(s, VAALImageStrategy) and s.needs == frozenset() and s.trains
    s.fit(FitContext(features=None, num_labeled=labeled.size, cycle=0, config=cfg, labeled_ids=labeled))
    assert s.side == 8 and s.in_channels == 1
    batch = {"sample_id": pool[:300], "labeled": np.isin(pool[:300], labeled)}
    scores = s.score({k: v[~batch["labeled"]] for k, v in batch.items()})
    assert np.all((scores > 0) & (scores < 1))
    check_selection(select(s, batch, 25), batch, 25)
    # the score of a sample does not depend on the rest of its batch
    one = s.score({"sample_id": pool[1:2], "labeled": np.zeros(1, bool)})
    assert one[0] == pytest.approx(s.score({"sample_id": pool[:5], "labeled": np.zeros(5, bool)})[1], abs=1e-6)


def _two_rank_fit(rank: int, world: int, port: int, out_dir: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = ExperimentConfig(acquisition=AcquisitionConfig("vaal", {"epochs": 1, "batch_size": 64,
                                                                      "conv_widths": [8, 16, 32]}))
        pool = np.sort(open_dataset(cfg.data).sample_ids("train"))
        s = build_strategy(cfg.acquisition, seed=0, cycle=0)
        s.fit(FitContext(features=None, num_labeled=pool[::10].size, cycle=0, config=cfg, labeled_ids=pool[::10]))
        torch.save({"vae": s.vae_state, "dis": s.dis_state}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_vaal_fit_on_two_ranks_keeps_the_ranks_in_step(tmp_path):
    """Each rank trains on its own shard; averaged gradients keep the parameters equal."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_two_rank_fit, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for part in ("vae", "dis"):
        for k, v in r0[part].items():
            if "running_" in k or "num_batches" in k:
                continue  # BN statistics are per rank; only rank 0's are used for scoring
            assert torch.equal(v, r1[part][k]), (part, k)
    # the shards differ, so without the averaging the ranks would have drifted apart
    assert not torch.equal(r0["vae"]["encoder.1.running_mean"], r1["vae"]["encoder.1.running_mean"])


# --------------------------------------------------------------------------- Ray: the cycle loop
@pytest.mark.ray
def test_vaal_through_the_cycle_loop(ray_session, tiny_config, tmp_path):
    cfg = tiny_config("vaal", final_fraction=0.10)
    cfg = cfg.replace(acquisition=AcquisitionConfig("vaal", {"epochs": 2}))
    table = run_experiment(cfg, tmp_path)
    state = PoolState.load(tmp_path / cfg.name / STATE_FILE)
    initial, k, _ = cfg.schedule(len(state))
    assert table.num_rows == 2 and [r.num_added for r in state.history] == [initial, k]
    labeled, unlabeled = state.labeled_ids(), state.unlabeled_ids()
    assert np.intersect1d(labeled, unlabeled).size == 0
    assert np.array_equal(np.sort(np.concatenate([labeled, unlabeled])), state.sample_ids)
    batch = state.ids_of_cycle(1)
    assert np.unique(batch).size == k and not np.isin(batch, state.ids_of_cycle(0)).any()
    assert table["acq_fit_s"].to_pylist()[0] > 0  # the VAAL game ran in fit
