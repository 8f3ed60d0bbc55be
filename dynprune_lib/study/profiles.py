"""Every knob of the study, in one place (as airbench keeps its ``hyp``).

Each experiment of the paper is configured by one frozen dataclass, and each
workload (``smoke`` for the tests, ``cpu`` for the 2-core reference machine,
``gpu`` for the published protocols) is an instance of it, named below:

* :data:`BASELINE`: the paper's baseline CNN, section 3.1 (notebook 01);
* :data:`EXPERIMENTS`: the dynamic-pruning CNN and MLP, section 3.2
  (notebooks 02 and 03), one :class:`ExperimentConfig` per profile;
* :data:`WRN_RECIPES`: the Wide ResNets of section 4 (:class:`WRNRecipe`);
* :data:`PROFILES`: the section-4 comparison workloads (:class:`ComparisonProfile`),
  with the traditional method's :class:`FeatureConfig`.

All of them share one validation style: every field declares its own check
(:func:`knob`), cross-field rules live in ``_validate``, and ``replace(**kw)``
returns a changed copy (``None`` keeps a value; an unknown name raises
``TypeError``). The getters :func:`experiment_profile`, :func:`wrn_recipe`
and :func:`comparison_profile` look a workload up by name.

Published protocols in :data:`WRN_RECIPES`:

* WRN-28-2, dense and DSR at sparsity 0.9 (Mostafa & Wang 2019, sec. 4 and
  appendix): 200 epochs, batch 100, SGD with Nesterov momentum 0.9, weight
  decay 5e-4, learning rate 0.1 times 0.2 at epochs 60, 120 and 160; anchors
  94.70 % (dense) and 93.59 % (DSR, 0.9);
* WRN-28-10, dense (Zagoruyko & Komodakis 2016, Table 4, no dropout): the same
  schedule with batch 128; anchor 95.83 %.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import pandas as pd

from .._utils import check_bool, check_choice, check_int, check_real, check_sparsity, content_key
from ..train import PRECISIONS

__all__ = [
    "BASELINE",
    "COMPILE_MODES",
    "DEFAULT_CS",
    "DSR_REFERENCE",
    "ERK_METHODS",
    "EXPERIMENTS",
    "METHODS",
    "PROFILES",
    "TIME_BUDGETS",
    "WRN_RECIPES",
    "BaselineRecipe",
    "ComparisonProfile",
    "ExperimentConfig",
    "FeatureConfig",
    "WRNRecipe",
    "comparison_profile",
    "experiment_profile",
    "knob",
    "wrn_recipe",
]

Check = Callable[[Any, str], Any]
P = TypeVar("P", bound="_Profile")


# --------------------------------------------------------------------------- the validation style


def knob(default: Any = dataclasses.MISSING, check: Check | None = None, *, factory: Callable[[], Any] | None = None):
    """A dataclass field whose value passes through ``check(value, name)`` on construction."""
    kwargs: dict[str, Any] = {"metadata": {"check": check}}
    if factory is not None:
        kwargs["default_factory"] = factory
    elif default is not dataclasses.MISSING:
        kwargs["default"] = default
    return field(**kwargs)


def _positive_int(value: object, name: str) -> int:
    return check_int(value, name, 1)


def _int(value: object, name: str) -> int:
    return check_int(value, name, 0)


def _positive(value: object, name: str) -> float:
    return check_real(value, name, 0.0, math.inf, low_open=True, high_open=True)


def _non_negative(value: object, name: str) -> float:
    return check_real(value, name, 0.0, math.inf, high_open=True)


def _open_fraction(value: object, name: str) -> float:
    return check_real(value, name, 0.0, 1.0, low_open=True, high_open=True)


def _open_fraction_or_one(value: object, name: str) -> float:
    return check_real(value, name, 0.0, 1.0, low_open=True)


def _momentum(value: object, name: str) -> float:
    return check_real(value, name, 0.0, 1.0, high_open=True)


def _choice(*choices: object) -> Check:
    return lambda value, name: check_choice(value, name, choices)


def _tuple_of(check: Check, *, non_empty: bool = False) -> Check:
    def checked(value: object, name: str) -> tuple:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise TypeError(f"{name} must be a sequence, got {type(value).__name__} {value!r}")
        items = tuple(check(v, f"{name}[{i}]") for i, v in enumerate(value))
        if non_empty and not items:
            raise ValueError(f"{name} must not be empty")
        return items

    return checked


def _optional(check: Check) -> Check:
    return lambda value, name: None if value is None else check(value, name)


def _name(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty str, got {value!r}")
    return value


@dataclass(frozen=True)
class _Profile:
    """Runs every field's check, then the cross-field rules of ``_validate``."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            if check is not None:
                object.__setattr__(self, f.name, check(getattr(self, f.name), f.name))
        self._validate()

    def _validate(self) -> None:
        """Rules between fields; raise ValueError naming them."""

    def table(self, *, exclude: tuple[str, ...] = ()) -> pd.DataFrame:
        """Every knob and its value, one row each (what a notebook shows as its recipe)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in exclude}
        return pd.Series(values, name=getattr(self, "name", type(self).__name__), dtype=object).to_frame()

    def replace(self: P, **overrides: Any) -> P:
        """A copy with fields replaced; ``None`` values keep the field, unknown names raise TypeError."""
        overrides = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown {type(self).__name__} fields {sorted(unknown)}")
        return dataclasses.replace(self, **overrides)


def _lookup(table: Mapping[str, Any], name: str, what: str) -> Any:
    if name not in table:
        raise ValueError(f"{what} must be one of {sorted(table)}, got {name!r}")
    return table[name]


# --------------------------------------------------------------------------- section 3.1: the baseline


def _check_parallel(profile: Any) -> None:
    """``parallel_runs > 1`` needs a fixed ``threads_per_run`` (else every run takes every core)."""
    if profile.parallel_runs > 1 and profile.threads_per_run == 0:
        raise ValueError(
            f"parallel_runs={profile.parallel_runs} needs threads_per_run >= 1 (else every run "
            "takes every core and they slow each other down)"
        )


@dataclass(frozen=True)
class BaselineRecipe(_Profile):
    """The paper's baseline protocol (section 3.1; Keras defaults): Adam, batch 32, pixels in [0, 1],
    repeated over ``seeds`` (the paper reports one run; three give its spread).

    ``threads_per_run`` and ``parallel_runs`` as in :class:`ExperimentConfig`: how many
    torch threads a run trains with (0: PyTorch's default; otherwise part of the run's
    checkpoint name) and how many CPU runs train at once in worker processes.
    ``channels_last``: the network computes in ``torch.channels_last`` (``BaselineCNN``;
    part of the checkpoint name, as it rounds differently).
    ``dsr_sparsities``, ``dsr_all_seeds_at``: the paper's own DSR arm (notebook 02, first): the
    same network and protocol with DSR at each of these sparsities, at every seed where
    ``dsr_all_seeds_at`` says (paired with the dense seeds), at the first seed elsewhere.
    """

    epochs: int = knob(10, _positive_int)
    batch_size: int = knob(32, _positive_int)
    lr: float = knob(1e-3, _positive)
    eval_batch_size: int = knob(1000, _positive_int)
    seeds: tuple[int, ...] = knob((0, 1, 2), _tuple_of(_int, non_empty=True))
    threads_per_run: int = knob(0, _int)
    parallel_runs: int = knob(1, _positive_int)
    channels_last: bool = knob(False, check_bool)
    dsr_sparsities: tuple[float, ...] = knob((0.5, 0.8, 0.9, 0.95), _tuple_of(check_sparsity))
    dsr_all_seeds_at: tuple[float, ...] = knob((0.9,), _tuple_of(check_sparsity))

    def _validate(self) -> None:
        _check_parallel(self)
        if not set(self.dsr_all_seeds_at) <= set(self.dsr_sparsities):
            raise ValueError("dsr_all_seeds_at must be among dsr_sparsities")


#: Notebook 01's protocol. On the 2-core reference machine two one-thread runs at a time
#: have about 1.4x the throughput of one two-thread run (bench_training_speed.json); the three
#: seeds train at once, sharing the two cores, so that no seed trains alone on one core
#: while the other idles (as the third did, two at a time: results/run_times.csv history).
#: On a GPU the runs train one after another (worker processes are CPU only). The test
#: pass takes 128 images a batch: at one thread 1.8x the speed of 1000, the same logits.
#: Channels-last (Keras's layout): a training step about 1.4x the speed of NCHW at one thread
#: (bench_training_speed.json, ``choices``).
BASELINE = BaselineRecipe(threads_per_run=1, parallel_runs=3, eval_batch_size=128, channels_last=True)


#: Wall-time budgets, minutes, for every notebook of a profile run from scratch by
#: ``run_all.sh`` on the 2-core reference machine (three seeds where the study needs them);
#: :func:`~.analysis.goals_table` states them met or missed from ``results/run_times.csv``.
TIME_BUDGETS: Mapping[str, float] = {"smoke": 5.0, "cpu": 120.0}


# --------------------------------------------------------------------------- section 3.2: CNN and MLP

#: The ways of reaching a sparsity that notebooks 02 and 03 compare (see :mod:`.experiments`).
METHODS: tuple[str, ...] = ("dense", "dsr", "magnitude_oneshot", "magnitude_gradual", "set", "rigl")
#: SET and RigL started from their papers' default initial distribution, Erdős–Rényi-Kernel, whatever
#: a profile's ``distribution``: extra rows of notebook 02's comparison (DSR's per-layer reallocation
#: ends far from uniform, so a uniform SET or RigL may lose by distribution, not by method).
ERK_METHODS: tuple[str, ...] = ("set_erk", "rigl_erk")


def _dsr_period(value: object, name: str) -> tuple[tuple[float, int], ...]:
    period = tuple((float(f), int(p)) for f, p in value)
    if period and (period[0][0] != 0.0 or any(not 0 <= f < 1 or p < 0 for f, p in period)):
        raise ValueError(f"{name} must start at fraction 0.0 with fractions in [0, 1), got {value!r}")
    return period


#: The DSR reference's WRN-28-2 protocol (IntelAI/dynamic-reparameterization,
#: ``experiments/wrnet_experiments.yaml`` and ``learning_schedules/wrnet_schedule.yaml``): 200 epochs
#: of 500 steps (batch 100), ``--n-prune-params 20000`` at every sparsity, the rewire period (steps)
#: per starting epoch, and ``--stop-rewire-epoch 190``. The ``cpu`` profiles' DSR schedule is derived
#: from it by :func:`dynprune_lib.study.experiments.dsr_schedule`.
DSR_REFERENCE: Mapping[str, Any] = {
    "epochs": 200,
    "steps_per_epoch": 500,
    "n_prune": 20_000,
    "network": "wrn-28-2",
    "period": {0: 100, 25: 200, 80: 400, 140: 800},
    "stop_epoch": 190,
}


def _span(value: object, name: str) -> tuple[float, float]:
    start, end = (float(v) for v in value)
    if not 0.0 < start < end <= 1.0:
        raise ValueError(f"{name} must be (start, end) with 0 < start < end <= 1, got {value!r}")
    return start, end


@dataclass(frozen=True)
class ExperimentConfig(_Profile):
    """One experiment's network, data handling, optimisation and pruning settings.

    model: ``"cnn"`` (``DynamicCNN`` with ``widths`` per stage) or ``"mlp"``
        (``MLP`` with hidden sizes ``widths``, every layer sparse).
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
        ``"uniform"`` (every sparse layer alike, as the DSR reference starts) or
        ``"erk"`` (Erdős–Rényi-Kernel, Evci et al. 2020: a deviation from DSR's
        reference, stated where used). All of them start from the same masks.
    dsr_n_prune: DSR's ``N_p`` (weights reallocated per update); 0 derives it from
        the reference (:data:`DSR_REFERENCE`: the same share of the sparse layers'
        weights as 20,000 of WRN-28-2's).
    dsr_period: DSR's update period as ``(fraction of epochs, period in steps)``
        pairs (a period of 0 stops updates); empty derives it from the reference:
        its phases at the same fractions of training, its periods at the same
        number of updates per epoch.
    dsr_end: fraction of the steps after which DSR stops updating (the
        reference's 190 of 200 epochs).
    regrow_fraction, regrow_period, regrow_end: SET's / RigL's drop fraction,
        period (steps) and the fraction of training after which masks stay fixed.
    oneshot_at: one-shot magnitude pruning after this fraction of the steps.
    gradual, gradual_every: start and end (fractions of the steps) of gradual
        magnitude pruning, and steps between its prunes.
    magnitude_scope: ``"layer"`` (every layer pruned to the same sparsity, as Zhu &
        Gupta 2017 and the DSR reference's pruning baseline) or ``"global"`` (one
        cut-off over all sparse layers, each keeping at least one weight).
    seeds, methods, sparsities, inference_sparsities: what a notebook runs;
        they do not change a run, so they are not part of its checkpoint name.
    all_seeds_at: the sparsities of a sweep (:func:`~.experiments.sparsity_sweep`)
        trained at every seed; the others train at ``seeds[0]`` only. Empty: every
        sparsity at every seed.
    latency_batches, latency_seconds: batch sizes and seconds of timing per
        variant in latency measurements.
    latency_sparsities, latency_peers: the sparsities of the latency-against-sparsity
        sweep (random masks on the network) and the runtimes timed beside ours
        (:mod:`.peers`: ``"onnxruntime"``, ``"sparseprop"``; those not installed are skipped).
    precision: ``"bf16"`` trains with a bfloat16-autocast forward pass
        (:func:`~dynprune_lib.train.fit`; weights and evaluation stay float32),
        ``"fp32"`` in float32 throughout.
    threads_per_run: torch threads each run trains with (0: PyTorch's default for
        the process). Part of a run's key: the thread count changes a CPU run's numbers.
    fused_sgd: PyTorch's fused SGD kernel (``torch.optim.SGD(fused=True)``): the same
        update in one pass per parameter, about four times faster per optimizer step
        on the reference CPU (about a third of an MLP step, about 1 % of a CNN step); it rounds
        differently, so it is part of a run's key.
    parallel_runs: runs a notebook trains at once, each in its own worker process
        (CPU only; needs ``threads_per_run``). On the 2-core reference machine two
        one-thread runs train up to 1.5x faster than one two-thread run (the MLP; the
        CNN barely: ``bench/bench_training_speed.py``). A run's numbers do not depend on it.
    """

    name: str = knob(check=_name)
    model: Literal["cnn", "mlp"] = knob(check=_choice("cnn", "mlp"))
    widths: tuple[int, ...] = knob(check=_tuple_of(_positive_int, non_empty=True))
    convs_per_stage: int = knob(1, _positive_int)
    pool_before_norm: bool = knob(True, check_bool)
    channels_last: bool = knob(True, check_bool)
    epochs: int = knob(10, _positive_int)
    batch_size: int = knob(128, _positive_int)
    lr: float = knob(0.1, _positive)
    warmup: float = knob(0.25, _open_fraction)
    momentum: float = knob(0.9, _momentum)
    nesterov: bool = knob(True, check_bool)
    weight_decay: float = knob(5e-4, _non_negative)
    augment: bool = knob(True, check_bool)
    sparsity: float = knob(0.9, check_sparsity)
    distribution: Literal["erk", "uniform"] = knob("uniform", _choice("erk", "uniform"))
    dsr_n_prune: int = knob(0, _int)
    dsr_period: tuple[tuple[float, int], ...] = knob((), _dsr_period)
    dsr_end: float = knob(0.95, _open_fraction_or_one)
    regrow_fraction: float = knob(0.3, _open_fraction)
    regrow_period: int = knob(100, _positive_int)
    regrow_end: float = knob(0.75, _open_fraction)
    oneshot_at: float = knob(0.8, _open_fraction)
    gradual: tuple[float, float] = knob((0.1, 0.7), _span)
    gradual_every: int = knob(100, _positive_int)
    magnitude_scope: Literal["global", "layer"] = knob("layer", _choice("global", "layer"))
    eval_batch_size: int = knob(500, _positive_int)
    seeds: tuple[int, ...] = knob((0, 1, 2), _tuple_of(_int, non_empty=True))
    all_seeds_at: tuple[float, ...] = knob((), _tuple_of(check_sparsity))
    methods: tuple[str, ...] = knob(METHODS, _tuple_of(_choice(*METHODS, *ERK_METHODS)))
    sparsities: tuple[float, ...] = knob((), _tuple_of(check_sparsity))
    inference_sparsities: tuple[float, ...] = knob((), _tuple_of(check_sparsity))
    latency_batches: tuple[int, ...] = knob((1, 128), _tuple_of(_positive_int))
    latency_seconds: float = knob(0.3, _positive)
    latency_sparsities: tuple[float, ...] = knob((0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99), _tuple_of(check_sparsity))
    latency_peers: tuple[str, ...] = knob(
        ("onnxruntime", "sparseprop"), _tuple_of(_choice("onnxruntime", "sparseprop"))
    )
    precision: Literal["fp32", "bf16"] = knob("fp32", _choice(*PRECISIONS))
    fused_sgd: bool = knob(False, check_bool)
    threads_per_run: int = knob(0, _int)
    parallel_runs: int = knob(1, _positive_int)

    def _validate(self) -> None:
        _check_parallel(self)

    @property
    def sparsity_scope(self) -> Literal["conv", "linear"]:
        """The weights ``sparsity`` is a fraction of: convolutions (CNN) or linear layers (MLP)."""
        return "conv" if self.model == "cnn" else "linear"

    def training_key(self, method: str, sparsity: float | None) -> str:
        """Short hash of everything that changes a run of ``method`` at ``sparsity`` (not the
        seeds, methods or sparsities a notebook runs, nor how it measures afterwards)."""
        skip = {
            "name",
            "seeds",
            "all_seeds_at",
            "methods",
            "sparsities",
            "inference_sparsities",
            "latency_batches",
            "latency_seconds",
            "latency_sparsities",
            "latency_peers",
            "eval_batch_size",
            "parallel_runs",
        }
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        for name in ("threads_per_run", "fused_sgd"):
            if not fields[name]:  # the default keeps the keys of runs made before the knob
                del fields[name]
        return content_key(fields, method, sparsity, length=8)


_CNN_CPU = ExperimentConfig(
    name="cpu",
    model="cnn",
    widths=(32, 64, 128, 256, 512),
    # The per-epoch test pass at one thread: 128 images a batch fit the caches, 1.4x the speed
    # of 500 and the same logits, bit for bit (the MLP's is fastest at the default).
    eval_batch_size=128,
    latency_batches=(1, 64),
    precision="bf16",
    methods=METHODS + ERK_METHODS,
    # PyTorch's fused SGD: a CNN step about 1 % faster at one thread than the default's
    # (bench_training_speed.json, ``choices``; within this machine's noise).
    fused_sgd=True,
    # Two one-thread runs at a time: about 1.03x the throughput of one two-thread run on the
    # 2-core reference machine since the 2x2 stage is one matrix product, which two threads
    # share well (bench_training_speed.json; it was 1.3x before).
    threads_per_run=1,
    parallel_runs=2,
)
_MLP_CPU = ExperimentConfig(
    name="cpu",
    model="mlp",
    widths=(512, 256),
    lr=0.05,
    precision="bf16",
    augment=False,
    sparsities=(0.5, 0.8, 0.9, 0.95, 0.99),
    # Three seeds where a claim is decided (0.9; 0.5, the inference-time sweep's source),
    # one elsewhere: the sweep's shape, not a verdict.
    all_seeds_at=(0.5, 0.9),
    inference_sparsities=(0.5, 0.8, 0.9, 0.95, 0.98, 0.99),
    latency_batches=(1, 64),
    # With PyTorch's default SGD the optimizer is about a quarter of an MLP step here.
    fused_sgd=True,
    # Two one-thread runs at a time: 1.5x the throughput of one two-thread run on the
    # 2-core reference machine (bench_training_speed.json).
    threads_per_run=1,
    parallel_runs=2,
)
#: Workloads per experiment: ``smoke`` (seconds; the notebook tests), ``cpu`` (the
#: 2-core reference machine: three seeds, the MLP sweep's other sparsities one) and
#: ``gpu`` (every run over three seeds).
EXPERIMENTS: Mapping[str, Mapping[str, ExperimentConfig]] = {
    "dynamic_cnn": {
        "smoke": _CNN_CPU.replace(
            name="smoke",
            widths=(8, 16, 32, 64, 128),
            epochs=1,
            seeds=(0,),
            dsr_period=((0.0, 4),),
            regrow_period=4,
            gradual_every=2,
            latency_batches=(1, 32),
            latency_seconds=0.05,
            latency_sparsities=(0.5, 0.95),
            latency_peers=("onnxruntime",),
        ),
        "cpu": _CNN_CPU,
        "gpu": _CNN_CPU.replace(name="gpu", threads_per_run=0, parallel_runs=1),
    },
    "dynamic_mlp": {
        "smoke": _MLP_CPU.replace(
            name="smoke",
            widths=(64, 32),
            epochs=1,
            seeds=(0, 1),
            all_seeds_at=(0.9,),
            dsr_period=((0.0, 4),),
            sparsities=(0.5, 0.9),
            methods=("dense", "dsr", "set"),
            regrow_period=4,
            gradual_every=2,
            inference_sparsities=(0.5, 0.9, 0.99),
            latency_batches=(1,),
            latency_seconds=0.05,
            latency_sparsities=(0.5, 0.9),
            latency_peers=("onnxruntime",),
            threads_per_run=1,
            parallel_runs=2,
        ),
        "cpu": _MLP_CPU,
        "gpu": _MLP_CPU.replace(name="gpu", all_seeds_at=(), threads_per_run=0, parallel_runs=1),
    },
}


def experiment_profile(experiment: str, profile: str, **overrides: Any) -> ExperimentConfig:
    """The ``profile`` workload of ``experiment`` with fields replaced; ``None`` values mean "keep"."""
    profiles = _lookup(EXPERIMENTS, experiment, "experiment")
    return _lookup(profiles, profile, "profile").replace(**overrides)


# --------------------------------------------------------------------------- section 4: Wide ResNets


def _milestones(value: object, name: str) -> tuple[int, ...]:
    milestones = _tuple_of(_positive_int)(value, name)
    if list(milestones) != sorted(milestones):
        raise ValueError(f"{name} must be increasing epochs >= 1, got {value!r}")
    return milestones


def _mapping(value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping, got {type(value).__name__}")
    return dict(value)


#: ``torch.compile`` modes a :class:`WRNRecipe` may ask for (``""``: eager).
COMPILE_MODES = ("", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class WRNRecipe(_Profile):
    """How to train one Wide ResNet WRN-``depth``-``widen_factor`` on CIFAR-10.

    ``milestones`` are the epochs after which the learning rate is multiplied
    by ``gamma``. ``sparsity=None`` trains a dense network; a number trains
    the sparse variant (3x3 block convolutions as ``DynamicConv2d``) with
    DSR, ``dsr`` holding the scheduler's keyword arguments. ``anchor`` is the
    published test accuracy for the full protocol (``None`` when there is none).

    How fast it runs, not what it computes (each gives the same results within float
    rounding, tested on and off in ``tests/test_wide_resnet.py``):

    * ``channels_last``: activations and weights in ``torch.channels_last``, the layout
      cuDNN's and oneDNN's fastest convolutions take (masks too: updated in place);
    * ``fused_sgd``: PyTorch's fused SGD, one kernel for every parameter's update;
    * ``compile``: ``torch.compile`` mode of the network's forward (``nn.Module.compile``,
      so checkpoints keep their keys; ``""`` runs eagerly). ``"reduce-overhead"`` also
      captures CUDA graphs, which removes the per-kernel launch cost that bounds a small
      network at a small batch on a large GPU;
    * ``eval_batch_size``: images per batch of the per-epoch test pass.
    """

    name: str = knob(check=_name)
    depth: int = knob(check=_positive_int)
    widen_factor: int = knob(check=_positive_int)
    epochs: int = knob(check=_positive_int)
    batch_size: int = knob(check=_positive_int)
    milestones: tuple[int, ...] = knob(check=_milestones)
    lr: float = knob(0.1, _positive)
    gamma: float = knob(0.2, _positive)
    momentum: float = knob(0.9, _momentum)
    nesterov: bool = knob(True, check_bool)
    weight_decay: float = knob(5e-4, _non_negative)
    dropout: float = knob(0.0, _momentum)
    sparsity: float | None = knob(None, _optional(check_sparsity))
    dsr: Mapping[str, Any] = knob(check=_mapping, factory=dict)
    augment: bool = knob(True, check_bool)
    anchor: float | None = knob(None, _optional(lambda v, n: check_real(v, n, 0.0, 1.0)))
    source: str = ""
    precision: Literal["fp32", "bf16"] = knob("fp32", _choice(*PRECISIONS))
    channels_last: bool = knob(True, check_bool)
    fused_sgd: bool = knob(False, check_bool)
    compile: str = knob("", _choice(*COMPILE_MODES))
    eval_batch_size: int = knob(500, _positive_int)

    def _validate(self) -> None:
        if self.sparsity is None and self.dsr:
            raise ValueError("dsr settings need sparsity (a dense recipe has no DSR)")

    @property
    def run_suffix(self) -> str:
        """What a checkpoint name adds for the knobs that round differently from the plain
        eager float32 run (``""`` for none): fused SGD and a compiled network."""
        parts = ["fused"] if self.fused_sgd else []
        if self.compile:
            parts.append(f"compiled-{self.compile}")
        return "".join(f"_{p}" for p in parts)

    @property
    def architecture(self) -> str:
        """``WRN-depth-k`` as in the literature."""
        return f"WRN-{self.depth}-{self.widen_factor}"

    @property
    def sparse(self) -> bool:
        return self.sparsity is not None

    @property
    def label(self) -> str:
        """The network and how it is pruned, as tables and figures name it: ``WRN-28-2, DSR at 0.9``."""
        return self.architecture + (f", DSR at {self.sparsity:g}" if self.sparse else "")

    def scaled(self, epochs: int, *, name: str | None = None) -> WRNRecipe:
        """The same protocol over ``epochs`` epochs, learning-rate milestones at the same
        fractions of training (60/120/160 of 200 become 30/60/80 % of ``epochs``).

        A DSR period schedule keyed by epoch is scaled the same way.
        """
        epochs = check_int(epochs, "epochs", 1)
        if epochs == self.epochs:
            return self if name is None else dataclasses.replace(self, name=name)
        ratio = epochs / self.epochs
        milestones = sorted({m for m in (round(m * ratio) for m in self.milestones) if 1 <= m < epochs})
        dsr = dict(self.dsr)
        period = dsr.get("period")
        if isinstance(period, Mapping):
            scaled: dict[int, int] = {}
            for first_epoch, p in sorted(period.items()):
                scaled[math.floor(first_epoch * ratio)] = p  # later entries win on collisions
            dsr["period"] = scaled
        return dataclasses.replace(
            self, name=name or f"{self.name}@{epochs}ep", epochs=epochs, milestones=tuple(milestones), dsr=dsr
        )


#: How the published protocols run on a GPU (the ``gpu`` profile): bfloat16 autocast (the
#: reported accuracies are the float32 models'), channels_last, fused SGD and test batches of
#: 1,000. What each buys on one GPU, and what torch.compile and CUDA graphs would add on top:
#: ``bench/bench_gpu_training.py`` (``results/bench_gpu_training.json`` once measured).
_GPU_SPEED = {"precision": "bf16", "channels_last": True, "fused_sgd": True, "eval_batch_size": 1000}

# DSR's period schedule for WRN-28-2 (epoch ranges 1-25: 100, 26-80: 200, 81-140: 400,
# 141-190: 800, 191-200: none), keyed here by the 0-based epoch where it starts.
_DSR_WRN_PERIOD = {0: 100, 25: 200, 80: 400, 140: 800, 190: 0}

#: Named recipes. ``wrn-10-2-cpu`` and the ``*-smoke`` ones are ours (sized for CPU runs);
#: the others are the published protocols with their anchors.
WRN_RECIPES: Mapping[str, WRNRecipe] = {
    r.name: r
    for r in (
        WRNRecipe(
            "wrn-28-2",
            28,
            2,
            epochs=200,
            batch_size=100,
            milestones=(60, 120, 160),
            anchor=0.9470,
            source="Mostafa & Wang 2019 (DSR), dense WRN-28-2",
            **_GPU_SPEED,
        ),
        WRNRecipe(
            "wrn-28-2-dsr0.9",
            28,
            2,
            epochs=200,
            batch_size=100,
            milestones=(60, 120, 160),
            sparsity=0.9,
            dsr={"n_prune": 20_000, "tolerance": 0.1, "initial_threshold": 1e-3, "period": _DSR_WRN_PERIOD},
            anchor=0.9359,
            source="Mostafa & Wang 2019 (DSR), WRN-28-2 at sparsity 0.9",
            **_GPU_SPEED,
        ),
        WRNRecipe(
            "wrn-28-10",
            28,
            10,
            epochs=200,
            batch_size=128,
            milestones=(60, 120, 160),
            anchor=0.9583,
            source="Zagoruyko & Komodakis 2016, WRN-28-10 without dropout",
            **_GPU_SPEED,
        ),
        WRNRecipe(
            "wrn-10-2-cpu",
            10,
            2,
            epochs=6,
            batch_size=128,
            milestones=(2, 4, 5),
            precision="bf16",
            source="ours: the WRN-28-2 protocol (milestones at 30/60/80 % of training) shortened to "
            "6 epochs of a WRN-10-2, minutes on 2 CPU cores (README: measured wall times)",
        ),
        WRNRecipe(
            "wrn-10-1-smoke",
            10,
            1,
            epochs=1,
            batch_size=128,
            milestones=(),
            precision="bf16",
            source="ours: a tiny network for smoke tests",
        ),
        WRNRecipe(
            "wrn-10-1-dsr-smoke",
            10,
            1,
            epochs=1,
            batch_size=128,
            milestones=(),
            sparsity=0.9,
            precision="bf16",
            dsr={"prune_fraction": 0.05, "period": 4},
            source="ours: a tiny sparse network for smoke tests",
        ),
    )
}


def wrn_recipe(name: str, **overrides: Any) -> WRNRecipe:
    """The named recipe of :data:`WRN_RECIPES`, with fields replaced by ``overrides``.

    ``epochs=`` rescales the learning-rate milestones (:meth:`WRNRecipe.scaled`).
    """
    recipe = _lookup(WRN_RECIPES, name, "recipe")
    epochs = overrides.pop("epochs", None)
    recipe = recipe.replace(**overrides)
    return recipe if epochs is None else recipe.scaled(epochs, name=recipe.name)


# --------------------------------------------------------------------------- section 4: the comparison


@dataclass(frozen=True)
class FeatureConfig(_Profile):
    """Hand-designed features of the traditional method; the defaults are Dalal & Triggs' HOG on 32x32 images."""

    orientations: int = knob(9, _positive_int)
    pixels_per_cell: int = knob(8, _positive_int)
    cells_per_block: int = knob(2, _positive_int)
    block_norm: str = "L2-Hys"
    color_bins: int = knob(4, _positive_int)

    def _validate(self) -> None:
        if self.color_bins > 256 or 256 % self.color_bins:
            raise ValueError(f"color_bins must divide 256, got {self.color_bins}")

    def hog_cells(self, height: int, width: int) -> tuple[int, int]:
        return height // self.pixels_per_cell, width // self.pixels_per_cell

    def hog_dim(self, height: int = 32, width: int = 32) -> int:
        rows, cols = self.hog_cells(height, width)
        b = self.cells_per_block
        if rows < b or cols < b:
            raise ValueError(
                f"{height}x{width} images are too small for {b}x{b} blocks of {self.pixels_per_cell}-pixel cells"
            )
        return (rows - b + 1) * (cols - b + 1) * b * b * self.orientations

    def dim(self, height: int = 32, width: int = 32) -> int:
        """Length of the feature vector of one image."""
        return self.hog_dim(height, width) + self.color_bins**3


#: Inverse regularisation strengths of the traditional method's logistic regression, tried on a validation split.
DEFAULT_CS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)


def _recipe_name(value: object, name: str) -> str:
    _lookup(WRN_RECIPES, value, name)
    return value


def _fractions(value: object, name: str) -> tuple[float, ...]:
    fr = _tuple_of(_open_fraction_or_one)(value, name)
    if not fr or fr[-1] != 1.0 or any(not a < b for a, b in zip(fr, fr[1:])):
        raise ValueError(f"{name} must increase strictly in (0, 1] and end at 1.0, got {value!r}")
    return fr


def _shifts(value: object, name: str) -> tuple[tuple[str, int], ...]:
    from .aspects import CIFAR10C_SEVERITIES

    out = []
    for i, item in enumerate(value):
        kind, severity = item
        check_choice(kind, f"{name}[{i}] kind", tuple(CIFAR10C_SEVERITIES))
        if check_int(severity, f"{name}[{i}] severity", 1) > 5:
            raise ValueError(f"{name}[{i}] severity must be an int in 1..5, got {severity!r}")
        out.append((kind, int(severity)))
    return tuple(out)


@dataclass(frozen=True)
class ComparisonProfile(_Profile):
    """The workload of one section-4 comparison run (notebook 04).

    recipes: Wide ResNet recipes trained on all the training data (one method each).
    curve_recipes: those that also get a learning curve (the others' data
        requirements are not measured).
    epochs: override every recipe's epochs (milestones rescaled); None keeps them.
    precision: override every recipe's training precision (``"fp32"``/``"bf16"``); None keeps them.
    fractions: learning-curve training fractions; the last must be 1.0 (it reuses
        the full-data run).
    curve_min_steps: optimizer-step floor of a learning-curve run (``aspects.curve_epochs``).
    curve_monitor_images: test images evaluated after each learning-curve epoch
        (the final accuracy is on the whole test split).
    share: the share of full-data accuracy ``fraction_to_reach`` looks for.
    shifts: (kind, CIFAR-10-C severity) distribution shifts of the test split.
    gap_images: training images evaluated for the train-test gap.
    interp_images, patch: test images and region size of the deletion measure.
    features, Cs, n_jobs: the traditional method (and its worker processes).
    """

    name: str = knob(check=_name)
    recipes: tuple[str, ...] = knob(check=_tuple_of(_recipe_name, non_empty=True))
    curve_recipes: tuple[str, ...] = knob(check=_tuple_of(_recipe_name))
    epochs: int | None = knob(None, _optional(_positive_int))
    precision: str | None = knob(None, _optional(_choice(*PRECISIONS)))
    fractions: tuple[float, ...] = knob((0.01, 0.05, 0.1, 0.25, 0.5, 1.0), _fractions)
    curve_min_steps: int = knob(200, _positive_int)
    curve_monitor_images: int = knob(500, _positive_int)
    share: float = knob(0.9, _open_fraction)
    shifts: tuple[tuple[str, int], ...] = knob((("gaussian_noise", 3), ("gaussian_blur", 1)), _shifts)
    gap_images: int = knob(10_000, _positive_int)
    interp_images: int = knob(100, _positive_int)
    patch: int = knob(8, _positive_int)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    Cs: tuple[float, ...] = knob(DEFAULT_CS, _tuple_of(_positive, non_empty=True))
    n_jobs: int = knob(2, _positive_int)

    def _validate(self) -> None:
        if not set(self.curve_recipes) <= set(self.recipes):
            raise ValueError("curve_recipes must be among recipes")
        if not isinstance(self.features, FeatureConfig):
            raise TypeError(f"features must be a FeatureConfig, got {type(self.features).__name__}")

    def recipe(self, name: str) -> WRNRecipe:
        """Recipe ``name`` with this profile's epoch and precision overrides."""
        return wrn_recipe(name, epochs=self.epochs, precision=self.precision)


#: Section-4 workloads; the README gives notebook 04's wall time for each.
PROFILES: Mapping[str, ComparisonProfile] = {
    "smoke": ComparisonProfile(
        "smoke",
        recipes=("wrn-10-1-smoke", "wrn-10-1-dsr-smoke"),
        curve_recipes=("wrn-10-1-smoke",),
        fractions=(0.25, 1.0),
        curve_min_steps=4,
        curve_monitor_images=100,
        gap_images=500,
        interp_images=4,
        Cs=(0.01, 1.0),
        n_jobs=1,
    ),
    "cpu": ComparisonProfile(
        "cpu",
        recipes=("wrn-10-2-cpu",),
        curve_recipes=("wrn-10-2-cpu",),
        curve_min_steps=100,
        gap_images=5000,
        interp_images=100,
        n_jobs=2,
    ),
    "gpu": ComparisonProfile(
        "gpu",
        recipes=("wrn-28-2", "wrn-28-2-dsr0.9", "wrn-28-10"),
        curve_recipes=("wrn-28-2", "wrn-28-2-dsr0.9"),
        curve_min_steps=2000,
        interp_images=1000,
        gap_images=50_000,
        n_jobs=4,
    ),
}


def comparison_profile(name: str, **overrides: Any) -> ComparisonProfile:
    """Profile ``name`` of :data:`PROFILES` with fields replaced; ``None`` values mean "keep"."""
    return _lookup(PROFILES, name, "profile").replace(**overrides)
