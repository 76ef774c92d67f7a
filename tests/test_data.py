"""Datasets: digits split, imagefolder ids and errors, CIFAR layout and its safe unpickler."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from daal_ray.config import DataConfig
from daal_ray.data import dataset_names, get_dataset, get_dataset_class
from daal_ray.errors import ConfigError, DataError


def test_registry():
    assert {"digits", "imagefolder", "cifar10", "cifar100"} <= set(dataset_names())
    with pytest.raises(ConfigError, match="registered datasets"):
        get_dataset(DataConfig(name="mnist-typo"))
    assert get_dataset_class("digits").num_classes == 10


# =========================================================================== digits
@pytest.fixture(scope="module")
def digits():
    return get_dataset(DataConfig(name="digits", split_seed=0, test_fraction=0.2))


@pytest.fixture(scope="module")
def sk_digits():
    from sklearn.datasets import load_digits

    return load_digits()


def test_digits_split_sizes_and_disjoint(digits):
    tr, te = digits.sample_ids("train"), digits.sample_ids("test")
    assert tr.size + te.size == 1797
    assert np.intersect1d(tr, te).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, te])), np.arange(1797))
    assert abs(te.size - 0.2 * 1797) <= 10


def test_digits_ids_int64_unique(digits):
    for split in ("train", "test"):
        ids = digits.sample_ids(split)
        assert ids.dtype == np.int64
        assert np.unique(ids).size == ids.size


def test_digits_split_is_stratified(digits):
    tr, te = digits.sample_ids("train"), digits.sample_ids("test")
    ytr, yte = digits.targets("train", tr), digits.targets("test", te)
    for c in range(10):
        frac = (yte == c).sum() / ((yte == c).sum() + (ytr == c).sum())
        assert abs(frac - 0.2) < 0.01


def test_digits_same_seed_same_split(digits):
    again = get_dataset(DataConfig(name="digits", split_seed=0, test_fraction=0.2))
    np.testing.assert_array_equal(again.sample_ids("train"), digits.sample_ids("train"))
    np.testing.assert_array_equal(again.sample_ids("test"), digits.sample_ids("test"))


def test_digits_other_seed_other_split(digits):
    other = get_dataset(DataConfig(name="digits", split_seed=1, test_fraction=0.2))
    assert not np.array_equal(other.sample_ids("test"), digits.sample_ids("test"))
    assert other.sample_ids("test").size == digits.sample_ids("test").size


def test_digits_test_fraction_respected():
    d = get_dataset(DataConfig(name="digits", test_fraction=0.5))
    assert abs(d.sample_ids("test").size - 1797 / 2) <= 10


def test_digits_images_and_targets(digits, sk_digits):
    ids = digits.sample_ids("train")[:37]
    x = digits.images("train", ids)
    assert isinstance(x, torch.Tensor)
    assert x.dtype == torch.float32 and tuple(x.shape) == (37, 1, 8, 8)
    y = digits.targets("train", ids)
    assert y.dtype == np.int64
    assert ((y >= 0) & (y < 10)).all()
    # ids are rows of scikit-learn's order: images and targets follow them.
    np.testing.assert_array_equal(y, sk_digits.target[ids])
    raw = x.numpy()[:, 0] * 0.378 + 0.305
    np.testing.assert_allclose(raw, sk_digits.images[ids] / 16.0, atol=1e-5)


def test_digits_all_targets_in_range(digits):
    for split in ("train", "test"):
        y = digits.targets(split, digits.sample_ids(split))
        assert ((y >= 0) & (y < 10)).all()
        assert np.unique(y).size == 10


def test_digits_rows_follow_id_order(digits):
    ids = digits.sample_ids("train")[[5, 0, 3]]
    y = digits.targets("train", ids)
    x = digits.images("train", ids)
    for i, sid in enumerate(ids):
        assert y[i] == digits.targets("train", np.array([sid]))[0]
        torch.testing.assert_close(x[i], digits.images("train", np.array([sid]))[0])


def test_digits_foreign_id_refused(digits):
    test_id = digits.sample_ids("test")[0]
    with pytest.raises(DataError, match=str(test_id)):
        digits.targets("train", np.array([test_id]))
    with pytest.raises(DataError, match="split"):
        digits.sample_ids("validation")


def test_digits_torch_dataset(digits):
    ids = digits.sample_ids("train")[:5]
    ds = digits.torch_dataset("train", ids)
    assert len(ds) == 5
    x, y = ds[2]
    assert tuple(x.shape) == (1, 8, 8) and int(y) == digits.targets("train", ids[2:3])[0]
    items = ds.__getitems__([0, 4])
    assert int(items[1][1]) == digits.targets("train", ids[4:5])[0]


# =========================================================================== imagefolder
def _png(path, color, size=(10, 12)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _tree(root):
    for split, n in (("train", 3), ("test", 2)):
        for cls, base in (("cat", (200, 10, 10)), ("dog", (10, 10, 200))):
            for i in range(n):
                _png(root / split / cls / f"{cls}{i}.png", tuple(min(255, c + 5 * i) for c in base))
    return root


def _open(root, size=16):
    return get_dataset(DataConfig(name="imagefolder", root=str(root), image_size=size))


def test_imagefolder_classes_and_counts(tmp_path):
    ds = _open(_tree(tmp_path / "imgs"))
    assert ds.classes == ["cat", "dog"]
    assert ds.num_classes == 2
    assert ds.sample_ids("train").size == 6 and ds.sample_ids("test").size == 4
    for split in ("train", "test"):
        ids = ds.sample_ids(split)
        assert ids.dtype == np.int64 and np.unique(ids).size == ids.size and (ids >= 0).all()
        y = ds.targets(split, ids)
        for path, label in zip(ds.paths(split, ids), y):
            assert ds.classes[label] == path.parent.name


def test_imagefolder_ids_stable(tmp_path):
    root = _tree(tmp_path / "imgs")
    a = _open(root)
    b = _open(root)
    for split in ("train", "test"):
        np.testing.assert_array_equal(a.sample_ids(split), b.sample_ids(split))
    # Adding a file keeps every existing id (and its file).
    _png(root / "train" / "dog" / "new.png", (0, 255, 0))
    c = _open(root)
    old, new = a.sample_ids("train"), c.sample_ids("train")
    assert new.size == old.size + 1
    assert np.isin(old, new).all()
    assert a.paths("train", old) == c.paths("train", old)
    np.testing.assert_array_equal(c.sample_ids("test"), a.sample_ids("test"))


def test_imagefolder_ids_independent_of_root_location(tmp_path):
    a = _open(_tree(tmp_path / "one"))
    b = _open(_tree(tmp_path / "two"))
    np.testing.assert_array_equal(a.sample_ids("train"), b.sample_ids("train"))


@pytest.mark.parametrize("size", [4, 16, 33])
def test_imagefolder_images_shape(tmp_path, size):
    ds = _open(_tree(tmp_path / "imgs"), size=size)
    ids = ds.sample_ids("train")
    x = ds.images("train", ids)
    assert x.dtype == torch.float32 and tuple(x.shape) == (ids.size, 3, size, size)
    assert x.min() >= -1.0 and x.max() <= 1.0
    # A red cat and a blue dog: the channel means tell them apart.
    y = ds.targets("train", ids)
    red_minus_blue = (x[:, 0] - x[:, 2]).mean(dim=(1, 2)).numpy()
    assert (red_minus_blue[y == 0] > 0.5).all() and (red_minus_blue[y == 1] < -0.5).all()


def test_imagefolder_unreadable_image(tmp_path):
    root = _tree(tmp_path / "imgs")
    bad = root / "train" / "cat" / "x.png"
    bad.write_bytes(b"this is not a png at all" * 10)
    with pytest.raises(DataError) as ei:
        _open(root)
    assert str(bad) in str(ei.value)


def test_imagefolder_ignores_non_images(tmp_path):
    root = _tree(tmp_path / "imgs")
    (root / "train" / "cat" / "notes.txt").write_text("hello")
    assert _open(root).sample_ids("train").size == 6


def test_imagefolder_missing_root(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="nowhere"):
        _open(missing)
    with pytest.raises(DataError, match="data-root"):
        get_dataset(DataConfig(name="imagefolder"))


def test_imagefolder_missing_test_folder(tmp_path):
    root = tmp_path / "imgs"
    _png(root / "train" / "cat" / "a.png", (1, 2, 3))
    _png(root / "train" / "dog" / "b.png", (1, 2, 3))
    with pytest.raises(DataError) as ei:
        _open(root)
    assert str(root / "test") in str(ei.value)


def test_imagefolder_missing_train_folder(tmp_path):
    root = tmp_path / "imgs"
    _png(root / "test" / "cat" / "a.png", (1, 2, 3))
    with pytest.raises(DataError, match="train"):
        _open(root)


def test_imagefolder_test_class_unknown_to_train(tmp_path):
    root = _tree(tmp_path / "imgs")
    _png(root / "test" / "bird" / "a.png", (1, 2, 3))
    with pytest.raises(DataError, match="bird"):
        _open(root)


# =========================================================================== cifar10
CIFAR_TRAIN_N = (4, 3, 5, 2, 6)  # per data_batch_i
CIFAR_TEST_N = 7


def _cifar_batch(rng, n):
    return {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, size=n)],
            b"batch_label": b"fake"}


def _write_pickle(path, obj):
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def _fake_cifar10(root):
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = [_cifar_batch(rng, n) for n in CIFAR_TRAIN_N]
    for i, b in enumerate(train, start=1):
        _write_pickle(base / f"data_batch_{i}", b)
    test = _cifar_batch(rng, CIFAR_TEST_N)
    _write_pickle(base / "test_batch", test)
    return train, test


def _open_cifar(root):
    return get_dataset(DataConfig(name="cifar10", root=str(root)))


def test_cifar10_fake_layout_loads(tmp_path):
    train, test = _fake_cifar10(tmp_path)
    ds = _open_cifar(tmp_path)
    n_train = sum(CIFAR_TRAIN_N)
    np.testing.assert_array_equal(ds.sample_ids("train"), np.arange(n_train))
    np.testing.assert_array_equal(ds.sample_ids("test"), np.arange(CIFAR_TEST_N))
    # Labels in the official order: batch 1 first, row order within.
    want = np.concatenate([np.asarray(b[b"labels"]) for b in train])
    np.testing.assert_array_equal(ds.targets("train", ds.sample_ids("train")), want)
    np.testing.assert_array_equal(ds.targets("test", ds.sample_ids("test")), test[b"labels"])
    x = ds.images("train", np.arange(n_train))
    assert x.dtype == torch.float32 and tuple(x.shape) == (n_train, 3, 32, 32)
    # Pixels: rows are 1024 R, 1024 G, 1024 B bytes, row-major 32x32, then normalised.
    raw = np.concatenate([b[b"data"] for b in train]).reshape(-1, 3, 32, 32) / 255.0
    mean = np.array([0.4914, 0.4822, 0.4465]).reshape(1, 3, 1, 1)
    std = np.array([0.2470, 0.2435, 0.2616]).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(x.numpy(), (raw - mean) / std, atol=1e-5)
    assert tuple(ds.images("test", np.array([0, 6])).shape) == (2, 3, 32, 32)


def test_cifar10_missing_root(tmp_path):
    root = tmp_path / "nothing"
    with pytest.raises(DataError) as ei:
        _open_cifar(root)
    assert str(root / "cifar-10-batches-py") in str(ei.value)
    with pytest.raises(DataError, match="data-root"):
        get_dataset(DataConfig(name="cifar10"))


def test_cifar10_missing_batch_file(tmp_path):
    _fake_cifar10(tmp_path)
    missing = tmp_path / "cifar-10-batches-py" / "data_batch_4"
    missing.unlink()
    with pytest.raises(DataError) as ei:
        _open_cifar(tmp_path)
    assert str(missing) in str(ei.value)


def test_cifar10_wrong_image_size(tmp_path):
    _fake_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    _write_pickle(path, {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DataError, match="3072"):
        _open_cifar(tmp_path)


def test_cifar10_label_out_of_range(tmp_path):
    _fake_cifar10(tmp_path)
    _write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch",
                  {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})
    with pytest.raises(DataError, match="labels outside"):
        _open_cifar(tmp_path)


class _Evil:
    """Unpickling this calls os.mkdir(target) (the classic pickle code-execution trick)."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


class _Cwd:
    def __reduce__(self):
        return (os.getcwd, ())


@pytest.mark.parametrize("payload", ["mkdir", "getcwd"])
def test_cifar10_forbidden_global_refused_not_executed(tmp_path, payload):
    _fake_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    evil = _Evil(str(marker)) if payload == "mkdir" else _Cwd()
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    _write_pickle(path, {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"x": evil})
    assert (b"mkdir" if payload == "mkdir" else b"getcwd") in path.read_bytes()
    with pytest.raises(DataError) as ei:
        _open_cifar(tmp_path)
    assert str(path) in str(ei.value)
    assert "refusing" in str(ei.value)
    assert not marker.exists()


def test_cifar10_garbage_file(tmp_path):
    _fake_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_5"
    path.write_bytes(b"\x00\x01garbage")
    with pytest.raises(DataError) as ei:
        _open_cifar(tmp_path)
    assert str(path) in str(ei.value)
