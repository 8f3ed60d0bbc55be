"""Training recipes for the Wide ResNets of the paper's section 4.

A :class:`WRNRecipe` is everything needed to train one Wide ResNet the same
way on one device, in a notebook, or on several processes
(:mod:`dynprune_lib.distributed`): architecture, optional DSR sparsity,
SGD hyper-parameters, learning-rate steps, batch size, augmentation, and the
published accuracy it should reach (the *anchor*).

Published protocols:

* WRN-28-2, dense and DSR at sparsity 0.9 (Mostafa & Wang 2019, sec. 4 and
  appendix): 200 epochs, batch 100, SGD with Nesterov momentum 0.9, weight
  decay 5e-4, learning rate 0.1 times 0.2 at epochs 60, 120 and 160; anchors
  94.70 % (dense) and 93.59 % (DSR, 0.9).
* WRN-28-10, dense (Zagoruyko & Komodakis 2016, Table 4, no dropout): the same
  schedule with batch 128; anchor 95.83 %.

Both use per-channel standardisation, 4-pixel padded random crops and
horizontal flips. The ``cpu`` recipe keeps that protocol, scaled to a network
and an epoch count that fit the 2-core reference machine.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
import torch
from torch import nn

from .data import BatchLoader, CIFAR10Data
from .models import WideResNet
from .schedulers import DSR
from .train import check_precision

__all__ = [
    "WRN_RECIPES",
    "TrainingSetup",
    "WRNRecipe",
    "build_training",
    "make_loaders",
    "recipes_table",
    "wrn_recipe",
]


@dataclass(frozen=True)
class WRNRecipe:
    """How to train one Wide ResNet WRN-``depth``-``widen_factor`` on CIFAR-10.

    ``milestones`` are the epochs after which the learning rate is multiplied
    by ``gamma``. ``sparsity=None`` trains a dense network; a number trains
    the sparse variant (3x3 block convolutions as ``DynamicConv2d``) with
    DSR, ``dsr`` holding the scheduler's keyword arguments. ``anchor`` is the
    published test accuracy for the full protocol (``None`` when there is none).
    """

    name: str
    depth: int
    widen_factor: int
    epochs: int
    batch_size: int
    milestones: tuple[int, ...]
    lr: float = 0.1
    gamma: float = 0.2
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    dropout: float = 0.0
    sparsity: float | None = None
    dsr: Mapping[str, Any] = field(default_factory=dict)
    augment: bool = True
    anchor: float | None = None
    source: str = ""
    precision: Literal["fp32", "bf16"] = "fp32"

    def __post_init__(self) -> None:
        for name in ("depth", "widen_factor", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if list(self.milestones) != sorted(self.milestones) or any(m < 1 for m in self.milestones):
            raise ValueError(f"milestones must be increasing epochs >= 1, got {self.milestones!r}")
        if self.sparsity is not None and not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be None or in [0, 1), got {self.sparsity!r}")
        check_precision(self.precision)
        if self.sparsity is None and self.dsr:
            raise ValueError("dsr settings need sparsity (a dense recipe has no DSR)")
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
        object.__setattr__(self, "dsr", dict(self.dsr))

    @property
    def architecture(self) -> str:
        """``WRN-depth-k`` as in the literature."""
        return f"WRN-{self.depth}-{self.widen_factor}"

    @property
    def sparse(self) -> bool:
        return self.sparsity is not None

    def scaled(self, epochs: int, *, name: str | None = None) -> WRNRecipe:
        """The same protocol over ``epochs`` epochs, learning-rate milestones at the same
        fractions of training (60/120/160 of 200 become 30/60/80 % of ``epochs``).

        A DSR period schedule keyed by epoch is scaled the same way.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive int, got {epochs!r}")
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


# DSR's period schedule for WRN-28-2 (epoch ranges 1-25: 100, 26-80: 200, 81-140: 400,
# 141-190: 800, 191-200: none), keyed here by the 0-based epoch where it starts.
_DSR_WRN_PERIOD = {0: 100, 25: 200, 80: 400, 140: 800, 190: 0}

#: Named recipes. ``wrn-10-2-cpu`` and the ``*-smoke`` ones are ours (sized for CPU runs);
#: the others are the published protocols with their anchors.
WRN_RECIPES: Mapping[str, WRNRecipe] = {
    r.name: r
    for r in (
        WRNRecipe(
            "wrn-28-2", 28, 2, epochs=200, batch_size=100, milestones=(60, 120, 160), anchor=0.9470,
            source="Mostafa & Wang 2019 (DSR), dense WRN-28-2",
        ),
        WRNRecipe(
            "wrn-28-2-dsr0.9", 28, 2, epochs=200, batch_size=100, milestones=(60, 120, 160),
            sparsity=0.9, dsr={"n_prune": 20_000, "tolerance": 0.1, "initial_threshold": 1e-3,
                               "period": _DSR_WRN_PERIOD},
            anchor=0.9359, source="Mostafa & Wang 2019 (DSR), WRN-28-2 at sparsity 0.9",
        ),
        WRNRecipe(
            "wrn-28-10", 28, 10, epochs=200, batch_size=128, milestones=(60, 120, 160), anchor=0.9583,
            source="Zagoruyko & Komodakis 2016, WRN-28-10 without dropout",
        ),
        WRNRecipe(
            "wrn-10-2-cpu", 10, 2, epochs=6, batch_size=128, milestones=(2, 4, 5), precision="bf16",
            source="ours: the WRN-28-2 protocol (milestones at 30/60/80 % of training) shortened to "
                   "6 epochs of a WRN-10-2, minutes on 2 CPU cores (README: measured wall times)",
        ),
        WRNRecipe(
            "wrn-10-1-smoke", 10, 1, epochs=1, batch_size=128, milestones=(), precision="bf16",
            source="ours: a tiny network for smoke tests",
        ),
        WRNRecipe(
            "wrn-10-1-dsr-smoke", 10, 1, epochs=1, batch_size=128, milestones=(), sparsity=0.9, precision="bf16",
            dsr={"prune_fraction": 0.05, "period": 4}, source="ours: a tiny sparse network for smoke tests",
        ),
    )
}


def wrn_recipe(name: str, **overrides: Any) -> WRNRecipe:
    """The named recipe of :data:`WRN_RECIPES`, with fields replaced by ``overrides``.

    ``epochs=`` rescales the learning-rate milestones (:meth:`WRNRecipe.scaled`).
    """
    if name not in WRN_RECIPES:
        raise ValueError(f"recipe must be one of {sorted(WRN_RECIPES)}, got {name!r}")
    recipe = WRN_RECIPES[name]
    epochs = overrides.pop("epochs", None)
    if overrides:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(WRNRecipe)}
        if unknown:
            raise TypeError(f"unknown recipe fields {sorted(unknown)}")
        recipe = dataclasses.replace(recipe, **overrides)
    if epochs is not None:
        recipe = recipe.scaled(epochs, name=recipe.name)
    return recipe


@dataclass
class TrainingSetup:
    """A model with its optimizer, learning-rate schedule and (for sparse recipes) DSR."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    pruner: DSR | None


def build_training(recipe: WRNRecipe, *, seed: int = 0, device: str | torch.device = "cpu") -> TrainingSetup:
    """Model, SGD, multi-step schedule and DSR for ``recipe``; same seed, same initial weights.

    Call it after ``torch.distributed.init_process_group`` in multi-process runs:
    DSR agrees its initial masks across ranks when it is constructed.
    """
    if not isinstance(recipe, WRNRecipe):
        raise TypeError(f"recipe must be a WRNRecipe, got {type(recipe).__name__}")
    torch.manual_seed(seed)
    model = WideResNet(
        recipe.depth, recipe.widen_factor, dropout=recipe.dropout, sparse=recipe.sparse,
        sparsity=recipe.sparsity or 0.0,
    )
    # Dense networks go channels_last: oneDNN/cuDNN convolutions run faster on it (about
    # 20 % per training step of WRN-10-2 on the 2-core reference CPU). Sparse ones stay
    # contiguous: the schedulers flatten masks with .view(-1), which channels_last breaks.
    model = model.to(device=device, memory_format=torch.contiguous_format if recipe.sparse
                     else torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
        weight_decay=recipe.weight_decay,
    )
    lr_scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(recipe.milestones), gamma=recipe.gamma)
    pruner = DSR(model, optimizer, seed=seed, **recipe.dsr) if recipe.sparse else None
    return TrainingSetup(model, optimizer, lr_scheduler, pruner)


def make_loaders(
    recipe: WRNRecipe,
    data: CIFAR10Data,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    eval_batch_size: int = 500,
) -> tuple[BatchLoader, BatchLoader]:
    """Training loader (shuffled, augmented as the recipe says, standardised with the
    training statistics) and test loader (same standardisation, no augmentation)."""
    mean, std = data.channel_stats
    train = BatchLoader(
        data.train_images, data.train_labels, recipe.batch_size, shuffle=True, seed=seed, device=device,
        normalize="standard", mean=mean, std=std, augment=recipe.augment,
    )
    test = BatchLoader(
        data.test_images, data.test_labels, eval_batch_size, device=device, normalize="standard",
        mean=mean, std=std,
    )
    return train, test


def recipes_table(recipes: Sequence[WRNRecipe]) -> pd.DataFrame:
    """One row per recipe: architecture, protocol, sparsity and published anchor."""
    return pd.DataFrame([{
        "recipe": r.name, "architecture": r.architecture, "epochs": r.epochs, "batch_size": r.batch_size,
        "lr": r.lr, "milestones": list(r.milestones), "gamma": r.gamma, "nesterov": r.nesterov,
        "weight_decay": r.weight_decay, "augment": r.augment, "sparsity": r.sparsity,
        "precision": r.precision, "published_test_acc": r.anchor, "source": r.source,
    } for r in recipes])

