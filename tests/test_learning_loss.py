"""Learning Loss: the ranking loss, the joint head in training and inference, ll_rd, and a
two-cycle Ray run through the real cycle loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from selection_helpers import check_selection, fit_context, select

from daal_ray.acquisition import FitContext, build_strategy, get_strategy_class
from daal_ray.acquisition.daal.fit import score_features
from daal_ray.acquisition.learning_loss import (
    LearningLossParams,
    LearningLossStrategy,
    LLCoresetStrategy,
    LLRDParams,
    LLRDStrategy,
    LossPredictionModule,
    loss_ranking_loss,
    stop_epoch,
)
from daal_ray.acquisition.rss import random_subset
from daal_ray.config import AcquisitionConfig, DataConfig, TrainConfig
from daal_ray.data import get_dataset
from daal_ray.errors import ConfigError
from daal_ray.experiment import run_experiment
from daal_ray.models import build_model
from daal_ray.pool import PoolState
from daal_ray.rundir import STATE_FILE
from daal_ray.runtime import derive_seed
from daal_ray.scoring import PoolPredictor
from daal_ray.selection import k_center_greedy
from daal_ray.training import fit_task_model, load_state_dict, per_sample_loss, save_checkpoint


# --------------------------------------------------------------------------- ranking loss
def test_ranking_loss_is_zero_when_ordered_with_margin():
    # pairs (0, 3) and (1, 2): true losses order 0 > 3 and 1 < 2; predictions agree by >= 1
    pred = torch.tensor([3.0, 0.0, 1.5, 1.0])
    target = torch.tensor([2.0, 0.1, 0.9, 0.5])
    assert float(loss_ranking_loss(pred, target, margin=1.0)) == 0.0


def test_ranking_loss_hand_computed():
    pred = torch.tensor([2.0, 0.5, 1.0, 0.0])
    target = torch.tensor([1.0, 0.2, 0.1, 0.3])
    # pair (0, 3): l0 > l3, p0 - p3 = 2   -> max(0, 1 - 2) = 0
    # pair (1, 2): l1 > l2, p1 - p2 = -0.5 -> max(0, 1 + 0.5) = 1.5 ; mean over 2 pairs = 0.75
    assert float(loss_ranking_loss(pred, target, margin=1.0)) == pytest.approx(0.75)
    # a reversed order costs margin + gap: l0 < l3 now, p0 - p3 = 2 -> 1 + 2 = 3
    target2 = torch.tensor([0.0, 0.2, 0.1, 0.3])
    assert float(loss_ranking_loss(pred, target2, margin=1.0)) == pytest.approx((3.0 + 1.5) / 2)


def test_ranking_loss_odd_batch_ignores_the_middle_and_does_not_differentiate_targets():
    pred = torch.tensor([0.0, 5.0, 0.0], requires_grad=True)
    target = torch.tensor([1.0, 9.0, 0.0], requires_grad=True)
    loss = loss_ranking_loss(pred, target, margin=1.0)  # one pair (0, 2): l0 > l2, p0 - p2 = 0 -> 1
    assert float(loss.detach()) == pytest.approx(1.0)
    loss.backward()
    assert pred.grad.tolist() == [-1.0, 0.0, 1.0]
    assert target.grad is None


def test_stop_epoch_scales_the_papers_120_of_200():
    assert stop_epoch(0.6, 200) == 120
    assert stop_epoch(0.6, 20) == 12
    head = LossPredictionModule((4,), LearningLossParams())
    assert not head.detach_taps(11, 20) and head.detach_taps(12, 20)


def test_params_are_checked():
    with pytest.raises(ConfigError, match="stop_grad_fraction"):
        AcquisitionConfig("learning_loss", {"stop_grad_fraction": 1.5})
    with pytest.raises(ConfigError, match="'lr'"):
        AcquisitionConfig("learning_loss", {"lr": 0.1})
    with pytest.raises(ConfigError, match="use_udis"):
        AcquisitionConfig("ll_rd", {"rd": {"use_udis": True}})
    with pytest.raises(ConfigError, match="confidence_weight"):
        AcquisitionConfig("ll_rd", {"rd": {"confidence_weight": 1.0}})
    with pytest.raises(ConfigError, match="epochs"):
        AcquisitionConfig("ll_rd", {"rd": {"epochs": 0}})


# --------------------------------------------------------------------------- taps and module
@pytest.mark.parametrize("name,shape", [("small_cnn", (2, 1, 8, 8)), ("wrn28_2", (2, 3, 32, 32))])
def test_forward_taps_agrees_with_forward_features(name, shape):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=shape[1]).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        taps, f, logits = model.forward_taps(x)
        f2, logits2 = model.forward_features(x)
    assert [t.shape[1] for t in taps] == list(model.tap_channels)
    assert torch.allclose(f, f2, atol=1e-6) and torch.allclose(logits, logits2, atol=1e-6)
    head = LossPredictionModule(model.tap_channels, LearningLossParams(hidden=8))
    assert head(taps).shape == (2,)


def test_a_model_without_taps_is_refused_with_the_fix_named():
    with pytest.raises(ConfigError, match="small_cnn or wrn28_2"):
        LossPredictionModule((), LearningLossParams())


def _digits():
    ds = get_dataset(DataConfig(name="digits"))
    ids = np.sort(ds.sample_ids("train"))[:96]
    return ds, ids, ds.targets("train", ids)


def _train(ds, ids, y, head_factory=None, epochs=3):
    cfg = TrainConfig(model="small_cnn", epochs=epochs, batch_size=32, optimizer="adam", lr=2e-3)
    return fit_task_model(ds, ids, y, cfg, seed=5, device=torch.device("cpu"), head_factory=head_factory)


def test_gradient_stop_leaves_the_backbone_as_without_the_head():
    """Detached from epoch 0, the module cannot change the backbone: the task model trains
    exactly as without it. Attached, it does change it."""
    torch.set_num_threads(1)
    ds, ids, y = _digits()
    plain, stats0 = _train(ds, ids, y)
    assert stats0.head is None
    stopped, stats1 = _train(ds, ids, y, lambda m: LossPredictionModule(m.tap_channels, LearningLossParams(
        stop_grad_fraction=0.0)))
    joint, stats2 = _train(ds, ids, y, lambda m: LossPredictionModule(m.tap_channels, LearningLossParams(
        stop_grad_fraction=1.0)))
    assert isinstance(stats1.head, LossPredictionModule)
    for k, v in plain.state_dict().items():
        assert torch.allclose(v.float(), stopped.state_dict()[k].float(), atol=1e-5), k
    w = "body.0.weight"
    assert not torch.allclose(plain.state_dict()[w], joint.state_dict()[w], atol=1e-4)


def test_trained_module_ranks_training_losses_better_than_chance():
    torch.set_num_threads(1)
    ds, ids, y = _digits()
    model, stats = _train(ds, ids, y, lambda m: LossPredictionModule(m.tap_channels, LearningLossParams()), epochs=8)

    with torch.no_grad():
        taps, _, logits = model.eval().forward_taps(ds.images("train", ids))
        pred = stats.head(taps).numpy()
        true = per_sample_loss(logits, torch.as_tensor(y)).numpy()
    # rank correlation (Spearman) between predicted and true losses
    rp, rt = np.argsort(np.argsort(pred)), np.argsort(np.argsort(true))
    rho = np.corrcoef(rp, rt)[0, 1]
    assert rho > 0.3


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ds, ids, y = _digits()
        model, stats = _train(ds, ids, y, lambda m: LossPredictionModule(m.tap_channels, LearningLossParams(
            stop_grad_fraction=0.5)), epochs=2)
        torch.save({"model": model.state_dict(), "head": stats.head.state_dict()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_joint_head_trains_under_ddp_identically_on_every_rank(tmp_path):
    """Two gloo ranks train the task model and the loss module as one DDP module: both end
    with the same parameters, and the module has moved from its initialisation."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for part in ("model", "head"):
        for k, v in r0[part].items():
            if "running_" in k or "num_batches" in k:
                continue  # BN statistics: DDP syncs them from rank 0 at each forward, not after the last
            assert torch.equal(v, r1[part][k]), (part, k)
    torch.manual_seed(5)  # the seed fit_task_model draws the initial weights from
    model = build_model("small_cnn", num_classes=10, in_channels=1)
    init = LossPredictionModule(model.tap_channels, LearningLossParams()).state_dict()
    assert not torch.allclose(init["out.weight"], r0["head"]["out.weight"])


def test_checkpoint_and_pool_predictor_emit_pred_loss(tmp_path):
    torch.set_num_threads(1)
    ds, ids, y = _digits()
    strategy = build_strategy(AcquisitionConfig("learning_loss"), seed=0, cycle=0)
    model, stats = _train(ds, ids, y, strategy.task_head, epochs=1)
    save_checkpoint(model, tmp_path, {"cycle": 0}, head=stats.head)
    assert (tmp_path / "loss_module.pt").is_file()
    pred = PoolPredictor(DataConfig(name="digits").to_dict(), "small_cnn", 10, 1, str(tmp_path / "model.pt"),
                         acquisition=AcquisitionConfig("learning_loss").to_dict())
    batch = {"sample_id": ids[:7], "labeled": np.zeros(7, dtype=bool)}
    out = pred(batch)
    with torch.no_grad():
        taps, _, _ = model.eval().forward_taps(ds.images("train", ids[:7]))
        expected = stats.head(taps).numpy()
    assert np.allclose(out["pred_loss"], expected, atol=1e-5)
    assert out["features"].shape == (7, 128)
    # a strategy without a head gets no extra column
    plain = PoolPredictor(DataConfig(name="digits").to_dict(), "small_cnn", 10, 1, str(tmp_path / "model.pt"),
                          acquisition=AcquisitionConfig("entropy").to_dict())
    assert "pred_loss" not in plain(batch)


# --------------------------------------------------------------------------- strategies
def _pool(n=60, d=16, seed=0):
    rng = np.random.default_rng(seed)
    labeled = np.zeros(n, dtype=bool)
    labeled[rng.choice(n, 15, replace=False)] = True
    return {"sample_id": np.arange(100, 100 + n, dtype=np.int64), "labeled": labeled,
            "features": rng.normal(size=(n, d)).astype(np.float32), "pred_loss": rng.normal(size=n)}


def test_learning_loss_picks_the_highest_predicted_loss():
    batch = _pool()
    s = build_strategy(AcquisitionConfig("learning_loss"), seed=0, cycle=1)
    assert type(s) is LearningLossStrategy and s.needs == frozenset({"pred_loss"})
    ids = select(s, batch, 10)
    check_selection(ids, batch, 10)
    unl = ~batch["labeled"]
    expected = batch["sample_id"][unl][np.argsort(-batch["pred_loss"][unl])[:10]]
    assert set(ids.tolist()) == set(expected.tolist())


def test_ll_rd_scores_mix_normalised_loss_and_representativeness():
    batch = _pool()
    s = build_strategy(AcquisitionConfig("ll_rd", {"rd": {"epochs": 2, "batch_size": 16}}), seed=0, cycle=1)
    assert isinstance(s, LLRDStrategy) and s.trains
    s.fit(FitContext(features=batch, num_labeled=15, cycle=1))
    unl = {k: np.asarray(v)[~batch["labeled"]] for k, v in batch.items()}
    scores = s.score(unl)
    assert np.all((scores >= 0) & (scores <= 1))
    ids = select(s, batch, 10)
    check_selection(ids, batch, 10)
    # w = 0: pure normalised predicted loss; w = 1: pure representativeness
    s.params = LLRDParams(rd={"epochs": 2, "batch_size": 16}, rd_weight=0.0)
    lo, hi = unl["pred_loss"].min(), unl["pred_loss"].max()
    assert np.allclose(s.score(unl), (unl["pred_loss"] - lo) / (hi - lo))
    s.params = LLRDParams(rd={"epochs": 2, "batch_size": 16}, rd_weight=1.0)

    assert np.allclose(s.score(unl), score_features(s._score_net(), unl["features"]))


def test_learning_loss_rss_ranks_only_its_random_subset():
    batch = _pool(n=80)
    s = build_strategy(AcquisitionConfig("learning_loss_rss", {"rss_subset": 20}), seed=3, cycle=2)
    assert isinstance(s, LearningLossStrategy) and s.params.rss_subset == 20
    ids = select(s, batch, 5)
    check_selection(ids, batch, 5)
    unl = ~batch["labeled"]
    subset = random_subset(batch["sample_id"][unl], 20, derive_seed(3, 2, 0x525353))
    assert np.isin(ids, subset).all()
    in_sub = np.isin(batch["sample_id"], subset)
    expected = batch["sample_id"][in_sub][np.argsort(-batch["pred_loss"][in_sub])[:5]]
    assert set(ids.tolist()) == set(expected.tolist())
    # its head is the plain module, without the subset setting
    assert s.task_head(build_model("small_cnn", num_classes=10, in_channels=1)).p == LearningLossParams()
    # a subset as large as the pool selects what learning_loss does
    full = build_strategy(AcquisitionConfig("learning_loss_rss", {"rss_subset": 10_000}), seed=3, cycle=2)
    assert set(select(full, batch, 5).tolist()) == set(
        select(build_strategy(AcquisitionConfig("learning_loss"), seed=3, cycle=2), batch, 5).tolist())


def test_ll_coreset_takes_the_top_predicted_loss_inside_the_core_set():
    batch = _pool(n=80)
    s = build_strategy(AcquisitionConfig("ll_coreset", {"subset_factor": 3.0}), seed=0, cycle=1)
    assert isinstance(s, LLCoresetStrategy) and s.needs == frozenset({"features", "pred_loss"})
    ids, scores, _ = s.select(fit_context(batch), 6)
    check_selection(ids, batch, 6)
    lab = batch["labeled"]
    pos, _ = k_center_greedy(batch["features"][~lab], batch["features"][lab], 18)
    subset = batch["sample_id"][~lab][pos]
    pl = dict(zip(batch["sample_id"].tolist(), batch["pred_loss"].tolist()))
    expected = sorted(subset.tolist(), key=lambda i: -pl[i])[:6]
    assert ids.tolist() == expected and np.allclose(scores, [pl[i] for i in expected])
    # the subset stage matters: plain LL picks ids outside the core-set here
    plain = select(build_strategy(AcquisitionConfig("learning_loss"), seed=0, cycle=1), batch, 6)
    assert not np.isin(plain, subset).all()
    # subset_factor 1: the core-set picks themselves
    one = build_strategy(AcquisitionConfig("ll_coreset", {"subset_factor": 1.0}), seed=0, cycle=1)
    assert set(one.select(fit_context(batch), 6)[0].tolist()) == set(
        batch["sample_id"][~lab][k_center_greedy(batch["features"][~lab], batch["features"][lab], 6)[0]].tolist())


def test_ll_rd_head_uses_the_learning_loss_settings():
    s = get_strategy_class("ll_rd")(LLRDParams(margin=0.5, hidden=16), seed=0, cycle=0)
    head = s.task_head(build_model("small_cnn", num_classes=10, in_channels=1))
    assert head.p == LearningLossParams(margin=0.5, hidden=16)


# --------------------------------------------------------------------------- Ray: the cycle loop
@pytest.mark.ray
def test_learning_loss_through_the_cycle_loop(ray_session, tiny_config, tmp_path):
    cfg = tiny_config("learning_loss", final_fraction=0.10)
    table = run_experiment(cfg, tmp_path)
    state = PoolState.load(tmp_path / cfg.name / STATE_FILE)
    initial, k, rounds = cfg.schedule(len(state))
    assert rounds == 1 and table.num_rows == 2
    assert [r.num_added for r in state.history] == [initial, k]
    labeled, unlabeled = state.labeled_ids(), state.unlabeled_ids()
    assert np.intersect1d(labeled, unlabeled).size == 0
    assert np.array_equal(np.sort(np.concatenate([labeled, unlabeled])), state.sample_ids)
    batch = state.ids_of_cycle(1)
    assert np.unique(batch).size == k and not np.isin(batch, state.ids_of_cycle(0)).any()

    # the cycle checkpoint holds the loss module; the batch is its top-K predicted loss
    ckpt = tmp_path / cfg.name / "checkpoints" / "cycle_000"
    assert (ckpt / "loss_module.pt").is_file()

    ds = get_dataset(cfg.data)
    model = build_model(cfg.train.model, num_classes=10, in_channels=1)
    model.load_state_dict(load_state_dict(ckpt / "model.pt"))
    head = LossPredictionModule(model.tap_channels, LearningLossParams())
    head.load_state_dict(load_state_dict(ckpt / "loss_module.pt"))
    unl = state.sample_ids[state.labeled_cycle != 0]
    with torch.no_grad():
        pred = head.eval()(model.eval().forward_taps(ds.images("train", unl))[0]).double().numpy()
    expected = np.sort(unl[np.lexsort((unl, -pred))][:k])
    assert np.array_equal(np.sort(batch), expected)
