"""The models of the paper and of the comparisons beyond it: shapes, parameter counts, masks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dynprune_lib import MLP, BaselineCNN, DynamicCNN, DynamicConv2d, DynamicLinear, WideResNet
from dynprune_lib.models import _WideBasic


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


def test_baseline_cnn_channels_last_computes_the_same_function():
    """The channels-last layout changes how the network computes, not what: the same weights give
    the NCHW network's logits and gradients (up to float32 rounding) and the same parameters."""
    torch.manual_seed(0)
    nchw = BaselineCNN()
    nhwc = BaselineCNN(channels_last=True)
    nhwc.load_state_dict(nchw.state_dict())
    x = torch.rand(4, 3, 32, 32)
    out, out_cl = nchw(x), nhwc(x)
    torch.testing.assert_close(out_cl, out)
    out.square().sum().backward()
    out_cl.square().sum().backward()
    for (name, p), p_cl in zip(nchw.named_parameters(), nhwc.parameters()):
        torch.testing.assert_close(p_cl.grad, p.grad, msg=name)
    assert sum(p.numel() for p in nhwc.parameters()) == 122_570
    with pytest.raises(TypeError, match="channels_last"):
        BaselineCNN(channels_last="yes")
