"""Sparse inference: a pruned model rewritten for speed, each layer on the kernel that measures faster.

The paper claims pruning speeds up inference but never measures it. A masked
layer computed densely does all the work of an unpruned one, so the speed has
to come from sparse kernels and from what every deployment runtime does before
it runs a graph. :func:`to_sparse_inference` returns a copy of the model that

1. holds plain layers (masks applied; the dynamic-layer machinery gone);
2. folds each BatchNorm into the convolution before it
   (``torch.nn.utils.fusion.fuse_conv_bn_eval``), also across a 2x2 max pool
   when every BatchNorm scale is positive (then pooling and the affine map
   commute), and fuses a following 2x2 max pool and ReLU into the
   convolution (a ReLU into a linear layer) so they cost no extra pass;
3. runs each convolution and linear layer on the faster of the dense PyTorch
   kernel and a sparse one: :class:`SparseConv2d` / :class:`SparseLinear`
   (Numba kernels of :mod:`dynprune_lib.kernels`), or, where Numba is
   missing, on CUDA or for other dtypes, ``torch.sparse`` CSR
   (:class:`TorchSparseConv2d` / :class:`TorchSparseLinear`).

Steps 1-2 need a model ``torch.fx`` can trace; one it cannot is converted
layer by layer without them (the report says so). Outputs equal the original
model's within float32 rounding (1e-5 relative).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from ._utils import replace_module, time_interleaved
from .layers import densify

__all__ = [
    "LayerChoice",
    "SparseConv2d",
    "SparseLinear",
    "TorchSparseConv2d",
    "TorchSparseLinear",
    "export_onnx",
    "prepare_for_inference",
    "time_interleaved",
    "to_sparse_inference",
]

#: Densities at or below which a layer goes sparse when no example input is given to time it.
#: Chosen as values where the sparse kernels were never slower in bench/bench_sparse_inference.py
#: on a 2-core CPU (the rule cannot see the batch size, so it is conservative).
DENSITY_RULE = {"numba": {"linear": 0.2, "conv": 0.1}, "torch.sparse": {"linear": 0.1, "conv": 0.01}}
#: Work (non-zeros x output elements) below which a kernel runs on one thread: starting the
#: thread pool costs more than it saves.
PARALLEL_WORK = 1 << 16
#: Bytes of the input one tile of the sparse-row kernel reads: they stay in the L2 cache while every
#: output channel of the tile streams its non-zeros over them.
TILE_BYTES = 256 * 1024
#: Outputs one tile accumulates per channel at most (16 KiB of float32: the accumulator stays in L1).
TILE_OUTPUTS = 4096
#: Tiles a layer is cut into at least (output channels split further when the batch gives too few).
TILES = 16


# --------------------------------------------------------------------------- fused dense blocks


class FusedConv2d(nn.Module):
    """A plain convolution followed by an optional 2x2 max pool and ReLU: the dense counterpart
    of :class:`SparseConv2d` with the same epilogue (what a fused graph node computes).

    ``grid_output`` (set by :func:`to_sparse_inference` when the only consumer is a
    :class:`SparseConv2d`): the pool and ReLU run as one Numba pass that writes the
    batch-innermost layout that layer reads (:func:`kernels.pool_to_grid`), saving it a
    transposing copy.
    """

    def __init__(self, conv: nn.Conv2d, *, pool: bool = False, relu: bool = False) -> None:
        super().__init__()
        self.conv, self.pool, self.relu = conv, pool, relu
        self.grid_output = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.pool and self.grid_output and x.device.type == "cpu" and x.dtype == torch.float32:
            return torch.from_numpy(kernels.pool_to_grid(x.detach(), relu=self.relu)).permute(3, 0, 1, 2)
        if self.pool:
            x = F.max_pool2d(x, 2)
        return F.relu(x) if self.relu else x

    def extra_repr(self) -> str:
        return f"pool={self.pool}, relu={self.relu}" + (", grid_output=True" if self.grid_output else "")


class FusedLinear(nn.Module):
    """A plain linear layer followed by an optional ReLU (dense counterpart of :class:`SparseLinear`)."""

    def __init__(self, linear: nn.Linear, *, relu: bool = False) -> None:
        super().__init__()
        self.linear, self.relu = linear, relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        return F.relu(x) if self.relu else x

    def extra_repr(self) -> str:
        return f"relu={self.relu}"


# --------------------------------------------------------------------------- Numba kernels


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _check_input(
    module: nn.Module, x: torch.Tensor, ndims: range | tuple[int, ...], axis: int, features: int, what: str
) -> None:
    """A clear error for what the Numba kernels cannot take: another type, dtype, device, rank or width."""
    name = type(module).__name__
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"{name} computes in float32, got {x.dtype}; convert the input with .float()")
    if x.device.type != "cpu":
        raise ValueError(f"{name} runs on the CPU, got a tensor on {x.device}")
    if x.dim() not in ndims or x.shape[axis] != features:
        raise ValueError(f"{name} expects {what} with {features} on axis {axis}, got shape {tuple(x.shape)}")


@dataclass
class _ConvPlan:
    """How :class:`SparseConv2d` computes one input size, and its scratch buffers (reused, so one
    module must not run in two threads at once)."""

    flat: bool  # the shifted flat grid (stride 1) or an im2col matrix
    top: int
    left: int
    ho: int
    wo: int
    offsets: np.ndarray  # where each non-zero's input starts in ``src`` (flat, unsigned)
    row: int  # elements between two grid rows of ``src`` (grid width x batch)
    strip: int  # grid rows per tile (kernels.sparse_tiles)
    o_block: int  # output channels per tile
    parallel: bool
    padded: torch.Tensor  # (C, Hp, Wp, B), zero borders
    src: np.ndarray  # the padded input (C, Hp, Wp, B), or the im2col matrix (C*kh*kw, Ho*Wo*B), flat


def _tiling(grid_rows: int, row: int, src_rows: int, max_shift: int, out_channels: int, pool: bool) -> tuple[int, int]:
    """Grid rows and output channels per tile of :func:`kernels.sparse_tiles`: as many rows as keep
    the tile's columns of ``src`` within :data:`TILE_BYTES` and its accumulator within
    :data:`TILE_OUTPUTS` (an even number when pooling), and enough tiles (:data:`TILES`) for every
    thread to get work."""
    fit = min((TILE_BYTES // (4 * src_rows) - max_shift) // row, TILE_OUTPUTS // row)
    strip = min(grid_rows, max(2 if pool else 1, fit))
    strip -= strip % 2 if pool else 0
    strips = -(-grid_rows // strip)
    blocks = min(out_channels, -(-TILES // strips))
    return strip, -(-out_channels // blocks)


class SparseConv2d(nn.Module):
    """Inference-only 2-D convolution on its non-zero weights, with the epilogue fused.

    Each output channel keeps its non-zeros as (input channel, kh, kw, value).
    Stride 1 convolves the zero-padded input directly, shifting by each tap on
    a flat grid of the whole batch; other strides (and outputs so small that
    the padding would cost more than an im2col copy) use an im2col matrix.
    Any zero padding (numeric or ``"same"``), dilation and groups (depthwise
    included); bias, 2x2 max pool and ReLU are applied in the same pass.
    Float32 on the CPU; the output is returned as a (B, C, H, W) view of a
    channel-major buffer, which the next sparse layer reads without a copy.
    """

    def __init__(self, conv: nn.Conv2d, *, pool: bool = False, relu: bool = False) -> None:
        super().__init__()
        if not kernels.available():
            raise RuntimeError(f"SparseConv2d needs numba: {kernels.unavailable_reason()}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"SparseConv2d supports zero padding only, got padding_mode={conv.padding_mode!r}")
        weight = conv.weight.detach().float().cpu()
        self.out_channels, per_group, self.kh, self.kw = weight.shape
        self.in_channels, self.groups = conv.in_channels, conv.groups
        self.stride, self.dilation = _pair(conv.stride), _pair(conv.dilation)
        self.padding = conv.padding if isinstance(conv.padding, str) else _pair(conv.padding)
        self.pool, self.relu = pool, relu
        oc, ic, ky, kx = weight.nonzero(as_tuple=True)
        group = oc // (self.out_channels // self.groups)
        counts = torch.bincount(oc, minlength=self.out_channels)
        indptr = torch.zeros(self.out_channels + 1, dtype=torch.int64)
        indptr[1:] = torch.cumsum(counts, 0)
        self.register_buffer("indptr", indptr)
        self.register_buffer("channel", (group * per_group + ic).to(torch.int32))
        self.register_buffer("tap_y", ky.to(torch.int32))
        self.register_buffer("tap_x", kx.to(torch.int32))
        self.register_buffer("values", weight[oc, ic, ky, kx].contiguous())
        bias = torch.zeros(self.out_channels) if conv.bias is None else conv.bias.detach().float().cpu()
        self.register_buffer("bias", bias.contiguous())
        self._plans: dict[tuple[int, int, int], _ConvPlan] = {}  # per input size

    @classmethod
    def from_dense(cls, module: nn.Conv2d, **epilogue: bool) -> SparseConv2d:
        """Sparse twin of an ``nn.Conv2d`` or ``DynamicConv2d`` (its masked weight)."""
        return cls(densify(copy.deepcopy(module)) if getattr(module, "mask", None) is not None else module, **epilogue)

    @property
    def nnz(self) -> int:
        return self.values.numel()

    def _pads(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) zero padding."""
        if self.padding == "valid":
            return 0, 0, 0, 0
        if self.padding == "same":
            total_y, total_x = self.dilation[0] * (self.kh - 1), self.dilation[1] * (self.kw - 1)
            return total_y // 2, total_y - total_y // 2, total_x // 2, total_x - total_x // 2
        (py, px) = self.padding
        return py, py, px, px

    def _plan(self, batch: int, height: int, width: int) -> _ConvPlan:
        key = (batch, height, width)
        if key in self._plans:
            return self._plans[key]
        top, bottom, left, right = self._pads(height, width)
        hp, wp = height + top + bottom, width + left + right
        (sy, sx), (dy, dx) = self.stride, self.dilation
        ho = (hp - dy * (self.kh - 1) - 1) // sy + 1
        wo = (wp - dx * (self.kw - 1) - 1) // sx + 1
        if ho <= 0 or wo <= 0:
            raise ValueError(
                f"input {height}x{width} (padded {hp}x{wp}) is smaller than the dilated kernel "
                f"{dy * (self.kh - 1) + 1}x{dx * (self.kw - 1) + 1}"
            )
        if self.pool and (ho < 2 or wo < 2):
            raise ValueError(f"output {ho}x{wo} is too small for the fused 2x2 max pool")
        flat = (sy, sx) == (1, 1)  # stride 1: the padded input itself, shifted per tap; else im2col
        padded = torch.zeros(self.in_channels, hp, wp, batch)  # borders stay zero: only the inside is rewritten
        if flat:
            shifts = (self.tap_y * dy * wp + self.tap_x * dx) * batch
            src_rows, offsets = self.in_channels, self.channel.to(torch.int64) * (hp * wp * batch) + shifts
            src = padded.view(-1).numpy()
            row, max_shift = wp * batch, int(shifts.max()) if self.nnz else 0
        else:
            src_rows = self.in_channels * self.kh * self.kw
            offsets = (self.channel.to(torch.int64) * (self.kh * self.kw) + self.tap_y * self.kw + self.tap_x) * (
                ho * wo * batch
            )
            src = np.empty(src_rows * ho * wo * batch, dtype=np.float32)
            row, max_shift = wo * batch, 0
        grid_rows = 2 * (ho // 2) if self.pool else ho
        strip, o_block = _tiling(grid_rows, row, src_rows, max_shift, self.out_channels, self.pool)
        offsets = offsets.numpy().astype(np.uint64)
        work = self.nnz * grid_rows * row
        plan = _ConvPlan(flat, top, left, ho, wo, offsets, row, strip, o_block, work >= PARALLEL_WORK, padded, src)
        self._plans[key] = plan
        return plan

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """indptr, values and bias as NumPy views for the kernels (rebuilt when the buffers were replaced)."""
        cache = getattr(self, "_arrays_cache", None)
        if cache is None or cache[0] is not self.values:
            self._arrays_cache = cache = (self.values, self.indptr.numpy(), self.values.numpy(), self.bias.numpy())
        return cache[1:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x, (4,), 1, self.in_channels, "(B, C, H, W) input channels")
        batch, _, height, width = x.shape
        plan = self._plan(batch, height, width)
        grid = x.detach().permute(1, 2, 3, 0)
        if grid.is_contiguous() or grid.numel() < PARALLEL_WORK:  # a plain copy, or too small to matter
            plan.padded[:, plan.top : plan.top + height, plan.left : plan.left + width] = grid
        else:  # from a dense layer (NCHW or channels_last): a transposing copy, blocked for the cache
            kernels.to_grid(x.detach(), plan.top, plan.left, plan.padded.numpy())
        if not plan.flat:
            cols = plan.src.reshape(-1, plan.ho * plan.wo * batch)
            kernels.im2col(
                plan.padded.numpy(), (self.kh, self.kw), self.stride, self.dilation, (plan.ho, plan.wo), cols
            )
        indptr, values, bias = self._arrays()
        ho, wo = (plan.ho // 2, plan.wo // 2) if self.pool else (plan.ho, plan.wo)
        out = np.empty((self.out_channels, ho, wo, batch), dtype=np.float32)
        kernels.sparse_tiles(
            indptr,
            plan.offsets,
            values,
            plan.src,
            bias,
            out,
            row=plan.row,
            strip=plan.strip,
            o_block=plan.o_block,
            pool=self.pool,
            relu=self.relu,
            parallel=plan.parallel,
        )
        # (B, C, H, W) view of the (C, H, W, B) buffer: the next sparse layer reads it with a plain copy
        return torch.from_numpy(out).permute(3, 0, 1, 2)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size=({self.kh}, {self.kw}), stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, nnz={self.nnz}, "
            f"pool={self.pool}, relu={self.relu}"
        )


class SparseLinear(nn.Module):
    """Inference-only ``y = x W^T + b`` (then ReLU if fused) on the non-zero weights.

    Batch 1: a CSR matrix-vector product with four accumulators; larger batches:
    the sparse-row kernel over ``x`` transposed (the batch contiguous). Float32
    on the CPU; inputs of any leading shape ``(..., in_features)``.
    """

    def __init__(self, linear: nn.Linear, *, relu: bool = False) -> None:
        super().__init__()
        if not kernels.available():
            raise RuntimeError(f"SparseLinear needs numba: {kernels.unavailable_reason()}")
        weight = linear.weight.detach().float().cpu()
        self.out_features, self.in_features = weight.shape
        self.relu = relu
        rows, cols = weight.nonzero(as_tuple=True)
        indptr = torch.zeros(self.out_features + 1, dtype=torch.int64)
        indptr[1:] = torch.cumsum(torch.bincount(rows, minlength=self.out_features), 0)
        self.register_buffer("indptr", indptr)
        self.register_buffer("cols", cols.to(torch.int32))
        self.register_buffer("values", weight[rows, cols].contiguous())
        bias = torch.zeros(self.out_features) if linear.bias is None else linear.bias.detach().float().cpu()
        self.register_buffer("bias", bias.contiguous())

    @classmethod
    def from_dense(cls, module: nn.Linear, **epilogue: bool) -> SparseLinear:
        """Sparse twin of an ``nn.Linear`` or ``DynamicLinear`` (its masked weight)."""
        return cls(densify(copy.deepcopy(module)) if getattr(module, "mask", None) is not None else module, **epilogue)

    @property
    def nnz(self) -> int:
        return self.values.numel()

    def _arrays(self) -> tuple[np.ndarray, ...]:
        """The weights as NumPy views for the kernels (rebuilt when the buffers were replaced), the
        column indices as the narrowest unsigned integers (fewer bytes to stream, no sign checks)."""
        cache = getattr(self, "_arrays_cache", None)
        if cache is None or cache[0] is not self.values:
            dtype = np.uint16 if self.in_features <= np.iinfo(np.uint16).max + 1 else np.uint32
            cols = self.cols.numpy()
            self._arrays_cache = cache = (self.values, self.indptr.numpy(), cols.astype(dtype), self.values.numpy())
            self._offsets = {}  # per batch size: where each non-zero's input starts in x^T
        return cache[1:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x, range(1, 9), -1, self.in_features, "(..., in_features) input features")
        indptr, cols, values = self._arrays()
        bias = self.bias.numpy()
        flat = x.detach().reshape(-1, self.in_features)
        batch = flat.shape[0]
        parallel = self.nnz * batch >= PARALLEL_WORK
        if batch == 1:
            out = np.empty(self.out_features, dtype=np.float32)
            kernels.spmv(
                indptr, cols, values, flat[0].contiguous().numpy(), bias, out, relu=self.relu, parallel=parallel
            )
            y = torch.from_numpy(out).unsqueeze(0)
        else:
            if batch not in self._offsets:
                self._offsets[batch] = cols.astype(np.uint64) * np.uint64(batch)
            _, o_block = _tiling(1, batch, self.in_features, 0, self.out_features, False)
            out = np.empty((self.out_features, 1, 1, batch), dtype=np.float32)
            kernels.sparse_tiles(
                indptr,
                self._offsets[batch],
                values,
                flat.t().contiguous().view(-1).numpy(),
                bias,
                out,
                row=batch,
                strip=1,
                o_block=o_block,
                relu=self.relu,
                parallel=parallel,
            )
            y = torch.from_numpy(out.reshape(self.out_features, batch)).t()
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}, relu={self.relu}"


# --------------------------------------------------------------------------- torch.sparse fallback


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
        self.stride, self.padding, self.dilation = _pair(conv.stride), _pair(conv.padding), _pair(conv.dilation)
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


# --------------------------------------------------------------------------- graph preparation


def _is_relu(node, modules) -> bool:
    if node.op == "call_module":
        return type(modules[node.target]) is nn.ReLU
    if node.op == "call_function":
        return node.target in (torch.relu, F.relu, torch.relu_)
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _is_pool2(node, modules) -> bool:
    if node.op != "call_module" or type(modules[node.target]) is not nn.MaxPool2d:
        return False
    pool = modules[node.target]
    stride = pool.kernel_size if pool.stride is None else pool.stride
    return (
        (_pair(pool.kernel_size), _pair(stride), _pair(pool.padding), _pair(pool.dilation))
        == ((2, 2), (2, 2), (0, 0), (1, 1))
        and not pool.ceil_mode
        and not pool.return_indices
    )


def _is_batchnorm(node, modules) -> bool:
    if node.op != "call_module" or type(modules[node.target]) is not nn.BatchNorm2d:
        return False
    bn = modules[node.target]
    return bn.track_running_stats and bn.running_mean is not None


def _only_user(node):
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _bn_scale(bn: nn.BatchNorm2d) -> torch.Tensor:
    weight = bn.weight if bn.affine else torch.ones_like(bn.running_var)
    return weight / torch.sqrt(bn.running_var + bn.eps)


@torch.no_grad()
def _fold_and_fuse(gm, notes: list[str]):
    """Fold BatchNorms into convolutions and fuse pools and ReLUs, in place on the fx graph."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or type(modules.get(node.target)) not in (nn.Conv2d, nn.Linear):
            continue
        layer = modules[node.target]
        tail, consumed, pool, relu, folded = node, [], False, False, False
        if isinstance(layer, nn.Conv2d):
            nxt = _only_user(tail)
            if nxt is not None and _is_batchnorm(nxt, modules):
                layer, folded = fuse_conv_bn_eval(layer, modules[nxt.target]), True
                tail, consumed = nxt, [nxt]
            nxt = _only_user(tail)
            if nxt is not None and _is_pool2(nxt, modules):
                pool, tail, consumed = True, nxt, [*consumed, nxt]
                after = _only_user(tail)
                # maxpool(a z + b) = a maxpool(z) + b per channel when a > 0: the BatchNorm folds through
                if (
                    not folded
                    and after is not None
                    and _is_batchnorm(after, modules)
                    and bool((_bn_scale(modules[after.target]) > 0).all())
                ):
                    layer, folded = fuse_conv_bn_eval(layer, modules[after.target]), True
                    tail, consumed = after, [*consumed, after]
        nxt = _only_user(tail)
        if nxt is not None and _is_relu(nxt, modules):
            relu, tail, consumed = True, nxt, [*consumed, nxt]
        if not consumed:
            fused = FusedConv2d(layer) if isinstance(layer, nn.Conv2d) else FusedLinear(layer)
        elif isinstance(layer, nn.Conv2d):
            fused = FusedConv2d(layer, pool=pool, relu=relu)
        else:
            fused = FusedLinear(layer, relu=relu)
        replace_module(gm, node.target, fused)
        if consumed:
            tail.replace_all_uses_with(node)
            for dead in reversed(consumed):
                gm.graph.erase_node(dead)
        parts = [p for p, on in (("BatchNorm", folded), ("max pool", pool), ("ReLU", relu)) if on]
        if parts:
            notes.append(f"{node.target}: fused {', '.join(parts)}")
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm


def prepare_for_inference(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A deployment copy of ``model``: eval mode, masks applied (plain layers), BatchNorms folded
    and pools and ReLUs fused into :class:`FusedConv2d` / :class:`FusedLinear` where ``torch.fx``
    can trace the model; every convolution and linear layer wrapped as one of those. Returns the
    copy and notes on what was fused (or why the graph could not be rewritten)."""
    import torch.fx

    model = densify(copy.deepcopy(model)).eval()
    notes: list[str] = []
    try:
        graph_module = torch.fx.symbolic_trace(model)
    except Exception as error:  # fx raises many kinds for untraceable Python control flow
        notes.append(
            f"torch.fx could not trace the model ({type(error).__name__}: {str(error)[:120]}); "
            "converted layer by layer without folding BatchNorm or fusing activations"
        )
        warnings.warn(f"dynprune: {notes[-1]}", RuntimeWarning, stacklevel=3)
        for name, module in list(model.named_modules()):
            if type(module) is nn.Conv2d:
                model = replace_module(model, name, FusedConv2d(module))
            elif type(module) is nn.Linear:
                model = replace_module(model, name, FusedLinear(module))
        return model, notes
    return _fold_and_fuse(graph_module, notes), notes


# --------------------------------------------------------------------------- the choice per layer


@dataclass
class LayerChoice:
    """What :func:`to_sparse_inference` decided for one layer, and why."""

    name: str
    kind: str  # "linear" or "conv"
    density: float
    sparse: bool
    dense_seconds: float | None = None  # best time of one forward, when timed
    sparse_seconds: float | None = None
    backend: str = "dense"  # "numba", "torch.sparse" or "dense"
    reason: str = ""
    fused: str = ""  # the epilogue computed with it: "pool", "relu", "pool+relu"


def _sparse_backend(block: nn.Module, device: torch.device, backend: str) -> tuple[str | None, str]:
    """The sparse kernel ``block`` can use (None: none) and why."""
    core = block.conv if isinstance(block, FusedConv2d) else block.linear
    is_conv = isinstance(core, nn.Conv2d)
    if is_conv and core.padding_mode != "zeros":
        return None, f"padding_mode={core.padding_mode!r}: no sparse kernel, kept dense"
    if device.type == "cpu" and core.weight.dtype == torch.float32:
        if backend in ("auto", "numba") and kernels.available():
            return "numba", "numba"
        if backend == "numba":
            raise RuntimeError(f"backend='numba' was asked for, but {kernels.unavailable_reason()}")
        if backend == "auto":
            warnings.warn(
                f"dynprune: {kernels.unavailable_reason()}; sparse layers fall back to torch.sparse, "
                "which is much slower",
                RuntimeWarning,
                stacklevel=4,
            )
        why = "asked for" if backend == "torch.sparse" else "numba missing"
    elif backend == "numba":
        return None, f"the Numba kernels run float32 on the CPU (here {core.weight.dtype} on {device}): kept dense"
    else:
        why = f"{core.weight.dtype} on {device.type}"
    if is_conv and (core.groups != 1 or isinstance(core.padding, str)):
        return None, f"torch.sparse ({why}) handles groups=1 with numeric zero padding only: kept dense"
    return "torch.sparse", why


def _build_sparse(block: nn.Module, backend: str) -> nn.Module:
    if isinstance(block, FusedConv2d):
        cls = SparseConv2d if backend == "numba" else TorchSparseConv2d
        return cls(block.conv, pool=block.pool, relu=block.relu)
    cls = SparseLinear if backend == "numba" else TorchSparseLinear
    return cls(block.linear, relu=block.relu)


class _Captured(Exception):
    pass


def _capture_input(model: nn.Module, block: nn.Module, example_input: torch.Tensor) -> torch.Tensor | None:
    """The input ``block`` receives when ``model`` runs on ``example_input`` (None if it never runs)."""

    def hook(_module, args):
        raise _Captured(args[0])

    handle = block.register_forward_pre_hook(hook)
    try:
        model(example_input)
    except _Captured as captured:
        return captured.args[0]
    finally:
        handle.remove()
    return None


def _consumer(model: nn.Module, name: str, kinds: tuple[type, ...]) -> bool:
    """Whether the layer ``name`` of the fx-traced ``model`` feeds exactly one layer, of one of ``kinds``."""
    graph = getattr(model, "graph", None)
    if graph is None:
        return False
    node = next((n for n in graph.nodes if n.op == "call_module" and n.target == name), None)
    user = None if node is None else _only_user(node)
    return user is not None and user.op == "call_module" and isinstance(model.get_submodule(user.target), kinds)


def _link_grid_outputs(model: nn.Module) -> None:
    """Let each dense pooled block whose only consumer is a Numba :class:`SparseConv2d` write that
    layer's input layout directly (:attr:`FusedConv2d.grid_output`), and no other."""
    for name, block in model.named_modules():
        if isinstance(block, FusedConv2d):
            block.grid_output = block.pool and kernels.available() and _consumer(model, name, (SparseConv2d,))


def _never_slower(
    model: nn.Module,
    prepared: nn.Module,
    all_dense: nn.Module,
    choices: list[LayerChoice],
    x: torch.Tensor,
    repeats: int,
    budget_s: float,
    margin: float,
) -> nn.Module:
    """The whole converted model against the same graph with every layer dense and against the plain
    dense model it came from: layers faster one by one can still lose together (runtimes with thread
    pools of their own take turns), and at batch 1 the graph's own overhead counts. Sparse layers are
    kept only if the whole model takes at most ``margin`` times the faster dense one; the deployment
    graph only if it takes at most ``margin`` times the plain model."""
    plain = densify(copy.deepcopy(model)).eval()
    variants = {"plain": partial(plain, x), "dense": partial(all_dense, x)}
    if any(c.sparse for c in choices):
        variants["sparse"] = partial(prepared, x)
    slowest = max(min(t) for t in time_interleaved(variants, repeats=1).values())
    block = max(1, min(20, int(0.05 / max(slowest, 1e-6))))
    times = time_interleaved(variants, repeats=repeats, budget_s=len(variants) * budget_s, block=block, device=x.device)
    best = {name: min(t) for name, t in times.items()}
    if "sparse" in best:
        ratio = best["sparse"] / min(best["plain"], best["dense"])
        if ratio <= margin:
            return prepared
        for choice in choices:
            if choice.sparse:
                choice.sparse, choice.backend = False, "dense"
                choice.reason += f"; reverted: the whole model took {ratio:.2f}x the dense time"
    return all_dense if best["dense"] <= margin * best["plain"] else plain


@torch.no_grad()
def to_sparse_inference(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    *,
    repeats: int = 15,
    margin: float = 0.85,
    budget_s: float = 0.3,
    backend: str = "auto",
    report: list[LayerChoice] | None = None,
) -> nn.Module:
    """Copy of ``model`` for inference, each convolution and linear layer on its faster kernel.

    The copy is :func:`prepare_for_inference`'s (masks applied, BatchNorm
    folded, pools and ReLUs fused); then each layer is either kept dense
    (PyTorch's kernel) or replaced by its sparse twin:

    * with ``example_input`` (recommended; give the batch size, device and thread
      count you will run with), both are timed on the input that layer actually
      sees, in alternation (best of at most ``repeats`` pairs, about
      ``budget_s`` seconds per layer), and sparse is kept only if it takes at
      most ``margin`` times the dense time, so near-ties stay dense and, timing
      noise aside, the converted model is never slower than the dense one (the
      default leaves room for the noise of a busy 2-core machine, where single
      timings vary by 10-30 %);
    * without it, a layer goes sparse when its density is at most
      :data:`DENSITY_RULE` for its kind and backend.

    With ``example_input`` the whole result is then timed against the plain dense
    model and the all-dense deployment graph: sparse layers stay only if the
    whole model is at most ``margin`` times the faster of the two, and without
    them the deployment graph is returned only if it beats the plain dense model
    (``densify`` of a copy) by that margin, else that plain model is.

    ``backend``: ``"auto"`` (Numba on CPU float32, else ``torch.sparse``),
    ``"numba"`` (error where it cannot run) or ``"torch.sparse"``. The copy is
    in eval mode and for inference only (no gradients). ``report``, if given, is
    extended with one :class:`LayerChoice` per layer: backend, timings and why.
    """
    if backend not in ("auto", "numba", "torch.sparse"):
        raise ValueError(f"backend must be 'auto', 'numba' or 'torch.sparse', got {backend!r}")
    prepared, notes = prepare_for_inference(model)
    all_dense = copy.deepcopy(prepared) if example_input is not None else None
    fused = {n.split(":")[0]: n.split(": fused ")[1] for n in notes if ": fused " in n}
    blocks = [(name, m) for name, m in prepared.named_modules() if isinstance(m, (FusedConv2d, FusedLinear))]
    choices: list[LayerChoice] = []
    for name, block in blocks:
        core = block.conv if isinstance(block, FusedConv2d) else block.linear
        kind = "conv" if isinstance(block, FusedConv2d) else "linear"
        device = core.weight.device
        density = float((core.weight != 0).sum()) / core.weight.numel()
        chosen, reason = _sparse_backend(block, device, backend)
        choice = LayerChoice(name, kind, density, False, backend="dense", reason=reason, fused=fused.get(name, ""))
        if chosen is not None:
            why = "" if reason == chosen else f"{chosen} ({reason}); "
            sparse = _build_sparse(block, chosen)
            x = None if example_input is None else _capture_input(prepared, block, example_input)
            if x is not None:
                # a pooled dense block is timed as it would run before a sparse consumer (its usual one)
                block.grid_output = chosen == "numba" and _consumer(prepared, name, (FusedConv2d, SparseConv2d))
                pair = {"dense": partial(block, x), "sparse": partial(sparse, x)}
                times = time_interleaved(pair, repeats=repeats, budget_s=budget_s, device=device)
                # the minimum: other processes only ever add time, so it is the stable estimate
                choice.dense_seconds, choice.sparse_seconds = min(times["dense"]), min(times["sparse"])
                choice.sparse = choice.sparse_seconds <= margin * choice.dense_seconds
                ratio = choice.sparse_seconds / choice.dense_seconds
                choice.reason = f"{why}timed: sparse {ratio:.2f}x the dense time (kept sparse at <= {margin:g}x)"
            elif example_input is None:
                limit = DENSITY_RULE[chosen][kind]
                choice.sparse = density <= limit
                rule = f"{'<=' if choice.sparse else '>'} {limit}"
                choice.reason = f"{why}no example input: density {density:.3f} {rule}"
            else:
                choice.reason = f"{why}not reached by the example input: kept dense"
            if choice.sparse:
                choice.backend = chosen
                prepared = replace_module(prepared, name, sparse)
        choices.append(choice)
    _link_grid_outputs(prepared)
    if all_dense is not None:
        prepared = _never_slower(model, prepared, all_dense, choices, example_input, repeats, budget_s, margin)
    if report is not None:
        report.extend(choices)
    return prepared


# --------------------------------------------------------------------------- ONNX


def export_onnx(model: nn.Module, path, example_input: torch.Tensor, *, dynamic_batch: bool = True, opset: int = 18):
    """Write ``model`` for deployment to ``path`` as ONNX: masks applied, the dynamic-layer
    machinery gone, BatchNorm folded, eval mode; the batch dimension dynamic.

    ONNX stores every weight densely, zeros included, so the file is as large as
    the dense model's: for small files use :func:`dynprune_lib.csr.save_sparse`.
    ONNX Runtime (``pip install onnxruntime``) runs it. Returns the path.
    """
    from pathlib import Path

    prepared, _ = prepare_for_inference(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes are not the user's concern
        torch.onnx.export(
            prepared,
            (example_input,),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes=dynamic,
            opset_version=opset,
            dynamo=False,
        )
    return path
