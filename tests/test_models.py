"""Task models: registry, forward_features shapes, WRN-28-2 architecture."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from daal_ray.errors import ConfigError, DataError
from daal_ray.models import TaskModel, build_model, check_model_name, model_descriptions, model_names
from daal_ray.models.small import GridPool
from daal_ray.models.wrn import WideResNet, _Block
from daal_ray.training import load_checkpoint_meta, load_state_dict, save_checkpoint, train_one_epoch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_registry():
    assert {"small_cnn", "wrn28_2"} <= set(model_names())
    assert set(model_descriptions()) == set(model_names())
    check_model_name("small_cnn")


def test_unknown_model_refused():
    with pytest.raises(ConfigError) as ei:
        build_model("resnet9000", num_classes=10, in_channels=3)
    msg = str(ei.value)
    assert "'resnet9000'" in msg
    for name in model_names():
        assert name in msg
    with pytest.raises(ConfigError):
        check_model_name("")


@pytest.mark.parametrize("in_channels,side,classes", [(1, 8, 10), (3, 32, 10), (3, 13, 4)])
def test_small_cnn_shapes(in_channels, side, classes):
    m = build_model("small_cnn", num_classes=classes, in_channels=in_channels).eval()
    assert isinstance(m, TaskModel)
    x = torch.randn(3, in_channels, side, side)
    with torch.no_grad():
        f, logits = m.forward_features(x)
        out = m(x)
    assert tuple(f.shape) == (3, m.feature_dim) and m.feature_dim == 128
    assert tuple(logits.shape) == (3, classes)
    torch.testing.assert_close(out, logits)
    assert torch.isfinite(f).all() and torch.isfinite(logits).all()


@pytest.fixture(scope="module")
def wrn():
    torch.manual_seed(0)
    return build_model("wrn28_2", num_classes=10, in_channels=3)


@pytest.mark.parametrize("side", [8, 32, 10])
def test_grid_pool_equals_adaptive_pooling_bit_for_bit(side):
    """small_cnn's pooling gives adaptive_avg_pool2d's values and gradients exactly, on maps
    the grid divides (the fast path: digits' 8 x 8, CIFAR's 32 x 32) and on one it does not."""
    torch.manual_seed(0)
    x = torch.randn(5, 3, side, side, requires_grad=True)
    grad = torch.randn(5, 3, 4, 4)
    want = nn.AdaptiveAvgPool2d(4)(x)
    got = GridPool(4)(x)
    assert torch.equal(got, want)
    (want_grad,) = torch.autograd.grad(want, x, grad)
    (got_grad,) = torch.autograd.grad(got, x, grad)
    assert torch.equal(got_grad, want_grad)


def test_wrn_shapes(wrn):
    m = wrn.eval()
    assert isinstance(m, WideResNet)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        f, logits = m.forward_features(x)
        out = m(x)
    assert tuple(f.shape) == (2, 128) and m.feature_dim == 128
    assert tuple(logits.shape) == (2, 10)
    torch.testing.assert_close(out, logits)


def test_wrn_other_input_size_and_channels():
    m = build_model("wrn28_2", num_classes=3, in_channels=1).eval()
    with torch.no_grad():
        f, logits = m.forward_features(torch.randn(2, 1, 12, 12))
    assert tuple(f.shape) == (2, 128) and tuple(logits.shape) == (2, 3)


def test_wrn28_2_structure(wrn):
    blocks = list(wrn.blocks)
    assert wrn.depth == 28 and wrn.widen_factor == 2
    assert len(blocks) == 12 and all(isinstance(b, _Block) for b in blocks)
    widths = [b.conv2.out_channels for b in blocks]
    assert widths == [32] * 4 + [64] * 4 + [128] * 4
    assert wrn.conv.out_channels == 16
    strides = [b.conv1.stride[0] for b in blocks]
    assert strides == [2 if i in (4, 8) else 1 for i in range(12)]
    # 1 stem conv + 12 blocks x 2 3x3 convs; 1x1 projections only where the shape changes.
    convs3 = [m for m in wrn.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    convs1 = [m for m in wrn.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert len(convs3) == 25
    assert len(convs1) == 3
    assert [i for i, b in enumerate(blocks) if b.shortcut is not None] == [0, 4, 8]
    assert sum(isinstance(m, nn.Linear) for m in wrn.modules()) == 1
    assert wrn.fc.in_features == 128


def test_wrn28_2_parameter_count(wrn):
    n = sum(p.numel() for p in wrn.parameters())
    assert abs(n - 1.47e6) / 1.47e6 < 0.05


def test_wrn_spatial_downsampling(wrn):
    seen = {}

    def hook(mod, inp, out):
        seen["shape"] = tuple(out.shape)

    handle = wrn.blocks[-1].register_forward_hook(hook)
    try:
        with torch.no_grad():
            wrn.eval()(torch.randn(1, 3, 32, 32))
    finally:
        handle.remove()
    assert seen["shape"] == (1, 128, 8, 8)


def test_wrn_rejects_bad_depth():
    with pytest.raises(ValueError, match="6n"):
        WideResNet(num_classes=10, depth=27)


def test_models_train_a_step():
    # Gradients reach the first layer of both models.
    for name in ("small_cnn", "wrn28_2"):
        m = build_model(name, num_classes=5, in_channels=3).train()
        loss = nn.functional.cross_entropy(m(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3]))
        loss.backward()
        first = next(p for p in m.parameters() if p.dim() == 4)
        assert first.grad is not None and first.grad.abs().sum() > 0


class _Payload:
    """Stands for arbitrary code a tampered checkpoint could carry."""


def test_checkpoints_are_tensor_state_dicts_and_pickled_objects_are_refused(tmp_path):
    import torch


    model = build_model("small_cnn", num_classes=3, in_channels=1)
    save_checkpoint(model, tmp_path / "ok", {"cycle": 0})
    state = load_state_dict(tmp_path / "ok" / "model.pt")
    assert set(state) == set(model.state_dict()) and all(isinstance(v, torch.Tensor) for v in state.values())
    assert load_checkpoint_meta(tmp_path / "ok") == {"cycle": 0}
    bad = tmp_path / "bad.pt"
    torch.save({"weight": torch.zeros(2), "extra": _Payload()}, bad)
    with pytest.raises(DataError, match="holds more than tensors"):
        load_state_dict(bad)


def test_a_batch_of_only_void_pixels_trains_to_a_zero_loss_not_nan():
    """The plain training step averages over non-void targets: all-void gives 0 and finite weights,
    and otherwise it equals the usual mean cross-entropy."""
    from torch.utils.data import DataLoader, TensorDataset


    torch.manual_seed(0)
    model = build_model("seg_small", num_classes=19, in_channels=3)
    x = torch.randn(2, 3, 16, 32)
    void = torch.full((2, 16, 32), 255, dtype=torch.int64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss, steps = train_one_epoch(model, DataLoader(TensorDataset(x, void), batch_size=2), opt, torch.device("cpu"))
    assert steps == 1 and loss == 0.0
    assert all(torch.isfinite(p).all() for p in model.parameters())
    y = torch.randint(0, 19, (2, 16, 32))
    y[0, :8] = 255
    with torch.no_grad():
        expected = float(torch.nn.functional.cross_entropy(model(x), y, ignore_index=255))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    loss, _ = train_one_epoch(model, DataLoader(TensorDataset(x, y), batch_size=2), opt, torch.device("cpu"))
    assert loss == pytest.approx(expected, rel=1e-5)
