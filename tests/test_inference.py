"""Sparse inference: every kernel against dense PyTorch, the graph rewrite, the per-layer choice, ONNX."""

from __future__ import annotations

import copy
import math
import os
import warnings

import numpy as np
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
    kernels,
    sparsify,
    to_sparse_inference,
)
from dynprune_lib._utils import replace_module
from dynprune_lib.inference import (
    FusedConv2d,
    FusedLinear,
    LayerChoice,
    SparseChain,
    SparseConv2d,
    SparseLinear,
    TorchSparseConv2d,
    TorchSparseLinear,
    export_onnx,
    prepare_for_inference,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta"),
    pytest.mark.usefixtures("one_thread"),
]
# timing still runs, the sparse kernel always wins, and the layers stay modules of their own
ALWAYS_SPARSE = dict(margin=math.inf, repeats=1, budget_s=0.0, chain=False)
needs_numba = pytest.mark.skipif(not kernels.available("numba"), reason="needs numba")
needs_compiled = pytest.mark.skipif(
    not kernels.available("compiled"), reason=str(kernels.unavailable_reason("compiled"))
)
#: The kernel builds this machine runs (CI builds the compiled one at set-up: test_the_compiled_kernels_are_built).
BUILDS = [b for b in kernels.BACKENDS if kernels.available(b)]
needs_kernels = pytest.mark.skipif(not BUILDS, reason="no kernel build")
each_build = pytest.mark.parametrize("build", BUILDS)


_IM2COL_TWIN = inference.choice._im2col_twin


@pytest.fixture(autouse=True)
def _no_im2col_candidate(monkeypatch):
    """The per-layer choice times sparse against dense only (ALWAYS_SPARSE then means sparse); the
    im2col candidate has a test of its own."""
    monkeypatch.setattr(inference.choice, "_im2col_twin", lambda block: None)


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return a.shape == b.shape and bool((a - b).abs().max() <= tol * max(1.0, b.abs().max().item()))


def _pruned(module: nn.Module, sparsity: float, seed: int = 0) -> nn.Module:
    """``module`` with a random ``sparsity`` of its weights set to zero (plain layer: the oracle is F.conv2d)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.weight.mul_((torch.rand(module.weight.shape, generator=g) >= sparsity).float())
    return module


# --------------------------------------------------------------------------- the Numba kernels


@needs_kernels
@settings(max_examples=120, deadline=None)
@given(
    batch=st.sampled_from([1, 3]),
    groups_channels=st.sampled_from([(1, 3, 5), (2, 4, 6), (4, 4, 4), (3, 6, 3)]),  # (groups, in, out)
    size=st.integers(9, 12),
    kernel=st.sampled_from([1, 3, (3, 1), (2, 5)]),
    stride=st.sampled_from([1, 2, (1, 2)]),
    padding=st.sampled_from([0, 1, (2, 0), "same"]),
    dilation=st.sampled_from([1, 2]),
    bias=st.booleans(),
    sparsity=st.sampled_from([0.0, 0.5, 0.95, 1.0]),
    pool=st.booleans(),
    relu=st.booleans(),
    build=st.sampled_from(BUILDS or ["numba"]),
)
def test_sparse_conv_equals_conv2d(
    batch, groups_channels, size, kernel, stride, padding, dilation, bias, sparsity, pool, relu, build
):
    groups, cin, cout = groups_channels
    if padding == "same" and stride != 1:
        stride = 1  # PyTorch defines "same" for stride 1 only
    conv = _pruned(nn.Conv2d(cin, cout, kernel, stride, padding, dilation, groups=groups, bias=bias), sparsity)
    x = torch.randn(batch, cin, size, size + 1)
    with torch.no_grad():
        expected = conv(x)
        if pool and min(expected.shape[-2:]) < 2:
            pool = False
        expected = F.max_pool2d(expected, 2) if pool else expected
        expected = F.relu(expected) if relu else expected
        assert close(SparseConv2d(conv, pool=pool, relu=relu, backend=build)(x), expected)


@each_build
def test_sparse_conv_all_zero_channels_dense_layer_and_both_layouts(build):
    conv = nn.Conv2d(8, 6, 3, padding=1)
    with torch.no_grad():
        conv.weight[2].zero_()  # an output channel with no weight: its output is its bias
    x = torch.randn(2, 8, 16, 16)
    sparse = SparseConv2d(conv, backend=build)
    with torch.no_grad():
        assert close(sparse(x), conv(x)) and sparse.nnz == 5 * 8 * 9  # fully dense otherwise
        assert torch.equal(sparse(x)[:, 2], conv.bias[2].expand(2, 16, 16))
        for size_input in (torch.randn(64, 8, 2, 2), torch.randn(1, 8, 40, 40)):
            assert close(sparse(size_input), conv(size_input))
        strided = nn.Conv2d(8, 6, 3, stride=2, padding=1)
        sparse_strided = SparseConv2d(strided, backend=build)
        assert close(sparse_strided(x), strided(x))
    # stride 1 convolves the padded input in place (the flat grid); stride 2 builds an im2col matrix
    if build == "numba":
        assert {plan.flat for plan in sparse._plans.values()} == {True}
        assert {plan.flat for plan in sparse_strided._plans.values()} == {False}
    else:
        assert sparse.native().tiling(2, 16, 16)[2] and not sparse_strided.native().tiling(2, 16, 16)[2]


@needs_numba
@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_sparse_conv_cut_into_many_tiles_equals_conv2d(monkeypatch, pool, stride):
    """Tiles of a few grid rows by a few output channels (odd heights, pooled pairs, a short last
    strip and a short last channel block) give the same outputs as one tile (the Numba tiling; the
    compiled kernels' tiling is exercised by the shapes of the property test)."""
    conv = _pruned(nn.Conv2d(6, 13, 3, stride=stride, padding=1), 0.6)
    x = torch.randn(5, 6, 23, 18)
    with torch.no_grad():
        expected = conv(x)
        expected = F.relu(F.max_pool2d(expected, 2) if pool else expected)
        whole = SparseConv2d(conv, pool=pool, relu=True, backend="numba")(x)
        monkeypatch.setattr(kernels._numba, "TILE_OUTPUTS", 1)  # the fewest grid rows a tile can hold
        monkeypatch.setattr(kernels._numba, "TILES", 64)  # and output channels split into blocks
        sparse = SparseConv2d(conv, pool=pool, relu=True, backend="numba")
        tiled = sparse(x)
    plan = next(iter(sparse._plans.values()))
    assert plan.strip == (2 if pool else 1) and plan.o_block < conv.out_channels
    assert close(tiled, expected) and torch.equal(tiled, whole)


@needs_compiled
@pytest.mark.parametrize("batch", [1, 3, 64])
def test_compiled_tiles_of_every_width_equal_conv2d(batch):
    """Rows of every length from one vector to several register tiles, with a short last tile of
    each width (1 to 8 vectors), pooled and not: the compiled kernel equals F.conv2d."""
    for width in (1, 2, 5, 8, 9, 15, 16, 17, 33):
        conv = _pruned(nn.Conv2d(5, 7, 3, padding=1), 0.5, seed=width)
        x = torch.randn(batch, 5, 6, width + 1)
        with torch.no_grad():
            for pool in (False, True):
                expected = F.max_pool2d(conv(x), 2) if pool else conv(x)
                assert close(SparseConv2d(conv, pool=pool, backend="compiled")(x), expected), (width, pool)


@each_build
@pytest.mark.parametrize("memory_format", ["nchw", "channels_last", "strided"])
def test_inputs_in_any_memory_layout_reach_the_kernel_intact(memory_format, build):
    """A dense layer's NCHW or channels_last output, or any strided view, is transposed into the
    kernels' batch-innermost layout by a blocked copy; results equal F.conv2d's."""
    conv = _pruned(nn.Conv2d(20, 8, 3, padding=1), 0.5)
    x = torch.randn(32, 20, 12, 12)  # large enough for the parallel copy (kernels.to_grid)
    if memory_format == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif memory_format == "strided":
        x = torch.randn(32, 40, 12, 12)[:, ::2]
    with torch.no_grad():
        assert close(SparseConv2d(conv, backend=build)(x), conv(x))
    if build != "numba":
        return
    padded = np.zeros((20, 15, 14, 32), dtype=np.float32)
    kernels.to_grid(x, 2, 1, padded)
    assert np.array_equal(padded[:, 2:14, 1:13], x.permute(1, 2, 3, 0).numpy())
    assert not padded[:, :2].any() and not padded[:, 14:].any() and not padded[:, :, 13:].any()


@each_build
def test_a_chain_of_sparse_layers_passes_its_layout_along(build):
    """A sparse layer returns a (B, C, H, W) view of its batch-innermost buffer; the next one reads
    it as it is, and the chain equals the dense one."""
    convs = [_pruned(nn.Conv2d(c, d, 3, padding=1), 0.7, seed=c) for c, d in ((3, 8), (8, 16), (16, 4))]
    dense = nn.Sequential(*convs)
    sparse = nn.Sequential(*(SparseConv2d(c, backend=build) for c in convs))
    x = torch.randn(6, 3, 10, 10)
    with torch.no_grad():
        out = sparse[0](x)
        assert out.permute(1, 2, 3, 0).is_contiguous()
        assert close(sparse(x), dense(x))


@needs_kernels
@settings(max_examples=60, deadline=None)
@given(
    batch=st.sampled_from([1, 2, 17, 64]),
    sparsity=st.sampled_from([0.0, 0.5, 0.9, 1.0]),
    bias=st.booleans(),
    relu=st.booleans(),
    lead=st.sampled_from([(), (3,)]),
    build=st.sampled_from(BUILDS or ["numba"]),
)
def test_sparse_linear_equals_linear(batch, sparsity, bias, relu, lead, build):
    layer = _pruned(nn.Linear(40, 24, bias=bias), sparsity)
    x = torch.randn(batch, *lead, 40)
    with torch.no_grad():
        expected = F.relu(layer(x)) if relu else layer(x)
        assert close(SparseLinear(layer, relu=relu, backend=build)(x), expected)


@each_build
def test_the_twin_of_a_dynamic_layer_computes_its_masked_weight(build):
    conv = DynamicConv2d(4, 6, 3, padding=1, initial_sparsity=0.8)
    linear = DynamicLinear(12, 5, initial_sparsity=0.8)
    x, v = torch.randn(2, 4, 7, 7), torch.randn(3, 12)
    sparse_conv, sparse_linear = (
        SparseConv2d.from_dense(conv, backend=build),
        SparseLinear.from_dense(linear, backend=build),
    )
    assert sparse_conv.nnz == int(conv.mask.sum()) and sparse_linear.nnz == int(linear.mask.sum())
    with torch.no_grad():
        assert close(sparse_conv(x), conv(x)) and close(sparse_linear(v), linear(v))


@each_build
def test_a_diagonal_layer_is_not_taken_for_a_dense_one(build):
    """One weight per row, as many weights as rows: the rows' offsets differ, so the dense layers'
    grouped tiles (which share one row's offsets) must not run."""
    layer = nn.Linear(40, 40)
    with torch.no_grad():
        layer.weight.copy_(torch.diag(torch.randn(40)))
    x = torch.randn(5, 40)
    with torch.no_grad():
        assert close(SparseLinear(layer, backend=build)(x), layer(x))


@each_build
def test_kernels_reject_inputs_they_cannot_compute(build):
    conv, linear = SparseConv2d(nn.Conv2d(4, 4, 3), backend=build), SparseLinear(nn.Linear(6, 2), backend=build)
    with pytest.raises(TypeError, match="float32"):
        conv(torch.randn(1, 4, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="4 on axis 1"):
        conv(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        conv(torch.randn(1, 4, 2, 2))
    with pytest.raises(ValueError, match="6 on axis -1"):
        linear(torch.randn(2, 5))
    with pytest.raises(TypeError, match="float32"):
        linear(torch.ones(2, 6, dtype=torch.int64))
    with pytest.raises(ValueError, match="zero padding"):
        SparseConv2d(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"))


@each_build
def test_kernels_give_the_same_numbers_on_one_and_two_threads(build):
    conv = _pruned(nn.Conv2d(16, 32, 3, padding=1), 0.9)
    x = torch.randn(8, 16, 16, 16)
    sparse = SparseConv2d(conv, pool=True, relu=True, backend=build)
    one = sparse(x)
    torch.set_num_threads(2)
    assert torch.equal(sparse(x), one)  # rows are independent: threads never split a sum


def test_torch_sparse_fallback_layers_equal_dense():
    conv = _pruned(nn.Conv2d(3, 5, 3, padding=1), 0.8)
    linear = _pruned(nn.Linear(12, 7), 0.8)
    x, v = torch.randn(2, 3, 8, 8), torch.randn(3, 12)
    with torch.no_grad():
        assert close(TorchSparseConv2d(conv, pool=True, relu=True)(x), F.relu(F.max_pool2d(conv(x), 2)))
        assert close(TorchSparseLinear(linear, relu=True)(v), F.relu(linear(v)))
        assert close(TorchSparseLinear(linear)(v[:1]), linear(v[:1]))


# --------------------------------------------------------------------------- the graph rewrite


def _with_bn_statistics(model: nn.Module, shape=(8, 3, 8, 8)) -> nn.Module:
    model.train()
    with torch.no_grad():
        model(torch.randn(shape))
    return model.eval()


def test_prepare_folds_batchnorm_and_fuses_pool_and_relu():
    torch.manual_seed(0)
    model = _with_bn_statistics(DynamicCNN(widths=(8, 16), sparsity=0.9, convs_per_stage=1, pool_before_norm=True))
    prepared, notes = prepare_for_inference(model)
    blocks = [m for m in prepared.modules() if isinstance(m, FusedConv2d)]
    assert [(b.pool, b.relu) for b in blocks] == [(True, True), (True, True)]  # conv-pool-BN-ReLU in one block
    assert not any(isinstance(m, nn.BatchNorm2d) for m in prepared.modules())
    assert not any(isinstance(m, (DynamicConv2d, DynamicLinear)) for m in prepared.modules())
    assert sum("BatchNorm, max pool, ReLU" in n for n in notes) == 2
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert close(prepared(x), model(x))


def test_batchnorm_with_a_negative_scale_is_not_folded_across_a_pool():
    torch.manual_seed(0)
    model = _with_bn_statistics(DynamicCNN(widths=(8,), sparsity=0.5, convs_per_stage=1, pool_before_norm=True))
    with torch.no_grad():
        model.features[2].weight[3] = -1.0  # max pool and this channel's affine map no longer commute
    prepared, _ = prepare_for_inference(model)
    assert any(isinstance(m, nn.BatchNorm2d) for m in prepared.modules())
    assert [(b.pool, b.relu) for b in prepared.modules() if isinstance(b, FusedConv2d)] == [(True, False)]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert close(prepared(x), model(x))


def test_an_untraceable_model_is_converted_layer_by_layer_and_says_so():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = DynamicLinear(8, 4, initial_sparsity=0.9)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)  # data-dependent: fx cannot trace it

    model = Branchy().eval()
    with pytest.warns(RuntimeWarning, match="torch.fx could not trace"):
        converted = to_sparse_inference(model, torch.ones(2, 8), **ALWAYS_SPARSE)
    for x in (torch.ones(2, 8), -torch.ones(2, 8)):
        with torch.no_grad():
            assert close(converted(x), model(x))


@each_build
@pytest.mark.parametrize("channels_last", [False, True])
def test_a_dense_block_writes_the_layout_of_the_sparse_layer_after_it(channels_last, build):
    """A pooled dense block whose only consumer is a sparse convolution pools straight into that
    layer's batch-innermost layout (kernels.pool_to_grid); with a dense consumer it does not."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(), _pruned(nn.Conv2d(8, 16, 3, padding=1), 0.8)
    ).eval()
    prepared, _ = prepare_for_inference(model)
    x = torch.randn(16, 3, 10, 10)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        inference.choice._link_grid_outputs(prepared)
        block = prepared.get_submodule("0")
        assert block.pool and not block.grid_output  # its consumer is still dense
        replace_module(prepared, "3", SparseConv2d(prepared.get_submodule("3").conv, backend=build))
        inference.choice._link_grid_outputs(prepared)
        assert block.grid_output
        assert block(x).permute(1, 2, 3, 0).is_contiguous()  # what the sparse layer copies as it is
        assert close(prepared(x), model(x))


# --------------------------------------------------------------------------- whole models


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    """Small sparse models with BatchNorm statistics; tests must not modify them."""
    torch.manual_seed(0)
    mlp = MLP(in_features=3 * 8 * 8, hidden=(64, 32), sparsity=0.9)
    cnn = DynamicCNN(widths=(8, 16), sparsity=0.9)
    wrn = WideResNet(depth=10, widen_factor=1, sparse=True, sparsity=0.9)
    for model in (cnn, wrn):  # non-trivial BatchNorm statistics
        _with_bn_statistics(model)
    return {"mlp": mlp.eval(), "cnn": cnn.eval(), "wrn": wrn.eval()}


@each_build
@pytest.mark.parametrize("name", ["mlp", "cnn", "wrn"])
@pytest.mark.parametrize("batch", [1, 4])
def test_converted_model_matches_dense(models, name, batch, build):
    model = models[name]
    x = torch.randn(batch, 3, 8, 8)
    report: list[LayerChoice] = []
    converted = to_sparse_inference(model, x, report=report, backend=build, **ALWAYS_SPARSE)
    with torch.no_grad():
        assert close(converted(x), model(x))
    n_layers = sum(1 for m in densify(copy.deepcopy(model)).modules() if type(m) in (nn.Conv2d, nn.Linear))
    assert len(report) == n_layers and all(c.sparse and c.backend == build for c in report)
    kinds = [type(m) for m in converted.modules()]
    assert kinds.count(SparseLinear) + kinds.count(SparseConv2d) == n_layers
    assert not any(isinstance(m, (DynamicLinear, DynamicConv2d)) for m in converted.modules())
    assert not converted.training
    assert any(isinstance(m, (DynamicLinear, DynamicConv2d)) for m in model.modules())  # original untouched


@each_build
@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_torchvision_models_sparsified_and_converted_equal_the_dense_ones(arch, build):
    import torchvision

    torch.manual_seed(0)
    model = sparsify(getattr(torchvision.models, arch)(num_classes=10), 0.9, include="*")
    _with_bn_statistics(model, (4, 3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    report: list[LayerChoice] = []
    converted = to_sparse_inference(model, x, report=report, backend=build, **ALWAYS_SPARSE)
    with torch.no_grad():
        assert close(converted(x), model(x))
    assert all(c.backend == build for c in report)
    if arch == "mobilenet_v2":  # depthwise convolutions ran on the sparse kernel too
        assert any(m.groups > 1 for m in converted.modules() if isinstance(m, SparseConv2d))


@needs_compiled
@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("batch", [1, 5])
def test_a_straight_network_runs_as_one_compiled_call_and_equals_the_dense_one(models, name, batch, monkeypatch):
    """DynamicCNN and MLP are straight chains: the whole network becomes one SparseChain (its dense
    first convolution included) when that measures faster, and the report says so per layer."""
    model = models[name]
    x = torch.randn(batch, 3, 8, 8)
    prepared, _ = prepare_for_inference(model)
    steps, why = inference.chain_steps(prepared)
    assert steps is not None, why
    with torch.no_grad():
        assert close(SparseChain(steps)(x), model(x))
        assert close(SparseChain(steps)(x.contiguous(memory_format=torch.channels_last)), model(x))

    def chain_wins(fns, **_):
        return {n: [0.1 if n == "chain" else 0.5 if n == "sparse" else 1.0] for n in fns}

    monkeypatch.setattr(inference.choice, "time_interleaved", chain_wins)
    report: list[LayerChoice] = []
    converted = to_sparse_inference(model, x, report=report)
    assert isinstance(converted, SparseChain) and all(c.chained and c.backend == "compiled" for c in report)
    assert all("one compiled call" in c.reason for c in report)
    with torch.no_grad():
        assert close(converted(x), model(x))
        assert close(converted(x[:1]), model(x[:1]))  # another batch size: planned anew
    with pytest.raises(ValueError, match="input"):
        converted(torch.randn(2, 4, 8, 8))
    copy.deepcopy(converted)(x)  # the compiled state is rebuilt, not copied

    monkeypatch.setattr(inference.choice, "time_interleaved", lambda fns, **_: {n: [1.0] for n in fns})
    slower = to_sparse_inference(model, x, report=report)  # a chain that ties is not kept
    assert not isinstance(slower, SparseChain)


def test_only_straight_graphs_become_one_call(models):
    """A residual network branches: it is not a chain, and chain_steps says where it branches."""
    prepared, _ = prepare_for_inference(models["wrn"])
    steps, why = inference.chain_steps(prepared)
    assert steps is None and "straight path" in why
    odd = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(4 * 36, 2)).eval()
    steps, why = inference.chain_steps(prepare_for_inference(odd)[0])
    assert steps is None and "no compiled kernel" in why


@needs_compiled
def test_a_compiled_layer_follows_load_state_dict():
    """load_state_dict copies into the buffers in place: the compiled twin is rebuilt from them."""
    a, b = _pruned(nn.Linear(16, 8), 0.5, seed=1), _pruned(nn.Linear(16, 8), 0.5, seed=1)
    with torch.no_grad():
        b.weight.mul_(3.0)
    sparse = SparseLinear(a, backend="compiled")
    x = torch.randn(4, 16)
    sparse(x)
    sparse.load_state_dict(SparseLinear(b, backend="compiled").state_dict())
    with torch.no_grad():
        assert close(sparse(x), b(x))


@pytest.mark.skipif(not os.environ.get("CI"), reason="CI builds the compiled kernels at set-up")
def test_the_compiled_kernels_are_built():
    assert kernels.available("compiled"), kernels.unavailable_reason("compiled")


def test_timing_decides_per_layer(models, monkeypatch):
    model = models["mlp"]
    x = torch.randn(1, 3, 8, 8)
    for dense_time, sparse_time, expect_sparse in [(1.0, 0.5, True), (1.0, 0.97, False), (1.0, 2.0, False)]:
        monkeypatch.setattr(
            inference.choice,
            "time_interleaved",
            lambda fns, d=dense_time, s=sparse_time, **_: {"dense": [d], "sparse": [s], "plain": [2 * d]},
        )
        report: list[LayerChoice] = []
        converted = to_sparse_inference(model, x, report=report, chain=False)
        assert [choice.sparse for choice in report] == [expect_sparse] * 3
        assert all(f"{sparse_time / dense_time:.2f}x" in c.reason for c in report)
        sparse_layers = [m for m in converted.modules() if isinstance(m, (SparseLinear, TorchSparseLinear))]
        dense_layers = [m for m in converted.modules() if isinstance(m, FusedLinear)]
        assert len(sparse_layers if expect_sparse else dense_layers) == 3
        with torch.no_grad():
            assert close(converted(x), model(x))


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 0, 1), (1, 2, 2), ((1, 2), (2, 0), 1)])
def test_im2col_convolution_equals_the_dense_one(stride, padding, dilation):
    conv = _pruned(nn.Conv2d(5, 7, 3, stride, padding, dilation), 0.3)
    x = torch.randn(3, 5, 12, 13)
    with torch.no_grad():
        for pool, relu in ((False, False), (True, True)):
            expected = F.max_pool2d(conv(x), 2) if pool else conv(x)
            expected = F.relu(expected) if relu else expected
            assert close(inference.Im2colConv2d(conv, pool=pool, relu=relu)(x), expected)
    with pytest.raises(ValueError, match="groups=1"):
        inference.Im2colConv2d(nn.Conv2d(4, 4, 3, groups=2))


@needs_kernels
def test_the_dense_first_layer_takes_the_fastest_of_three_kernels(models, monkeypatch):
    """Each convolution is timed three ways (oneDNN, im2col GEMM, the sparse kernel): the fastest
    is kept if it beats dense by the margin, and the report gives all three times."""
    monkeypatch.setattr(inference.choice, "_im2col_twin", _IM2COL_TWIN)
    model = models["cnn"]
    x = torch.randn(2, 3, 8, 8)
    for im2col_time, expected in ((0.5, "im2col"), (3.0, BUILDS[0])):

        def fake(fns, t=im2col_time, **_):
            return {n: [{"im2col": t, "sparse": 0.8}.get(n, 1.0)] for n in fns}

        monkeypatch.setattr(inference.choice, "time_interleaved", fake)
        report: list[LayerChoice] = []
        converted = to_sparse_inference(model, x, report=report, chain=False, margin=0.9)
        convs = [c for c in report if c.kind == "conv"]
        assert convs and all(c.backend == expected and c.im2col_seconds == im2col_time for c in convs)
        assert all("im2col" in c.reason for c in convs) and all(
            c.im2col_seconds is None for c in report if c.kind == "linear"
        )
        kinds = {type(m) for m in converted.modules()}
        assert (inference.Im2colConv2d in kinds) == (expected == "im2col")
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
    assert "no example input" in report[0].reason
    assert isinstance(converted.get_submodule("0"), (SparseLinear, TorchSparseLinear)) and isinstance(
        converted.get_submodule("1"), FusedLinear
    )
    x = torch.randn(3, 100)
    with torch.no_grad():
        assert close(converted(x), model(x))


def _without_compiled(monkeypatch) -> None:
    """As on a machine where the extension was never built (no compiler at set-up)."""
    monkeypatch.setattr(kernels.native, "load", lambda: (None, "the compiled kernels are not built (test)"))
    monkeypatch.setattr(kernels, "_warned", set())


@needs_numba
def test_without_the_compiled_kernels_numba_runs_with_one_warning(models, monkeypatch):
    _without_compiled(monkeypatch)
    x = torch.randn(2, 3, 8, 8)
    report: list[LayerChoice] = []
    with pytest.warns(RuntimeWarning, match="not built .test.; sparse layers run on the slower Numba kernels"):
        converted = to_sparse_inference(models["cnn"], x, report=report, **ALWAYS_SPARSE)
    with torch.no_grad():
        assert close(converted(x), models["cnn"](x))
    assert {c.backend for c in report} == {"numba"}
    assert all(m.backend == "numba" for m in converted.modules() if isinstance(m, SparseConv2d))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once is enough
        to_sparse_inference(models["cnn"], x, **ALWAYS_SPARSE)
    with pytest.raises(RuntimeError, match="not built .test."):
        to_sparse_inference(models["cnn"], x, backend="compiled")
    with pytest.raises(RuntimeError, match="needs a kernel build"):
        SparseConv2d(nn.Conv2d(2, 2, 3), backend="compiled")


def test_without_any_kernel_build_the_fallback_is_torch_sparse_with_a_warning(models, monkeypatch):
    _without_compiled(monkeypatch)
    monkeypatch.setattr(kernels._numba, "numba", None)
    monkeypatch.setattr(kernels._numba, "_IMPORT_ERROR", "numba is not installed (test)")
    x = torch.randn(2, 3, 8, 8)
    report: list[LayerChoice] = []
    with pytest.warns(RuntimeWarning, match="numba is not installed"):
        converted = to_sparse_inference(models["cnn"], x, report=report, **ALWAYS_SPARSE)
    with torch.no_grad():
        assert close(converted(x), models["cnn"](x))
    assert {c.backend for c in report} == {"torch.sparse"} and all(
        c.reason.startswith("torch.sparse (no kernel build)") for c in report
    )
    with pytest.raises(RuntimeError, match="numba is not installed"):
        to_sparse_inference(models["cnn"], x, backend="numba")
    with pytest.raises(RuntimeError, match="needs a kernel build"):
        SparseLinear(nn.Linear(2, 2))


def test_layers_without_a_kernel_stay_dense_and_say_why():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"), nn.Flatten())
    report: list[LayerChoice] = []
    converted = to_sparse_inference(model, torch.randn(1, 4, 6, 6), report=report, **ALWAYS_SPARSE)
    assert isinstance(converted.get_submodule("0"), FusedConv2d) and "circular" in report[0].reason
    with pytest.raises(ValueError, match="backend"):
        to_sparse_inference(model, backend="mkl")


@pytest.mark.cuda
def test_cuda(models):
    model = copy.deepcopy(models["cnn"]).cuda()
    x = torch.randn(2, 3, 8, 8, device="cuda")
    report: list[LayerChoice] = []
    converted = to_sparse_inference(model, x, report=report, **ALWAYS_SPARSE)
    with torch.no_grad():
        assert close(converted(x), model(x))
    assert all(c.backend in ("torch.sparse", "dense") for c in report)


@pytest.mark.parametrize("graph_faster", [True, False])
def test_all_dense_choice_is_the_faster_of_the_deployment_graph_and_the_plain_model(models, monkeypatch, graph_faster):
    """With every layer left dense the result is the deployment graph (BatchNorm folded) when it
    measures faster than the plain dense model, else that plain model: never slower than either."""
    model = models["cnn"]
    x = torch.randn(2, 3, 8, 8)

    def fake(fns, **_):  # every layer: sparse loses; the whole model: the graph wins or loses
        return {name: [{"sparse": 2.0, "dense": 0.5 if graph_faster else 1.0}.get(name, 1.0)] for name in fns}

    monkeypatch.setattr(inference.choice, "time_interleaved", fake)
    converted = to_sparse_inference(model, x, chain=False)
    with torch.no_grad():
        if graph_faster:
            assert torch.equal(converted(x), prepare_for_inference(model)[0](x))
        else:
            assert not any(isinstance(m, (FusedConv2d, FusedLinear)) for m in converted.modules())
            assert torch.equal(converted(x), densify(copy.deepcopy(model))(x))
        assert close(F.softmax(converted(x), 1), F.softmax(model(x), 1))


# --------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize("name", ["mlp", "cnn", "wrn"])
def test_export_onnx_round_trip_with_onnxruntime(models, name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = models[name]
    path = export_onnx(model, tmp_path / f"{name}.onnx", torch.randn(1, 3, 8, 8))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # the batch dimension is dynamic
        x = torch.randn(batch, 3, 8, 8)
        (got,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            assert close(torch.from_numpy(got), model(x))


def test_a_model_whose_sparse_layers_lose_together_stays_dense(models, monkeypatch):
    """Layers faster one by one, the whole model slower (thread pools taking turns): it stays dense."""

    def fake(fns, **_):
        whole_model = not isinstance(fns["dense"].func, (FusedLinear, FusedConv2d))
        return {name: [1.5 if name == "sparse" and whole_model else 0.5 if name == "sparse" else 1.0] for name in fns}

    monkeypatch.setattr(inference.choice, "time_interleaved", fake)
    report: list[LayerChoice] = []
    converted = to_sparse_inference(models["mlp"], torch.randn(1, 3, 8, 8), report=report, chain=False)
    assert not any(c.sparse for c in report) and all("reverted" in c.reason for c in report)
    assert not any(isinstance(m, (SparseLinear, TorchSparseLinear)) for m in converted.modules())


@each_build
def test_kernels_leave_torchs_thread_count_as_the_caller_set_it(build):
    """The kernels share torch's OpenMP runtime; starting them must not change torch's threads."""
    conv = _pruned(nn.Conv2d(8, 8, 3, stride=2, padding=1), 0.9)
    sparse = SparseConv2d(conv, backend=build)  # im2col: a parallel kernel
    sparse(torch.randn(2, 8, 12, 12))
    assert torch.get_num_threads() == 1  # the one_thread fixture's
    torch.set_num_threads(2)
    sparse(torch.randn(2, 8, 12, 12))
    assert torch.get_num_threads() == 2
