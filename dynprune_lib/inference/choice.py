"""The per-layer choice: each convolution and linear layer on the kernel that measures faster."""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from .. import kernels
from .._utils import replace_module, time_interleaved
from ..layers import densify
from .chain import SparseChain, chain_steps
from .folding import _only_user, prepare_for_inference
from .fused import FusedConv2d, FusedLinear, Im2colConv2d
from .sparse import SparseConv2d, SparseLinear
from .torch_sparse import TorchSparseConv2d, TorchSparseLinear

__all__ = ["DENSITY_RULE", "LayerChoice", "to_sparse_inference"]

#: Densities at or below which a layer goes sparse when no example input is given to time it.
#: Chosen as values where the sparse kernels were never slower in bench/bench_sparse_inference.py
#: on a 2-core CPU (the rule cannot see the batch size, so it is conservative).
DENSITY_RULE = {
    "compiled": {"linear": 0.2, "conv": 0.1},
    "numba": {"linear": 0.2, "conv": 0.1},
    "torch.sparse": {"linear": 0.1, "conv": 0.01},
}
BACKENDS = ("auto", "compiled", "numba", "torch.sparse")


@dataclass
class LayerChoice:
    """What :func:`to_sparse_inference` decided for one layer, and why."""

    name: str
    kind: str  # "linear" or "conv"
    density: float
    sparse: bool
    dense_seconds: float | None = None  # best time of one forward, when timed
    sparse_seconds: float | None = None
    backend: str = "dense"  # "compiled", "numba", "torch.sparse", "im2col" (a dense GEMM) or "dense"
    reason: str = ""
    fused: str = ""  # what was fused into it, e.g. "BatchNorm, max pool, ReLU"
    chained: bool = False  # runs inside a SparseChain (one call for the whole network)
    im2col_seconds: float | None = None  # a convolution as one im2col matrix product, when timed


def _sparse_backend(block: nn.Module, device: torch.device, backend: str) -> tuple[str | None, str]:
    """The sparse kernel ``block`` can use (None: none) and why."""
    core = block.conv if isinstance(block, FusedConv2d) else block.linear
    is_conv = isinstance(core, nn.Conv2d)
    if is_conv and core.padding_mode != "zeros":
        return None, f"padding_mode={core.padding_mode!r}: no sparse kernel, kept dense"
    if device.type == "cpu" and core.weight.dtype == torch.float32 and backend != "torch.sparse":
        chosen = kernels.backend(backend)
        if chosen is not None:
            return chosen, chosen
        if backend != "auto":
            raise RuntimeError(f"backend={backend!r} was asked for, but {kernels.unavailable_reason(backend)}")
        warnings.warn(
            f"dynprune: {kernels.unavailable_reason()}; sparse layers fall back to torch.sparse, which is much slower",
            RuntimeWarning,
            stacklevel=4,
        )
        why = "no kernel build"
    elif backend in kernels.BACKENDS:
        return None, f"the {backend} kernels run float32 on the CPU (here {core.weight.dtype} on {device}): kept dense"
    else:
        why = "asked for" if backend == "torch.sparse" else f"{core.weight.dtype} on {device.type}"
    if is_conv and (core.groups != 1 or isinstance(core.padding, str)):
        return None, f"torch.sparse ({why}) handles groups=1 with numeric zero padding only: kept dense"
    return "torch.sparse", why


def _build_sparse(block: nn.Module, backend: str) -> nn.Module:
    if isinstance(block, FusedConv2d):
        if backend == "torch.sparse":
            return TorchSparseConv2d(block.conv, pool=block.pool, relu=block.relu)
        return SparseConv2d(block.conv, pool=block.pool, relu=block.relu, backend=backend)
    if backend == "torch.sparse":
        return TorchSparseLinear(block.linear, relu=block.relu)
    return SparseLinear(block.linear, relu=block.relu, backend=backend)


def _im2col_twin(block: nn.Module) -> Im2colConv2d | None:
    """The block as one im2col matrix product, where it can be (a convolution, groups=1, numeric padding)."""
    if not isinstance(block, FusedConv2d) or type(block) is not FusedConv2d:
        return None
    conv = block.conv
    if conv.groups != 1 or isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return None
    return Im2colConv2d(conv, pool=block.pool, relu=block.relu, folded=block.folded)


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
    """Let each dense pooled block whose only consumer is a kernel :class:`SparseConv2d` write that
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
    if any(c.backend != "dense" for c in choices):
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
            if choice.backend != "dense":
                choice.sparse, choice.backend = False, "dense"
                choice.reason += f"; reverted: the whole model took {ratio:.2f}x the dense time"
    return all_dense if best["dense"] <= margin * best["plain"] else plain


def _chained_if_faster(
    per_layer: nn.Module,
    current: nn.Module,
    choices: list[LayerChoice],
    x: torch.Tensor,
    repeats: int,
    budget_s: float,
) -> nn.Module:
    """``per_layer`` as one :class:`SparseChain` if its graph is a straight chain and the chain takes
    less time on ``x`` than ``current`` (the model :func:`_never_slower` kept), else ``current``."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return current
    steps, _ = chain_steps(per_layer)
    if steps is None:
        return current
    chain = SparseChain(steps).eval()
    variants = {"chain": partial(chain, x), "current": partial(current, x)}
    slowest = max(min(t) for t in time_interleaved(variants, repeats=1).values())
    block = max(1, min(20, int(0.05 / max(slowest, 1e-6))))
    times = time_interleaved(variants, repeats=repeats, budget_s=2 * budget_s, block=block)
    ratio = min(times["chain"]) / min(times["current"])
    if ratio >= 1.0:  # a tie keeps the layers one by one (they print and profile per layer)
        return current
    names = {
        name
        for name, m in per_layer.named_modules()
        if isinstance(m, (FusedConv2d, FusedLinear, SparseConv2d, SparseLinear))
    }
    for choice in choices:
        if choice.name in names:
            choice.sparse, choice.backend, choice.chained = True, "compiled", True
            choice.reason += (
                f"; in one compiled call for the whole network ({ratio:.2f}x the time of the layers one by one)"
            )
    return chain


@torch.no_grad()
def to_sparse_inference(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    *,
    repeats: int = 15,
    margin: float = 0.85,
    budget_s: float = 0.3,
    backend: str = "auto",
    chain: bool = True,
    report: list[LayerChoice] | None = None,
) -> nn.Module:
    """Copy of ``model`` for inference, each convolution and linear layer on its faster kernel.

    The copy is :func:`prepare_for_inference`'s (masks applied, BatchNorm
    folded, pools and ReLUs fused); then each layer is either kept dense
    (PyTorch's kernel) or replaced by its sparse twin:

    * with ``example_input`` (recommended; give the batch size, device and thread
      count you will run with), both are timed on the input that layer actually
      sees, in alternation (best of at most ``repeats`` rounds, about
      ``budget_s`` seconds per layer), with, for a convolution, a third
      candidate, the same dense convolution as one im2col matrix product
      (:class:`Im2colConv2d`); the faster of the two alternatives is kept only
      if it takes at most ``margin`` times the dense time, so near-ties stay dense and, timing
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

    Last, where the graph is one straight chain (:func:`chain_steps`) and the
    compiled kernels are built, the whole network as one compiled call
    (:class:`SparseChain`, dense layers as direct convolutions) is timed against
    that result and kept if it is strictly faster (``chain=False``: never).

    ``backend``: ``"auto"`` (the compiled kernels on CPU float32, else Numba,
    else ``torch.sparse``), ``"compiled"`` or ``"numba"`` (an error where they
    cannot run) or ``"torch.sparse"``. The copy is
    in eval mode and for inference only (no gradients). ``report``, if given, is
    extended with one :class:`LayerChoice` per layer: backend, timings and why.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    prepared, _ = prepare_for_inference(model)
    all_dense = copy.deepcopy(prepared) if example_input is not None else None
    blocks = [(name, m) for name, m in prepared.named_modules() if isinstance(m, (FusedConv2d, FusedLinear))]
    choices: list[LayerChoice] = []
    for name, block in blocks:
        core = block.conv if isinstance(block, FusedConv2d) else block.linear
        kind = "conv" if isinstance(block, FusedConv2d) else "linear"
        device = core.weight.device
        density = float((core.weight != 0).sum()) / core.weight.numel()
        chosen, reason = _sparse_backend(block, device, backend)
        choice = LayerChoice(name, kind, density, False, backend="dense", reason=reason, fused=block.fused)
        if chosen is not None:
            why = "" if reason == chosen else f"{chosen} ({reason}); "
            sparse = _build_sparse(block, chosen)
            x = None if example_input is None else _capture_input(prepared, block, example_input)
            if x is not None:
                # a pooled dense block is timed as it would run before a sparse consumer (its usual one)
                block.grid_output = chosen in kernels.BACKENDS and _consumer(
                    prepared, name, (FusedConv2d, SparseConv2d)
                )
                candidates = {"dense": partial(block, x), "sparse": partial(sparse, x)}
                im2col = _im2col_twin(block)
                if im2col is not None:
                    candidates["im2col"] = partial(im2col, x)
                times = time_interleaved(candidates, repeats=repeats, budget_s=budget_s, device=device)
                # the minimum: other processes only ever add time, so it is the stable estimate
                best = {key: min(t) for key, t in times.items()}
                choice.dense_seconds, choice.sparse_seconds = best["dense"], best["sparse"]
                choice.im2col_seconds = best.get("im2col")
                fastest = min(("sparse", "im2col"), key=lambda key: best.get(key, math.inf))
                choice.sparse = fastest == "sparse" and best["sparse"] <= margin * best["dense"]
                ratios = ", ".join(
                    f"{key} {best[key] / best['dense']:.2f}x" for key in ("sparse", "im2col") if key in best
                )
                choice.reason = f"{why}timed: {ratios} the dense time (kept at <= {margin:g}x)"
                if fastest == "im2col" and best["im2col"] <= margin * best["dense"]:
                    choice.backend = "im2col"
                    prepared = replace_module(prepared, name, im2col)
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
        per_layer = prepared
        prepared = _never_slower(model, prepared, all_dense, choices, example_input, repeats, budget_s, margin)
        if chain and backend in ("auto", "compiled") and kernels.compiled() is not None:
            prepared = _chained_if_faster(per_layer, prepared, choices, example_input, repeats, budget_s)
    if report is not None:
        report.extend(choices)
    return prepared
