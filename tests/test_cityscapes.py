"""Cityscapes: label mapping, mIoU, bad inputs, segmentation models, every strategy, the job.

Pure tests write PNGs in the official layout with hand-chosen labelIds and check the
mapping pixel by pixel, the confusion matrix and mIoU against hand-computed values, and the
errors for bad files. Every registered strategy then selects from a segmentation pool in
this process, through the same steps as the cycle loop (train, pool predictor, fit,
select); one Ray test runs ``jobs/cityscapes.py --smoke-test`` through the real loop.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from daal_ray.acquisition import FitContext, build_strategy, strategy_names, suggestive
from daal_ray.acquisition.entropy import predictive_entropy
from daal_ray.cli.run import configs_from_args
from daal_ray.config import AcquisitionConfig, DataConfig, ExperimentConfig, ScaleConfig, TrainConfig, resolve_config
from daal_ray.data import get_dataset, get_dataset_class
from daal_ray.data.cityscapes import CityscapesDataset, label_lut, write_fixture
from daal_ray.diagnostics import distribution_entropy
from daal_ray.errors import ConfigError, DataError
from daal_ray.models import build_model
from daal_ray.models.segmentation import DilatedResNet
from daal_ray.scoring import PoolPredictor
from daal_ray.training import evaluate, fit_task_model, mean_iou, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]

# The official table, written out independently of the module: labelId -> trainId.
EXPECTED_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                     26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def _write_pair(root: Path, official: str, city: str, stem: str, image: np.ndarray, mask: np.ndarray) -> Path:
    img_dir, lab_dir = root / "leftImg8bit" / official / city, root / "gtFine" / official / city
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, "RGB").save(img_dir / f"{stem}_leftImg8bit.png")
    Image.fromarray(mask, "L").save(lab_dir / f"{stem}_gtFine_labelIds.png")
    return img_dir / f"{stem}_leftImg8bit.png"


def _hand_dataset(root: Path, h: int = 8, w: int = 16) -> dict[str, np.ndarray]:
    """Two train and one val image; the masks hold every labelId 0..35, some larger ones and 255."""
    values = np.array(list(range(36)) + [40, 100, 200, 254, 255], dtype=np.uint8)
    masks = {
        "a": np.resize(values, (h, w)),
        "b": np.resize(values[::-1], (h, w)),
        "v": np.full((h, w), 26, np.uint8),
    }
    masks["v"][:, : w // 2] = 0  # half void
    rng = np.random.default_rng(0)
    for name, official in (("a", "train"), ("b", "train"), ("v", "val")):
        _write_pair(root, official, "aachen", f"aachen_00000{ord(name) % 10}_000019",
                    rng.integers(0, 256, (h, w, 3), dtype=np.uint8), masks[name])
    return masks


def _open(root: Path, image_size: int = 8) -> CityscapesDataset:
    return get_dataset(DataConfig(name="cityscapes", root=str(root), image_size=image_size))


def _expected(mask: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda v: EXPECTED_TRAIN_ID.get(int(v), 255))(mask)


# --------------------------------------------------------------------------- (a) mapping
def test_lookup_table_is_the_official_one():
    lut = label_lut()
    assert lut.shape == (256,) and lut.dtype == np.uint8
    for label_id in range(256):
        assert lut[label_id] == EXPECTED_TRAIN_ID.get(label_id, 255), label_id
    assert sorted(set(lut.tolist()) - {255}) == list(range(19))


def test_label_ids_map_to_train_ids_pixel_by_pixel(tmp_path):
    masks = _hand_dataset(tmp_path)
    ds = _open(tmp_path)
    assert (ds.task, ds.num_classes, ds.height, ds.width) == ("segmentation", 19, 8, 16)
    train_ids = ds.sample_ids("train")
    assert train_ids.size == 2 and ds.sample_ids("test").size == 1  # the protocol's test = official val
    got = {tuple(ds.targets("train", [i])[0].ravel()) for i in train_ids}
    assert got == {tuple(_expected(masks["a"]).ravel()), tuple(_expected(masks["b"]).ravel())}
    t = ds.targets("test", ds.sample_ids("test"))[0]
    assert t.dtype == np.int64
    np.testing.assert_array_equal(t[:, :8], 255)  # unlabeled (0) is void
    np.testing.assert_array_equal(t[:, 8:], 13)   # car
    # Void ids 0, 1, 4 (unlabeled, ego vehicle, static) and 255 ("license plate" as stored) are ignored.
    for void in (0, 1, 4, 255):
        assert _expected(np.array([void]))[0] == 255


def test_resize_is_nearest_for_masks_and_bilinear_for_images(tmp_path):
    # 2 x 2 blocks of one label each: halving with nearest keeps exactly one label per block.
    blocks = np.array([[7, 26, 0, 23], [24, 11, 33, 4]], dtype=np.uint8)
    mask = np.kron(blocks, np.ones((4, 4), np.uint8))  # 8 x 16
    image = np.zeros((8, 16, 3), np.uint8)
    image[:, 8:] = 200
    _write_pair(tmp_path, "train", "bochum", "bochum_000000_000019", image, mask)
    _write_pair(tmp_path, "train", "bochum", "bochum_000001_000019", image, mask)
    _write_pair(tmp_path, "val", "bochum", "bochum_000002_000019", image, mask)
    ds = _open(tmp_path, image_size=4)  # 4 x 8
    (i,) = ds.sample_ids("test")
    t = ds.targets("test", [i])[0]
    np.testing.assert_array_equal(t, _expected(np.kron(blocks, np.ones((2, 2), np.uint8))))
    x = ds.images("test", [i])[0]
    assert tuple(x.shape) == (3, 4, 8)
    # Bilinear: the columns at the edge of the step mix both sides; the rest keep their value.
    col = x[0, 0].numpy()
    assert col[0] == col[1] == col[2] and col[5] == col[6] == col[7] and col[2] < col[3] < col[5]


def test_sample_ids_are_stable_hashes_of_relative_paths(tmp_path):
    _hand_dataset(tmp_path / "one")
    _hand_dataset(tmp_path / "two")
    a, b = _open(tmp_path / "one"), _open(tmp_path / "two")
    np.testing.assert_array_equal(a.sample_ids("train"), b.sample_ids("train"))
    assert a.sample_ids("train").dtype == np.int64 and np.all(np.diff(a.sample_ids("train")) > 0)


def test_class_frequencies_of_masks(tmp_path):
    masks = _hand_dataset(tmp_path)
    ds = _open(tmp_path)
    (v,) = ds.sample_ids("test")
    freq = ds.class_frequencies("test", [v])
    expected = np.zeros((1, 19))
    expected[0, 13] = 1.0  # the non-void half is all car
    np.testing.assert_allclose(freq, expected)
    ids = ds.sample_ids("train")
    f = ds.class_frequencies("train", ids, chunk=1)
    for row, sid in zip(f, ids):
        name = "a" if ds.targets("train", [sid])[0, 0, 0] == 255 and ds.targets("train", [sid])[0, 0, 7] == 0 else "b"
        y = _expected(masks[name]).ravel()  # the hand table, not the module's
        y = y[y != 255]
        np.testing.assert_allclose(row, np.bincount(y, minlength=19) / y.size)
    # Batch diversity for dense targets: entropy of the mean composition, normalised.
    assert distribution_entropy(np.eye(19)[3]) == 0.0
    assert distribution_entropy(np.full(19, 2.0)) == pytest.approx(1.0)
    assert distribution_entropy(np.array([1.0, 1.0, 0, 0])) == pytest.approx(math.log(2) / math.log(4))


# --------------------------------------------------------------------------- (b) metric
def test_mean_iou_against_a_hand_computed_confusion():
    conf = np.array([[3, 1, 0, 0],
                     [0, 2, 2, 0],
                     [1, 0, 0, 0],
                     [0, 0, 0, 0]])  # class 3 never occurs: left out of the mean
    # IoU = TP / (row + col - TP): 3/5, 2/5, 0/3
    assert mean_iou(conf) == pytest.approx((0.6 + 0.4 + 0.0) / 3)


def test_evaluate_gives_the_confusion_computed_independently(tmp_path):
    root = write_fixture(tmp_path, per_city=2, val_per_city=3, height=16, width=32, seed=3)
    ds = _open(root, image_size=16)
    torch.manual_seed(0)
    model = build_model("seg_small", num_classes=19, in_channels=3).eval()
    conf = evaluate(model, ds, device=torch.device("cpu"), batch_size=4)  # 6 test images: two chunks
    expected = np.zeros((19, 19), np.int64)
    for sid in ds.sample_ids("test"):
        with torch.no_grad():
            pred = model(ds.images("test", [sid]))[0].argmax(0).numpy()
        y = ds.targets("test", [sid])[0]
        for t, p in zip(y.ravel(), pred.ravel()):
            if t != 255:
                expected[t, p] += 1
    np.testing.assert_array_equal(conf, expected)
    assert conf.sum() == (ds.targets("test", ds.sample_ids("test")) != 255).sum() > 0


# --------------------------------------------------------------------------- (c) bad input
def test_missing_label_file_is_named(tmp_path):
    _hand_dataset(tmp_path)
    label = next((tmp_path / "gtFine" / "train").rglob("*_labelIds.png"))
    label.unlink()
    with pytest.raises(DataError, match="missing") as ei:
        _open(tmp_path)
    assert str(label) in str(ei.value)


def test_size_mismatch_is_named(tmp_path):
    _hand_dataset(tmp_path)
    label = next((tmp_path / "gtFine" / "val").rglob("*_labelIds.png"))
    Image.fromarray(np.zeros((8, 12), np.uint8), "L").save(label)
    with pytest.raises(DataError, match="same size") as ei:
        _open(tmp_path)
    assert str(label) in str(ei.value)


def test_empty_split_is_named(tmp_path):
    _hand_dataset(tmp_path)
    for f in (tmp_path / "leftImg8bit" / "val").rglob("*.png"):
        f.unlink()
    with pytest.raises(DataError, match="empty") as ei:
        _open(tmp_path)
    assert str(tmp_path / "leftImg8bit" / "val") in str(ei.value)
    with pytest.raises(DataError, match="does not exist"):
        _open(tmp_path / "nowhere")
    (tmp_path / "bare").mkdir()
    with pytest.raises(DataError, match="leftImg8bit/train"):
        _open(tmp_path / "bare")


def test_corrupt_and_colour_pngs_are_named(tmp_path):
    _hand_dataset(tmp_path)
    image = next((tmp_path / "leftImg8bit" / "train").rglob("*.png"))
    good = image.read_bytes()
    image.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="unreadable") as ei:
        _open(tmp_path)
    assert str(image) in str(ei.value)
    # A truncated file passes the header check on open and fails, named, when decoded.
    image.write_bytes(good[: len(good) // 2])
    ds = _open(tmp_path)
    with pytest.raises(DataError) as ei:
        ds.images("train", ds.sample_ids("train"))
    assert str(image) in str(ei.value)
    image.write_bytes(good)
    label = next((tmp_path / "gtFine" / "train").rglob("*_labelIds.png"))
    Image.fromarray(np.zeros((8, 16, 3), np.uint8), "RGB").save(label)  # the colour mask by mistake
    with pytest.raises(DataError, match="single-channel") as ei:
        _open(tmp_path)
    assert str(label) in str(ei.value)


# --------------------------------------------------------------------------- (d) models
@pytest.mark.parametrize("side", [(32, 64), (36, 60)])
def test_drn_shapes_and_dilation(side):
    torch.manual_seed(0)
    m = build_model("drn_a_18", num_classes=19, in_channels=3).eval()
    assert isinstance(m, DilatedResNet) and m.feature_dim == 512 and m.tap_channels == (64, 128, 256, 512)
    x = torch.randn(2, 3, *side)
    with torch.no_grad():
        taps, f, logits = m.forward_taps(x)
        head_in, f2, logits2 = m.forward_head_input(x)
    assert tuple(logits.shape) == (2, 19, *side) and tuple(f.shape) == (2, 512)
    assert [t.shape[1] for t in taps] == [64, 128, 256, 512]
    # Output stride 8: stages 3 and 4 keep stage 2's resolution (dilated, not strided).
    eighth = torch.Size([math.ceil(s / 8) for s in side])
    assert taps[1].shape[-2:] == taps[2].shape[-2:] == taps[3].shape[-2:] == eighth
    torch.testing.assert_close(f, taps[-1].mean((2, 3)))  # features: the global average of the last map
    torch.testing.assert_close(logits, logits2)
    torch.testing.assert_close(head_in, taps[-1])
    for stage, dilation in zip(m.stages[2:], (2, 4)):
        for block in stage:
            assert block.conv2.dilation == (dilation, dilation) and block.conv2.stride == (1, 1)
    if side[0] % 8 == 0 and side[1] % 8 == 0:
        with torch.no_grad():
            torch.testing.assert_close(m.classify(head_in), logits)


@pytest.mark.parametrize("dataset,model", [("cityscapes", "wrn28_2"), ("digits", "seg_small")])
def test_a_model_of_the_other_task_is_refused_up_front(dataset, model):
    cfg = ExperimentConfig(data=DataConfig(name=dataset), train=TrainConfig(model=model))
    with pytest.raises(ConfigError, match=f"model '{model}' is a") as ei:
        resolve_config(cfg)
    assert get_dataset_class(dataset).default_model in str(ei.value)
    ok = resolve_config(cfg.replace(train=TrainConfig()))  # the dataset's default fits its task
    assert ok.train.model == get_dataset_class(dataset).default_model


def test_seg_small_learns_the_fixture(tmp_path):
    root = write_fixture(tmp_path, per_city=6, val_per_city=2, height=16, width=32, seed=1)
    ds = _open(root, image_size=16)
    ids = ds.sample_ids("train")
    cfg = TrainConfig(model="seg_small", epochs=15, batch_size=4, optimizer="adam", lr=1e-2)
    model, stats = fit_task_model(ds, ids, None, cfg, seed=0, device=torch.device("cpu"))
    assert stats.last_loss < 0.5 * stats.first_loss
    conf = evaluate(model, ds, device=torch.device("cpu"))
    assert mean_iou(conf) > 0.5  # colours encode the classes; an untrained model is near 0


# --------------------------------------------------------------------------- (e) strategies
FAST = {"daal": {"epochs": 2, "batch_size": 8}, "vaal": {"epochs": 1, "batch_size": 4, "image_size": 16},
        "vaal_tf": {"epochs": 1, "batch_size": 4}, "suggestive": {"epochs": 20},
        "mc_dropout": {"passes": 4}, "ll_rd": {"rd": {"epochs": 1, "batch_size": 8}}}


def _params(name: str) -> dict:
    base = name[: -len("_rss")] if name.endswith("_rss") else name
    params = dict(FAST.get(base, {}))
    if name.endswith("_rss"):
        params["rss_subset"] = 8
    return params


@pytest.fixture(scope="module")
def seg_pool(tmp_path_factory):
    root = write_fixture(tmp_path_factory.mktemp("cityscapes"), per_city=8, val_per_city=1, height=16, width=32)
    data = DataConfig(name="cityscapes", root=str(root), image_size=16)
    ds = get_dataset(data)
    pool = ds.sample_ids("train")
    labeled = np.sort(pool[::4])  # 4 of 16
    return data, ds, pool, labeled


def _run_strategy(name: str, params: dict, seg_pool, ckpt_root: Path, k: int = 3):
    """The cycle loop's steps for one strategy, in this process: returns (ids, scores, batch)."""
    data, ds, pool, labeled = seg_pool
    acq = AcquisitionConfig(strategy=name, params=params)
    strategy = build_strategy(acq, seed=0, cycle=0)
    train = TrainConfig(model="seg_small", epochs=1, batch_size=4, optimizer="adam", lr=5e-4)
    model, stats = fit_task_model(ds, labeled, None, train, seed=0, device=torch.device("cpu"),
                                  head_factory=strategy.task_head)
    ckpt = save_checkpoint(model, ckpt_root / name, {"cycle": 0}, head=stats.head) / "model.pt"
    cfg = ExperimentConfig(name="t", data=data, train=train, acquisition=acq, scale=ScaleConfig(num_workers=0),
                           metric="miou")
    batch = {"sample_id": pool, "labeled": np.isin(pool, labeled)}
    if strategy.needs:
        predictor = PoolPredictor(data.to_dict(), "seg_small", 19, 3, str(ckpt), acquisition=acq.to_dict(),
                                  **strategy.predictor_options())
        batch = predictor(batch)
    ctx = FitContext(features=batch, num_labeled=labeled.size, cycle=0, device=torch.device("cpu"), config=cfg,
                     labeled_ids=labeled, pool_ids=np.sort(pool), labeled_labels=None)
    if strategy.trains:
        strategy.fit(ctx)
    ids, scores, _ = strategy.select(ctx, k)
    return ids, np.asarray(scores), batch, model


@pytest.mark.parametrize("name", strategy_names())
def test_every_strategy_selects_on_a_segmentation_pool(name, seg_pool, tmp_path):
    _, _, pool, labeled = seg_pool
    ids, scores, batch, _ = _run_strategy(name, _params(name), seg_pool, tmp_path)
    assert ids.size == 3 and np.unique(ids).size == 3
    assert np.isin(ids, np.setdiff1d(pool, labeled)).all(), "selected a labeled or unknown id"
    assert np.isfinite(scores).all()
    # Pixel maps never leave the predictor: one row of per-image values per sample.
    for key, value in batch.items():
        assert np.asarray(value).shape[0] == pool.size and np.asarray(value).ndim <= 2, key


def test_entropy_scores_the_mean_pixel_entropy(seg_pool, tmp_path):
    data, ds, pool, labeled = seg_pool
    ids, scores, batch, model = _run_strategy("entropy", {}, seg_pool, tmp_path, k=4)
    with torch.no_grad():
        probs = torch.softmax(model.eval()(ds.images("train", pool)), dim=1).numpy()
    h = predictive_entropy(probs)  # [n, C, H, W]: per-pixel entropy, averaged per image
    np.testing.assert_allclose(batch["entropy"], h, rtol=1e-5)
    np.testing.assert_allclose(batch["probs"], probs.reshape(pool.size, 19, -1).mean(2), rtol=1e-5, atol=1e-7)
    unl = ~np.isin(pool, labeled)
    order = np.lexsort((pool[unl], -h[unl]))[:4]
    np.testing.assert_array_equal(ids, pool[unl][order])
    # MC dropout with dropout off is the same score; with dropout on, the passes differ.
    mc_ids, mc_scores, mc_batch, _ = _run_strategy("mc_dropout", {"passes": 3, "dropout": 0.0}, seg_pool,
                                                   tmp_path / "mc0", k=4)
    np.testing.assert_allclose(mc_batch["entropy"], batch["entropy"], rtol=1e-6)
    np.testing.assert_array_equal(mc_ids, ids)
    _, _, mc_on, _ = _run_strategy("mc_dropout", {"passes": 3, "dropout": 0.5}, seg_pool, tmp_path / "mc1", k=4)
    assert not np.allclose(mc_on["entropy"], batch["entropy"])


def test_suggestive_fits_class_compositions_of_labeled_masks(seg_pool, tmp_path, monkeypatch):
    seen = {}
    real = suggestive.fit_bootstrap_heads

    def spy(x, y, num_classes, *args, **kwargs):
        seen["y"], seen["num_classes"] = y, num_classes
        return real(x, y, num_classes, *args, **kwargs)

    monkeypatch.setattr(suggestive, "fit_bootstrap_heads", spy)
    _, ds, _, labeled = seg_pool
    _run_strategy("suggestive", {"epochs": 5}, seg_pool, tmp_path)
    assert seen["num_classes"] == 19
    np.testing.assert_allclose(seen["y"], ds.class_frequencies("train", labeled))


# --------------------------------------------------------------------------- job + real loop
def _load_job():
    spec = importlib.util.spec_from_file_location("job_cityscapes", ROOT / "jobs" / "cityscapes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_job_runs_the_paper_protocol(tmp_path):
    job = _load_job()
    root = write_fixture(tmp_path, per_city=20, val_per_city=1)
    args = job.parse_args(["--data-root", str(root), "--strategy", "daal,vaal", "--budget", "30,75"])
    configs = configs_from_args(args, dataset="cityscapes", strategy_params=job.strategy_params(args))
    assert len(configs) == 3 * 2 * 2
    for c in configs:
        assert c.metric == "miou" and c.data.image_size == 256 and c.scale.inference_batch_size == 16
        assert (c.train.model, c.train.optimizer, c.train.lr, c.train.epochs) == ("drn_a_18", "adam", 5e-4, 50)
        assert c.budget in (30, 75)
    assert {c.acquisition.params.get("epochs") for c in configs if c.acquisition.strategy == "daal"} == {100}
    smoke = job.parse_args(["--smoke-test", "--data-root", str(root)])
    assert (smoke.strategies, smoke.model, smoke.image_size) == ("daal", "seg_small", 32)
    assert (smoke.seeds, smoke.epochs, smoke.daal_epochs) == (1, 1, 1)
    assert (smoke.inference_compute, smoke.concurrency, smoke.final_fraction) == ("tasks", 1, 0.15)
    given = job.parse_args(["--smoke-test", "--strategy", "entropy", "--image-size", "16"])
    assert (given.strategies, given.image_size) == ("entropy", 16)  # flags given win over the smoke settings
    assert get_dataset_class("cityscapes").default_train().lr == 5e-4
