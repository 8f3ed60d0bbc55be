"""Tests for dynprune_lib.layers against independent oracles (torch.nn.functional, torch.nn.utils.prune)."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune

from dynprune_lib import _small_conv
from dynprune_lib.layers import (
    DynamicConv2d,
    DynamicLinear,
    densify,
    erk_sparsities,
    reset_optimizer_state,
    sparse_modules,
    sparsify,
)


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    torch.manual_seed(0)
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors; don't oversubscribe the shared 2-core machine
    yield
    torch.set_num_threads(n)


def small_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


# --------------------------------------------------------------------------- #
# forward / backward
# --------------------------------------------------------------------------- #
def test_linear_forward_equals_functional_on_masked_weight():
    layer = DynamicLinear(13, 7, initial_sparsity=0.6)
    assert 0 < layer.mask.sum() < layer.mask.numel()
    # put garbage under the mask to prove the forward masks (the contract says these are 0)
    with torch.no_grad():
        layer.weight.add_(torch.randn_like(layer.weight) * ~layer.mask)
    x = torch.randn(5, 13)
    expected = F.linear(x, layer.weight * layer.mask, layer.bias)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    assert not torch.allclose(layer(x), F.linear(x, layer.weight, layer.bias))


def test_forward_follows_mask_edits():
    """The forward caches the mask in the weight dtype; in-place edits and replacement must show."""
    layer = DynamicLinear(6, 5, initial_sparsity=0.5)
    x = torch.randn(3, 6)
    layer(x)
    with torch.no_grad():
        layer.mask[0] = False  # in place
        layer.weight[0] = 1.0  # garbage under the new mask
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight * layer.mask, layer.bias))
    layer.mask = torch.ones(5, 6, dtype=torch.bool)  # replaced
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    layer.double()
    assert layer(x.double()).dtype == torch.float64


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3),
        dict(kernel_size=(3, 2), stride=2, padding=1, dilation=2),
        dict(kernel_size=3, groups=2, bias=False, padding="same"),
    ],
)
def test_conv_forward_equals_functional_on_masked_weight(kwargs):
    layer = DynamicConv2d(4, 6, initial_sparsity=0.5, **kwargs)
    x = torch.randn(2, 4, 9, 9)
    expected = F.conv2d(
        x, layer.weight * layer.mask, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups
    )
    torch.testing.assert_close(layer(x), expected)
    assert isinstance(layer, nn.Conv2d) and layer.groups == kwargs.get("groups", 1)


def test_conv_padding_mode_reflect():
    layer = DynamicConv2d(3, 5, 3, padding=1, padding_mode="reflect", initial_sparsity=0.3)
    x = torch.randn(1, 3, 6, 6)
    expected = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), layer.weight * layer.mask, layer.bias)
    torch.testing.assert_close(layer(x), expected)


def test_gradient_is_zero_under_mask_and_dense_elsewhere():
    layer = DynamicLinear(10, 6, initial_sparsity=0.5)
    x = torch.randn(4, 10)
    layer(x).pow(2).sum().backward()
    # oracle: gradient of the same loss w.r.t. a leaf holding the masked weight
    w_eff = (layer.weight.detach() * layer.mask).requires_grad_()
    F.linear(x, w_eff, layer.bias.detach()).pow(2).sum().backward()
    assert torch.count_nonzero(layer.weight.grad[~layer.mask]) == 0
    torch.testing.assert_close(layer.weight.grad[layer.mask], w_eff.grad[layer.mask])
    assert torch.count_nonzero(w_eff.grad[~layer.mask]) > 0  # the dense gradient is not zero there


OPTIMIZERS = {
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam_wd": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
    "adam_amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.5, weight_decay=1e-3),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_masked_weights_stay_exactly_zero_under_optimizers(name):
    model = nn.Sequential(DynamicLinear(12, 16, 0.7), nn.Tanh(), DynamicLinear(16, 3, 0.5))
    opt = OPTIMIZERS[name](model.parameters())
    before = [m.weight.detach().clone() for _, m in sparse_modules(model)]
    x, y = torch.randn(32, 12), torch.randint(0, 3, (32,))
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for (_, m), w0 in zip(sparse_modules(model), before):
        assert torch.count_nonzero(m.weight[~m.mask]) == 0
        assert not torch.equal(m.weight[m.mask], w0[m.mask])  # live weights did train


def test_set_sparsity_during_training_resets_optimizer_state():
    def run(pass_optimizer: bool) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(1)
        layer = DynamicLinear(20, 10, 0.0)
        opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
        x = torch.randn(16, 20)
        for _ in range(3):
            opt.zero_grad()
            layer(x).pow(2).mean().backward()
            opt.step()
        layer.set_sparsity(0.5, optimizer=opt if pass_optimizer else None)
        for _ in range(3):
            opt.zero_grad()
            layer(x).pow(2).mean().backward()
            opt.step()
        return layer.weight.detach()[~layer.mask], opt.state[layer.weight]["momentum_buffer"][~layer.mask]

    w_masked, buf = run(pass_optimizer=True)
    assert torch.count_nonzero(w_masked) == 0 and torch.count_nonzero(buf) == 0
    w_masked, buf = run(pass_optimizer=False)  # stale momentum moves pruned weights: why the reset exists
    assert torch.count_nonzero(w_masked) > 0


def test_reset_optimizer_state_only_touches_given_positions():
    layer = DynamicLinear(6, 4, 0.0)
    opt = torch.optim.Adam(layer.parameters())
    layer(torch.randn(3, 6)).sum().backward()
    opt.step()
    pos = torch.zeros_like(layer.mask)
    pos[0, :3] = True
    state = {k: v.clone() for k, v in opt.state[layer.weight].items()}
    reset_optimizer_state(opt, layer.weight, pos)
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.count_nonzero(opt.state[layer.weight][key][pos]) == 0
        torch.testing.assert_close(opt.state[layer.weight][key][~pos], state[key][~pos])
    assert torch.equal(opt.state[layer.weight]["step"], state["step"])


# --------------------------------------------------------------------------- #
# set_sparsity
# --------------------------------------------------------------------------- #
@settings(max_examples=40, deadline=None)
@given(
    out_f=st.integers(1, 9),
    in_f=st.integers(1, 9),
    s0=st.floats(0.0, 0.95),
    s1=st.floats(0.0, 0.95),
)
def test_set_sparsity_hits_target_by_magnitude(out_f, in_f, s0, s1):
    layer = DynamicLinear(in_f, out_f, initial_sparsity=s0)
    n = layer.weight.numel()
    old_mask, old_weight = layer.mask.clone(), layer.weight.detach().clone()
    layer.set_sparsity(s1)
    n_masked = int((~layer.mask).sum())
    assert n_masked == min(round(s1 * n), n - 1)
    assert abs(layer.mask_sparsity - s1) <= 1.0 / n
    assert torch.count_nonzero(layer.weight[~layer.mask]) == 0
    assert layer.sparsity >= layer.mask_sparsity
    pruned = old_mask & ~layer.mask
    if pruned.any():  # raised: the live weights are the largest of the old live ones
        assert not (layer.mask & ~old_mask).any()
        assert old_weight[pruned].abs().max() <= old_weight[layer.mask].abs().min()


def test_set_sparsity_keeps_largest_magnitudes_like_l1_unstructured():
    dense = nn.Linear(30, 20)
    layer = DynamicLinear.from_dense(dense, 0.0)
    layer.set_sparsity(0.73)
    ref = copy.deepcopy(dense)
    prune.l1_unstructured(ref, "weight", amount=0.73)
    assert torch.equal(layer.mask, ref.weight_mask.bool())
    torch.testing.assert_close(layer.weight.detach(), ref.weight.detach())


def test_lowering_sparsity_restores_pruned_values():
    dense = nn.Conv2d(4, 6, 3)
    x = torch.randn(2, 4, 7, 7)
    layer = DynamicConv2d.from_dense(dense, 0.0)
    layer.set_sparsity(0.5)
    at_half = copy.deepcopy(layer)
    layer.set_sparsity(0.9)
    layer.set_sparsity(0.5)  # back: the same weights with the same values
    assert torch.equal(layer.mask, at_half.mask)
    assert torch.equal(layer.weight, at_half.weight)
    torch.testing.assert_close(layer(x), at_half(x))
    layer.set_sparsity(0.0)  # all the way back to the dense layer
    torch.testing.assert_close(layer.weight.detach(), dense.weight.detach())
    assert layer.pruned_values is not None and torch.count_nonzero(layer.pruned_values) == 0


def test_lowering_sparsity_without_kept_values_revives_zeros():
    layer = DynamicLinear(10, 10, initial_sparsity=0.8)  # random initial mask: nothing was kept
    x = torch.randn(3, 10)
    out = layer(x)
    gen = torch.Generator().manual_seed(3)
    layer.set_sparsity(0.5, generator=gen)
    assert int((~layer.mask).sum()) == 50
    torch.testing.assert_close(layer(x), out)  # revived weights are zeros
    assert layer.sparsity == pytest.approx(0.8)

    # kept values do not survive a state_dict round trip (documented)
    trained = DynamicLinear.from_dense(nn.Linear(10, 10), 0.0)
    trained.set_sparsity(0.9)
    fresh = DynamicLinear(10, 10, 0.0)
    fresh.load_state_dict(trained.state_dict())
    assert fresh.pruned_values is None
    fresh.set_sparsity(0.5)
    assert fresh.sparsity == pytest.approx(0.9) and fresh.mask_sparsity == pytest.approx(0.5)


def test_dense_layer_api():
    layer = DynamicLinear(5, 3, sparse=False)
    assert layer.mask is None and "mask" not in layer.state_dict()
    assert layer.sparsity == 0.0 and layer.mask_sparsity == 0.0
    x = torch.randn(2, 5)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    layer.set_sparsity(0.0)
    with pytest.raises(ValueError, match="sparse=False"):
        layer.set_sparsity(0.5)
    assert list(sparse_modules(nn.Sequential(layer))) == []
    assert "sparse=False" in repr(layer)


# --------------------------------------------------------------------------- #
# dense gradient (RigL)
# --------------------------------------------------------------------------- #
def test_dense_grad_only_when_asked_and_equal_to_oracle():
    layer = DynamicConv2d(3, 4, 3, initial_sparsity=0.7)
    x = torch.randn(2, 3, 6, 6)
    layer(x).sum().backward()
    assert layer.dense_grad is None
    layer.keep_dense_grad = True
    layer.weight.grad = None
    layer(x).sum().backward()
    w_eff = (layer.weight.detach() * layer.mask).requires_grad_()
    F.conv2d(x, w_eff, layer.bias.detach()).sum().backward()
    torch.testing.assert_close(layer.dense_grad, w_eff.grad)
    torch.testing.assert_close(layer.weight.grad, w_eff.grad * layer.mask)
    with torch.no_grad():
        layer(x)  # no graph: nothing to hook, no error


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_autocast_computes_exactly_as_autocast_of_the_masked_weight(kind):
    """Under bfloat16 autocast the layer masks its bfloat16 copy of the weight: outputs, weight
    gradients and dense gradients equal (bit for bit) those of autocast applied to the float32
    masked weight (the oracle), and the gradients stay float32."""
    if kind == "linear":
        layer, x, op = DynamicLinear(48, 16, 0.7), torch.randn(8, 48), F.linear
    else:
        layer, x, op = DynamicConv2d(3, 8, 3, initial_sparsity=0.7), torch.randn(4, 3, 9, 9), F.conv2d
    with torch.no_grad():  # masked weights that are not zero: the mask alone must zero them
        layer.weight.add_(0.5 * (~layer.mask))
    layer.keep_dense_grad = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    out.float().square().sum().backward()
    w_eff = (layer.weight.detach() * layer.mask).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = op(x, w_eff, layer.bias.detach())
    expected.float().square().sum().backward()
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)
    assert layer.dense_grad.dtype == layer.weight.grad.dtype == torch.float32
    assert torch.equal(layer.dense_grad, w_eff.grad)
    assert torch.equal(layer.weight.grad, w_eff.grad * layer.mask)


# --------------------------------------------------------------------------- #
# inputs smaller than the kernel (one matrix product, dynprune_lib._small_conv)
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    ("kernel", "size"), [(3, (2, 2)), (3, (1, 1)), (3, (1, 3)), (3, (2, 4)), (5, (2, 2)), (5, (4, 4)), ((3, 5), (2, 3))]
)
@pytest.mark.parametrize("channels_last", [True, False])
def test_small_input_convolution_equals_conv2d(kernel, size, channels_last):
    """In float64 (rounding out of the way) the matrix-product path gives F.conv2d's output and
    gradients (input, weight, bias, dense gradient), in the input's memory format."""
    ks = (kernel, kernel) if isinstance(kernel, int) else kernel
    layer = DynamicConv2d(6, 5, ks, padding=(ks[0] // 2, ks[1] // 2), initial_sparsity=0.5).double()
    layer.keep_dense_grad = True
    x = torch.randn(3, 6, *size, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    assert _small_conv.applies(layer, x)
    out = layer(x)
    grad = torch.randn_like(out)
    out.backward(grad)
    x_ref = x.detach().clone().requires_grad_()
    w_eff = (layer.weight.detach() * layer.mask).requires_grad_()
    bias = layer.bias.detach().clone().requires_grad_()
    expected = F.conv2d(x_ref, w_eff, bias, padding=layer.padding)
    expected.backward(grad)
    torch.testing.assert_close(out, expected)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(layer.dense_grad, w_eff.grad)
    torch.testing.assert_close(layer.weight.grad, w_eff.grad * layer.mask)
    torch.testing.assert_close(layer.bias.grad, bias.grad)


def test_small_input_convolution_under_autocast_matches_conv2d_to_bfloat16_rounding():
    """Under bfloat16 autocast the path computes in bfloat16 as F.conv2d does there: bfloat16
    output, float32 gradients, both within bfloat16 rounding of the float64 oracle."""
    layer = DynamicConv2d(64, 32, 3, padding=1, bias=False, initial_sparsity=0.8)
    x = torch.randn(16, 64, 2, 2).contiguous(memory_format=torch.channels_last).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    grad = torch.randn(out.shape)
    out.float().backward(grad)
    x64 = x.detach().double().requires_grad_()
    w64 = (layer.weight.detach() * layer.mask).double().requires_grad_()
    expected = F.conv2d(x64, w64, padding=1)
    expected.backward(grad.double())
    assert out.dtype == torch.bfloat16 and layer.weight.grad.dtype == torch.float32
    for got, want in ((out, expected), (layer.weight.grad, w64.grad * layer.mask), (x.grad, x64.grad)):
        torch.testing.assert_close(got.double(), want, atol=2e-2 * want.abs().max().item(), rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "size"),
    [
        ({}, (3, 3)),  # as many pixels as taps: the convolution is cheaper
        ({"stride": 2}, (2, 2)),
        ({"dilation": 2, "padding": 2}, (2, 2)),
        ({"groups": 2}, (2, 2)),
        ({"padding": 0}, (2, 2)),
        ({"padding_mode": "reflect"}, (2, 2)),
    ],
)
def test_small_input_path_only_where_it_computes_the_same_convolution(kwargs, size):
    layer = DynamicConv2d(4, 4, 3, **{"padding": 1, **kwargs})
    assert not _small_conv.applies(layer, torch.randn(2, 4, *size))


def test_small_input_path_needs_a_batched_input():
    layer = DynamicConv2d(4, 4, 3, padding=1)
    assert _small_conv.applies(layer, torch.randn(2, 4, 2, 2))
    assert not _small_conv.applies(layer, torch.randn(4, 2, 2))


def test_small_input_path_mismatched_dtypes_raise_as_conv2d():
    layer = DynamicConv2d(4, 4, 3, padding=1)
    with pytest.raises(RuntimeError, match="should be the same"):
        layer(torch.randn(2, 4, 2, 2, dtype=torch.float64))


# --------------------------------------------------------------------------- #
# serialisation
# --------------------------------------------------------------------------- #
def test_state_dict_round_trip_weights_only(tmp_path):
    src = nn.Sequential(DynamicConv2d(3, 4, 3, initial_sparsity=0.6), nn.Flatten(), DynamicLinear(64, 5, 0.8))
    path = tmp_path / "sd.pt"
    torch.save(src.state_dict(), path)
    sd = torch.load(path, weights_only=True)
    assert sd["0.mask"].dtype == torch.bool
    dst = nn.Sequential(DynamicConv2d(3, 4, 3, initial_sparsity=0.1), nn.Flatten(), DynamicLinear(64, 5, 0.1))
    dst.load_state_dict(sd)
    x = torch.randn(2, 3, 6, 6)
    for key, value in src.state_dict().items():
        assert torch.equal(value, dst.state_dict()[key]), key
    torch.testing.assert_close(dst(x), src(x))


def test_deepcopy_pickle_and_torch_save_module(tmp_path):
    layer = DynamicLinear(8, 4, 0.5)
    layer.set_sparsity(0.75)
    x = torch.randn(2, 8)
    for clone in (
        copy.deepcopy(layer),
        pickle.loads(pickle.dumps(layer)),
    ):
        assert torch.equal(clone.mask, layer.mask) and torch.equal(clone.weight, layer.weight)
        torch.testing.assert_close(clone(x), layer(x))
        assert torch.equal(clone.pruned_values, layer.pruned_values)
        clone.mask[0, 0] = not bool(clone.mask[0, 0])
        assert not torch.equal(clone.mask, layer.mask)  # independent copies
    torch.save(layer, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    torch.testing.assert_close(loaded(x), layer(x))


def test_load_state_dict_zeroes_weights_under_the_mask():
    layer = DynamicLinear(4, 4, 0.5)
    sd = layer.state_dict()
    sd["weight"] = torch.ones(4, 4)
    layer.load_state_dict(sd)
    assert torch.count_nonzero(layer.weight[~layer.mask]) == 0
    assert torch.all(layer.weight[layer.mask] == 1)


def test_extra_repr_shows_sizes_and_sparsity():
    layer = DynamicLinear(20, 10, 0.25)
    assert "in_features=20" in repr(layer) and "out_features=10" in repr(layer)
    assert "sparsity=0.2500" in repr(layer)
    layer.set_sparsity(0.5)
    assert "sparsity=0.5000" in repr(layer)
    conv = DynamicConv2d(3, 7, 5, initial_sparsity=0.4)
    assert "3, 7, kernel_size=(5, 5)" in repr(conv) and "sparsity=0.4000" in repr(conv)


# --------------------------------------------------------------------------- #
# bad input
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan"), float("inf")])
def test_bad_sparsity_value(value):
    with pytest.raises(ValueError, match=r"initial_sparsity must be in \[0, 1\)"):
        DynamicLinear(3, 3, initial_sparsity=value)
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        DynamicLinear(3, 3).set_sparsity(value)
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        sparsify(small_net(), value)


@pytest.mark.parametrize("value", [True, "0.5", None, [0.5], torch.tensor(0.5)])
def test_bad_sparsity_type(value):
    with pytest.raises(TypeError, match="initial_sparsity must be a real number"):
        DynamicConv2d(3, 3, 3, initial_sparsity=value)
    with pytest.raises(TypeError, match="sparsity must be a real number"):
        DynamicLinear(3, 3).set_sparsity(value)


@pytest.mark.parametrize(
    "make, arg",
    [
        (lambda: DynamicLinear(0, 3), "in_features"),
        (lambda: DynamicLinear(3, 0), "out_features"),
        (lambda: DynamicConv2d(0, 3, 3), "in_channels"),
        (lambda: DynamicConv2d(3, 0, 3), "out_channels"),
        (lambda: DynamicConv2d(3, 3, 0), "kernel_size"),
    ],
)
def test_zero_sized_layers_rejected(make, arg):
    with pytest.raises(ValueError, match=arg):
        make()


def test_bad_sparse_flag_and_sizes_types():
    with pytest.raises(TypeError, match="sparse"):
        DynamicLinear(3, 3, sparse="yes")
    with pytest.raises(TypeError, match="in_features"):
        DynamicLinear(3.0, 3)


def test_loaded_mask_of_wrong_shape_or_dtype():
    layer = DynamicLinear(4, 3, 0.5)
    sd = layer.state_dict()
    with pytest.raises(ValueError, match=r"mask.*shape \(3, 4\)"):
        layer.load_state_dict({**sd, "mask": torch.ones(4, 3, dtype=torch.bool)})
    with pytest.raises(TypeError, match=r"mask.*torch.bool"):
        layer.load_state_dict({**sd, "mask": torch.ones(3, 4)})
    assert torch.equal(layer.mask, sd["mask"])  # nothing was loaded


def test_sparsify_bad_arguments():
    with pytest.raises(ValueError, match="distribution"):
        sparsify(small_net(), 0.5, distribution="normal")
    with pytest.raises(ValueError, match="mask_init"):
        sparsify(small_net(), 0.5, mask_init="zeros")
    with pytest.raises(TypeError, match="include"):
        sparsify(small_net(), 0.5, include=3)


# --------------------------------------------------------------------------- #
# sparsify / densify
# --------------------------------------------------------------------------- #
def test_sparsify_defaults_keep_first_conv_and_classifier_dense():
    net = small_net()
    original = copy.deepcopy(net)
    sparsify(net, 0.8)
    kinds = {name: type(m) for name, m in net.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    assert kinds == {"0": nn.Conv2d, "2": DynamicConv2d, "4": DynamicConv2d, "7": DynamicLinear, "9": nn.Linear}
    for name, layer in sparse_modules(net):
        assert layer.mask_sparsity == pytest.approx(0.8, abs=1 / layer.weight.numel())
        ref = copy.deepcopy(original.get_submodule(name))  # trained weights kept, mask by magnitude
        prune.l1_unstructured(ref, "weight", amount=0.8)
        assert torch.equal(layer.mask, ref.weight_mask.bool())
        torch.testing.assert_close(layer.weight.detach(), ref.weight.detach())
        torch.testing.assert_close(layer.bias, original.get_submodule(name).bias)
    assert torch.equal(net[0].weight, original[0].weight)


def test_sparsify_then_lower_sparsity_at_inference_restores_trained_weights():
    net = small_net().eval()
    original = copy.deepcopy(net)
    x = torch.randn(2, 3, 6, 6)
    sparsify(net, 0.9)
    with torch.no_grad():
        assert not torch.allclose(net(x), original(x))
        for _, layer in sparse_modules(net):
            layer.set_sparsity(0.0)
        torch.testing.assert_close(net(x), original(x))


def test_sparsify_include_exclude():
    net = sparsify(small_net(), 0.5, include=["0", "9"])
    assert isinstance(net[0], DynamicConv2d) and isinstance(net[9], DynamicLinear)
    assert type(net[2]) is nn.Conv2d
    net = sparsify(small_net(), 0.5, exclude="7")
    assert [n for n, _ in sparse_modules(net)] == ["2", "4"]
    net = sparsify(small_net(), 0.5, include=lambda n, m: isinstance(m, nn.Linear), exclude=["9"])
    assert [n for n, _ in sparse_modules(net)] == ["7"]
    net = sparsify(small_net(), 0.5, keep_ends_dense=False)
    assert [n for n, _ in sparse_modules(net)] == ["0", "2", "4", "7", "9"]


def test_sparsify_random_masks_are_reproducible_and_erk_budget():
    a = sparsify(
        small_net(),
        0.9,
        keep_ends_dense=False,
        mask_init="random",
        distribution="erk",
        generator=torch.Generator().manual_seed(5),
    )
    b = sparsify(
        small_net(),
        0.9,
        keep_ends_dense=False,
        mask_init="random",
        distribution="erk",
        generator=torch.Generator().manual_seed(5),
    )
    layers_a, layers_b = dict(sparse_modules(a)), dict(sparse_modules(b))
    for name in layers_a:
        assert torch.equal(layers_a[name].mask, layers_b[name].mask)
    masked = sum(int((~m.mask).sum()) for m in layers_a.values())
    total = sum(m.mask.numel() for m in layers_a.values())
    assert abs(masked / total - 0.9) < 0.01
    per_layer = [m.mask_sparsity for m in layers_a.values()]
    assert max(per_layer) - min(per_layer) > 0.05  # ERK is not uniform


def test_erk_sparsities_budget_and_proportions():
    shapes = [(16, 3, 3, 3), (32, 16, 3, 3), (64, 32, 3, 3), (10, 64)]
    s = erk_sparsities(shapes, 0.8)
    numels = [math.prod(x) for x in shapes]
    kept = sum((1 - si) * n for si, n in zip(s, numels))
    assert kept == pytest.approx(0.2 * sum(numels))
    dens = [1 - si for si in s]
    raw = [sum(x) / math.prod(x) for x in shapes]
    non_dense = [i for i in range(4) if dens[i] < 1]
    ratios = [dens[i] / raw[i] for i in non_dense]
    assert max(ratios) == pytest.approx(min(ratios))  # density proportional to ERK score
    assert s[0] == 0.0  # the small first conv saturates at density 1


def test_densify_round_trip_outputs_equal():
    net = sparsify(small_net(), 0.7)
    x = torch.randn(2, 3, 6, 6)
    out = net(x)
    dense = densify(copy.deepcopy(net))
    assert not list(sparse_modules(dense))
    assert all(type(m) in (nn.Conv2d, nn.Linear) for m in dense.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    torch.testing.assert_close(dense(x), out)
    assert int((dense[2].weight == 0).sum()) == int((~net[2].mask).sum())


@pytest.mark.cuda
def test_the_same_seed_gives_the_same_masks_and_weights_on_cpu_and_cuda():
    """A layer built on the GPU is initialised on the CPU, as one built there and moved: the same
    seed gives the same masks (and weights) for every layer of a model, whatever the device."""

    def build(device):
        torch.manual_seed(0)
        return [
            DynamicConv2d(3, 8, 3, initial_sparsity=0.7, device=device),
            DynamicLinear(32, 16, 0.9, device=device),
            DynamicLinear(16, 4, 0.5, device=device),
        ]

    for cpu, gpu in zip(build("cpu"), build("cuda")):
        assert gpu.weight.device.type == "cuda"
        assert torch.equal(cpu.mask, gpu.mask.cpu()) and torch.equal(cpu.weight, gpu.weight.cpu())


def test_layers_built_on_the_cpu_keep_their_initialisation():
    """The CPU path is nn.Linear's own initialisation, then the mask: the same draws as before."""
    torch.manual_seed(0)
    layer = DynamicLinear(20, 10, 0.5)
    torch.manual_seed(0)
    plain = nn.Linear(20, 10)
    torch.testing.assert_close(layer.weight, plain.weight * layer.mask)
    torch.testing.assert_close(layer.bias, plain.bias)
