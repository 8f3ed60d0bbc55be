"""What pruning buys, measured: sparsity per layer, CSR storage size, inference latency against the peers.

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
import time
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from .._utils import (
    check_int,
    check_sparsity,
    float32_arithmetic,
    full_float32,
    n_zeros,
    random_mask,
    random_normal,
    time_interleaved,
)
from ..csr import ValueMode, plain_csr_nbytes, roundtrip_model, save_sparse
from ..inference import LayerChoice, to_sparse_inference
from ..layers import densify, global_magnitude_zeros, sparse_modules
from ..train import evaluate

__all__ = [
    "LATENCY_GOALS",
    "accuracy_after_roundtrip",
    "goals_sentence",
    "inference_sparsity_sweep",
    "latency_goals",
    "latency_sweep",
    "latency_table",
    "model_summary",
    "set_global_sparsity",
    "sparsity_summary",
    "sparsity_table",
    "storage_table",
    "with_random_masks",
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
    peers: Sequence[str] = (),
) -> pd.DataFrame:
    """Forward latency of ``model``: PyTorch dense, ours, and the ``peers`` (:mod:`.peers`), per batch size.

    The dense reference is the model with its masked weights in plain
    ``nn.Conv2d``/``nn.Linear`` layers, run eagerly
    (:func:`~dynprune_lib.layers.densify`); ours is
    :func:`~dynprune_lib.inference.to_sparse_inference` given an example batch of
    that size (BatchNorm folded, epilogues fused, each layer on the kernel it
    timed faster; ``conversion_s`` is how long that took). All variants are
    timed in alternation, single calls, for about ``rounds * seconds`` seconds
    each, and the median is reported with the speed-up over dense. Outputs are
    checked to agree (1e-4) before timing, both computed in full float32
    (:func:`~dynprune_lib._utils.full_float32`); the timing runs under the
    process's own settings, and ``dense_arithmetic`` says which (``"tf32"`` where
    CUDA may use TensorFloat-32) and ``sparse_backends`` which kernel each layer
    of ours ran on. A peer that is not installed leaves
    its columns empty and says why in ``peers_missing``.
    """
    from .peers import peer_runners

    if not batch_sizes:
        raise ValueError("batch_sizes is empty")
    device = torch.device(device)
    model = copy.deepcopy(model).to(device).eval()
    dense = densify(copy.deepcopy(model)).eval()
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for batch in batch_sizes:
        check_int(batch, "batch size", 1)
        x = random_normal((batch, *input_shape), generator=generator, device=device)
        report: list[LayerChoice] = []
        start = time.perf_counter()
        sparse = to_sparse_inference(model, x, report=report)
        conversion = time.perf_counter() - start
        # Like with like: both in full float32 (on CUDA, cuDNN would run the dense convolutions
        # in TF32 and the sparse kernels do not); the timing below runs as the user has set it.
        with full_float32():
            expected = dense(x)
            difference = float((sparse(x) - expected).abs().max())
        if difference > 1e-4 * max(1.0, float(expected.abs().max())):
            raise RuntimeError(
                f"the sparse model's output differs from the dense one by {difference:g} at batch {batch} "
                "(both computed in full float32)"
            )
        runners, missing = peer_runners(model, x, tuple(peers)) if peers and device.type == "cpu" else ({}, {})
        variants = {"dense": partial(dense, x), "sparse": partial(sparse, x), **runners}
        # Each variant runs a block of calls per turn, about 50 ms: ONNX Runtime, Numba and PyTorch keep
        # thread pools of their own, and a pool that has just gone to sleep makes the next call slow.
        once = time_interleaved(variants, repeats=1, warmup=1, device=device)
        block = max(1, min(50, int(0.05 / max(max(min(t) for t in once.values()), 1e-6))))
        times = time_interleaved(
            variants, repeats=100_000, budget_s=len(variants) * rounds * seconds, block=block, device=device
        )
        median = {name: statistics.median(t) for name, t in times.items()}
        row = {
            "batch": batch,
            "dense_ms": 1e3 * median["dense"],
            "sparse_ms": 1e3 * median["sparse"],
            "speedup": median["dense"] / median["sparse"],
        }
        for peer in peers:
            row[f"{peer}_ms"] = 1e3 * median[peer] if peer in median else math.nan
            row[f"{peer}_speedup"] = median["dense"] / median[peer] if peer in median else math.nan
        row.update(
            {
                "layers_sparse": sum(c.sparse for c in report),
                "layers": len(report),
                "conversion_s": conversion,
                "threads": torch.get_num_threads(),
                "device": device.type,
                # what ran: the dense layers' float32 arithmetic, and each layer's kernel in ours
                "dense_arithmetic": float32_arithmetic(device),
                "sparse_backends": _backend_counts(report),
                "peers_missing": "; ".join(f"{k}: {v}" for k, v in missing.items()),
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


def _backend_counts(report: Sequence[LayerChoice]) -> str:
    """``"compiled: 3, dense: 1"``: how many layers of a converted model run on each kernel."""
    counts: dict[str, int] = {}
    for choice in report:
        counts[choice.backend] = counts.get(choice.backend, 0) + 1
    return ", ".join(f"{backend}: {n}" for backend, n in counts.items())


@torch.no_grad()
def with_random_masks(model: nn.Module, sparsity: float | Mapping[str, float], *, seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose every sparse layer has a uniformly random mask at ``sparsity`` (or,
    given a mapping, at the sparsity named for that layer, e.g. a trained run's per-layer ones):
    the network's shapes and dense parts, at any sparsity, for timing (speed depends on the
    sparsity pattern's density, not on the weights' values)."""
    model = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    layers = list(sparse_modules(model))
    if not layers:
        raise ValueError("model has no sparse DynamicLinear/DynamicConv2d layers")
    if isinstance(sparsity, Mapping):
        missing = sorted({name for name, _ in layers} ^ set(sparsity))
        if missing:
            raise ValueError(f"the per-layer sparsities and the model's sparse layers differ in {missing}")
        per_layer = {name: check_sparsity(value) for name, value in sparsity.items()}
    else:
        per_layer = dict.fromkeys((name for name, _ in layers), check_sparsity(sparsity))
    for name, layer in layers:
        sparsity = per_layer[name]
        # Drawn on the CPU generator, then moved to the layer's device: the same masks and
        # weights for a model on any device.
        device = layer.weight.device
        scale = layer.weight.std().clamp_min(1e-3)
        n_zero = n_zeros(sparsity, layer.weight.numel())
        layer.apply_mask(random_mask(layer.mask.shape, n_zero, generator=generator, device=device))
        # live weights get random non-zero values (a regrown weight would otherwise start at zero)
        layer.weight.copy_(random_normal(layer.weight.shape, generator=generator, device=device) * scale * layer.mask)
    return model


def latency_sweep(
    model: nn.Module,
    sparsities: Sequence[float],
    batch_sizes: Sequence[int],
    *,
    input_shape: Sequence[int] = (3, 32, 32),
    seconds: float = 0.3,
    device: str | torch.device = "cpu",
    peers: Sequence[str] = (),
    seed: int = 0,
) -> pd.DataFrame:
    """:func:`latency_table` of ``model`` with random masks (:func:`with_random_masks`) at each of
    ``sparsities``: latency against sparsity, one row per (sparsity, batch)."""
    frames = []
    for sparsity in sparsities:
        table = latency_table(
            with_random_masks(model, sparsity, seed=seed),
            batch_sizes,
            input_shape=input_shape,
            seconds=seconds,
            device=device,
            peers=peers,
            seed=seed,
        )
        table.insert(0, "sparsity", float(sparsity))
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


#: The inference-speed goals of this reproduction: (network, sparsity, batch, at least this speed-up,
#: against what): ours against PyTorch dense, or against a peer's time (``"onnxruntime"``: its dense
#: graph), same threads. "never slower" is checked on every row.
LATENCY_GOALS: tuple[tuple[str, float, int, float, str], ...] = (
    ("DynamicCNN", 0.95, 64, 6.0, "dense"),
    ("DynamicCNN", 0.95, 1, 5.0, "dense"),
    ("DynamicCNN", 0.95, 1, 1.0, "onnxruntime"),
    ("DynamicCNN", 0.9, 64, 4.0, "dense"),
    ("MLP", 0.9, 64, 2.5, "dense"),
    ("MLP", 0.9, 1, 2.5, "dense"),
)
#: A sparse run may time up to this much slower than dense and still count as "not slower": timing noise.
NOISE_ALLOWANCE = 1.05


def latency_goals(sweep: pd.DataFrame, network: str) -> pd.DataFrame:
    """Each goal of :data:`LATENCY_GOALS` for ``network`` against a :func:`latency_sweep` table (which may
    hold several thread counts), and whether ours was never slower than dense (within the noise allowance)."""
    rows = []
    for name, sparsity, batch, required, against in LATENCY_GOALS:
        if name != network:
            continue
        for threads, part in sweep.groupby("threads"):
            match = part[(part["sparsity"] == sparsity) & (part["batch"] == batch)]
            if against != "dense":  # a peer that did not run leaves no time (or no column)
                match = match[match[f"{against}_ms"].notna()] if f"{against}_ms" in part else match.iloc[:0]
            if not len(match):
                measured = math.nan
            elif against == "dense":
                measured = float(match["speedup"].iloc[0])
            else:
                measured = float(match[f"{against}_ms"].iloc[0] / match["sparse_ms"].iloc[0])
            than = "dense" if against == "dense" else f"{against} (dense graph)"
            rows.append(
                {
                    "goal": f"{network} at sparsity {sparsity:g}, batch {batch}: >= {required:g}x {than}",
                    "threads": int(threads),
                    "required": required,
                    "measured": measured,
                    "met": bool(measured >= required) if len(match) else None,
                }
            )
    for threads, part in sweep.groupby("threads"):
        worst = part.loc[part["speedup"].idxmin()]
        rows.append(
            {
                "goal": f"{network}: never slower than dense (speed-up >= 1/{NOISE_ALLOWANCE:g} at every "
                f"sparsity and batch measured)",
                "threads": int(threads),
                "required": 1 / NOISE_ALLOWANCE,
                "measured": float(worst["speedup"]),
                "met": bool(worst["speedup"] >= 1 / NOISE_ALLOWANCE),
            }
        )
    return pd.DataFrame(rows)


def goals_sentence(goals: pd.DataFrame) -> str:
    """One sentence with every goal's measured number: which were met and which were missed, by how much."""
    met = goals[goals["met"] == True]  # noqa: E712  (a column of bools and None)
    missed = goals[goals["met"] == False]  # noqa: E712
    unmeasured = goals[goals["met"].isna()]

    def fmt(rows: pd.DataFrame) -> str:
        return "; ".join(
            f"{r.goal} ({r.threads} thread{'s' * (r.threads != 1)}): {r.measured:.2f}x" for r in rows.itertuples()
        )

    parts = [f"{len(met)} of {len(goals)} goals met" + (f": {fmt(met)}" if len(met) else "")]
    if len(missed):
        parts.append(f"missed: {fmt(missed)}")
    if len(unmeasured):
        parts.append(f"not measured: {'; '.join(unmeasured['goal'])}")
    return ". ".join(parts) + "."


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
    sparse times. One row per (sparsity, batch); without batches, one per sparsity.
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
