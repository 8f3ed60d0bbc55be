"""Dynamic sparse layers: drop-in ``nn.Linear`` / ``nn.Conv2d`` with a pruning mask.

The paper's building blocks (``DynamicLinear``, ``DynamicConv2d``) follow the
interface of the DSR reference implementation (Mostafa & Wang 2019,
arXiv:1902.05967, ``reparameterized_layers.py``): a layer takes an
``initial_sparsity``, draws a random mask at that sparsity, and its sparsity can
be changed later, during training (by a scheduler, see
:mod:`dynprune_lib.schedulers`) and at inference (:meth:`set_sparsity`).

Contract shared with the CSR codec and the schedulers: a *sparse layer* is a
``DynamicLinear``/``DynamicConv2d`` built with ``sparse=True``; its ``mask``
buffer is a ``torch.bool`` tensor of ``weight.shape`` and ``weight`` is exactly
zero wherever ``mask`` is ``False``.
"""

from __future__ import annotations

import fnmatch
import math
import numbers
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _small_conv
from ._utils import check_bool, check_choice, check_int, check_sparsity, n_zeros, random_mask, replace_module

__all__ = [
    "DynamicConv2d",
    "DynamicLinear",
    "densify",
    "erk_sparsities",
    "global_magnitude_zeros",
    "mask_summary",
    "reset_optimizer_state",
    "sparse_modules",
    "sparsify",
]

MaskInit = Literal["magnitude", "random"]


# --------------------------------------------------------------------------- #
# optimizer helper
# --------------------------------------------------------------------------- #
@torch.no_grad()
def reset_optimizer_state(optimizer: torch.optim.Optimizer | None, param: Tensor, positions: Tensor) -> None:
    """Zero the per-weight optimizer state of ``param`` at ``positions`` (bool, param.shape).

    Covers every state tensor shaped like the parameter (SGD ``momentum_buffer``,
    Adam/AdamW ``exp_avg``/``exp_avg_sq``/``max_exp_avg_sq``, ...). Without this a
    just-pruned weight would be pushed off zero by its stale momentum, and a
    regrown one would start with another weight's history.
    """
    if optimizer is None:
        return
    state = optimizer.state.get(param)
    if not state:
        return
    for value in state.values():
        if isinstance(value, Tensor) and value.shape == param.shape:
            value.masked_fill_(positions.to(value.device), 0)


# --------------------------------------------------------------------------- #
# the layers
# --------------------------------------------------------------------------- #
class _DynamicSparseMixin:
    """Mask bookkeeping shared by :class:`DynamicLinear` and :class:`DynamicConv2d`.

    Keeping masked weights at exactly zero: the forward pass uses
    ``weight * mask``, so the gradient w.r.t. ``weight`` is exactly zero under the
    mask; SGD (with momentum, weight decay, Nesterov), Adam/AdamW (with weight
    decay, amsgrad) and the like then leave a zero weight with zero gradient and
    zero optimizer state at zero. The only way a masked weight can move is stale
    optimizer state from before it was pruned, so every mask change made by this
    library zeroes that state (:func:`reset_optimizer_state`; pass ``optimizer=``
    to :meth:`set_sparsity` when calling it during training).
    """

    weight: nn.Parameter
    mask: Tensor | None
    pruned_values: Tensor | None
    keep_dense_grad: bool
    dense_grad: Tensor | None

    def _init_sparse_state(self, initial_sparsity: object, sparse: bool) -> None:
        self.sparse = check_bool(sparse, "sparse")
        self.initial_sparsity = check_sparsity(initial_sparsity, "initial_sparsity")
        if sparse:
            mask = torch.ones(self.weight.shape, dtype=torch.bool, device=self.weight.device)
            self.register_buffer("mask", mask)
        else:
            self.register_buffer("mask", None)
        # Values removed by set_sparsity, kept so that lowering the sparsity can bring
        # them back. Allocated on first use; not part of state_dict (see set_sparsity).
        self.register_buffer("pruned_values", None, persistent=False)
        # RigL support: when keep_dense_grad is True the next backward stores
        # dL/d(weight * mask) (the "dense" gradient) in self.dense_grad.
        self.keep_dense_grad = False
        self.dense_grad = None
        self._mask_cache = self._mask_cache_src = self._mask_cache_key = None
        if sparse:
            self._init_random_mask()

    # -- initialisation ------------------------------------------------------ #
    @torch.no_grad()
    def _init_random_mask(self) -> None:
        """Random mask at ``initial_sparsity`` (DSR init), masked weights set to zero.

        Drawn from torch's global CPU generator (like the weight initialisation
        of ``nn.Linear``, seeded by ``torch.manual_seed``), whatever the device.
        """
        if self.mask is None or self.weight.is_meta:
            return
        n_zero = n_zeros(self.initial_sparsity, self.weight.numel())
        self.mask.copy_(random_mask(self.mask.shape, n_zero, device=self.mask.device))
        self.weight.masked_fill_(~self.mask, 0)
        self.pruned_values = None

    def reset_parameters(self) -> None:  # called by nn.Linear/nn.Conv2d __init__ too
        if self.weight.device.type in ("cpu", "meta"):
            super().reset_parameters()  # type: ignore[misc]
        else:
            # Initialised on the CPU, as a layer built there and moved would be: the same seed then gives
            # the same weights, and the same CPU random stream for every later mask, on every device
            # (a CUDA layer's own init would draw from the CUDA generator and leave the CPU one behind).
            with torch.no_grad():
                params = [p for p in (self.weight, getattr(self, "bias", None)) if p is not None]
                on_device = [p.data for p in params]
                for p in params:
                    p.data = torch.empty_like(p, device="cpu")
                super().reset_parameters()  # type: ignore[misc]
                for p, data in zip(params, on_device):
                    data.copy_(p.data)
                    p.data = data
        if getattr(self, "mask", None) is not None:
            self._init_random_mask()

    # -- forward helpers ----------------------------------------------------- #
    def _mask_like(self, weight: Tensor) -> Tensor:
        """``mask`` in ``weight``'s dtype, cached: ``float * bool`` is many times slower
        than ``float * float`` on CPU. Refreshed whenever ``mask`` is replaced or changed
        in place (tracked by its version counter), so editing the mask stays safe."""
        mask = self.mask
        if torch.compiler.is_compiling():
            # A compiled graph fuses the cast into the product; the cache's version-counter check
            # would break the graph there (a data-dependent guard) and recompile every block.
            return mask.to(dtype=weight.dtype, device=weight.device)
        key = (mask._version, weight.dtype, weight.device)
        if self._mask_cache_src is not mask or self._mask_cache_key != key:
            self._mask_cache = mask.to(dtype=weight.dtype, device=weight.device)
            self._mask_cache_src, self._mask_cache_key = mask, key
        return self._mask_cache

    def _masked_weight(self) -> Tensor:
        if self.mask is None:
            return self.weight
        weight = self.weight
        device = weight.device.type
        if torch.is_autocast_enabled(device) and weight.dtype == torch.float32:
            # Under autocast the layer computes with a lower-precision copy of the weight:
            # masking that copy gives the same values as casting the masked weight (the mask
            # is 0 or 1) and moves half the bytes, forward and backward (much of an MLP step).
            weight = weight.to(torch.get_autocast_dtype(device))
        weight = weight * self._mask_like(weight)
        if self.keep_dense_grad and weight.requires_grad:
            weight.register_hook(self._store_dense_grad)
        return weight

    def _store_dense_grad(self, grad: Tensor) -> None:
        grad = grad.detach().to(self.weight.dtype)  # float32 under autocast too, as weight.grad
        # A layer used twice in one forward gets the sum, like weight.grad would.
        self.dense_grad = grad.clone() if self.dense_grad is None else self.dense_grad + grad

    # -- sparsity ------------------------------------------------------------ #
    @property
    def sparsity(self) -> float:
        """Actual fraction of zeros in ``weight`` (what CSR storage size depends on)."""
        return float((self.weight == 0).sum().item()) / self.weight.numel()

    @property
    def mask_sparsity(self) -> float:
        """Fraction of masked-out positions (0.0 for ``sparse=False``).

        Equal to :attr:`sparsity` unless a live weight is exactly zero, which happens
        right after a DSR/SET/RigL regrowth (new weights start at zero).
        """
        if self.mask is None:
            return 0.0
        return float((~self.mask).sum().item()) / self.mask.numel()

    @torch.no_grad()
    def set_sparsity(
        self,
        sparsity: float,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        """Re-prune by magnitude so that ``round(sparsity * weight.numel())`` weights are masked.

        Works during training and at inference (paper, sec. 2). The mask afterwards
        holds exactly ``round(s * n)`` zeros (the rounding of
        ``torch.nn.utils.prune``; at most ``n - 1``: a layer keeps one weight), so
        :attr:`mask_sparsity` is within ``0.5 / n`` of ``sparsity``; :attr:`sparsity`
        equals it unless a live weight is exactly 0.

        Raising sparsity masks the live weights of smallest magnitude (ties broken
        as ``torch.topk``, so a dense layer gets exactly the mask of
        ``torch.nn.utils.prune.l1_unstructured``). The removed values are kept in
        the non-persistent buffer ``pruned_values``.

        Lowering sparsity brings weights back, largest ``|value|`` first, *with the
        values they had when set_sparsity removed them* (e.g. set_sparsity(0.9)
        then set_sparsity(0.5) at inference restores the 0.5 model exactly). Only
        values removed by set_sparsity (or MagnitudePruning) are kept; positions
        that never held a weight (random initial mask) or whose weight a DSR/SET/
        RigL update dropped come back as zeros, at random positions (``generator``).
        ``pruned_values`` is not saved in ``state_dict`` (a checkpoint or the CSR
        export holds only live weights), so after ``load_state_dict`` lowering
        sparsity brings back zeros. ``deepcopy``/pickling keep it.

        Args:
            sparsity: target fraction of masked weights, in [0, 1).
            optimizer: when called during training, the optimizer whose per-weight
                state (momentum, Adam moments) is zeroed at every changed position.
            generator: RNG for choosing positions that come back as zeros.
        """
        sparsity = check_sparsity(sparsity, "sparsity")
        if self.mask is None:
            if sparsity != 0.0:
                raise ValueError(
                    "sparsity must be 0.0 for a layer built with sparse=False "
                    f"(it has no mask), got {sparsity!r}; build it with sparse=True or use sparsify()"
                )
            return
        new_mask = self.magnitude_mask(n_zeros(sparsity, self.weight.numel()), generator=generator)
        self.apply_mask(new_mask, optimizer=optimizer, keep_pruned=True, restore=True)

    @torch.no_grad()
    def apply_mask(
        self,
        new_mask: Tensor,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        keep_pruned: bool = False,
        restore: bool = False,
    ) -> tuple[int, int]:
        """Install ``new_mask`` (bool, the weight's shape); return ``(n_pruned, n_grown)``.

        The one way masks change, used by :meth:`set_sparsity` and every
        scheduler (write your own on top of it). Pruned weights are set to zero
        (their values go to ``pruned_values`` when ``keep_pruned``). Grown
        weights start at zero, as a regrowth of DSR (the reference's
        ``reinitialize_unused``), SET and RigL does; only with ``restore``
        (:meth:`set_sparsity` lowering the sparsity on purpose) do they take
        the value kept when they were pruned. Optimizer state of changed
        positions is reset.
        """
        if self.mask is None:
            raise ValueError("apply_mask needs a layer built with sparse=True (this one has no mask)")
        new_mask = new_mask.to(device=self.mask.device, dtype=torch.bool).view_as(self.mask)
        old_mask = self.mask
        pruned = old_mask & ~new_mask
        grown = new_mask & ~old_mask
        n_pruned, n_grown = int(pruned.sum().item()), int(grown.sum().item())
        if keep_pruned and n_pruned:
            if self.pruned_values is None:
                self.pruned_values = torch.zeros_like(self.weight)
            self.pruned_values[pruned] = self.weight[pruned]
        if n_grown:
            if restore and self.pruned_values is not None:
                self.weight[grown] = self.pruned_values[grown]
            else:
                self.weight.masked_fill_(grown, 0)
            if self.pruned_values is not None:  # a kept value belongs to the weight that was pruned, not to a new one
                self.pruned_values.masked_fill_(grown, 0)
        self.mask.copy_(new_mask)
        self.weight.masked_fill_(~new_mask, 0)
        if n_pruned or n_grown:
            reset_optimizer_state(optimizer, self.weight, pruned | grown)
        return n_pruned, n_grown

    @torch.no_grad()
    def magnitude_mask(self, n_zero: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Mask with exactly ``n_zero`` False: drop the smallest live ``|w|``, or revive the largest kept.

        Reviving brings back values kept in ``pruned_values`` (largest first),
        then random positions (``generator``) that come back as zeros.
        """
        if self.mask is None:
            raise ValueError("magnitude_mask needs a layer built with sparse=True (this one has no mask)")
        n_zero = check_int(n_zero, "n_zero", 0)
        mask = self.mask.reshape(-1)
        numel = mask.numel()
        if n_zero >= numel:
            raise ValueError(f"n_zero={n_zero} would mask every one of the layer's {numel} weights")
        n_zero_now = numel - int(mask.sum().item())
        if n_zero == n_zero_now:
            return self.mask.clone()
        if n_zero > n_zero_now:  # prune live weights of smallest magnitude
            score = self.weight.detach().abs().reshape(-1).clone()
            score[~mask] = -1.0  # already masked: always among the smallest
            idx = torch.topk(score, k=n_zero, largest=False).indices
            new = torch.ones_like(mask)
            new[idx] = False
            return new.view_as(self.mask)
        # revive: largest kept |value| first, then random positions (as zeros)
        n_revive = n_zero_now - n_zero
        dead = (~mask).nonzero().squeeze(1)
        if self.pruned_values is not None:
            kept = self.pruned_values.detach().abs().reshape(-1)[dead]
        else:
            kept = torch.zeros(dead.numel(), device=dead.device)
        n_kept = int((kept > 0).sum().item())
        order = torch.argsort(kept, descending=True, stable=True)
        chosen = order[: min(n_revive, n_kept)]
        if n_revive > n_kept:
            rest = order[n_kept:]
            perm = torch.randperm(rest.numel(), generator=generator).to(rest.device)
            chosen = torch.cat([chosen, rest[perm[: n_revive - n_kept]]])
        new = mask.clone()
        new[dead[chosen]] = True
        return new.view_as(self.mask)

    # -- state dict ---------------------------------------------------------- #
    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        key = prefix + "mask"
        if self.mask is not None and key in state_dict:
            mask = state_dict[key]
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
                got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
                raise TypeError(f"state_dict[{key!r}] must be a torch.bool tensor, got {got}")
            if mask.shape != self.weight.shape:
                raise ValueError(
                    f"state_dict[{key!r}] must have the weight's shape {tuple(self.weight.shape)}, "
                    f"got {tuple(mask.shape)}"
                )
        super()._load_from_state_dict(  # type: ignore[misc]
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self.pruned_values = None  # kept values belong to the weights just replaced
        self.dense_grad = None
        if self.mask is not None:
            with torch.no_grad():  # the mask is authoritative
                self.weight.masked_fill_(~self.mask, 0)

    def _sparse_repr(self) -> str:
        return f"sparse={self.sparse}, sparsity={self.sparsity:.4f}"


class DynamicLinear(_DynamicSparseMixin, nn.Linear):
    """``nn.Linear`` whose weight is masked by a boolean ``mask`` buffer (paper sec. 2; DSR).

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        initial_sparsity: fraction of weights masked at construction, drawn at random
            (DSR init), in [0, 1).
        sparse: ``False`` gives a plain dense layer with the same API (no mask, sparsity
            0; ``initial_sparsity`` is then only recorded). The DSR reference used tied
            (HashedNet) weights there; we use a dense weight as the comparison baseline.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        initial_sparsity: float = 0.0,
        bias: bool = True,
        sparse: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_int(in_features, "in_features", 1)
        check_int(out_features, "out_features", 1)
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_sparse_state(initial_sparsity, sparse)

    def forward(self, input: Tensor) -> Tensor:
        return F.linear(input, self._masked_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._sparse_repr()}"

    @classmethod
    def from_dense(
        cls,
        module: nn.Linear,
        sparsity: float = 0.0,
        *,
        mask_init: MaskInit = "magnitude",
        generator: torch.Generator | None = None,
    ) -> DynamicLinear:
        """Sparse twin of a (trained) ``nn.Linear``: same weights, mask by magnitude (or random)."""
        if not isinstance(module, nn.Linear):
            raise TypeError(f"module must be an nn.Linear, got {type(module).__name__}")
        new = cls(
            module.in_features,
            module.out_features,
            0.0,
            module.bias is not None,
            device=module.weight.device,
            dtype=module.weight.dtype,
        )
        return _copy_and_mask(module, new, sparsity, mask_init, generator)

    def to_dense(self) -> nn.Linear:
        """Plain ``nn.Linear`` holding the masked weights."""
        out = nn.Linear(
            self.in_features,
            self.out_features,
            self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        return _copy_dense(self, out)


class DynamicConv2d(_DynamicSparseMixin, nn.Conv2d):
    """``nn.Conv2d`` whose weight is masked by a boolean ``mask`` buffer (paper sec. 2; DSR).

    Arguments as ``nn.Conv2d`` plus ``initial_sparsity`` and ``sparse`` (see
    :class:`DynamicLinear`). The mask is per weight (the reference's default
    ``sub_kernel_granularity=4``). On the CPU, a stride-1 "same" convolution of an
    input with fewer pixels than the kernel has taps (DynamicCNN's 2x2 last stage)
    is computed as one matrix product (:mod:`dynprune_lib._small_conv`): the same
    values up to rounding, about twice as fast there.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        initial_sparsity: float = 0.0,
        sparse: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_int(in_channels, "in_channels", 1)
        check_int(out_channels, "out_channels", 1)
        ks = (kernel_size, kernel_size) if isinstance(kernel_size, numbers.Integral) else tuple(kernel_size)
        if any(isinstance(k, bool) or not isinstance(k, numbers.Integral) or k <= 0 for k in ks):
            raise ValueError(f"kernel_size must be positive int(s), got {kernel_size!r}")
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
        )
        self._init_sparse_state(initial_sparsity, sparse)

    def forward(self, input: Tensor) -> Tensor:
        weight = self._masked_weight()
        if _small_conv.applies(self, input):  # an input smaller than the kernel: one matrix product
            return _small_conv.conv2d(input, weight, self.bias)
        return self._conv_forward(input, weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._sparse_repr()}"

    @classmethod
    def from_dense(
        cls,
        module: nn.Conv2d,
        sparsity: float = 0.0,
        *,
        mask_init: MaskInit = "magnitude",
        generator: torch.Generator | None = None,
    ) -> DynamicConv2d:
        """Sparse twin of a (trained) ``nn.Conv2d``: same weights, mask by magnitude (or random)."""
        if not isinstance(module, nn.Conv2d):
            raise TypeError(f"module must be an nn.Conv2d, got {type(module).__name__}")
        new = cls(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            module.groups,
            module.bias is not None,
            initial_sparsity=0.0,
            padding_mode=module.padding_mode,
            device=module.weight.device,
            dtype=module.weight.dtype,
        )
        return _copy_and_mask(module, new, sparsity, mask_init, generator)

    def to_dense(self) -> nn.Conv2d:
        """Plain ``nn.Conv2d`` holding the masked weights."""
        out = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.bias is not None,
            self.padding_mode,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        return _copy_dense(self, out)


_DYNAMIC = (DynamicLinear, DynamicConv2d)


@torch.no_grad()
def _copy_and_mask(src: nn.Module, new, sparsity: float, mask_init: str, generator) -> nn.Module:
    sparsity = check_sparsity(sparsity, "sparsity")
    check_choice(mask_init, "mask_init", ("magnitude", "random"))
    new.weight.copy_(src.weight)
    if src.bias is not None:
        new.bias.copy_(src.bias)
    new.weight.requires_grad_(src.weight.requires_grad)
    new.train(src.training)
    if mask_init == "magnitude":
        new.set_sparsity(sparsity)  # keeps the pruned values, like any set_sparsity
    else:
        n_zero = n_zeros(sparsity, new.weight.numel())
        new.apply_mask(random_mask(new.weight.shape, n_zero, generator=generator))
    new.initial_sparsity = sparsity
    return new


@torch.no_grad()
def _copy_dense(src: nn.Module, out: nn.Module) -> nn.Module:
    out.weight.copy_(src._masked_weight().detach() if src.mask is not None else src.weight)
    if src.bias is not None:
        out.bias.copy_(src.bias)
    out.train(src.training)
    return out


# --------------------------------------------------------------------------- #
# model-level helpers
# --------------------------------------------------------------------------- #
def sparse_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Named ``DynamicLinear``/``DynamicConv2d`` modules of ``model`` built with ``sparse=True``."""
    for name, module in model.named_modules():
        if isinstance(module, _DYNAMIC) and module.mask is not None:
            yield name, module


@torch.no_grad()
def mask_summary(layers: Iterable[nn.Module]) -> dict[str, float]:
    """Fractions of zero weights (``sparsity``) and of masked positions (``mask_sparsity``) over
    ``layers`` (sparse ``Dynamic*`` layers): the per-epoch history columns of every scheduler."""
    layers = list(layers)
    if not layers:
        raise ValueError("mask_summary needs at least one sparse layer")
    zeros = sum(int((m.weight == 0).sum().item()) for m in layers)
    masked = sum(int((~m.mask).sum().item()) for m in layers)
    total = sum(m.weight.numel() for m in layers)
    return {"sparsity": zeros / total, "mask_sparsity": masked / total}


def erk_sparsities(shapes: Iterable[Iterable[int]], sparsity: float, *, erk_power: float = 1.0) -> list[float]:
    """Per-layer sparsities of the Erdős–Rényi(-Kernel) distribution at overall ``sparsity``.

    Density of layer ``l`` is ``eps * (sum(shape_l) / prod(shape_l)) ** erk_power``
    (Mocanu et al. 2018 for ``Linear``; kernel dims included for convs, Evci et al.
    2020 "ERK"), with ``eps`` chosen so that the total number of weights kept is
    ``(1 - sparsity) * total``; layers that would exceed density 1 are made dense
    and ``eps`` recomputed.
    """
    sparsity = check_sparsity(sparsity, "sparsity")
    shapes = [tuple(int(d) for d in s) for s in shapes]
    numels = [math.prod(s) for s in shapes]
    raw = [(sum(s) / math.prod(s)) ** erk_power for s in shapes]
    budget = (1.0 - sparsity) * sum(numels)
    dense: set[int] = set()
    while True:
        rest = budget - sum(numels[i] for i in dense)
        divisor = sum(raw[i] * numels[i] for i in range(len(shapes)) if i not in dense)
        eps = rest / divisor if divisor > 0 else 0.0
        over = [i for i in range(len(shapes)) if i not in dense and eps * raw[i] > 1.0]
        if not over:
            break
        dense.add(max(over, key=lambda i: raw[i]))
    return [0.0 if i in dense else max(0.0, 1.0 - eps * raw[i]) for i in range(len(shapes))]


@torch.no_grad()
def global_magnitude_zeros(layers: Sequence[nn.Module], sparsity: float) -> list[int]:
    """Zeros per layer of one magnitude cut-off over all ``layers`` at overall ``sparsity``.

    As ``torch.nn.utils.prune.global_unstructured``: already masked weights
    count as pruned first, then the smallest live ``|w|`` anywhere, until
    ``round(sparsity * total)`` weights are zero. Unlike it, no layer is
    emptied: each keeps at least one weight (then the total falls short by
    as many). Apply with ``layer.apply_mask(layer.magnitude_mask(n))``.
    """
    sparsity = check_sparsity(sparsity, "sparsity")
    layers = list(layers)
    if not layers or any(getattr(m, "mask", None) is None for m in layers):
        raise ValueError("global_magnitude_zeros needs sparse DynamicLinear/DynamicConv2d layers")
    scores = torch.cat(
        [m.weight.detach().abs().reshape(-1).masked_fill(~m.mask.reshape(-1), -1.0).cpu() for m in layers]
    )
    pruned = torch.zeros(scores.numel(), dtype=torch.bool)
    k = round(sparsity * scores.numel())
    if k:
        pruned[torch.topk(scores, k, largest=False).indices] = True
    counts, offset = [], 0
    for m in layers:
        numel = m.weight.numel()
        counts.append(min(int(pruned[offset : offset + numel].sum()), numel - 1))
        offset += numel
    return counts


Selector = None | str | Iterable[str] | Callable[[str, nn.Module], bool]


def _selector(spec: Selector, what: str) -> Callable[[str, nn.Module], bool] | None:
    if spec is None:
        return None
    if callable(spec):
        return spec
    if isinstance(spec, str):
        spec = [spec]
    try:
        patterns = list(spec)
    except TypeError:
        raise TypeError(
            f"{what} must be None, a name pattern, a list of name patterns or a "
            f"callable(name, module) -> bool, got {type(spec).__name__}"
        ) from None
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"{what} patterns must be strings, got {patterns!r}")
    return lambda name, _m: any(fnmatch.fnmatchcase(name, p) for p in patterns)


def sparsify(
    model: nn.Module,
    sparsity: float,
    *,
    include: Selector = None,
    exclude: Selector = None,
    keep_ends_dense: bool | None = None,
    distribution: Literal["uniform", "erk"] = "uniform",
    mask_init: MaskInit = "magnitude",
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Replace ``model``'s ``nn.Linear``/``nn.Conv2d`` by sparse dynamic twins, in place.

    Weights and biases are kept; the mask is by magnitude (``mask_init="magnitude"``,
    right for a trained model; the pruned values are kept as by
    :meth:`DynamicLinear.set_sparsity`, so lowering the sparsity later restores
    them) or uniformly random (``"random"``, the DSR/SET/RigL start from scratch;
    uses ``generator``; the masked-out initial values are dropped).

    Args:
        model: the network; it is modified in place and returned.
        sparsity: overall fraction of masked weights over the converted layers, in [0, 1).
        include / exclude: which layers to convert, by qualified name: a glob
            pattern (``"features.*"``), a list of patterns, or a predicate
            ``f(name, module) -> bool``. ``exclude`` wins over ``include``.
        keep_ends_dense: leave the first convolution and the last linear layer (the
            classifier) dense, as the DSR reference's WRN does (its first convolution
            and classifier are plain layers; its MNIST MLP and ResNet-50 classifier
            are sparse, so this is a choice per network, not DSR's rule). Default:
            True unless ``include`` is given.
        distribution: ``"uniform"`` (every layer at ``sparsity``) or ``"erk"``
            (Erdős–Rényi-Kernel, :func:`erk_sparsities`).
        mask_init: ``"magnitude"`` or ``"random"``.
        generator: RNG for ``mask_init="random"``.
    """
    sparsity = check_sparsity(sparsity, "sparsity")
    check_choice(distribution, "distribution", ("uniform", "erk"))
    check_choice(mask_init, "mask_init", ("magnitude", "random"))
    inc, exc = _selector(include, "include"), _selector(exclude, "exclude")
    if keep_ends_dense is None:
        keep_ends_dense = include is None

    candidates = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d)) and not isinstance(m, _DYNAMIC) and type(m) in (nn.Linear, nn.Conv2d)
    ]
    ends: set[str] = set()
    if keep_ends_dense:
        convs = [n for n, m in candidates if isinstance(m, nn.Conv2d)]
        linears = [n for n, m in candidates if isinstance(m, nn.Linear)]
        ends = set(convs[:1] + linears[-1:])
    chosen = [
        (n, m) for n, m in candidates if n not in ends and (inc is None or inc(n, m)) and (exc is None or not exc(n, m))
    ]
    if distribution == "erk":
        per_layer = erk_sparsities([m.weight.shape for _, m in chosen], sparsity)
    else:
        per_layer = [sparsity] * len(chosen)
    for (name, module), s in zip(chosen, per_layer):
        cls = DynamicConv2d if isinstance(module, nn.Conv2d) else DynamicLinear
        model = replace_module(model, name, cls.from_dense(module, s, mask_init=mask_init, generator=generator))
    return model


def densify(model: nn.Module) -> nn.Module:
    """Replace every ``DynamicLinear``/``DynamicConv2d`` by a plain layer with the masked weights (in place)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, _DYNAMIC):
            model = replace_module(model, name, module.to_dense())
    return model
