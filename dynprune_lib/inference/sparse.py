"""Sparse layers on the kernels of :mod:`dynprune_lib.kernels`: the compiled build, or its Numba twin."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import kernels
from .._utils import pair
from ..kernels import _numba
from ..layers import densify

__all__ = ["SparseConv2d", "SparseLinear"]


def _check_input(
    module: nn.Module, x: torch.Tensor, ndims: range | tuple[int, ...], axis: int, features: int, what: str
) -> None:
    """A clear error for what the kernels cannot take: another type, dtype, device, rank or width."""
    name = type(module).__name__
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"{name} computes in float32, got {x.dtype}; convert the input with .float()")
    if x.device.type != "cpu":
        raise ValueError(f"{name} runs on the CPU, got a tensor on {x.device}")
    if x.dim() not in ndims or x.shape[axis] != features:
        raise ValueError(f"{name} expects {what} with {features} on axis {axis}, got shape {tuple(x.shape)}")


def _resolve(module: nn.Module, backend: str) -> str:
    chosen = kernels.backend(backend)
    if chosen is None:
        raise RuntimeError(f"{type(module).__name__} needs a kernel build: {kernels.unavailable_reason(backend)}")
    return chosen


class _KernelLayer(nn.Module):
    """What both kernel layers share: the twin built from a dense (or dynamic) layer, the count of
    non-zeros, and the compiled twin (:meth:`native`), rebuilt when the buffers were replaced or
    changed in place (``load_state_dict`` copies into them) and never copied or pickled."""

    _native_key: tuple | None = None
    _native_object = None

    @classmethod
    def from_dense(cls, module: nn.Module, **options):
        """The sparse twin of a plain or dynamic layer (its masked weight)."""
        return cls(densify(copy.deepcopy(module)) if getattr(module, "mask", None) is not None else module, **options)

    @property
    def nnz(self) -> int:
        return self.values.numel()

    def _native_buffers(self) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def _build_native(self):
        raise NotImplementedError

    def native(self):
        """The compiled layer (``backend == "compiled"``), which :class:`SparseChain` links to others."""
        key = tuple((id(b), b._version) for b in self._native_buffers())
        if key != self._native_key:
            self._native_object, self._native_key = self._build_native(), key
        return self._native_object

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        state.pop("_native_object", None)
        state.pop("_native_key", None)
        return state


@dataclass
class _ConvPlan:
    """How the Numba kernels compute one input size, and its scratch buffers (reused, so one
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


class SparseConv2d(_KernelLayer):
    """Inference-only 2-D convolution on its non-zero weights, with the epilogue fused.

    Each output channel keeps its non-zeros as (input channel, kh, kw, value).
    Stride 1 convolves the zero-padded input directly, shifting by each tap on
    a flat grid of the whole batch; other strides use an im2col matrix. Any
    zero padding (numeric or ``"same"``), dilation and groups (depthwise
    included); bias, 2x2 max pool and ReLU are applied in the same pass.
    Float32 on the CPU; the output is returned as a (B, C, H, W) view of a
    channel-major buffer, which the next sparse layer reads without a copy.

    ``backend``: ``"auto"`` (the compiled kernels where built, else Numba with a
    warning), ``"compiled"`` or ``"numba"``; :attr:`backend` holds the one in use.
    """

    def __init__(self, conv: nn.Conv2d, *, pool: bool = False, relu: bool = False, backend: str = "auto") -> None:
        super().__init__()
        self.backend = _resolve(self, backend)
        if conv.padding_mode != "zeros":
            raise ValueError(f"SparseConv2d supports zero padding only, got padding_mode={conv.padding_mode!r}")
        weight = conv.weight.detach().float().cpu()
        self.out_channels, per_group, self.kh, self.kw = weight.shape
        self.in_channels, self.groups = conv.in_channels, conv.groups
        self.stride, self.dilation = pair(conv.stride), pair(conv.dilation)
        self.padding = conv.padding if isinstance(conv.padding, str) else pair(conv.padding)
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
        self._plans: dict[tuple[int, int, int], _ConvPlan] = {}  # per input size (Numba)

    def _pads(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) zero padding."""
        if self.padding == "valid":
            return 0, 0, 0, 0
        if self.padding == "same":
            total_y, total_x = self.dilation[0] * (self.kh - 1), self.dilation[1] * (self.kw - 1)
            return total_y // 2, total_y - total_y // 2, total_x // 2, total_x - total_x // 2
        (py, px) = self.padding
        return py, py, px, px

    def _build_native(self):
        return kernels.compiled().SparseConv(
            self.indptr,
            self.channel,
            self.tap_y,
            self.tap_x,
            self.values,
            self.bias,
            self.in_channels,
            self.kh,
            self.kw,
            list(self.stride),
            list(self.dilation),
            list(self._pads()),
            self.pool,
            self.relu,
        )

    def _native_buffers(self) -> tuple[torch.Tensor, ...]:
        return self.indptr, self.channel, self.tap_y, self.tap_x, self.values, self.bias

    def _plan(self, batch: int, height: int, width: int) -> _ConvPlan:
        key = (batch, height, width)
        if key in self._plans:
            return self._plans[key]
        top, bottom, left, right = self._pads()
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
        strip, o_block = _numba.plan_tiles(grid_rows, row, src_rows, max_shift, self.out_channels, self.pool)
        offsets = offsets.numpy().astype(np.uint64)
        work = self.nnz * grid_rows * row
        parallel = work >= _numba.PARALLEL_WORK
        plan = _ConvPlan(flat, top, left, ho, wo, offsets, row, strip, o_block, parallel, padded, src)
        self._plans[key] = plan
        return plan

    def _forward_numba(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        plan = self._plan(batch, height, width)
        grid = x.permute(1, 2, 3, 0)
        if grid.is_contiguous() or grid.numel() < _numba.PARALLEL_WORK:  # a plain copy, or too small to matter
            plan.padded[:, plan.top : plan.top + height, plan.left : plan.left + width] = grid
        else:  # from a dense layer (NCHW or channels_last): a transposing copy, blocked for the cache
            kernels.to_grid(x, plan.top, plan.left, plan.padded.numpy())
        if not plan.flat:
            cols = plan.src.reshape(-1, plan.ho * plan.wo * batch)
            kernels.im2col(
                plan.padded.numpy(), (self.kh, self.kw), self.stride, self.dilation, (plan.ho, plan.wo), cols
            )
        ho, wo = (plan.ho // 2, plan.wo // 2) if self.pool else (plan.ho, plan.wo)
        out = np.empty((self.out_channels, ho, wo, batch), dtype=np.float32)
        kernels.sparse_tiles(
            self.indptr.numpy(),
            plan.offsets,
            self.values.numpy(),
            plan.src,
            self.bias.numpy(),
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x, (4,), 1, self.in_channels, "(B, C, H, W) input channels")
        if self.backend == "compiled":
            return self.native().forward(x.detach())
        return self._forward_numba(x.detach())

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size=({self.kh}, {self.kw}), stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, nnz={self.nnz}, "
            f"pool={self.pool}, relu={self.relu}, backend={self.backend!r}"
        )


class SparseLinear(_KernelLayer):
    """Inference-only ``y = x W^T + b`` (then ReLU if fused) on the non-zero weights.

    Batch 1: a CSR matrix-vector product; larger batches: the sparse-row kernel
    over ``x`` transposed (the batch contiguous). Float32 on the CPU; inputs of
    any leading shape ``(..., in_features)``. ``backend`` as for :class:`SparseConv2d`.
    """

    def __init__(self, linear: nn.Linear, *, relu: bool = False, backend: str = "auto") -> None:
        super().__init__()
        self.backend = _resolve(self, backend)
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

    def _build_native(self):
        ext = kernels.compiled()
        return ext.SparseLinear(self.indptr, self.cols, self.values, self.bias, self.in_features, self.relu)

    def _native_buffers(self) -> tuple[torch.Tensor, ...]:
        return self.indptr, self.cols, self.values, self.bias

    def _arrays(self) -> tuple[np.ndarray, ...]:
        """The weights as NumPy views for the Numba kernels (rebuilt when the buffers were replaced), the
        column indices as the narrowest unsigned integers (fewer bytes to stream, no sign checks)."""
        cache = getattr(self, "_arrays_cache", None)
        if cache is None or cache[0] is not self.values:
            dtype = np.uint16 if self.in_features <= np.iinfo(np.uint16).max + 1 else np.uint32
            cols = self.cols.numpy()
            self._arrays_cache = cache = (self.values, self.indptr.numpy(), cols.astype(dtype), self.values.numpy())
            self._offsets = {}  # per batch size: where each non-zero's input starts in x^T
        return cache[1:]

    def _forward_numba(self, flat: torch.Tensor) -> torch.Tensor:
        indptr, cols, values = self._arrays()
        bias = self.bias.numpy()
        batch = flat.shape[0]
        parallel = self.nnz * batch >= _numba.PARALLEL_WORK
        if batch == 1:
            out = np.empty(self.out_features, dtype=np.float32)
            kernels.spmv(
                indptr, cols, values, flat[0].contiguous().numpy(), bias, out, relu=self.relu, parallel=parallel
            )
            return torch.from_numpy(out).unsqueeze(0)
        if batch not in self._offsets:
            self._offsets[batch] = cols.astype(np.uint64) * np.uint64(batch)
        _, o_block = _numba.plan_tiles(1, batch, self.in_features, 0, self.out_features, False)
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
        return torch.from_numpy(out.reshape(self.out_features, batch)).t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x, range(1, 9), -1, self.in_features, "(..., in_features) input features")
        flat = x.detach().reshape(-1, self.in_features)
        y = self.native().forward(flat) if self.backend == "compiled" else self._forward_numba(flat)
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}, "
            f"relu={self.relu}, backend={self.backend!r}"
        )
