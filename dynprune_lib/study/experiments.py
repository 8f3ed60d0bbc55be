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

import concurrent.futures
import contextlib
import functools
import math
import multiprocessing
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._utils import random_mask
from ..data import BatchLoader, CIFAR10Data, make_loaders
from ..layers import erk_sparsities, mask_summary, sparse_modules
from ..models import MLP, BaselineCNN, DynamicCNN, WideResNet
from ..schedulers import DSR, SET, MagnitudePruning, RigL
from ..train import StepSchedule, branch_checkpoint, epoch_checkpoint, fit, set_seed
from .aspects import count_flops
from .efficiency import inference_sparsity_sweep, latency_table, sparsity_summary, storage_table
from .paper import PAPER, run_conditions, split_seeds
from .profiles import (
    BASELINE,
    DSR_REFERENCE,
    ERK_METHODS,
    METHODS,
    WRN_RECIPES,
    BaselineRecipe,
    ExperimentConfig,
)
from .results import RESULT_FILES

__all__ = [
    "CHANCE_MARGIN",
    "METHOD_LABELS",
    "Run",
    "at_chance",
    "baseline_history",
    "build_model",
    "derive_dsr_schedule",
    "dsr_schedule",
    "experiment_loaders",
    "experiment_optimizer",
    "final_rows",
    "find_run",
    "paper_dsr_jobs",
    "paper_dsr_table",
    "experiment_conditions",
    "histories_frame",
    "inference_sources",
    "inference_sweep",
    "init_random_masks",
    "mean_history",
    "method_table",
    "run_latency",
    "run_methods",
    "run_storage",
    "run_table",
    "shared_epochs",
    "sparse_layer_target",
    "sparsity_claim_table",
    "sparsity_sweep",
    "target_table",
    "train_baseline",
    "train_baselines",
    "train_paper_dsr",
    "train_run",
]

#: How tables and figures name each method.
METHOD_LABELS: Mapping[str, str] = {
    "dense": "dense (no pruning)",
    "dsr": "DSR (dynamic pruning, the paper's method)",
    "magnitude_oneshot": "magnitude, one-shot after training + fine-tuning",
    "magnitude_gradual": "magnitude, gradual (cubic schedule)",
    "set": "SET (random regrowth)",
    "rigl": "RigL (gradient regrowth)",
    "set_erk": "SET from ERK (its paper's initial distribution)",
    "rigl_erk": "RigL from ERK (its paper's initial distribution)",
    "baseline": "paper's baseline CNN (section 3.1, dense)",
}
_SPARSE_FROM_START = ("dsr", "set", "rigl")


def _method_and_distribution(config: ExperimentConfig, method: str) -> tuple[str, str]:
    """The scheduler a method name runs and the initial distribution it starts from
    (:data:`~.profiles.ERK_METHODS`: ``set_erk`` is SET from ERK)."""
    if method in ERK_METHODS:
        return method.removesuffix("_erk"), "erk"
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS + ERK_METHODS}, got {method!r}")
    return method, config.distribution


# --------------------------------------------------------------------------- building blocks


def build_model(config: ExperimentConfig) -> nn.Module:
    """The network of ``config`` with masks of ones on every prunable layer (dense until pruned).

    Uses the global RNG for the weights (call :func:`~dynprune_lib.train.set_seed` first);
    draws nothing for the masks, so every method starts from the same weights.
    """
    if config.model == "cnn":
        return DynamicCNN(
            widths=config.widths,
            sparsity=0.0,
            sparse=True,
            convs_per_stage=config.convs_per_stage,
            pool_before_norm=config.pool_before_norm,
            channels_last=config.channels_last,
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
        layer.mask.copy_(random_mask(layer.mask.shape, n_zero, generator=generator, device=layer.mask.device))
        layer.weight.masked_fill_(~layer.mask, 0)
        out[name] = n_zero / numel
    return out


def experiment_loaders(
    config: ExperimentConfig, data: CIFAR10Data, *, seed: int = 0, device: str | torch.device = "cpu"
) -> tuple[BatchLoader, BatchLoader]:
    """Training loader (shuffled; augmented if ``config.augment``) and test loader of ``config``,
    both standardised with the training split's channel statistics."""
    return make_loaders(
        data,
        config.batch_size,
        augment=config.augment,
        eval_batch_size=config.eval_batch_size,
        seed=seed,
        device=device,
    )


def experiment_optimizer(config: ExperimentConfig, model: nn.Module) -> torch.optim.SGD:
    """The SGD every run of ``config`` trains ``model`` with (its peak learning rate; the
    one-cycle schedule of :func:`train_run` moves it); PyTorch's fused kernel when
    ``config.fused_sgd``."""
    return torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
        fused=True if config.fused_sgd else None,  # None: the default, as runs before the knob
    )


def _live_weights(model: nn.Module) -> int:
    """Weights the masks of ``model``'s sparse layers keep."""
    return sum(int(layer.mask.sum()) for _, layer in sparse_modules(model))


@functools.cache
def _reference_live_weights() -> int:
    """Live weights of the reference's network at its sparsity (WRN-28-2's 3x3 block convolutions at 0.9)."""
    recipe = WRN_RECIPES[f"{DSR_REFERENCE['network']}-dsr0.9"]
    return _live_weights(WideResNet(recipe.depth, recipe.widen_factor, sparse=True, sparsity=recipe.sparsity))


def dsr_schedule(config: ExperimentConfig, model: nn.Module, steps_per_epoch: int) -> dict[str, Any]:
    """DSR's ``n_prune``, ``period`` (steps, keyed by 0-based epoch) and ``end_step`` for a run of
    ``config`` on ``model`` (its masks set), derived from the reference's WRN-28-2 protocol
    (:data:`DSR_REFERENCE`) where the profile leaves them open (``dsr_n_prune=0``, ``dsr_period=()``):

    * ``N_p``: the same share of the *live* weights, ``20,000 * L / L_ref`` (``L``: weights ``model``'s
      masks keep; ``L_ref``: WRN-28-2's at 0.9, where the reference reallocates 20,000 per update,
      about 14 %). A share of all weights instead would ask a model at 0.99 to prune more weights
      than it has live: no update could, the threshold would double without end, and DSR collapse;
    * the period phases start at the same fractions of training (epochs 0, 25, 80, 140 of 200 ->
      ``round(e / 200 * epochs)``; two on one epoch: the first wins), with the same number of updates
      per epoch (``round(p * steps_per_epoch / 500)``: the reference's epoch is 500 steps);
    * no updates after ``dsr_end`` of the steps (the reference's 190 of 200 epochs).
    """
    return derive_dsr_schedule(
        model,
        epochs=config.epochs,
        steps_per_epoch=steps_per_epoch,
        n_prune=config.dsr_n_prune,
        period=config.dsr_period,
        end=config.dsr_end,
    )


def derive_dsr_schedule(
    model: nn.Module,
    *,
    epochs: int,
    steps_per_epoch: int,
    n_prune: int = 0,
    period: Sequence[tuple[float, int]] = (),
    end: float = DSR_REFERENCE["stop_epoch"] / DSR_REFERENCE["epochs"],
) -> dict[str, Any]:
    """:func:`dsr_schedule` for any run: ``epochs`` of ``steps_per_epoch`` steps on ``model`` (its
    masks set); ``n_prune=0`` and an empty ``period`` derive them from the reference, ``end`` is
    the fraction of the steps after which DSR stops (the reference's 190 of 200 epochs)."""
    total = epochs * steps_per_epoch
    n_prune = n_prune or max(1, round(DSR_REFERENCE["n_prune"] * _live_weights(model) / _reference_live_weights()))
    phases: dict[int, int] = {}
    if period:
        for fraction, steps in period:
            phases.setdefault(math.floor(fraction * epochs), steps)
    else:
        scale = steps_per_epoch / DSR_REFERENCE["steps_per_epoch"]
        for epoch, steps in DSR_REFERENCE["period"].items():
            phases.setdefault(round(epoch / DSR_REFERENCE["epochs"] * epochs), max(1, round(steps * scale)))
    return {"n_prune": n_prune, "period": phases, "end_step": max(1, round(end * total))}


def _build_pruner(
    config: ExperimentConfig,
    method: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    layer_sparsity: float,
    total_steps: int,
    seed: int,
):
    if method == "dense":
        return None
    if method == "dsr":
        steps_per_epoch = total_steps // config.epochs
        return DSR(model, optimizer, seed=seed, **dsr_schedule(config, model, steps_per_epoch))
    if method in ("set", "rigl"):
        end = max(1, round(config.regrow_end * total_steps))
        cls, key = (SET, "prune_fraction") if method == "set" else (RigL, "drop_fraction")
        return cls(
            model, optimizer, period=config.regrow_period, end_step=end, seed=seed, **{key: config.regrow_fraction}
        )
    if method == "magnitude_oneshot":
        return MagnitudePruning(
            model,
            optimizer,
            sparsity=layer_sparsity,
            scope=config.magnitude_scope,
            begin=_oneshot_step(config, total_steps),
            unit="step",
        )
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
        return MagnitudePruning(
            model,
            optimizer,
            sparsity=layer_sparsity,
            scope=config.magnitude_scope,
            begin=begin,
            end=end,
            frequency=every,
            unit="step",
        )
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _oneshot_step(config: ExperimentConfig, total_steps: int) -> int:
    """The optimizer step after which ``magnitude_oneshot`` prunes."""
    return max(1, round(config.oneshot_at * total_steps))


def shared_epochs(config: ExperimentConfig, steps_per_epoch: int) -> int:
    """Epochs a ``magnitude_oneshot`` run of ``config`` shares with the dense run of its seed.

    Until its prune, one-shot pruning *is* the dense run: the same weights, masks of ones,
    data order, optimizer and schedule, and a pruner that only counts steps, so every epoch
    that ends before the prune is the dense run's, bit for bit. :func:`train_run` starts
    the one-shot run from the dense run's state after them instead of training them again.
    """
    return (_oneshot_step(config, config.epochs * steps_per_epoch) - 1) // steps_per_epoch


def _advanced(state: Mapping[str, Any], *, pruner: MagnitudePruning, steps: int, epoch: int) -> dict[str, Any]:
    """The dense run's schedule state with ``pruner`` added as it is after ``steps`` steps
    and ``epoch`` epochs, none of which prune (:func:`shared_epochs`)."""
    if state.get("pruner") is not None:
        raise ValueError("the run to branch from has a pruner; only the dense run's epochs are shared")
    if pruner.begin <= steps:
        raise ValueError(f"the pruner acts at step {pruner.begin}, inside the {steps} shared steps")
    return {**state, "pruner": {**pruner.state_dict(), "step_count": steps, "epoch": epoch}}


def _checkpoint_path(
    config: ExperimentConfig, method: str, sparsity: float | None, seed: int, n_train: int, run_dir: Path
) -> Path:
    """``run_dir/<model>_<method>_s<sparsity>_seed<seed>_e<epochs>_n<images>_<key>.pt``."""
    tag = "dense" if sparsity is None else f"s{sparsity:g}"
    key = config.training_key(method, sparsity)
    return run_dir / f"{config.model}_{method}_{tag}_seed{seed}_e{config.epochs}_n{n_train}_{key}.pt"


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
    steps_per_epoch: int = 0  # optimizer steps per epoch (0: unknown)

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

    A dense run keeps its state after the epochs one-shot pruning shares with it
    (:func:`shared_epochs`); a ``magnitude_oneshot`` run starts from there when that state
    exists (it trains those epochs itself otherwise, to the same numbers).
    """
    base, distribution = _method_and_distribution(config, method)
    if method == "dense":
        if sparsity not in (None, 0.0):
            raise ValueError(f"method 'dense' takes no sparsity, got {sparsity!r}")
        sparsity = None
    else:
        sparsity = config.sparsity if sparsity is None else float(sparsity)
    n_train = len(data.train_labels)
    checkpoint = _checkpoint_path(config, method, sparsity, seed, n_train, Path(run_dir))
    train_loader, test_loader = experiment_loaders(config, data, seed=seed, device=device)
    set_seed(seed)
    model = build_model(config)
    layer_sparsity: dict[str, float] = {}
    target = 0.0 if sparsity is None else sparse_layer_target(model, sparsity, config.sparsity_scope)
    if base in _SPARSE_FROM_START:
        generator = torch.Generator().manual_seed(seed)
        layer_sparsity = init_random_masks(model, target, distribution=distribution, generator=generator)
    model.to(device)
    optimizer = experiment_optimizer(config, model)
    total_steps = config.epochs * len(train_loader)
    if config.warmup * total_steps < 2:  # OneCycleLR divides by (warm-up steps - 1)
        raise ValueError(
            f"warmup={config.warmup} of {total_steps} steps is under 2 steps; use more data, epochs or warmup"
        )
    lr_scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=config.lr,
        total_steps=total_steps,
        pct_start=config.warmup,
        cycle_momentum=False,
    )
    pruner = _build_pruner(config, base, model, optimizer, target, total_steps, seed)
    if pruner is None:  # the dense run's history gets the columns of the pruned runs' histories
        layers = [layer for _, layer in sparse_modules(model)]
        schedule = StepSchedule(lr_scheduler, columns=functools.partial(mask_summary, layers))
    else:
        schedule = StepSchedule(lr_scheduler, pruner)
    shared = shared_epochs(config, len(train_loader))
    if method == "magnitude_oneshot" and shared and not checkpoint.exists():
        dense = epoch_checkpoint(_checkpoint_path(config, "dense", None, seed, n_train, Path(run_dir)), shared)
        if dense.exists():
            branch_checkpoint(
                dense,
                checkpoint,
                model=model,
                optimizer=optimizer,
                train_loader=train_loader,
                pruner=schedule,
                pruner_state=functools.partial(
                    _advanced, pruner=pruner, steps=shared * len(train_loader), epoch=shared
                ),
                precision=config.precision,
            )
        if verbose:
            print(
                f"one-shot pruning shares its first {shared} epochs with the dense run: "
                + ("starting from its state after them" if dense.exists() else "none saved, training them"),
                flush=True,
            )
    with _torch_threads(config.threads_per_run):
        history = fit(
            model,
            train_loader,
            test_loader,
            epochs=config.epochs,
            optimizer=optimizer,
            pruner=schedule,
            device=device,
            checkpoint=checkpoint,
            keep_epochs=(shared,) if method == "dense" and shared else (),
            progress=progress,
            verbose=verbose,
            precision=config.precision,
        )
    log = pruner.log_frame() if pruner is not None else None
    return Run(method, seed, sparsity, model, history, log, layer_sparsity, checkpoint, config, len(train_loader))


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
    jobs = [
        (method, seed, None)
        for method in (config.methods if methods is None else methods)
        for seed in (config.seeds if seeds is None else seeds)
    ]
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
    ``dense``) retrained at each of ``sparsities`` (default ``config.sparsities``): at every
    seed where ``config.all_seeds_at`` lists the sparsity (or is empty), else at the first
    seed only. Accuracy against sparsity."""
    methods = [m for m in (config.methods if methods is None else methods) if m != "dense"]
    if not methods:
        raise ValueError("sparsity_sweep needs at least one pruning method besides 'dense'")
    seeds = list(config.seeds if seeds is None else seeds)
    everywhere = set(config.all_seeds_at)
    jobs = []
    for seed in seeds:
        jobs.append(("dense", seed, None))
        jobs += [
            (m, seed, s)
            for m in methods
            for s in (config.sparsities if sparsities is None else sparsities)
            if seed == seeds[0] or not everywhere or s in everywhere
        ]
    return _train_all(config, data, jobs, device=device, run_dir=run_dir, progress=progress, verbose=verbose)


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """Train with ``threads`` torch threads (0: leave the process's setting), restored after."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _job_label(method: str, seed: int, sparsity: float | None) -> str:
    at = "" if sparsity is None else f" at sparsity {sparsity:g}"
    return f"== {method}{at}, seed {seed}"


def _baseline_label(seed: int, sparsity: float | None = None) -> str:
    return f"== baseline, seed {seed}" if sparsity is None else f"== baseline CNN with DSR at {sparsity:g}, seed {seed}"


def _worker_init(data: CIFAR10Data) -> None:
    global _WORKER_DATA  # one copy of the data per worker process, not one per job
    _WORKER_DATA = data


_WORKER_DATA: CIFAR10Data | None = None


def _worker_train_run(config: ExperimentConfig, job: tuple, run_dir: str) -> tuple[str, pd.DataFrame]:
    method, seed, sparsity = job
    run = train_run(
        config, _WORKER_DATA, method, seed=seed, sparsity=sparsity, run_dir=run_dir, progress=False, verbose=False
    )
    return _job_label(method, seed, sparsity), run.history


def _worker_train_baseline(
    recipe: BaselineRecipe, seed: int, run_dir: str, sparsity: float | None = None
) -> tuple[str, pd.DataFrame]:
    _, history = train_baseline(
        _WORKER_DATA, recipe=recipe, seed=seed, sparsity=sparsity, run_dir=run_dir, verbose=False
    )
    return _baseline_label(seed, sparsity), history


def _train_in_workers(workers: int, data: CIFAR10Data, calls: Sequence[tuple], *, verbose: bool) -> None:
    """Run ``calls`` (``(function, *args)``, each returning its label and history) in ``workers``
    spawned processes holding ``data``; the runs' checkpoints are what they leave behind."""
    if verbose:
        print(f"training {len(calls)} runs, {workers} at a time", flush=True)
    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_worker_init, initargs=(data,)
    ) as pool:
        futures = [pool.submit(*call) for call in calls]
        for done in concurrent.futures.as_completed(futures):
            label, history = done.result()
            if verbose:
                accuracy, minutes = history["test_acc"].iloc[-1], history["seconds"].sum() / 60
                print(f"{label}: test_acc={accuracy:.4f} after {minutes:.1f} min", flush=True)


def _in_workers(profile: ExperimentConfig | BaselineRecipe, device: str | torch.device, runs: int) -> bool:
    """Whether ``profile``'s runs train in worker processes: CPU only, and only with work to share."""
    return profile.parallel_runs > 1 and torch.device(device).type == "cpu" and runs > 1


def _train_all(config, data, jobs, *, device, run_dir, progress, verbose) -> list[Run]:
    """``train_run`` for each (method, seed, sparsity or None for the config's), announcing each.

    With ``config.parallel_runs > 1`` on the CPU, the runs first train in worker processes
    (the same runs: ``threads_per_run`` fixes their numbers), then load here from their checkpoints.
    """
    if _in_workers(config, device, len(jobs)):
        # One-shot runs last: they start from their dense runs (done by then) and, short,
        # fill the end, where a long run would train alone while the other workers idle.
        ordered = sorted(jobs, key=lambda job: job[0] == "magnitude_oneshot")
        calls = [(_worker_train_run, config, job, str(run_dir)) for job in ordered]
        _train_in_workers(config.parallel_runs, data, calls, verbose=verbose)
    runs = []
    for method, seed, sparsity in jobs:
        if verbose:
            print(_job_label(method, seed, sparsity), flush=True)
        runs.append(
            train_run(
                config,
                data,
                method,
                seed=seed,
                sparsity=sparsity,
                device=device,
                run_dir=run_dir,
                progress=progress,
                verbose=verbose,
            )
        )
    return runs


# --------------------------------------------------------------------------- the paper's baseline


def train_baseline(
    data: CIFAR10Data,
    *,
    recipe: BaselineRecipe = BASELINE,
    seed: int = 0,
    sparsity: float | None = None,
    device: str | torch.device = "cpu",
    run_dir: str | os.PathLike[str],
    verbose: bool = True,
) -> tuple[nn.Module, pd.DataFrame]:
    """The paper's baseline CNN trained with its protocol (section 3.1; notebook 01), resumably.

    Pixels in [0, 1], no augmentation, Adam, the epochs, batch size and learning
    rate of ``recipe``; checkpointed under ``run_dir`` after every epoch, a
    finished run restored. Returns the model and its per-epoch history.

    ``sparsity``: the paper's section 3.2 as it describes it, the same network and protocol
    with its convolutions as ``DynamicConv2d`` at that sparsity, trained with DSR (its
    schedule derived from the reference for these steps: :func:`derive_dsr_schedule`).
    """
    n_train = len(data.train_labels)
    train = BatchLoader(
        data.train_images,
        data.train_labels,
        recipe.batch_size,
        shuffle=True,
        seed=seed,
        normalize="unit",
        device=device,
    )
    test = BatchLoader(data.test_images, data.test_labels, recipe.eval_batch_size, normalize="unit", device=device)
    set_seed(seed)
    sparse = sparsity is not None
    model = BaselineCNN(channels_last=recipe.channels_last, sparse=sparse, sparsity=sparsity or 0.0).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    pruner = None
    if sparse:
        schedule = derive_dsr_schedule(model, epochs=recipe.epochs, steps_per_epoch=len(train))
        pruner = DSR(model, optimizer, seed=seed, **schedule)
    threads = f"_t{recipe.threads_per_run}" if recipe.threads_per_run else ""  # threads change CPU numbers
    layout = "_cl" if recipe.channels_last else ""  # and so does the layout
    kind = f"baseline_dsr{sparsity:g}" if sparse else "baseline"
    checkpoint = (
        Path(run_dir) / f"{kind}_seed{seed}_e{recipe.epochs}_b{recipe.batch_size}_n{n_train}{threads}{layout}.pt"
    )
    with _torch_threads(recipe.threads_per_run):
        history = fit(
            model,
            train,
            test,
            epochs=recipe.epochs,
            optimizer=optimizer,
            pruner=pruner,
            device=device,
            checkpoint=checkpoint,
            verbose=verbose,
        )
    return model, history


def train_baselines(
    data: CIFAR10Data,
    *,
    recipe: BaselineRecipe = BASELINE,
    device: str | torch.device = "cpu",
    run_dir: str | os.PathLike[str],
    verbose: bool = True,
) -> pd.DataFrame:
    """:func:`train_baseline` for every seed of ``recipe``: their histories in one table with a
    ``seed`` column (notebook 01). With ``recipe.parallel_runs > 1`` on the CPU the seeds first
    train in worker processes, then load here from their checkpoints."""
    runs = _train_baseline_jobs(data, recipe, [(None, seed) for seed in recipe.seeds], device, run_dir, verbose)
    return pd.concat([history.assign(seed=seed) for _, seed, history in runs], ignore_index=True)


def _train_baseline_jobs(
    data: CIFAR10Data,
    recipe: BaselineRecipe,
    jobs: Sequence[tuple[float | None, int]],
    device: str | torch.device,
    run_dir: str | os.PathLike[str],
    verbose: bool,
) -> list[tuple[float | None, int, pd.DataFrame]]:
    """:func:`train_baseline` for each ``(sparsity or None, seed)``, first in worker processes when
    ``recipe.parallel_runs > 1`` on the CPU (then loaded here from their checkpoints)."""
    if _in_workers(recipe, device, len(jobs)):
        calls = [(_worker_train_baseline, recipe, seed, str(run_dir), sparsity) for sparsity, seed in jobs]
        _train_in_workers(recipe.parallel_runs, data, calls, verbose=verbose)
    runs = []
    for sparsity, seed in jobs:
        if verbose:
            print(_baseline_label(seed, sparsity), flush=True)
        _, history = train_baseline(
            data, recipe=recipe, seed=seed, sparsity=sparsity, device=device, run_dir=run_dir, verbose=verbose
        )
        runs.append((sparsity, seed, history))
    return runs


def paper_dsr_jobs(recipe: BaselineRecipe = BASELINE) -> list[tuple[float, int]]:
    """``(sparsity, seed)`` of the paper's own DSR arm: every seed of ``recipe`` at the sparsities
    of ``recipe.dsr_all_seeds_at`` (paired with notebook 01's dense runs), its first seed at the
    other ``recipe.dsr_sparsities`` (the paper never states its sparsity)."""
    return [
        (sparsity, seed)
        for sparsity in recipe.dsr_sparsities
        for seed in (recipe.seeds if sparsity in recipe.dsr_all_seeds_at else recipe.seeds[:1])
    ]


def train_paper_dsr(
    data: CIFAR10Data,
    *,
    recipe: BaselineRecipe = BASELINE,
    device: str | torch.device = "cpu",
    run_dir: str | os.PathLike[str],
    verbose: bool = True,
) -> pd.DataFrame:
    """The paper's section 3.2 as it describes it (:func:`train_baseline` with ``sparsity``) for
    every job of :func:`paper_dsr_jobs`: their histories in one table with ``method`` (``dsr``),
    ``sparsity_target`` and ``seed`` columns, in worker processes as :func:`train_baselines`."""
    runs = _train_baseline_jobs(data, recipe, paper_dsr_jobs(recipe), device, run_dir, verbose)
    frames = [history.assign(method="dsr", sparsity_target=sparsity, seed=seed) for sparsity, seed, history in runs]
    frame = pd.concat(frames, ignore_index=True)
    return frame[["method", "sparsity_target", "seed", *[c for c in frame.columns if c not in _KEYS]]]


_KEYS = ("method", "sparsity_target", "seed")


def paper_dsr_table(histories: pd.DataFrame, baseline: pd.DataFrame) -> pd.DataFrame:
    """One row per run of the paper's own DSR arm (:func:`train_paper_dsr`): its final and best
    test accuracy and final training accuracy, whether it ended at chance, the dense baseline of
    the same seed (notebook 01's ``baseline``; NaN where that seed has none) and the difference,
    and the paper's reported DSR final (77.01 %) and baseline final (70.42 %) beside them."""
    dense = final_rows(baseline).set_index("seed")["test_acc"]
    rows = []
    for (target, seed), run in histories.groupby(["sparsity_target", "seed"], sort=True):
        run = run.sort_values("epoch")
        final = float(run["test_acc"].iloc[-1])
        rows.append(
            {
                "sparsity_target": target,
                "seed": seed,
                "epochs": len(run),
                "final_test_acc": final,
                "best_test_acc": float(run["test_acc"].max()),
                "final_train_acc": float(run["train_acc"].iloc[-1]),
                "sparsity": float(run["sparsity"].iloc[-1]) if "sparsity" in run.columns else math.nan,
                "at_chance": bool(at_chance(final)),
                "dense_final_test_acc": float(dense.get(seed, math.nan)),
                "minus_dense": final - float(dense.get(seed, math.nan)),
                "paper_dsr_final": PAPER["dynamic_cnn"]["final test_acc"],
                "paper_baseline_final": PAPER["baseline"]["final test_acc"],
            }
        )
    return pd.DataFrame(rows)


def final_rows(histories: pd.DataFrame) -> pd.DataFrame:
    """The last epoch of each seed of a history table with a ``seed`` column (or of the one run)."""
    histories = histories if "seed" in histories.columns else histories.assign(seed=0)
    return histories.loc[histories.groupby("seed")["epoch"].idxmax()].reset_index(drop=True)


def baseline_history(
    results_dir: str | os.PathLike[str],
    data: CIFAR10Data,
    *,
    epochs: int,
    device: str | torch.device = "cpu",
    run_dir: str | os.PathLike[str],
    verbose: bool = True,
) -> tuple[pd.DataFrame, str]:
    """Histories of the paper's baseline CNN (a ``seed`` column) and where they came from.

    ``results_dir/baseline.csv`` (written by notebook 01) when it holds ``epochs``
    epochs; otherwise the baseline is trained here with notebook 01's protocol
    (:func:`train_baselines`), resumably, and the second value says so.
    """
    path = Path(results_dir) / RESULT_FILES["baseline"].name
    reason = "not found"
    if path.exists():
        history = pd.read_csv(path)
        if "seed" not in history.columns:
            history = history.assign(seed=0)
        if history["epoch"].max() == epochs:
            return history, f"notebook 01 ({path.name}, seeds {sorted(history['seed'].unique().tolist())})"
        reason = f"has {history['epoch'].max()} epochs, not {epochs}"
    history = train_baselines(
        data, recipe=BASELINE.replace(epochs=epochs), device=device, run_dir=run_dir, verbose=verbose
    )
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
        if (
            run.method == method
            and (sparsity is None or run.sparsity == sparsity)
            and (seed is None or run.seed == seed)
        ):
            return run
    raise ValueError(f"no run of method={method!r}, sparsity={sparsity!r}, seed={seed!r}")


def _input_shape(model: nn.Module) -> tuple[int, ...]:
    """One CIFAR-sized input of ``model``: its first layer's channels at 32x32, or its features."""
    first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    return (first.in_channels, 32, 32) if isinstance(first, nn.Conv2d) else (first.in_features,)


#: A run whose final test accuracy is below chance (one in ten) plus this is flagged ``at_chance``:
#: it learned nothing (a collapse), so it is shown marked and is never a claim's reference.
CHANCE_MARGIN = 0.02


def at_chance(accuracy: float | pd.Series, classes: int = 10) -> bool | pd.Series:
    """Whether ``accuracy`` is within :data:`CHANCE_MARGIN` of chance (``1 / classes``) or below."""
    return accuracy < 1.0 / classes + CHANCE_MARGIN


def run_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run: final, best and training accuracy, the sparsity measured on its weights
    (:func:`~dynprune_lib.study.efficiency.sparsity_summary`: sparse layers, convolutions, linear
    layers, all weights), the compute of one image's forward pass (``multiply_adds``, and
    ``nonzero_multiply_adds`` counting only non-zero weights, :func:`~.aspects.count_flops`;
    ``flop_sparsity``: the share of multiply-adds pruned away, which is what compares methods
    at equal compute), its training time and training precision, and ``at_chance``
    (:func:`at_chance`: a run that learned nothing, flagged)."""
    rows = []
    for run in runs:
        s = sparsity_summary(run.model)
        flops = count_flops(run.model, _input_shape(run.model))
        rows.append(
            {
                "method": run.method,
                "sparsity_target": math.nan if run.sparsity is None else run.sparsity,
                "seed": run.seed,
                "final_test_acc": float(run.history["test_acc"].iloc[-1]),
                "best_test_acc": float(run.history["test_acc"].max()),
                "final_train_acc": float(run.history["train_acc"].iloc[-1]),
                "at_chance": bool(at_chance(float(run.history["test_acc"].iloc[-1]))),
                "sparse_layer_sparsity": s["sparse_layers"],
                "conv_sparsity": s["conv"],
                "linear_sparsity": s["linear"],
                "weight_sparsity": s["all"],
                "multiply_adds": flops["flops"] // 2,
                "nonzero_multiply_adds": flops["nonzero_flops"] / 2,
                "flop_sparsity": 1.0 - flops["nonzero_flops"] / flops["flops"],
                "epochs": len(run.history),
                "seconds_per_epoch": float(run.history["seconds"].mean()),
                "train_minutes": run.train_seconds / 60,
                "precision": run.config.precision,
            }
        )
    return pd.DataFrame(rows)


def method_table(runs: Sequence[Run], *, baseline: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per method: accuracy over seeds (final: mean, standard deviation, min, max;
    best; training), the sparsity measured on the weights, the compute per image
    (``nonzero_multiply_adds``, ``flop_sparsity``: methods at one weight sparsity can differ
    here, as DSR's per-layer reallocation does) and training time (means).

    ``baseline`` (the history of the paper's dense baseline CNN) adds its row.
    """
    if not runs:
        raise ValueError("runs is empty")
    per_run = run_table(runs)
    if baseline is not None:
        dense_flops = count_flops(BaselineCNN())["flops"]
        rows = [
            {
                "method": "baseline",
                "seed": int(h["seed"].iloc[0]) if "seed" in h.columns else 0,
                "final_test_acc": float(h["test_acc"].iloc[-1]),
                "best_test_acc": float(h["test_acc"].max()),
                "final_train_acc": float(h["train_acc"].iloc[-1]),
                "conv_sparsity": 0.0,
                "linear_sparsity": 0.0,
                "weight_sparsity": 0.0,
                "multiply_adds": dense_flops // 2,
                "nonzero_multiply_adds": dense_flops / 2,  # dense: every weight is a multiply-add
                "flop_sparsity": 0.0,
                "epochs": len(h),
                "seconds_per_epoch": float(h["seconds"].mean()),
                "train_minutes": float(h["seconds"].sum()) / 60,
                "precision": "fp32",  # notebook 01 and baseline_history train with fit's default
            }
            for h in split_seeds(baseline)
        ]
        per_run = pd.concat([per_run, pd.DataFrame(rows)], ignore_index=True)
    table = (
        per_run.groupby("method", sort=False)
        .agg(
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
            nonzero_multiply_adds=("nonzero_multiply_adds", "mean"),
            flop_sparsity=("flop_sparsity", "mean"),
            epochs=("epochs", "first"),
            seconds_per_epoch=("seconds_per_epoch", "mean"),
            train_minutes=("train_minutes", "mean"),
            precision=("precision", "first"),
        )
        .reset_index()
    )
    table.insert(1, "description", [METHOD_LABELS.get(m, m) for m in table["method"]])
    return table


def target_table(
    runs: Run | Sequence[Run], *, experiment: str = "dynamic_cnn", time_budget_minutes: float | None = None
) -> pd.DataFrame:
    """Whether the DSR runs (one per seed) meet this reproduction's goals: mean final test accuracy
    at least the paper's final one, at least the target fraction of the convolution (CNN) or
    linear (MLP) weights zero in every run, and (optionally) mean training time within
    ``time_budget_minutes``. Every number is computed; ``n`` says over how many runs."""
    runs = [runs] if isinstance(runs, Run) else list(runs)
    if not runs:
        raise ValueError("runs is empty")
    scope = runs[0].config.sparsity_scope
    zeros = [sparsity_summary(run.model)["conv" if scope == "conv" else "linear"] for run in runs]
    rows = [
        {
            "criterion": "final test accuracy >= the paper's final (mean over seeds)",
            "required": PAPER[experiment]["final test_acc"],
            "ours": float(np.mean([run.history["test_acc"].iloc[-1] for run in runs])),
        },
        {
            "criterion": f"fraction of {scope} weights that are zero (least over seeds)",
            "required": runs[0].sparsity,
            "ours": min(zeros),
        },
    ]
    if time_budget_minutes is not None:
        rows.append(
            {
                "criterion": "training wall time per run, minutes (mean over seeds, at most)",
                "required": time_budget_minutes,
                "ours": float(np.mean([run.train_seconds for run in runs])) / 60,
            }
        )
    table = pd.DataFrame(rows)
    at_most = table["criterion"].str.contains("at most")
    table["met"] = (table["ours"] >= table["required"]).where(~at_most, table["ours"] <= table["required"])
    table["n"] = len(runs)
    return table


def _tagged(run: Run, table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with the run's method, target sparsity, seed and measured sparsity in front."""
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "method": run.method,
                    "sparsity_target": math.nan if run.sparsity is None else run.sparsity,
                    "seed": run.seed,
                    "sparsity": sparsity_summary(run.model)["sparse_layers"],
                },
                index=table.index,
            ),
            table,
        ],
        axis=1,
    )


def run_latency(
    runs: Sequence[Run],
    *,
    methods: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    peers: Sequence[str] = (),
) -> pd.DataFrame:
    """:func:`~.efficiency.latency_table` of each run's model (those of ``methods``; default all) at
    its config's ``latency_batches``, with ``peers``, tagged with the run (:func:`_tagged`).

    Each model and batch size takes seconds by design: every layer is timed dense and sparse,
    then the whole model against the dense ones (about 0.3 s each), then the table's own
    alternation (``6 * latency_seconds``); one line per model says how far it is.
    """
    chosen = [run for run in runs if methods is None or run.method in methods]
    if not chosen:
        raise ValueError(f"no run of methods {list(methods or [])}; runs have {sorted({r.method for r in runs})}")
    frames = []
    for i, run in enumerate(chosen, start=1):
        start = time.perf_counter()
        table = latency_table(
            run.model, run.config.latency_batches, seconds=run.config.latency_seconds, device=device, peers=peers
        )
        frames.append(_tagged(run, table))
        print(
            f"latency {i}/{len(chosen)}: {run.method} at {run.sparsity} seed {run.seed} "
            f"({time.perf_counter() - start:.1f} s)",
            flush=True,
        )
    return pd.concat(frames, ignore_index=True)


def run_storage(runs: Sequence[Run], directory: str | os.PathLike[str]) -> pd.DataFrame:
    """:func:`~dynprune_lib.study.efficiency.storage_table` of every run's model (files under
    ``directory``), tagged with the run (:func:`_tagged`)."""
    return pd.concat(
        [_tagged(run, storage_table(run.model, directory, name=run.checkpoint.stem)) for run in runs], ignore_index=True
    )


def inference_sweep(
    sources: Mapping[str, Sequence[Run]],
    test_loader: BatchLoader,
    *,
    sparsities: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """Each source's runs (one per seed) with their sparsity raised at inference to every one
    of ``sparsities`` (default: the config's ``inference_sparsities``), without retraining:
    accuracy and dense-vs-CSR latency per point
    (:func:`~dynprune_lib.study.efficiency.inference_sparsity_sweep`), with ``source`` and ``seed`` columns."""
    frames = []
    for name, runs in sources.items():
        for run in runs:
            targets = run.config.inference_sparsities if sparsities is None else sparsities
            frame = inference_sparsity_sweep(
                run.model,
                test_loader,
                targets,
                latency_batches=run.config.latency_batches,
                seconds=run.config.latency_seconds,
                device=device,
            )
            frame.insert(0, "seed", run.seed)
            frame.insert(0, "source_sparsity", math.nan if run.sparsity is None else run.sparsity)
            frame.insert(0, "source", name)
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def inference_sources(runs: Sequence[Run], *, sparsity: float | None = None) -> dict[str, list[Run]]:
    """The trained models whose sparsity notebook 03 raises at inference, every seed of each: the
    dense model and the DSR model trained at ``sparsity`` (default: the lowest it was trained at)."""
    dsr = [run.sparsity for run in runs if run.method == "dsr"]
    if not dsr:
        raise ValueError("runs hold no DSR run")
    sparsity = min(dsr) if sparsity is None else sparsity
    return {
        "dense MLP": [run for run in runs if run.method == "dense"],
        f"DSR MLP trained at {sparsity:g}": [run for run in runs if run.method == "dsr" and run.sparsity == sparsity],
    }


def experiment_conditions(runs: Sequence[Run], data: CIFAR10Data, device: str | torch.device) -> dict[str, object]:
    """:func:`~.paper.run_conditions` of ``runs`` (one configuration, its seeds): data, epochs,
    seeds, network, the sparsity measured on the first run's weights, device and hardware (the
    read-back adds the training precision from the methods table)."""
    if not runs:
        raise ValueError("runs is empty")
    config = runs[0].config
    network = ("DynamicCNN " if config.model == "cnn" else "MLP ") + "-".join(map(str, config.widths))
    scope = config.sparsity_scope
    return run_conditions(
        data,
        device,
        epochs=config.epochs,
        seeds=sorted({run.seed for run in runs}),
        network=network,
        **{f"{scope}_sparsity": round(sparsity_summary(runs[0].model)[scope], 4)},
    )


def sparsity_claim_table(runs: pd.DataFrame, inference: pd.DataFrame, *, method: str = "dsr") -> pd.DataFrame:
    """Test accuracy at each sparsity of a source whose sparsity was raised at inference
    (``inference_sweep``) beside ``method`` retrained at that sparsity (``run_table``), paired by
    seed: one row per (sparsity, source, seed) both have, with ``difference`` = raised - retrained.

    A source is not compared at the sparsity it was trained at (that would compare a model with
    itself), nor against a retrained run at chance (:func:`at_chance`: a collapse is no reference)."""
    retrained = runs[(runs["method"] == method) & ~at_chance(runs["final_test_acc"])]
    retrained = retrained.set_index(["sparsity_target", "seed"])["final_test_acc"]
    raised = inference.drop_duplicates(["source", "seed", "sparsity_target"])
    raised = raised[~np.isclose(raised["sparsity_target"], raised["source_sparsity"].fillna(-1.0))]
    table = pd.DataFrame(
        {
            "sparsity": raised["sparsity_target"].to_numpy(),
            "source": raised["source"].to_numpy(),
            "seed": raised["seed"].to_numpy(),
            "raised": raised["test_acc"].to_numpy(),
            "retrained": retrained.reindex(list(zip(raised["sparsity_target"], raised["seed"]))).to_numpy(),
        }
    ).dropna(subset=["retrained"])
    table["difference"] = table["raised"] - table["retrained"]
    return table.sort_values(["sparsity", "source", "seed"], kind="stable").reset_index(drop=True)
