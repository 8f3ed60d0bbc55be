"""What pruning buys, measured: sparsity per layer, CSR storage size, inference latency.

The paper claims that dynamic pruning shrinks the model (pruned weights stored
as CSR matrices) and speeds up inference, and that a layer's sparsity can be
changed at inference; it measures none of it. These functions measure each on
a trained model: :func:`sparsity_table` counts zeros, :func:`storage_table`
writes the model with :func:`~dynprune_lib.csr.save_sparse` and densely,
:func:`latency_table` times the dense model against its CSR-kernel twin
(:func:`~dynprune_lib.inference.to_sparse_inference`), and
:func:`inference_sparsity_sweep` raises the sparsity of a trained model
without retraining and measures accuracy and latency at each point.
"""

from __future__ import annotations

import copy
import io
import math
import os
import statistics
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from .._utils import check_int, check_sparsity, time_interleaved
from ..csr import ValueMode, plain_csr_nbytes, roundtrip_model, save_sparse
from ..inference import LayerChoice, to_sparse_inference
from ..layers import densify, global_magnitude_zeros, sparse_modules
from ..train import evaluate

__all__ = [
    "accuracy_after_roundtrip",
    "inference_sparsity_sweep",
    "latency_table",
    "model_summary",
    "set_global_sparsity",
    "sparsity_summary",
    "sparsity_table",
    "storage_table",
]


def _weighted_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@torch.no_grad()
def sparsity_table(model: nn.Module) -> pd.DataFrame:
    """Zero weights per convolution / linear layer, then totals, all counted on the weights.

    Columns: layer, kind (conv/linear), shape, dynamic (has a mask), weights,
    zeros, sparsity. The total rows are ``sparse layers`` (those with a mask),
    ``all convolutions``, ``all linear`` and ``all weights`` (conv and linear).
    Biases and BatchNorm parameters are not weights here.
    """
    rows = []
    for name, module in _weighted_layers(model):
        weight = module.weight.detach()
        zeros = int((weight == 0).sum().item())
        rows.append(
            {
                "layer": name,
                "kind": "conv" if isinstance(module, nn.Conv2d) else "linear",
                "shape": "x".join(str(d) for d in weight.shape),
                "dynamic": getattr(module, "mask", None) is not None,
                "weights": weight.numel(),
                "zeros": zeros,
            }
        )
    if not rows:
        raise ValueError("model has no Conv2d or Linear layers")
    table = pd.DataFrame(rows)
    totals = []
    for label, select in (
        ("sparse layers", table["dynamic"]),
        ("all convolutions", table["kind"] == "conv"),
        ("all linear", table["kind"] == "linear"),
        ("all weights", pd.Series(True, index=table.index)),
    ):
        part = table[select]
        if len(part):
            totals.append(
                {
                    "layer": label,
                    "kind": "total",
                    "shape": "",
                    "dynamic": None,
                    "weights": int(part["weights"].sum()),
                    "zeros": int(part["zeros"].sum()),
                }
            )
    table = pd.concat([table, pd.DataFrame(totals)], ignore_index=True)
    table["sparsity"] = table["zeros"] / table["weights"]
    return table


def sparsity_summary(model: nn.Module) -> dict[str, float]:
    """Fractions of zero weights: ``sparse_layers``, ``conv``, ``linear`` and ``all`` (NaN where absent)."""
    table = sparsity_table(model).set_index("layer")
    out = {}
    for key, label in (
        ("sparse_layers", "sparse layers"),
        ("conv", "all convolutions"),
        ("linear", "all linear"),
        ("all", "all weights"),
    ):
        out[key] = float(table.loc[label, "sparsity"]) if label in table.index else math.nan
    return out


def storage_table(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    name: str = "model",
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> pd.DataFrame:
    """Size of ``model`` on disk, densely and in CSR, with files written to ``directory``.

    Rows: ``dense (torch.save)``, the masked weights densified and saved as a
    ``state_dict`` (the usual PyTorch file); ``CSR float32`` and ``CSR float16``,
    :func:`~dynprune_lib.csr.save_sparse` (lossless / half-precision values);
    and ``textbook CSR`` (int32 indices, float32 values; computed, not written).
    With ``loader``, the test accuracy after reading each CSR file back is given
    beside the original's.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dense = densify(copy.deepcopy(model))
    dense_path = directory / f"{name}_dense.pt"
    buffer = io.BytesIO()
    torch.save(dense.state_dict(), buffer)
    dense_path.write_bytes(buffer.getvalue())
    rows = [{"format": "dense (torch.save)", "file": dense_path.name, "bytes": dense_path.stat().st_size}]
    for values in ("float32", "float16"):
        path = directory / f"{name}_csr_{values}.dpsm"
        size = save_sparse(model, path, values=values)
        row = {"format": f"CSR {values} (save_sparse)", "file": path.name, "bytes": size}
        if loader is not None:
            acc = accuracy_after_roundtrip(model, loader, values=values)
            row.update(test_acc=acc["accuracy"], test_acc_after_load=acc["accuracy_roundtrip"])
        rows.append(row)
    rows.append({"format": "textbook CSR (int32 indices; computed)", "file": "", "bytes": plain_csr_nbytes(model)})
    table = pd.DataFrame(rows)
    table["ratio_to_dense"] = table["bytes"] / table.loc[0, "bytes"]
    return table


def model_summary(model: nn.Module, input_shape: Sequence[int] = (3, 32, 32)) -> pd.Series:
    """Parameters (all and non-zero) and the cost of one forward pass of one image, dense and
    counting only non-zero weights (:func:`~.aspects.count_flops`; a multiply-add is 2 FLOPs)."""
    from .aspects import count_flops, count_parameters

    flops = count_flops(model, input_shape)
    return pd.Series(
        {
            **count_parameters(model),
            "multiply_adds": flops["flops"] // 2,
            "nonzero_multiply_adds": flops["nonzero_flops"] // 2,
        },
        name=type(model).__name__,
    )


def accuracy_after_roundtrip(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    values: ValueMode = "float16",
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Test accuracy of a trained ``model`` before and after storage in ``values`` mode.

    Returns ``{"accuracy": ..., "accuracy_roundtrip": ..., "change": after - before}``;
    this is how the cost of float16/int8 storage is reported.
    """
    _, before = evaluate(model, loader, device=device)
    _, after = evaluate(roundtrip_model(model, values), loader, device=device)
    return {"accuracy": before, "accuracy_roundtrip": after, "change": after - before}


@torch.no_grad()
def latency_table(
    model: nn.Module,
    batch_sizes: Sequence[int],
    *,
    input_shape: Sequence[int] = (3, 32, 32),
    seconds: float = 0.3,
    rounds: int = 3,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> pd.DataFrame:
    """Forward latency of ``model`` computed densely vs with CSR kernels where they are faster.

    Per batch size: the dense reference is the model with its masked weights in
    plain ``nn.Conv2d``/``nn.Linear`` layers (:func:`~dynprune_lib.layers.densify`);
    the sparse one is :func:`~dynprune_lib.inference.to_sparse_inference` given an
    example batch of that size (it keeps CSR only for layers it timed faster).
    The two are timed in alternation, single calls, for about ``rounds * seconds``
    seconds each, and the median is reported. The two outputs are checked to
    agree (1e-4) before timing.
    """
    if not batch_sizes:
        raise ValueError("batch_sizes is empty")
    device = torch.device(device)
    model = copy.deepcopy(model).to(device).eval()
    dense = densify(copy.deepcopy(model)).eval()
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for batch in batch_sizes:
        check_int(batch, "batch size", 1)
        x = torch.randn(batch, *input_shape, generator=generator).to(device)
        report: list[LayerChoice] = []
        sparse = to_sparse_inference(model, x, report=report)
        difference = float((sparse(x) - dense(x)).abs().max())
        if difference > 1e-4 * max(1.0, float(dense(x).abs().max())):
            raise RuntimeError(f"CSR model output differs from the dense one by {difference:g} at batch {batch}")
        times = time_interleaved(
            {"dense": partial(dense, x), "sparse": partial(sparse, x)},
            repeats=100_000,
            budget_s=2 * rounds * seconds,
            device=device,
        )
        d, s = statistics.median(times["dense"]), statistics.median(times["sparse"])
        rows.append(
            {
                "batch": batch,
                "dense_ms": 1e3 * d,
                "csr_ms": 1e3 * s,
                "speedup": d / s,
                "layers_on_csr": sum(c.sparse for c in report),
                "sparse_layers": len(report),
                "threads": torch.get_num_threads(),
                "device": device.type,
            }
        )
    return pd.DataFrame(rows)


@torch.no_grad()
def set_global_sparsity(model: nn.Module, sparsity: float) -> dict[str, float]:
    """Change the sparsity of a trained model at inference, without retraining (paper, sec. 2).

    One magnitude cut-off over all sparse layers
    (:func:`~dynprune_lib.layers.global_magnitude_zeros`, as
    ``torch.nn.utils.prune.global_unstructured`` but never emptying a layer);
    each layer is then set with the paper's per-layer API, ``layer.set_sparsity``,
    to the share the cut-off gives it. Returns the per-layer sparsities set.
    """
    sparsity = check_sparsity(sparsity)
    layers = dict(sparse_modules(model))
    if not layers:
        raise ValueError("model has no sparse DynamicLinear/DynamicConv2d layers")
    out = {}
    for (name, layer), n_zero in zip(layers.items(), global_magnitude_zeros(list(layers.values()), sparsity)):
        layer.set_sparsity(n_zero / layer.weight.numel())
        out[name] = layer.mask_sparsity
    return out


def inference_sparsity_sweep(
    model: nn.Module,
    test_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    sparsities: Sequence[float],
    *,
    latency_batches: Sequence[int] = (),
    input_shape: Sequence[int] = (3, 32, 32),
    seconds: float = 0.3,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """Accuracy (and latency) of ``model`` with its sparsity raised at inference, no retraining.

    For each target: a copy of ``model`` set to it by :func:`set_global_sparsity`,
    its test loss and accuracy, the sparsity actually reached over its sparse
    layers and, per batch in ``latency_batches``, :func:`latency_table`'s dense and
    CSR times. One row per (sparsity, batch); without batches, one per sparsity.
    """
    rows = []
    for target in sparsities:
        pruned = copy.deepcopy(model)
        set_global_sparsity(pruned, target)
        loss, acc = evaluate(pruned, test_loader, device=device)
        reached = sparsity_summary(pruned)["sparse_layers"]
        base = {"sparsity_target": float(target), "sparsity": reached, "test_acc": acc, "test_loss": loss}
        if latency_batches:
            latency = latency_table(pruned, latency_batches, input_shape=input_shape, seconds=seconds, device=device)
            rows += [{**base, **row} for row in latency.to_dict("records")]
        else:
            rows.append(base)
    return pd.DataFrame(rows)
