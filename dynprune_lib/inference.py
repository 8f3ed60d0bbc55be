"""Sparse inference: run pruned layers with CSR kernels where that is faster than dense.

The paper claims pruning speeds up inference but never measures it. A masked
layer computed densely does all the work of an unpruned one, so the speed has
to come from sparse kernels: :class:`SparseLinear` and :class:`SparseConv2d`
keep the weight as a ``torch.sparse_csr_tensor`` (int32 indices: MKL's and
cuSPARSE's fast path) and multiply with ``torch.mv`` / ``torch.sparse.mm``.
Whether that beats dense BLAS/oneDNN depends on density, shape, batch size,
threads and hardware, so :func:`to_sparse_inference` times both per layer on
an example input and keeps the faster one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ._utils import replace_module, time_interleaved
from .layers import DynamicConv2d, DynamicLinear

__all__ = ["LayerChoice", "SparseConv2d", "SparseLinear", "time_interleaved", "to_sparse_inference"]

# Densities at or below which the rule used without an example input picks the
# sparse kernel. From bench/bench_sparse_inference.py on a 2-core AMD EPYC with
# MKL: sparse linear layers won from density 0.1 down at batch 1 and 128;
# sparse convolutions from 0.1 down at batch 1 but only at 0.01 at batch 128
# (oneDNN's dense convolution is efficient there). The rule cannot see the batch
# size, so it takes the values that were never slower.
DENSITY_RULE = {"linear": 0.1, "conv": 0.01}


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


def _masked_weight(module: nn.Module) -> torch.Tensor:
    mask = getattr(module, "mask", None)
    return module.weight.detach() if mask is None else module.weight.detach() * mask


class SparseLinear(nn.Module):
    """Inference-only ``y = x W^T + b`` with ``W`` in CSR.

    Batch 1 uses sparse matrix-vector products (``torch.addmv``), larger batches
    ``W @ x^T`` (``torch.addmm``): the CSR matrix must be the left operand.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", _csr32(weight))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        # What addmv/addmm add to the product: the bias, or zeros (kept to save a call per forward).
        shift = torch.zeros(self.out_features, dtype=weight.dtype, device=weight.device) if bias is None else bias
        self.register_buffer("_shift", shift.detach().clone(), persistent=False)

    @classmethod
    def from_dense(cls, module: nn.Linear) -> SparseLinear:
        """CSR twin of an ``nn.Linear`` or ``DynamicLinear`` (its masked weight)."""
        return cls(_masked_weight(module), module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        if rows.shape[0] == 1:  # the latency-critical case, one sample: a sparse matrix-vector product
            out = torch.addmv(self._shift, self.weight, rows[0]).unsqueeze(0)
        else:
            out = torch.addmm(self._shift.unsqueeze(1), self.weight, rows.t().contiguous()).t()
        return out if x.dim() == 2 else out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        nnz = self.weight.values().numel()
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={nnz}"


class SparseConv2d(nn.Module):
    """Inference-only 2-D convolution as a CSR x im2col product.

    The weight is viewed as (out, in * kh * kw) in CSR and multiplied with the
    im2col matrix of the input. ``F.unfold`` builds that matrix several times
    slower than a plain copy (measured: ~1 ms against ~0.1 ms for 64 channels at
    32x32), so it is built by hand, as one ``as_strided`` view of the padded
    input copied into place. Only ``groups=1`` and zero padding:
    :func:`to_sparse_inference` leaves other convolutions dense.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("SparseConv2d supports groups=1 with numeric zero padding only")
        weight = _masked_weight(conv)
        self.out_channels, self.in_channels, self.kh, self.kw = weight.shape
        self.stride = conv.stride
        self.padding = conv.padding
        self.dilation = conv.dilation
        self.register_buffer("weight", _csr32(weight.reshape(self.out_channels, -1)))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())

    @classmethod
    def from_dense(cls, module: nn.Conv2d) -> SparseConv2d:
        """CSR twin of an ``nn.Conv2d`` or ``DynamicConv2d`` (its masked weight)."""
        return cls(module)

    def _im2col(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """(C*kh*kw, B*Ho*Wo) matrix of input patches, and the output height and width."""
        (ph, pw), (sh, sw), (dh, dw) = self.padding, self.stride, self.dilation
        batch, channels, height, width = x.shape
        padded = F.pad(x, (pw, pw, ph, ph)).contiguous()
        hp, wp = height + 2 * ph, width + 2 * pw
        ho = (hp - dh * (self.kh - 1) - 1) // sh + 1
        wo = (wp - dw * (self.kw - 1) - 1) // sw + 1
        if ho <= 0 or wo <= 0:
            raise ValueError(f"input {height}x{width} (padded {hp}x{wp}) is smaller than the dilated kernel")
        # Element (c, ky, kx, b, y, x) of this view is padded[b, c, y*sh + ky*dh, x*sw + kx*dw].
        view = padded.as_strided(
            (channels, self.kh, self.kw, batch, ho, wo),
            (hp * wp, dh * wp, dw, channels * hp * wp, sh * wp, sw),
        )
        return view.reshape(channels * self.kh * self.kw, batch * ho * wo), ho, wo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        columns, ho, wo = self._im2col(x)
        out = torch.sparse.mm(self.weight, columns)  # (out_channels, B * Ho * Wo)
        out = out.view(self.out_channels, batch, ho, wo).transpose(0, 1)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out.contiguous()

    def extra_repr(self) -> str:
        nnz = self.weight.values().numel()
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size=({self.kh}, {self.kw}), "
            f"stride={self.stride}, padding={self.padding}, nnz={nnz}"
        )


@dataclass
class LayerChoice:
    """What :func:`to_sparse_inference` decided for one layer, and why."""

    name: str
    kind: str  # "linear" or "conv"
    density: float
    sparse: bool
    dense_seconds: float | None = None  # best time of one forward, when timed
    sparse_seconds: float | None = None


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Masked layers that have a sparse kernel (DynamicLinear, DynamicConv2d with groups=1)."""
    found = []
    for name, module in model.named_modules():
        if getattr(module, "mask", None) is None:
            continue
        if isinstance(module, DynamicLinear) or (
            isinstance(module, DynamicConv2d)
            and module.groups == 1
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)
        ):
            found.append((name, module))
    return found


@torch.no_grad()
def to_sparse_inference(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    *,
    repeats: int = 15,
    margin: float = 0.95,
    report: list[LayerChoice] | None = None,
) -> nn.Module:
    """Copy of ``model`` for inference, its sparse layers on CSR kernels where that is faster.

    Every ``DynamicLinear``/``DynamicConv2d`` with a mask becomes either a
    :class:`SparseLinear`/:class:`SparseConv2d` or a plain ``nn.Linear``/
    ``nn.Conv2d`` holding the masked weight (no per-call masking); all other
    modules are copied as they are. Outputs equal the original's within float32
    rounding (1e-5). The copy is in eval mode; it is for inference only (the
    sparse layers have no weight gradient).

    How the kernel is chosen per layer:

    * with ``example_input`` (recommended; give the batch size, device and thread
      count you will run with), each layer's dense and sparse forward are timed on
      the input that layer actually sees (alternating runs, best of at most
      ``repeats`` pairs and about 0.5 s per layer, at least 3 pairs) and sparse
      is kept only if it takes at most ``margin`` times the dense time, so
      near-ties stay dense and, timing noise aside, the converted model is
      never slower than the dense one;
    * without it, a layer goes sparse when its density is at most
      :data:`DENSITY_RULE` (``linear``/``conv``), a rule calibrated on a 2-core CPU.

    ``report``, if given, is extended with one :class:`LayerChoice` per layer.
    """
    model = copy.deepcopy(model).eval()
    candidates = _candidates(model)
    inputs: dict[str, torch.Tensor] = {}
    if example_input is not None and candidates:

        def capture(name: str):
            def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
                inputs.setdefault(name, args[0])  # first call only: a reused layer is timed once

            return hook

        hooks = [module.register_forward_hook(capture(name)) for name, module in candidates]
        try:
            model(example_input)
        finally:
            for hook in hooks:
                hook.remove()

    for name, module in candidates:
        kind = "linear" if isinstance(module, nn.Linear) else "conv"
        dense = module.to_dense().eval()
        sparse = (SparseLinear if kind == "linear" else SparseConv2d).from_dense(module)
        density = sparse.weight.values().numel() / module.weight.numel()
        choice = LayerChoice(name, kind, density, density <= DENSITY_RULE[kind])
        if name in inputs:
            x = inputs[name]
            pair = {"dense": partial(dense, x), "sparse": partial(sparse, x)}
            times = time_interleaved(pair, repeats=repeats, budget_s=0.5, device=x.device)
            # the minimum: other processes only ever add time, so it is the stable estimate
            choice.dense_seconds, choice.sparse_seconds = min(times["dense"]), min(times["sparse"])
            choice.sparse = choice.sparse_seconds <= margin * choice.dense_seconds
        model = replace_module(model, name, sparse if choice.sparse else dense)
        if report is not None:
            report.append(choice)
    return model
