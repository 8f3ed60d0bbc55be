"""Networks used in the paper and in the comparisons that go beyond it."""

from __future__ import annotations

import torch
from torch import nn

from ._utils import check_bool, check_int
from .layers import DynamicConv2d, DynamicLinear

__all__ = ["BaselineCNN", "DynamicCNN", "MLP", "WideResNet"]


class BaselineCNN(nn.Module):
    """The paper's baseline CNN (section 3.1), the TensorFlow CIFAR-10 tutorial network.

    Conv(32, 3x3) - MaxPool(2) - Conv(64, 3x3) - MaxPool(2) - Conv(64, 3x3) -
    Flatten - Dense(64) - Dense(num_classes), ReLU after every hidden layer,
    valid (unpadded) convolutions as in Keras: 122,570 parameters for 10 classes.
    The softmax of the Keras model lives in the loss (``nn.CrossEntropyLoss``).

    ``channels_last``: the input is converted to ``torch.channels_last`` (Keras's
    own default layout), where oneDNN's convolutions and PyTorch's max pooling
    run faster on the CPU than in the default NCHW. The same function; the
    convolutions round differently.

    ``sparse``: the three convolutions are ``DynamicConv2d`` with random masks at
    ``sparsity`` (the paper's section 3.2 as it describes it: its section-3.1
    network with dynamic-pruning convolutions); the dense layers stay dense.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        *,
        channels_last: bool = False,
        sparse: bool = False,
        sparsity: float = 0.0,
    ) -> None:
        super().__init__()
        _check_sparse_args(sparse, sparsity)
        self.channels_last = check_bool(channels_last, "channels_last")

        def conv(cin: int, cout: int) -> nn.Conv2d:
            if sparse:
                return DynamicConv2d(cin, cout, kernel_size=3, initial_sparsity=sparsity)
            return nn.Conv2d(cin, cout, kernel_size=3)

        self.features = nn.Sequential(
            conv(in_channels, 32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            conv(32, 64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            conv(64, 64),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, num_classes),
        )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Keras defaults, as in the paper: Glorot-uniform kernels, zero biases."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
                if getattr(module, "mask", None) is not None:  # a pruned weight is zero
                    module.weight.mul_(module.mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.classifier(self.features(x))


def _check_sparse_args(sparse: bool, sparsity: float) -> None:
    if not sparse and sparsity != 0.0:
        raise ValueError(f"sparsity={sparsity!r} needs sparse=True (a dense model has no mask)")


class MLP(nn.Module):
    """Multilayer perceptron of ``DynamicLinear`` layers (the paper's section 3 illustration).

    Flatten - [DynamicLinear - ReLU] x len(hidden) - DynamicLinear(num_classes).
    Every layer starts with a random mask at ``sparsity`` (DSR initialisation);
    ``dense_first_last`` keeps the input and output layers dense, as the DSR
    reference's WRN does (its MNIST MLP and ResNet-50 classifier are sparse).
    The paper gives no sizes; the default ``hidden=(1024, 512)`` on flattened
    CIFAR-10 images has 3.68 M weights.
    """

    def __init__(
        self,
        in_features: int = 3 * 32 * 32,
        hidden: tuple[int, ...] = (1024, 512),
        num_classes: int = 10,
        sparsity: float = 0.0,
        dense_first_last: bool = False,
        sparse: bool = True,
    ) -> None:
        super().__init__()
        _check_sparse_args(sparse, sparsity)
        sizes = [in_features, *hidden, num_classes]
        layers: list[nn.Module] = [nn.Flatten()]
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            end = i == 0 or i == len(sizes) - 2
            dense = not sparse or (dense_first_last and end)
            layers.append(DynamicLinear(fan_in, fan_out, 0.0 if dense else sparsity, sparse=not dense))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DynamicCNN(nn.Module):
    """VGG-style CNN of ``DynamicConv2d`` layers for the paper's section 3.2 experiment.

    The paper does not state the architecture of its dynamic pruning CNN. This
    one has ``len(widths)`` stages of ``convs_per_stage`` 3x3 convolutions, each
    followed by BatchNorm and ReLU, and 2x2 max pooling at the end of every
    stage, then global average pooling and a linear classifier. As in DSR
    (Mostafa & Wang 2019), the first convolution and the classifier are dense;
    every other convolution is a ``DynamicConv2d`` starting at ``sparsity``.
    Default widths (64, 128, 256), two convolutions per stage: 1.15 M parameters.

    Keyword-only options for a cheaper network of the same kind:

    * ``pool_before_norm``: a stage's last convolution is followed by pooling
      *then* BatchNorm and ReLU (as in Keller Jordan's ``airbench``), so those two
      run on a quarter of the activations. Same layers and shapes; the function
      differs slightly (BatchNorm's statistics are taken after pooling, and max
      pooling commutes with BatchNorm only where its scale is positive).
    * ``channels_last``: the input is converted to ``torch.channels_last``, the
      layout oneDNN/cuDNN convolutions are fastest on (weights and masks keep the
      default layout, which the pruning schedulers rely on).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: tuple[int, ...] = (64, 128, 256),
        sparsity: float = 0.0,
        sparse: bool = True,
        *,
        convs_per_stage: int = 2,
        pool_before_norm: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        _check_sparse_args(sparse, sparsity)
        check_int(convs_per_stage, "convs_per_stage", 1)
        if not widths:
            raise ValueError("widths must name at least one stage")
        self.channels_last = bool(channels_last)
        layers: list[nn.Module] = []
        channels = in_channels
        for stage, width in enumerate(widths):
            for i in range(convs_per_stage):
                if stage == 0 and i == 0:
                    conv = nn.Conv2d(channels, width, 3, padding=1, bias=False)
                else:
                    conv = DynamicConv2d(
                        channels, width, 3, padding=1, bias=False, initial_sparsity=sparsity, sparse=sparse
                    )
                last = i == convs_per_stage - 1
                if last and pool_before_norm:
                    layers += [conv, nn.MaxPool2d(2), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                else:
                    layers += [conv, nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                    if last:
                        layers.append(nn.MaxPool2d(2))
                channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.classifier(self.features(x))


class _WideBasic(nn.Module):
    """Pre-activation basic block of a Wide ResNet: BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float, conv3x3) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv3x3(planes, planes, 1)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        # As in the reference code, a projection shortcut sees the pre-activated input.
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.dropout(torch.relu(self.bn2(out))))
        return out + shortcut


class WideResNet(nn.Module):
    """Wide ResNet WRN-``depth``-``widen_factor`` for 32x32 inputs (Zagoruyko & Komodakis, BMVC 2016).

    conv3x3(16) - 3 groups of ``(depth - 4) / 6`` pre-activation blocks of widths
    16k, 32k, 64k (strides 1, 2, 2) - BN - ReLU - global average pool - linear.
    WRN-28-10 has 36.5 M parameters, WRN-28-2 1.47 M, WRN-16-4 2.75 M (as published).
    With ``sparse=True`` the 3x3 convolutions inside the blocks are
    ``DynamicConv2d`` starting at ``sparsity``; the first convolution, the 1x1
    projection shortcuts and the classifier stay dense (under 1 % of the weights).
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        dropout: float = 0.0,
        num_classes: int = 10,
        sparse: bool = False,
        sparsity: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
        _check_sparse_args(sparse, sparsity)
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]

        def conv3x3(cin: int, cout: int, stride: int) -> nn.Module:
            if sparse:
                return DynamicConv2d(cin, cout, 3, stride, padding=1, bias=False, initial_sparsity=sparsity)
            return nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)

        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        in_planes = widths[0]
        for planes, stride in zip(widths[1:], (1, 2, 2)):
            for i in range(n):
                blocks.append(_WideBasic(in_planes, planes, stride if i == 0 else 1, dropout, conv3x3))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """He (fan-out) init for convolutions, as the reference code; masks are re-applied."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if getattr(module, "mask", None) is not None:
                    module.weight.masked_fill_(~module.mask, 0)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(self.conv1(x))
        out = torch.relu(self.bn(out))
        out = torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)
        return self.fc(out)
