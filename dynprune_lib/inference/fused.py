"""The dense blocks of a deployment graph: a layer with its pool and ReLU fused (a fused graph node)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels

__all__ = ["FusedConv2d", "FusedLinear"]


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.pool and self.grid_output and x.device.type == "cpu" and x.dtype == torch.float32:
            return kernels.pool_to_grid(x.detach(), relu=self.relu).permute(3, 0, 1, 2)
        if self.pool:
            x = F.max_pool2d(x, 2)
        return F.relu(x) if self.relu else x

    def extra_repr(self) -> str:
        extra = (", folded=True" if self.folded else "") + (", grid_output=True" if self.grid_output else "")
        return f"pool={self.pool}, relu={self.relu}{extra}"


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
