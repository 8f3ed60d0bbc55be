"""The dense blocks of a deployment graph: a layer with its pool and ReLU fused (a fused graph node)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels

__all__ = ["FusedConv2d", "FusedLinear", "Im2colConv2d"]


class FusedConv2d(nn.Module):
    """A plain convolution followed by an optional 2x2 max pool and ReLU: the dense counterpart
    of :class:`SparseConv2d` with the same epilogue (what a fused graph node computes).

    ``grid_output`` (set by :func:`to_sparse_inference` when the only consumer is a
    :class:`SparseConv2d`): the pool and ReLU run as one kernel pass that writes the
    batch-innermost layout that layer reads (:func:`kernels.pool_to_grid`), saving it a
    transposing copy. ``folded``: a BatchNorm was folded into ``conv``.
    """

    def __init__(self, conv: nn.Conv2d, *, pool: bool = False, relu: bool = False, folded: bool = False) -> None:
        super().__init__()
        self.conv, self.pool, self.relu, self.folded = conv, pool, relu, folded
        self.grid_output = False

    @property
    def fused(self) -> str:
        """What was fused into the convolution, e.g. ``"BatchNorm, max pool, ReLU"`` (empty: nothing)."""
        return ", ".join(
            p for p, on in (("BatchNorm", self.folded), ("max pool", self.pool), ("ReLU", self.relu)) if on
        )

    def convolve(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution alone (PyTorch's kernel: oneDNN on the CPU)."""
        return self.conv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convolve(x)
        if self.pool and self.grid_output and x.device.type == "cpu" and x.dtype == torch.float32:
            return kernels.pool_to_grid(x.detach(), relu=self.relu).permute(3, 0, 1, 2)
        if self.pool:
            x = F.max_pool2d(x, 2)
        return F.relu(x) if self.relu else x

    def extra_repr(self) -> str:
        extra = (", folded=True" if self.folded else "") + (", grid_output=True" if self.grid_output else "")
        return f"pool={self.pool}, relu={self.relu}{extra}"


class Im2colConv2d(FusedConv2d):
    """:class:`FusedConv2d` computed as one matrix product: the im2col matrix of the input
    (``F.unfold``) times the weight, then the same epilogue. One of the candidates
    :func:`to_sparse_inference` times for a dense convolution (groups=1, numeric padding)."""

    def __init__(self, conv: nn.Conv2d, *, pool: bool = False, relu: bool = False, folded: bool = False) -> None:
        if conv.groups != 1 or isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise ValueError("Im2colConv2d computes groups=1 with numeric zero padding only")
        super().__init__(conv, pool=pool, relu=relu, folded=folded)

    def convolve(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
        cols = F.unfold(x, (kh, kw), dilation=(dh, dw), padding=(ph, pw), stride=(sh, sw))  # (B, C*kh*kw, L)
        out = torch.matmul(conv.weight.reshape(conv.out_channels, -1), cols)
        if conv.bias is not None:
            out = out + conv.bias.view(1, -1, 1)
        ho = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        return out.view(x.shape[0], conv.out_channels, ho, -1)


class FusedLinear(nn.Module):
    """A plain linear layer followed by an optional ReLU (dense counterpart of :class:`SparseLinear`)."""

    def __init__(self, linear: nn.Linear, *, relu: bool = False) -> None:
        super().__init__()
        self.linear, self.relu = linear, relu

    @property
    def fused(self) -> str:
        """``"ReLU"`` when a ReLU was fused into the layer, else empty."""
        return "ReLU" if self.relu else ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        return F.relu(x) if self.relu else x

    def extra_repr(self) -> str:
        return f"relu={self.relu}"
