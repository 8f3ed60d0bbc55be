"""``torch.sparse`` CSR layers: the sparse path on CUDA, for other dtypes, or where no kernel build runs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._utils import pair

__all__ = ["TorchSparseConv2d", "TorchSparseLinear"]


def _csr32(matrix: torch.Tensor) -> torch.Tensor:
    """CSR copy of a dense 2-D matrix with int32 indices (MKL/cuSPARSE's fast path)."""
    csr = matrix.detach().to_sparse_csr()
    return torch.sparse_csr_tensor(
        csr.crow_indices().to(torch.int32),
        csr.col_indices().to(torch.int32),
        csr.values(),
        csr.shape,
        check_invariants=False,  # built by to_sparse_csr, valid by construction
    )


class TorchSparseLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` a ``torch.sparse_csr_tensor`` (MKL on CPU, cuSPARSE on CUDA).

    Batch 1 uses sparse matrix-vector products (``torch.addmv``), larger batches
    ``W @ x^T`` (``torch.addmm``): the CSR matrix must be the left operand.
    """

    def __init__(self, linear: nn.Linear, *, relu: bool = False) -> None:
        super().__init__()
        weight = linear.weight.detach()
        self.out_features, self.in_features = weight.shape
        self.relu = relu
        self.register_buffer("weight", _csr32(weight))
        bias = torch.zeros(self.out_features, dtype=weight.dtype, device=weight.device)
        self.register_buffer("shift", (bias if linear.bias is None else linear.bias.detach()).clone())

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] == 1:  # the latency-critical case, one sample: a sparse matrix-vector product
            out = torch.addmv(self.shift, self.weight, rows[0]).unsqueeze(0)
        else:
            out = torch.addmm(self.shift.unsqueeze(1), self.weight, rows.t().contiguous()).t()
        out = F.relu(out) if self.relu else out
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        nnz = self.weight.values().numel()
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={nnz}, relu={self.relu}"


class TorchSparseConv2d(nn.Module):
    """2-D convolution as a ``torch.sparse`` CSR x im2col product (groups=1, numeric zero padding),
    then the optional 2x2 max pool and ReLU in torch."""

    def __init__(self, conv: nn.Conv2d, *, pool: bool = False, relu: bool = False) -> None:
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("TorchSparseConv2d supports groups=1 with numeric zero padding only")
        weight = conv.weight.detach()
        self.out_channels, self.in_channels, self.kh, self.kw = weight.shape
        self.stride, self.padding, self.dilation = pair(conv.stride), pair(conv.padding), pair(conv.dilation)
        self.pool, self.relu = pool, relu
        self.register_buffer("weight", _csr32(weight.reshape(self.out_channels, -1)))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (ph, pw), (sh, sw), (dh, dw) = self.padding, self.stride, self.dilation
        batch, channels, height, width = x.shape
        padded = F.pad(x, (pw, pw, ph, ph)).contiguous()
        hp, wp = height + 2 * ph, width + 2 * pw
        ho, wo = (hp - dh * (self.kh - 1) - 1) // sh + 1, (wp - dw * (self.kw - 1) - 1) // sw + 1
        if ho <= 0 or wo <= 0:
            raise ValueError(f"input {height}x{width} (padded {hp}x{wp}) is smaller than the dilated kernel")
        # Element (c, ky, kx, b, y, x) of this view is padded[b, c, y*sh + ky*dh, x*sw + kx*dw].
        view = padded.as_strided(
            (channels, self.kh, self.kw, batch, ho, wo), (hp * wp, dh * wp, dw, channels * hp * wp, sh * wp, sw)
        )
        out = torch.sparse.mm(self.weight, view.reshape(channels * self.kh * self.kw, batch * ho * wo))
        out = out.view(self.out_channels, batch, ho, wo).transpose(0, 1)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        if self.pool:
            out = F.max_pool2d(out, 2)
        return (F.relu(out) if self.relu else out).contiguous()

    def extra_repr(self) -> str:
        nnz = self.weight.values().numel()
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size=({self.kh}, {self.kw}), "
            f"stride={self.stride}, padding={self.padding}, nnz={nnz}, pool={self.pool}, relu={self.relu}"
        )
