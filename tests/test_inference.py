"""Sparse inference (CSR kernels) and the models the benchmarks use."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dynprune_lib import (
    MLP,
    DynamicCNN,
    DynamicConv2d,
    DynamicLinear,
    WideResNet,
    densify,
    inference,
    to_sparse_inference,
)
from dynprune_lib.inference import LayerChoice, SparseConv2d, SparseLinear
from dynprune_lib.models import _WideBasic

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
ALWAYS_SPARSE = dict(margin=math.inf, repeats=1)  # timing still runs, the sparse kernel always wins


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return a.shape == b.shape and bool((a - b).abs().max() <= tol * max(1.0, b.abs().max().item()))


# --------------------------------------------------------------------------- layers


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_linear_matches_dense(batch, bias):
    torch.manual_seed(0)
    layer = DynamicLinear(40, 24, initial_sparsity=0.8, bias=bias).eval()
    sparse = SparseLinear.from_dense(layer)
    with torch.no_grad():
        for shape in [(batch, 40), (batch, 3, 40)]:
            x = torch.randn(shape)
            assert close(sparse(x), layer(x))


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    channels=st.integers(1, 5),
    out_channels=st.integers(1, 6),
    size=st.integers(9, 13),  # at least the largest dilated kernel
    kernel=st.sampled_from([1, 2, 3, (3, 1), (2, 5)]),
    stride=st.sampled_from([1, 2, (1, 2)]),
    padding=st.sampled_from([0, 1, (2, 0)]),
    dilation=st.sampled_from([1, 2]),
    bias=st.booleans(),
    sparsity=st.sampled_from([0.0, 0.5, 0.95]),
)
def test_sparse_conv_matches_conv2d(
    batch, channels, out_channels, size, kernel, stride, padding, dilation, bias, sparsity
):
    conv = DynamicConv2d(
        channels, out_channels, kernel, stride, padding, dilation, bias=bias, initial_sparsity=sparsity
    )
    x = torch.randn(batch, channels, size, size + 1)
    with torch.no_grad():
        assert close(SparseConv2d.from_dense(conv)(x), conv(x))


def test_sparse_conv_rejects_what_it_cannot_compute():
    with pytest.raises(ValueError):
        SparseConv2d(DynamicConv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError):
        SparseConv2d(DynamicConv2d(4, 4, 3, padding="same"))


# --------------------------------------------------------------------------- whole models


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    """Small sparse models with BatchNorm statistics; tests must not modify them."""
    torch.manual_seed(0)
    mlp = MLP(in_features=3 * 8 * 8, hidden=(64, 32), sparsity=0.9)
    cnn = DynamicCNN(widths=(8, 16), sparsity=0.9)
    wrn = WideResNet(depth=10, widen_factor=1, sparse=True, sparsity=0.9)
    for model in (cnn, wrn):  # non-trivial BatchNorm statistics
        model.train()
        with torch.no_grad():
            model(torch.randn(8, 3, 8, 8))
    return {"mlp": mlp.eval(), "cnn": cnn.eval(), "wrn": wrn.eval()}


@pytest.mark.parametrize("name", ["mlp", "cnn", "wrn"])
@pytest.mark.parametrize("batch", [1, 4])
def test_converted_model_matches_dense(models, name, batch):
    model = models[name]
    x = torch.randn(batch, 3, 8, 8)
    report: list[LayerChoice] = []
    converted = to_sparse_inference(model, x, report=report, **ALWAYS_SPARSE)
    with torch.no_grad():
        assert close(converted(x), model(x))
    n_sparse = sum(1 for m in model.modules() if getattr(m, "mask", None) is not None)
    assert len(report) == n_sparse and all(choice.sparse for choice in report)
    kinds = [type(m) for m in converted.modules()]
    assert kinds.count(SparseLinear) + kinds.count(SparseConv2d) == n_sparse
    assert not any(isinstance(m, (DynamicLinear, DynamicConv2d)) for m in converted.modules())
    assert not converted.training
    assert any(isinstance(m, (DynamicLinear, DynamicConv2d)) for m in model.modules())  # original untouched


def test_timing_decides_per_layer(models, monkeypatch):
    model = models["mlp"]
    x = torch.randn(1, 3, 8, 8)
    for dense_time, sparse_time, expect_sparse in [(1.0, 0.5, True), (1.0, 0.97, False), (1.0, 2.0, False)]:
        monkeypatch.setattr(
            inference, "time_interleaved", lambda fns, d=dense_time, s=sparse_time, **_: {"dense": [d], "sparse": [s]}
        )
        report: list[LayerChoice] = []
        converted = to_sparse_inference(model, x, report=report)
        assert [choice.sparse for choice in report] == [expect_sparse] * 3
        sparse_layers = [m for m in converted.modules() if isinstance(m, SparseLinear)]
        dense_layers = [m for m in converted.modules() if type(m) is nn.Linear]
        assert len(sparse_layers if expect_sparse else dense_layers) == 3
        with torch.no_grad():
            assert close(converted(x), model(x))


def test_density_rule_without_example_input():
    torch.manual_seed(0)
    model = nn.Sequential(
        DynamicLinear(100, 100, initial_sparsity=0.99),  # density 0.01: sparse
        DynamicLinear(100, 100, initial_sparsity=0.1),  # density 0.9: dense
    )
    report: list[LayerChoice] = []
    converted = to_sparse_inference(model, report=report)
    assert [c.sparse for c in report] == [True, False] and report[0].dense_seconds is None
    assert isinstance(converted[0], SparseLinear) and type(converted[1]) is nn.Linear
    x = torch.randn(3, 100)
    with torch.no_grad():
        assert close(converted(x), model(x))


def test_unsupported_layers_stay_dense():
    model = nn.Sequential(DynamicConv2d(4, 4, 3, groups=2, initial_sparsity=0.9), nn.Flatten())
    converted = to_sparse_inference(model, torch.randn(1, 4, 6, 6), **ALWAYS_SPARSE)
    assert isinstance(converted[0], DynamicConv2d)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda(models):
    model = copy.deepcopy(models["cnn"]).cuda()
    x = torch.randn(2, 3, 8, 8, device="cuda")
    converted = to_sparse_inference(model, x, **ALWAYS_SPARSE)
    with torch.no_grad():
        assert close(converted(x), model(x))


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize(
    "depth, width, published",  # millions, as printed in Zagoruyko & Komodakis (2016)
    [(28, 10, "36.5"), (28, 2, "1.47"), (16, 4, "2.7"), (16, 8, "11.0"), (40, 4, "8.9")],
)
def test_wide_resnet_parameter_counts(depth, width, published):
    count = sum(p.numel() for p in WideResNet(depth, width).parameters())
    decimals = len(published.split(".")[1])
    assert f"{count / 1e6:.{decimals}f}" == published


def test_wide_resnet_reference_counts_exact():
    assert sum(p.numel() for p in WideResNet(28, 2).parameters()) == 1_467_610
    assert sum(p.numel() for p in WideResNet(28, 2, sparse=True, sparsity=0.5).parameters()) == 1_467_610


@pytest.mark.parametrize("in_planes, planes, stride", [(8, 8, 1), (8, 16, 2)])
def test_wide_resnet_block_is_pre_activation_residual(in_planes, planes, stride):
    """With its 3x3 convolutions zeroed a block is its shortcut: x, or conv1x1(relu(bn1(x)))."""
    torch.manual_seed(0)
    block = _WideBasic(in_planes, planes, stride, 0.0, lambda cin, cout, s: nn.Conv2d(cin, cout, 3, s, padding=1))
    block.train()
    x = torch.randn(4, in_planes, 8, 8)
    block(x)  # BatchNorm statistics
    block.eval()
    with torch.no_grad():
        block.conv1.weight.zero_(), block.conv1.bias.zero_(), block.conv2.weight.zero_(), block.conv2.bias.zero_()
        expected = x if block.shortcut is None else block.shortcut(torch.relu(block.bn1(x)))
        assert torch.equal(block(x), expected)
        block.conv2.bias.fill_(1.0)
        assert torch.equal(block(x), expected + 1.0)


def test_sparse_wide_resnet_masks_only_block_convolutions():
    torch.manual_seed(0)
    model = WideResNet(16, 2, sparse=True, sparsity=0.8)
    masked = {name for name, m in model.named_modules() if getattr(m, "mask", None) is not None}
    assert masked == {f"blocks.{b}.conv{i}" for b in range(6) for i in (1, 2)}
    conv = model.blocks[3].conv2
    assert abs(conv.mask_sparsity - 0.8) < 0.01 and torch.equal(conv.weight == 0, ~conv.mask)
    with pytest.raises(ValueError):
        WideResNet(15, 2)
    with pytest.raises(ValueError):
        WideResNet(16, 2, sparsity=0.5)  # sparsity needs sparse=True


def test_mlp_and_dynamic_cnn():
    mlp = MLP(sparsity=0.9)
    layers = [m for m in mlp.modules() if isinstance(m, DynamicLinear)]
    assert [m.weight.shape[1] for m in layers] == [3072, 1024, 512]
    assert all(abs(m.mask_sparsity - 0.9) < 0.01 for m in layers)
    ends = MLP(sparsity=0.9, dense_first_last=True)
    assert [m.mask is None for m in ends.modules() if isinstance(m, DynamicLinear)] == [True, False, True]
    assert mlp(torch.randn(2, 3, 32, 32)).shape == (2, 10)

    cnn = DynamicCNN(sparsity=0.95)
    assert sum(p.numel() for p in cnn.parameters()) == 1_148_874
    sparse = [m for m in cnn.modules() if isinstance(m, DynamicConv2d)]
    assert len(sparse) == 5 and all(abs(m.mask_sparsity - 0.95) < 0.01 for m in sparse)
    assert type(cnn.features[0]) is nn.Conv2d and type(cnn.classifier[-1]) is nn.Linear
    assert cnn.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_all_dense_choice_equals_densify(models):
    """With every layer left dense the result is the benchmark's dense reference (densify)."""
    model = models["cnn"]
    x = torch.randn(2, 3, 8, 8)
    dense = densify(copy.deepcopy(model)).eval()
    converted = to_sparse_inference(model, x, margin=0.0, repeats=1)  # never sparse
    with torch.no_grad():
        assert torch.equal(converted(x), dense(x))
        assert close(F.softmax(converted(x), 1), F.softmax(model(x), 1))
