"""Training runs of the paper's section 3.2: the dynamic-pruning CNN, the MLP, and what they are compared with.

The paper trains a CNN of ``DynamicConv2d`` layers with DSR for 10 epochs and
describes an MLP of ``DynamicLinear`` layers; it gives neither architecture nor
the sparsity reached. Here one :class:`ExperimentConfig` fixes everything about
a run except the *method* (how the sparsity is obtained), the target sparsity
and the seed; :func:`train_run` trains one such configuration, resumably
(``fit`` checkpoints under ``run_dir``; a finished run is restored, not
retrained), and :func:`run_methods` runs the fair comparison: the same
network, data, optimiser, schedule, epochs and seed for every method.

Methods (:data:`METHODS`):

* ``dense``: no pruning (masks of ones, no scheduler).
* ``dsr``: Dynamic Sparse Reparameterization (Mostafa & Wang 2019), the paper's
  method: sparse from the first step, global magnitude threshold adapted during
  training, pruned weights regrown elsewhere.
* ``set`` / ``rigl``: the other dynamic sparse-training methods (Mocanu et al.
  2018; Evci et al. 2020), random / gradient-guided regrowth, per layer.
* ``magnitude_oneshot``: "traditional" pruning after training: dense training
  for ``oneshot_at`` of the steps, one magnitude prune, fine-tuning for the rest.
* ``magnitude_gradual``: gradual magnitude pruning with the cubic schedule of
  Zhu & Gupta 2017 inside the same step budget.

The learning rate follows a one-cycle schedule (Smith & Topin 2019) stepped
after every optimizer step (:class:`StepSchedule`), because ten epochs are too
few for a per-epoch schedule to warm up and anneal smoothly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
from torch import nn

from .data import BatchLoader, CIFAR10Data
from .efficiency import inference_sparsity_sweep, latency_table, sparsity_summary, storage_table
from .layers import erk_sparsities, sparse_modules
from .models import MLP, BaselineCNN, DynamicCNN
from .paper import PAPER
from .schedulers import DSR, SET, MagnitudePruning, RigL
from .train import check_precision, fit, set_seed

__all__ = [
    "BASELINE_PROTOCOL",
    "EXPERIMENTS",
    "METHODS",
    "METHOD_LABELS",
    "ExperimentConfig",
    "Run",
    "StepSchedule",
    "baseline_history",
    "build_model",
    "experiment_profile",
    "find_run",
    "histories_frame",
    "inference_sweep",
    "init_random_masks",
    "make_loaders",
    "mean_history",
    "method_table",
    "paper_marks",
    "run_latency",
    "run_methods",
    "run_storage",
    "run_table",
    "sparse_layer_target",
    "sparsity_claim_table",
    "sparsity_sweep",
    "target_table",
    "train_run",
]

METHODS: tuple[str, ...] = ("dense", "dsr", "magnitude_oneshot", "magnitude_gradual", "set", "rigl")
METHOD_LABELS: Mapping[str, str] = {
    "dense": "dense (no pruning)",
    "dsr": "DSR (dynamic pruning, the paper's method)",
    "magnitude_oneshot": "magnitude, one-shot after training + fine-tuning",
    "magnitude_gradual": "magnitude, gradual (cubic schedule)",
    "set": "SET (random regrowth)",
    "rigl": "RigL (gradient regrowth)",
    "baseline": "paper's baseline CNN (section 3.1, dense)",
}
_SPARSE_FROM_START = ("dsr", "set", "rigl")


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment's network, data handling, optimisation and pruning settings.

    model: ``"cnn"`` (:class:`DynamicCNN` with ``widths`` per stage) or ``"mlp"``
        (:class:`MLP` with hidden sizes ``widths``, every layer sparse).
    epochs, batch_size: training length; every method gets the same.
    lr, warmup: peak learning rate of the one-cycle schedule and the fraction of
        steps spent rising to it (then cosine annealing to ``lr / 2.5e5``).
    momentum, nesterov, weight_decay: SGD.
    augment: random crops and flips (``BatchLoader``); inputs are always
        standardised with the training split's channel statistics.
    sparsity: fraction of zero weights over all convolution weights (``cnn``: the
        dense first convolution included, the classifier not) or over all linear
        weights (``mlp``). The sparse layers get as many zeros as that needs.
    distribution: initial per-layer sparsity of the sparse-from-scratch methods:
        ``"erk"`` (Erdős–Rényi-Kernel, Evci et al. 2020) or ``"uniform"`` (DSR's).
    dsr_prune_fraction: DSR's ``N_p`` as a fraction of the live weights.
    dsr_period: DSR's update period as ``(fraction of epochs, period)`` pairs; a
        period of 0 stops updates (the reference ends training without them).
    regrow_fraction, regrow_period, regrow_end: SET's / RigL's drop fraction,
        period (steps) and the fraction of training after which masks stay fixed.
    oneshot_at: one-shot magnitude pruning after this fraction of the steps.
    gradual, gradual_every: start and end (fractions of the steps) of gradual
        magnitude pruning, and steps between its prunes.
    magnitude_scope: ``"global"`` (one cut-off over all sparse layers) or ``"layer"``.
    seeds, methods, sparsities, inference_sparsities: what a notebook runs;
        they do not change a run, so they are not part of its checkpoint name.
    latency_batches, latency_seconds: batch sizes and seconds of timing per
        variant in latency measurements.
    precision: ``"bf16"`` trains with a bfloat16-autocast forward pass
        (:func:`~dynprune_lib.train.fit`; weights and evaluation stay float32),
        ``"fp32"`` in float32 throughout.
    """

    name: str
    model: Literal["cnn", "mlp"]
    widths: tuple[int, ...]
    convs_per_stage: int = 1
    pool_before_norm: bool = True
    channels_last: bool = True
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    warmup: float = 0.25
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    augment: bool = True
    sparsity: float = 0.9
    distribution: Literal["erk", "uniform"] = "erk"
    dsr_prune_fraction: float = 0.1
    dsr_period: tuple[tuple[float, int], ...] = ((0.0, 100), (0.5, 200), (0.8, 0))
    regrow_fraction: float = 0.3
    regrow_period: int = 100
    regrow_end: float = 0.75
    oneshot_at: float = 0.8
    gradual: tuple[float, float] = (0.1, 0.7)
    gradual_every: int = 100
    magnitude_scope: Literal["global", "layer"] = "global"
    eval_batch_size: int = 500
    seeds: tuple[int, ...] = (0,)
    methods: tuple[str, ...] = METHODS
    sparsities: tuple[float, ...] = ()
    inference_sparsities: tuple[float, ...] = ()
    latency_batches: tuple[int, ...] = (1, 128)
    latency_seconds: float = 0.3
    precision: Literal["fp32", "bf16"] = "fp32"

    def __post_init__(self) -> None:
        if self.model not in ("cnn", "mlp"):
            raise ValueError(f"model must be 'cnn' or 'mlp', got {self.model!r}")
        for name in ("epochs", "batch_size", "convs_per_stage", "regrow_period", "gradual_every", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("widths", "seeds", "methods", "sparsities", "inference_sparsities", "latency_batches"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.widths or any(not isinstance(w, int) or w < 1 for w in self.widths):
            raise ValueError(f"widths must be positive ints, got {self.widths!r}")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"methods {unknown} are unknown; choose from {METHODS}")
        for value in (self.sparsity, *self.sparsities, *self.inference_sparsities):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"sparsities must be in [0, 1), got {value!r}")
        check_precision(self.precision)
        if self.distribution not in ("erk", "uniform"):
            raise ValueError(f"distribution must be 'erk' or 'uniform', got {self.distribution!r}")
        if self.magnitude_scope not in ("global", "layer"):
            raise ValueError(f"magnitude_scope must be 'global' or 'layer', got {self.magnitude_scope!r}")
        period = tuple((float(f), int(p)) for f, p in self.dsr_period)
        if not period or period[0][0] != 0.0 or any(not 0 <= f < 1 or p < 0 for f, p in period):
            raise ValueError(f"dsr_period must start at fraction 0.0 with fractions in [0, 1), got {self.dsr_period!r}")
        object.__setattr__(self, "dsr_period", period)
        for name in ("warmup", "oneshot_at", "regrow_end", "regrow_fraction", "dsr_prune_fraction"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)!r}")
        g0, g1 = self.gradual
        if not 0.0 < g0 < g1 <= 1.0:
            raise ValueError(f"gradual must be (start, end) with 0 < start < end <= 1, got {self.gradual!r}")
        object.__setattr__(self, "gradual", (float(g0), float(g1)))

    @property
    def sparsity_scope(self) -> Literal["conv", "linear"]:
        """The weights ``sparsity`` is a fraction of: convolutions (CNN) or linear layers (MLP)."""
        return "conv" if self.model == "cnn" else "linear"

    def training_key(self, method: str, sparsity: float | None) -> str:
        """Short hash of everything that changes a run (not seeds or what else a notebook runs)."""
        skip = {"name", "seeds", "methods", "sparsities", "inference_sparsities", "latency_batches",
                "latency_seconds", "eval_batch_size"}
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        blob = json.dumps([fields, method, sparsity], sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:8]


_CNN_CPU = ExperimentConfig(
    name="cpu", model="cnn", widths=(32, 64, 128, 256, 512), latency_batches=(1, 128), precision="bf16",
)
_MLP_CPU = ExperimentConfig(
    name="cpu", model="mlp", widths=(512, 256), lr=0.05, precision="bf16", augment=False, methods=METHODS,
    sparsities=(0.5, 0.8, 0.9, 0.95, 0.99), inference_sparsities=(0.5, 0.8, 0.9, 0.95, 0.98, 0.99),
    latency_batches=(1, 128),
)
#: Workloads per experiment: ``smoke`` (seconds; the notebook tests), ``cpu`` (the
#: 2-core reference machine, one seed) and ``gpu`` (the same runs over three seeds).
EXPERIMENTS: Mapping[str, Mapping[str, ExperimentConfig]] = {
    "dynamic_cnn": {
        "smoke": dataclasses.replace(
            _CNN_CPU, name="smoke", widths=(8, 16, 32, 64, 128), epochs=1, dsr_period=((0.0, 4),),
            regrow_period=4, gradual_every=2, latency_batches=(1, 32), latency_seconds=0.05,
        ),
        "cpu": _CNN_CPU,
        "gpu": dataclasses.replace(_CNN_CPU, name="gpu", seeds=(0, 1, 2)),
    },
    "dynamic_mlp": {
        "smoke": dataclasses.replace(
            _MLP_CPU, name="smoke", widths=(64, 32), epochs=1, dsr_period=((0.0, 4),), sparsities=(0.5, 0.9),
            methods=("dense", "dsr", "set"), regrow_period=4, gradual_every=2,
            inference_sparsities=(0.5, 0.9, 0.99), latency_batches=(1,), latency_seconds=0.05,
        ),
        "cpu": _MLP_CPU,
        "gpu": dataclasses.replace(_MLP_CPU, name="gpu", seeds=(0, 1, 2)),
    },
}


def experiment_profile(experiment: str, profile: str, **overrides: Any) -> ExperimentConfig:
    """The ``profile`` workload of ``experiment`` with fields replaced; ``None`` values mean "keep"."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"experiment must be one of {sorted(EXPERIMENTS)}, got {experiment!r}")
    if profile not in EXPERIMENTS[experiment]:
        raise ValueError(f"profile must be one of {sorted(EXPERIMENTS[experiment])}, got {profile!r}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ExperimentConfig)}
    if unknown:
        raise TypeError(f"unknown configuration fields {sorted(unknown)}")
    return dataclasses.replace(EXPERIMENTS[experiment][profile], **overrides)


# --------------------------------------------------------------------------- building blocks


def build_model(config: ExperimentConfig) -> nn.Module:
    """The network of ``config`` with masks of ones on every prunable layer (dense until pruned).

    Uses the global RNG for the weights (call :func:`~dynprune_lib.train.set_seed` first);
    draws nothing for the masks, so every method starts from the same weights.
    """
    if config.model == "cnn":
        return DynamicCNN(
            widths=config.widths, sparsity=0.0, sparse=True, convs_per_stage=config.convs_per_stage,
            pool_before_norm=config.pool_before_norm, channels_last=config.channels_last,
        )
    return MLP(hidden=config.widths, sparsity=0.0, sparse=True)


def sparse_layer_target(model: nn.Module, sparsity: float, scope: Literal["conv", "linear"]) -> float:
    """Sparsity the sparse layers need so that ``sparsity`` of all ``scope`` weights are zero.

    Dense layers of that kind (the first convolution) count as fully dense. The
    number of zeros is rounded up, so the target is met, never missed by a weight.
    """
    kinds = {"conv": nn.Conv2d, "linear": nn.Linear}
    if scope not in kinds:
        raise ValueError(f"scope must be 'conv' or 'linear', got {scope!r}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    total = sum(m.weight.numel() for m in model.modules() if isinstance(m, kinds[scope]))
    sparse = sum(m.weight.numel() for _, m in sparse_modules(model) if isinstance(m, kinds[scope]))
    if sparse == 0:
        raise ValueError(f"model has no sparse {scope} layers")
    needed = math.ceil(sparsity * total - 1e-9) / sparse
    if needed >= 1.0:
        raise ValueError(
            f"sparsity={sparsity} of all {scope} weights needs {needed:.4f} of the sparse layers "
            "(the dense layers hold too many weights)"
        )
    return needed


@torch.no_grad()
def init_random_masks(
    model: nn.Module,
    sparsity: float,
    *,
    distribution: Literal["erk", "uniform"] = "erk",
    generator: torch.Generator,
) -> dict[str, float]:
    """Random masks on ``model``'s sparse layers, ``sparsity`` over them in total; returns per-layer sparsity.

    The start of sparse training from scratch (DSR, SET, RigL). ``"uniform"``
    gives every layer ``sparsity`` (DSR's initialisation); ``"erk"`` the
    Erdős–Rényi-Kernel distribution of :func:`~dynprune_lib.layers.erk_sparsities`
    (Evci et al. 2020), denser where a layer has few weights. Per-layer zero
    counts are rounded up. Masked weights are set to zero.
    """
    if distribution not in ("erk", "uniform"):
        raise ValueError(f"distribution must be 'erk' or 'uniform', got {distribution!r}")
    layers = dict(sparse_modules(model))
    if not layers:
        raise ValueError("model has no sparse DynamicLinear/DynamicConv2d layers")
    shapes = [m.weight.shape for m in layers.values()]
    targets = erk_sparsities(shapes, sparsity) if distribution == "erk" else [sparsity] * len(shapes)
    out = {}
    for (name, layer), target in zip(layers.items(), targets):
        numel = layer.weight.numel()
        n_zero = min(math.ceil(target * numel - 1e-9), numel - 1)
        flat = torch.ones(numel, dtype=torch.bool)
        flat[torch.randperm(numel, generator=generator)[:n_zero]] = False
        layer.mask.copy_(flat.view(layer.mask.shape))
        layer.weight.masked_fill_(~layer.mask, 0)
        out[name] = n_zero / numel
    return out


def make_loaders(
    config: ExperimentConfig, data: CIFAR10Data, *, seed: int = 0, device: str | torch.device = "cpu"
) -> tuple[BatchLoader, BatchLoader]:
    """Shuffled (and, if ``config.augment``, augmented) training loader and the test loader,
    both standardised with the training split's channel statistics."""
    mean, std = data.channel_stats
    train = BatchLoader(
        data.train_images, data.train_labels, config.batch_size, shuffle=True, seed=seed, device=device,
        normalize="standard", mean=mean, std=std, augment=config.augment,
    )
    test = BatchLoader(
        data.test_images, data.test_labels, config.eval_batch_size, device=device, normalize="standard",
        mean=mean, std=std,
    )
    return train, test


class StepSchedule:
    """``fit`` hook that steps a learning-rate scheduler after every optimizer step, then a pruner.

    ``fit`` steps its ``lr_scheduler`` once per epoch; a one-cycle schedule over
    ten epochs needs per-step updates. Pass this as ``fit(pruner=...)``; it
    forwards ``epoch_end`` to the pruner (its history columns) and checkpoints both.
    """

    def __init__(self, lr_scheduler: torch.optim.lr_scheduler.LRScheduler, pruner: Any | None = None) -> None:
        if not isinstance(lr_scheduler, torch.optim.lr_scheduler.LRScheduler):
            raise TypeError(f"lr_scheduler must be a torch LRScheduler, got {type(lr_scheduler).__name__}")
        self.lr_scheduler = lr_scheduler
        self.pruner = pruner

    def step(self) -> None:
        if self.pruner is not None:
            self.pruner.step()
        self.lr_scheduler.step()

    def epoch_end(self, epoch: int) -> dict[str, float]:
        epoch_end = getattr(self.pruner, "epoch_end", None)
        return dict(epoch_end(epoch)) if callable(epoch_end) else {}

    def state_dict(self) -> dict[str, Any]:
        return {
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "pruner": None if self.pruner is None else self.pruner.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if (state.get("pruner") is None) != (self.pruner is None):
            raise ValueError("state and hook disagree on whether there is a pruner")
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.pruner is not None:
            self.pruner.load_state_dict(state["pruner"])


def _dsr_period(config: ExperimentConfig) -> dict[int, int]:
    """``config.dsr_period`` keyed by 0-based epoch; when two entries fall on one epoch the first wins."""
    out: dict[int, int] = {}
    for fraction, period in config.dsr_period:
        out.setdefault(math.floor(fraction * config.epochs), period)
    return out


def _build_pruner(
    config: ExperimentConfig, method: str, model: nn.Module, optimizer: torch.optim.Optimizer,
    layer_sparsity: float, total_steps: int, seed: int,
):
    if method == "dense":
        return None
    if method == "dsr":
        return DSR(model, optimizer, prune_fraction=config.dsr_prune_fraction, period=_dsr_period(config), seed=seed)
    if method in ("set", "rigl"):
        end = max(1, round(config.regrow_end * total_steps))
        cls, key = (SET, "prune_fraction") if method == "set" else (RigL, "drop_fraction")
        return cls(model, optimizer, period=config.regrow_period, end_step=end, seed=seed,
                   **{key: config.regrow_fraction})
    if method == "magnitude_oneshot":
        begin = max(1, round(config.oneshot_at * total_steps))
        return MagnitudePruning(model, optimizer, sparsity=layer_sparsity, scope=config.magnitude_scope,
                                begin=begin, unit="step")
    if method == "magnitude_gradual":
        every = config.gradual_every
        begin = max(1, round(config.gradual[0] * total_steps))
        prunes = max(1, round((config.gradual[1] - config.gradual[0]) * total_steps / every))
        end = begin + prunes * every  # a multiple of the frequency: the last prune reaches the target
        if end > total_steps:
            raise ValueError(
                f"gradual pruning would end at step {end} after the last step {total_steps}; "
                f"lower gradual_every ({every}) or the end of gradual ({config.gradual[1]})"
            )
        return MagnitudePruning(model, optimizer, sparsity=layer_sparsity, scope=config.magnitude_scope,
                                begin=begin, end=end, frequency=every, unit="step")
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


# --------------------------------------------------------------------------- runs


@dataclass
class Run:
    """One trained (method, sparsity, seed) configuration."""

    method: str
    seed: int
    sparsity: float | None  # target over the config's sparsity scope; None for dense
    model: nn.Module
    history: pd.DataFrame
    log: pd.DataFrame | None  # the pruning scheduler's log_frame(); None for dense
    layer_sparsity: dict[str, float]  # initial (sparse-from-scratch) per-layer sparsity, else {}
    checkpoint: Path
    config: ExperimentConfig

    @property
    def label(self) -> str:
        return METHOD_LABELS.get(self.method, self.method)

    @property
    def train_seconds(self) -> float:
        """Wall seconds of all epochs (training and the per-epoch test evaluation)."""
        return float(self.history["seconds"].sum())


def train_run(
    config: ExperimentConfig,
    data: CIFAR10Data,
    method: str,
    *,
    seed: int = 0,
    sparsity: float | None = None,
    device: str | torch.device = "cpu",
    run_dir: str | os.PathLike[str],
    progress: bool | None = None,
    verbose: bool = True,
) -> Run:
    """Train ``method`` at ``sparsity`` (default ``config.sparsity``) with ``seed``; resumable.

    Deterministic under ``seed``: weights, masks, data order, augmentation and
    the scheduler's own random draws all derive from it. The checkpoint
    ``run_dir/<model>_<method>_s<sparsity>_seed<seed>_e<epochs>_n<images>_<key>.pt``
    names the configuration (``key`` hashes the training settings), so a changed
    setting never resumes a stale run.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "dense":
        if sparsity not in (None, 0.0):
            raise ValueError(f"method 'dense' takes no sparsity, got {sparsity!r}")
        sparsity = None
    else:
        sparsity = config.sparsity if sparsity is None else float(sparsity)
    n_train = len(data.train_labels)
    tag = "dense" if sparsity is None else f"s{sparsity:g}"
    checkpoint = Path(run_dir) / (
        f"{config.model}_{method}_{tag}_seed{seed}_e{config.epochs}_n{n_train}_"
        f"{config.training_key(method, sparsity)}.pt"
    )
    train_loader, test_loader = make_loaders(config, data, seed=seed, device=device)
    set_seed(seed)
    model = build_model(config)
    layer_sparsity: dict[str, float] = {}
    target = 0.0 if sparsity is None else sparse_layer_target(model, sparsity, config.sparsity_scope)
    if method in _SPARSE_FROM_START:
        generator = torch.Generator().manual_seed(seed)
        layer_sparsity = init_random_masks(model, target, distribution=config.distribution, generator=generator)
    model.to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )
    total_steps = config.epochs * len(train_loader)
    if config.warmup * total_steps < 2:  # OneCycleLR divides by (warm-up steps - 1)
        raise ValueError(
            f"warmup={config.warmup} of {total_steps} steps is under 2 steps; use more data, epochs or warmup"
        )
    lr_scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=total_steps, pct_start=config.warmup, cycle_momentum=False,
    )
    pruner = _build_pruner(config, method, model, optimizer, target, total_steps, seed)
    history = fit(
        model, train_loader, test_loader, epochs=config.epochs, optimizer=optimizer,
        pruner=StepSchedule(lr_scheduler, pruner), device=device, checkpoint=checkpoint,
        progress=progress, verbose=verbose, precision=config.precision,
    )
    log = pruner.log_frame() if pruner is not None else None
    return Run(method, seed, sparsity, model, history, log, layer_sparsity, checkpoint, config)


def run_methods(
    config: ExperimentConfig,
    data: CIFAR10Data,
    *,
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    run_dir: str | os.PathLike[str],
    progress: bool | None = None,
    verbose: bool = True,
) -> list[Run]:
    """Every method (default ``config.methods``) for every seed (default ``config.seeds``), all at
    ``config.sparsity``: the fair comparison (same network, data, schedule, epochs, seeds)."""
    jobs = [(method, seed, None) for method in (config.methods if methods is None else methods)
            for seed in (config.seeds if seeds is None else seeds)]
    return _train_all(config, data, jobs, device=device, run_dir=run_dir, progress=progress, verbose=verbose)


def sparsity_sweep(
    config: ExperimentConfig,
    data: CIFAR10Data,
    *,
    methods: Sequence[str] | None = None,
    sparsities: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    run_dir: str | os.PathLike[str],
    progress: bool | None = None,
    verbose: bool = True,
) -> list[Run]:
    """The dense model and each of ``methods`` (default: ``config.methods`` other than
    ``dense``) retrained at each of ``sparsities`` (default ``config.sparsities``), for
    every seed: accuracy against sparsity."""
    methods = [m for m in (config.methods if methods is None else methods) if m != "dense"]
    if not methods:
        raise ValueError("sparsity_sweep needs at least one pruning method besides 'dense'")
    jobs = []
    for seed in config.seeds if seeds is None else seeds:
        jobs.append(("dense", seed, None))
        jobs += [(m, seed, s) for m in methods for s in (config.sparsities if sparsities is None else sparsities)]
    return _train_all(config, data, jobs, device=device, run_dir=run_dir, progress=progress, verbose=verbose)


def _train_all(config, data, jobs, *, device, run_dir, progress, verbose) -> list[Run]:
    """``train_run`` for each (method, seed, sparsity or None for the config's), announcing each."""
    runs = []
    for method, seed, sparsity in jobs:
        if verbose:
            at = "" if sparsity is None else f" at sparsity {sparsity:g}"
            print(f"== {method}{at}, seed {seed}", flush=True)
        runs.append(train_run(config, data, method, seed=seed, sparsity=sparsity, device=device,
                              run_dir=run_dir, progress=progress, verbose=verbose))
    return runs


# --------------------------------------------------------------------------- the paper's baseline


#: The protocol of notebook 01 (paper section 3.1; Keras defaults): Adam 1e-3, batch 32, pixels in [0, 1].
BASELINE_PROTOCOL: Mapping[str, Any] = {"optimizer": "Adam", "lr": 1e-3, "batch_size": 32, "normalize": "unit"}


def baseline_history(
    results_dir: str | os.PathLike[str],
    data: CIFAR10Data,
    *,
    epochs: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
    run_dir: str | os.PathLike[str],
    verbose: bool = True,
) -> tuple[pd.DataFrame, str]:
    """History of the paper's baseline CNN and where it came from.

    ``results_dir/baseline.csv`` (written by notebook 01) when it holds ``epochs``
    epochs; otherwise the baseline is trained here with notebook 01's protocol
    (:data:`BASELINE_PROTOCOL`), resumably, and the second value says so.
    """
    path = Path(results_dir) / "baseline.csv"
    reason = "not found"
    if path.exists():
        history = pd.read_csv(path)
        if len(history) == epochs:
            return history, f"notebook 01 ({path.name})"
        reason = f"has {len(history)} epochs, not {epochs}"
    n_train = len(data.train_labels)
    train = BatchLoader(data.train_images, data.train_labels, BASELINE_PROTOCOL["batch_size"], shuffle=True,
                        seed=seed, normalize="unit", device=device)
    test = BatchLoader(data.test_images, data.test_labels, 1000, normalize="unit", device=device)
    set_seed(seed)
    model = BaselineCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=BASELINE_PROTOCOL["lr"])
    history = fit(model, train, test, epochs=epochs, optimizer=optimizer, device=device,
                  checkpoint=Path(run_dir) / f"baseline_seed{seed}_e{epochs}_n{n_train}.pt", verbose=verbose)
    return history, f"trained here with notebook 01's protocol ({path.name} {reason})"


# --------------------------------------------------------------------------- tables


def histories_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """All runs' per-epoch histories in one long table with ``method``, ``sparsity`` and ``seed`` columns."""
    if not runs:
        raise ValueError("runs is empty")
    frames = []
    for run in runs:
        frame = run.history.copy()
        frame.insert(0, "seed", run.seed)
        frame.insert(0, "sparsity_target", math.nan if run.sparsity is None else run.sparsity)
        frame.insert(0, "method", run.method)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def mean_history(runs: Sequence[Run]) -> pd.DataFrame:
    """Per-epoch mean over ``runs`` (e.g. the seeds of one method) of every numeric history column."""
    if not runs:
        raise ValueError("runs is empty")
    frame = pd.concat([r.history for r in runs], ignore_index=True)
    return frame.groupby("epoch", as_index=False).mean(numeric_only=True)


def find_run(runs: Sequence[Run], method: str, sparsity: float | None = None, seed: int | None = None) -> Run:
    """The run of ``method`` at target ``sparsity`` (None: any) and ``seed`` (None: the first)."""
    for run in runs:
        if run.method == method and (sparsity is None or run.sparsity == sparsity) and (
                seed is None or run.seed == seed):
            return run
    raise ValueError(f"no run of method={method!r}, sparsity={sparsity!r}, seed={seed!r}")


def run_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run: final, best and training accuracy, the sparsity measured on its weights
    (:func:`~dynprune_lib.efficiency.sparsity_summary`: sparse layers, convolutions, linear
    layers, all weights), its training time and training precision."""
    rows = []
    for run in runs:
        s = sparsity_summary(run.model)
        rows.append({
            "method": run.method,
            "sparsity_target": math.nan if run.sparsity is None else run.sparsity,
            "seed": run.seed,
            "final_test_acc": float(run.history["test_acc"].iloc[-1]),
            "best_test_acc": float(run.history["test_acc"].max()),
            "final_train_acc": float(run.history["train_acc"].iloc[-1]),
            "sparse_layer_sparsity": s["sparse_layers"], "conv_sparsity": s["conv"],
            "linear_sparsity": s["linear"], "weight_sparsity": s["all"],
            "epochs": len(run.history), "seconds_per_epoch": float(run.history["seconds"].mean()),
            "train_minutes": run.train_seconds / 60, "precision": run.config.precision,
        })
    return pd.DataFrame(rows)


def method_table(runs: Sequence[Run], *, baseline: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per method: accuracy over seeds (final: mean, standard deviation, min, max;
    best; training), the sparsity measured on the weights and training time (means).

    ``baseline`` (the history of the paper's dense baseline CNN) adds its row.
    """
    if not runs:
        raise ValueError("runs is empty")
    per_run = run_table(runs)
    if baseline is not None:
        per_run = pd.concat([per_run, pd.DataFrame([{
            "method": "baseline", "seed": -1,
            "final_test_acc": float(baseline["test_acc"].iloc[-1]), "best_test_acc": float(baseline["test_acc"].max()),
            "final_train_acc": float(baseline["train_acc"].iloc[-1]),
            "conv_sparsity": 0.0, "linear_sparsity": 0.0, "weight_sparsity": 0.0,
            "epochs": len(baseline), "seconds_per_epoch": float(baseline["seconds"].mean()),
            "train_minutes": float(baseline["seconds"].sum()) / 60,
            "precision": "fp32",  # notebook 01 and baseline_history train with fit's default
        }])], ignore_index=True)
    table = per_run.groupby("method", sort=False).agg(
        seeds=("seed", "size"),
        final_test_acc=("final_test_acc", "mean"),
        final_test_acc_std=("final_test_acc", "std"),
        final_test_acc_min=("final_test_acc", "min"),
        final_test_acc_max=("final_test_acc", "max"),
        best_test_acc=("best_test_acc", "mean"),
        final_train_acc=("final_train_acc", "mean"),
        conv_sparsity=("conv_sparsity", "mean"),
        sparse_layer_sparsity=("sparse_layer_sparsity", "mean"),
        weight_sparsity=("weight_sparsity", "mean"),
        epochs=("epochs", "first"),
        seconds_per_epoch=("seconds_per_epoch", "mean"),
        train_minutes=("train_minutes", "mean"),
        precision=("precision", "first"),
    ).reset_index()
    table.insert(1, "description", [METHOD_LABELS.get(m, m) for m in table["method"]])
    return table


def target_table(
    run: Run, *, experiment: str = "dynamic_cnn", time_budget_minutes: float | None = None
) -> pd.DataFrame:
    """Whether ``run`` meets the goals of issue 5: final test accuracy at least the paper's
    final one, at least ``run.sparsity`` of the convolution (CNN) or linear (MLP) weights zero,
    and (optionally) training within ``time_budget_minutes``. Every number is computed."""
    summary = sparsity_summary(run.model)
    scope = run.config.sparsity_scope
    final = float(run.history["test_acc"].iloc[-1])
    rows = [
        {"criterion": "final test accuracy >= the paper's final", "required": PAPER[experiment]["final test_acc"],
         "ours": final},
        {"criterion": f"fraction of {scope} weights that are zero", "required": run.sparsity,
         "ours": summary["conv" if scope == "conv" else "linear"]},
    ]
    if time_budget_minutes is not None:
        rows.append({"criterion": "training wall time, minutes (at most)", "required": time_budget_minutes,
                     "ours": run.train_seconds / 60})
    table = pd.DataFrame(rows)
    at_most = table["criterion"].str.contains("at most")
    table["met"] = (table["ours"] >= table["required"]).where(~at_most, table["ours"] <= table["required"])
    return table


def _tagged(run: Run, table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with the run's method, target sparsity, seed and measured sparsity in front."""
    return pd.concat([pd.DataFrame({
        "method": run.method, "sparsity_target": math.nan if run.sparsity is None else run.sparsity,
        "seed": run.seed, "sparsity": sparsity_summary(run.model)["sparse_layers"],
    }, index=table.index), table], axis=1)


def run_latency(
    runs: Sequence[Run], *, methods: Sequence[str] | None = None, device: str | torch.device = "cpu"
) -> pd.DataFrame:
    """:func:`~dynprune_lib.efficiency.latency_table` of each run's model (those of ``methods``;
    default all) at its config's ``latency_batches``, tagged with the run (:func:`_tagged`)."""
    chosen = [run for run in runs if methods is None or run.method in methods]
    if not chosen:
        raise ValueError(f"no run of methods {list(methods or [])}; runs have {sorted({r.method for r in runs})}")
    return pd.concat([
        _tagged(run, latency_table(run.model, run.config.latency_batches, seconds=run.config.latency_seconds,
                                   device=device))
        for run in chosen
    ], ignore_index=True)


def run_storage(runs: Sequence[Run], directory: str | os.PathLike[str]) -> pd.DataFrame:
    """:func:`~dynprune_lib.efficiency.storage_table` of every run's model (files under
    ``directory``), tagged with the run (:func:`_tagged`)."""
    return pd.concat([_tagged(run, storage_table(run.model, directory, name=run.checkpoint.stem)) for run in runs],
                     ignore_index=True)


def inference_sweep(
    sources: Mapping[str, Run],
    test_loader: BatchLoader,
    *,
    sparsities: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """Each source run's model with its sparsity raised at inference to every one of
    ``sparsities`` (default: its config's ``inference_sparsities``), without retraining:
    accuracy and dense-vs-CSR latency per point
    (:func:`~dynprune_lib.efficiency.inference_sparsity_sweep`), with a ``source`` column."""
    frames = []
    for name, run in sources.items():
        targets = run.config.inference_sparsities if sparsities is None else sparsities
        frame = inference_sparsity_sweep(run.model, test_loader, targets, latency_batches=run.config.latency_batches,
                                         seconds=run.config.latency_seconds, device=device)
        frame.insert(0, "source", name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def sparsity_claim_table(runs: pd.DataFrame, inference: pd.DataFrame, *, method: str = "dsr") -> pd.DataFrame:
    """Test accuracy at each sparsity: retrained (``run_table`` rows of ``method``, mean over
    seeds) beside every inference-time source (``inference_sweep``), and their differences."""
    retrained = (runs[runs["method"] == method].groupby("sparsity_target")["final_test_acc"].mean()
                 .rename("retrained"))
    per_source = (inference.drop_duplicates(["source", "sparsity_target"])
                  .pivot(index="sparsity_target", columns="source", values="test_acc"))
    table = pd.concat([retrained, per_source], axis=1).sort_index()
    for source in per_source.columns:
        table[f"{source} - retrained"] = table[source] - table["retrained"]
    return table.rename_axis("sparsity").reset_index()


def paper_marks(experiment: str, last_epoch: int) -> dict[int, float]:
    """The paper's per-epoch points of ``experiment`` as {epoch: value} for ``plot_history``.

    "after epoch N" is placed at N and "final" at ``last_epoch`` (unless an
    "after epoch" point is already there); "best" has no single epoch and is left
    out (it is in the comparison table).
    """
    if experiment not in PAPER:
        raise ValueError(f"experiment must be one of {sorted(PAPER)}, got {experiment!r}")
    marks: dict[int, float] = {}
    items = PAPER[experiment].items()
    for metric, value in items:  # per-epoch points first: they win over "final" on the same epoch
        if metric.startswith("test_acc after epoch "):
            marks[int(metric.rpartition(" ")[2])] = float(value)
    for metric, value in items:
        if metric == "final test_acc":
            marks.setdefault(last_epoch, float(value))
    return dict(sorted(marks.items()))
