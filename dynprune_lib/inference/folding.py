"""The deployment graph: masks applied, BatchNorm folded into convolutions, pools and ReLUs fused."""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .._utils import pair, replace_module
from ..layers import densify
from .fused import FusedConv2d, FusedLinear

__all__ = ["prepare_for_inference"]


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
        (pair(pool.kernel_size), pair(stride), pair(pool.padding), pair(pool.dilation))
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
            after = _only_user(tail)
            # maxpool(relu(z)) = relu(maxpool(z)): a pool after the ReLU fuses too (conv, BN, ReLU, pool)
            if not pool and isinstance(layer, nn.Conv2d) and after is not None and _is_pool2(after, modules):
                pool, tail, consumed = True, after, [*consumed, after]
        if not consumed:
            fused = FusedConv2d(layer) if isinstance(layer, nn.Conv2d) else FusedLinear(layer)
        elif isinstance(layer, nn.Conv2d):
            fused = FusedConv2d(layer, pool=pool, relu=relu, folded=folded)
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
