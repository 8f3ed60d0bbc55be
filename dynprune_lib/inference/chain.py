"""A converted network run as one call into the compiled kernels (no Python between layers)."""

from __future__ import annotations

import torch
from torch import nn

from .. import kernels
from .fused import FusedConv2d, FusedLinear
from .sparse import SparseConv2d, SparseLinear, _check_input

__all__ = ["SparseChain", "chain_steps"]

_SKIPPED = (nn.Identity, nn.Dropout)


def _flatten_1(node, modules) -> bool:
    if node.op == "call_module":
        m = modules[node.target]
        return type(m) is nn.Flatten and m.start_dim == 1 and m.end_dim == -1
    if node.op == "call_function" and node.target is torch.flatten:
        rest = list(node.args[1:]) + list(node.kwargs.values())
        return rest in ([1], [1, -1])
    return node.op == "call_method" and node.target == "flatten" and list(node.args[1:]) in ([1], [1, -1])


def _mean_to_1x1(node, modules) -> bool:
    if node.op != "call_module" or type(modules[node.target]) is not nn.AdaptiveAvgPool2d:
        return False
    size = modules[node.target].output_size
    return size in (1, (1, 1), [1, 1])


def chain_steps(model: nn.Module) -> tuple[list[tuple[str, nn.Module | None]] | None, str]:
    """The steps of ``model`` (an fx-traced deployment graph) if it is one straight chain the compiled
    kernels run end to end: convolutions and linear layers (their pools and ReLUs fused), average
    pools to 1x1, and flattens right before a linear layer. Returns ``(steps, "")``, or ``(None, why)``."""
    graph = getattr(model, "graph", None)
    if graph is None:
        return None, "the model is not an fx graph"
    modules = dict(model.named_modules())
    nodes = list(graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        return None, f"the graph takes {len(inputs)} inputs"
    steps: list[tuple[str, nn.Module | None]] = []
    previous, flatten = inputs[0], False
    for node in nodes:
        if node.op in ("placeholder", "get_attr"):
            continue
        if node.op == "output":
            if node.args[0] is not previous:
                return None, "the output is not the last layer's"
            break
        if list(node.all_input_nodes) != [previous] or len(node.users) != 1:
            return None, f"{node.name} is not on one straight path"
        previous = node
        module = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(module, _SKIPPED) or (node.op == "call_method" and node.target == "contiguous"):
            continue  # no-ops on values (the chain picks its own memory layout)
        if _flatten_1(node, modules):
            flatten = True
            continue
        if _mean_to_1x1(node, modules):
            steps.append(("mean", None))
        elif isinstance(module, (SparseConv2d, SparseLinear)) and module.backend != "compiled":
            return None, f"{node.name} runs on the {module.backend} kernels"
        elif isinstance(module, (SparseConv2d, FusedConv2d)) and not flatten:
            steps.append(("conv", module))
        elif isinstance(module, (SparseLinear, FusedLinear)):
            steps.append(("linear", module))
            flatten = False
        else:
            return (
                None,
                f"{node.name} ({node.op} {getattr(node.target, '__name__', node.target)}) has no compiled kernel",
            )
    if flatten or not steps or steps[-1][0] == "mean":
        return None, "the graph does not end in a convolution or linear layer"
    return steps, ""


def _compiled_layer(module: nn.Module) -> SparseConv2d | SparseLinear:
    """``module`` as a compiled sparse layer (a dense block keeps every weight: a direct convolution)."""
    if isinstance(module, (SparseConv2d, SparseLinear)):
        return module
    if isinstance(module, FusedConv2d):
        return SparseConv2d(module.conv, pool=module.pool, relu=module.relu, backend="compiled")
    return SparseLinear(module.linear, relu=module.relu, backend="compiled")


class SparseChain(nn.Module):
    """A straight network (see :func:`chain_steps`) as one call into the compiled kernels.

    Each layer writes its output straight into the next layer's padded input
    buffer, planned once per batch size, so a forward pass runs no Python per
    layer and converts no layout but at its two ends. Dense layers in it run
    the same kernel with every weight kept (a direct convolution). Float32 on
    the CPU; one instance must not run in two threads at once (shared buffers).
    """

    def __init__(self, steps: list[tuple[str, nn.Module | None]]) -> None:
        super().__init__()
        if kernels.compiled() is None:
            raise RuntimeError(f"SparseChain needs the compiled kernels: {kernels.unavailable_reason('compiled')}")
        self.kinds = [kind for kind, _ in steps]
        self.layers = nn.ModuleList(_compiled_layer(m) for kind, m in steps if kind != "mean")
        first = self.layers[0]
        self.conv_first = isinstance(first, SparseConv2d)
        self.in_features = first.in_channels if self.conv_first else first.in_features
        self._chain = None
        self._chain_key = None

    def _native(self):
        parts = [layer.native() for layer in self.layers]
        key = tuple(id(p) for p in parts)
        if key != self._chain_key:
            chain, layers = kernels.compiled().Chain(), iter(parts)
            for kind in self.kinds:
                if kind == "mean":
                    chain.add_mean()
                elif kind == "conv":
                    chain.add_conv(next(layers))
                else:
                    chain.add_linear(next(layers))
            self._chain, self._chain_key = chain, key
        return self._chain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_first:
            _check_input(self, x, (4,), 1, self.in_features, "a (B, C, H, W) input with channels")
        else:  # a linear layer first: (B, F), or (B, C, H, W) flattened on the way in
            _check_input(self, x.flatten(1) if x.dim() == 4 else x, (2,), 1, self.in_features, "(B, F) input")
        return self._native().forward(x.detach())

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        state["_chain"] = state["_chain_key"] = None
        return state

    def extra_repr(self) -> str:
        return f"steps={'+'.join(self.kinds)}"
