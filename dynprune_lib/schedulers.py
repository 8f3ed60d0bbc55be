"""Pruning schedulers: DSR (the paper's method) and the methods it is compared with.

Every scheduler has the same small API::

    pruner = DSR(model, optimizer)          # model holds sparse Dynamic* layers
    for epoch in range(E):
        for x, y in loader:
            ...; optimizer.step(); pruner.step()
        history_row.update(pruner.epoch_end(epoch))
    pruner.state_dict() / pruner.load_state_dict(sd)   # exact resume, incl. RNG
    pruner.log  /  pruner.log_frame()                  # one row per update per layer

Mask updates run under ``torch.no_grad()``, draw random numbers from the
scheduler's own CPU ``torch.Generator`` (same seed -> same masks, on any
device), zero the optimizer state (momentum, Adam moments) of every pruned and
regrown weight, and, when a ``torch.distributed`` process group is initialised,
adopt rank 0's masks on every rank so that masks never diverge.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ._utils import check_choice, check_int, check_real, check_sparsity, n_zeros
from .layers import global_magnitude_zeros, mask_summary, sparse_modules

__all__ = ["DSR", "SET", "MagnitudePruning", "RigL"]

#: Updates in a row that prune under half of DSR's ``N_p`` before its threshold counts as run away
#: (a healthy run doubles its threshold for a handful of updates at the start, from 1e-3 to the
#: weights' scale).
RUNAWAY_UPDATES = 20

_LOG_COLUMNS = [
    "step",
    "epoch",
    "layer",
    "sparsity",
    "mask_sparsity",
    "n_active",
    "threshold",
    "pruned",
    "regrown",
]


def _distributed() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def _broadcast_masks(masks: list[Tensor], values: list[float]) -> tuple[list[Tensor], list[float]]:
    """Rank 0's masks and numbers on every rank (no-op without a process group)."""
    if not _distributed():
        return masks, values
    device = masks[0].device
    flat = torch.cat([m.reshape(-1) for m in masks]).to(torch.uint8)
    torch.distributed.broadcast(flat, src=0)
    nums = torch.tensor(values, dtype=torch.float64, device=device)
    if nums.numel():
        torch.distributed.broadcast(nums, src=0)
    out, offset = [], 0
    for m in masks:
        out.append(flat[offset : offset + m.numel()].view(m.shape).to(torch.bool))
        offset += m.numel()
    return out, nums.tolist()


def _random_choice(candidates: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """``k`` entries of the 1-D index tensor ``candidates`` without replacement (CPU generator)."""
    perm = torch.randperm(candidates.numel(), generator=generator)[:k]
    return candidates[perm.to(candidates.device)]


def allocate_proportional(total: int, weights: list[int], capacity: list[int]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights``, each at most its ``capacity``.

    Largest-remainder rounding, so the parts sum to ``total`` exactly (the DSR
    reference rounds and puts the discrepancy on a random layer); a part that
    hits its capacity hands the excess to the others. If the capacities cannot
    hold ``total`` every part is filled to capacity.
    """
    n = len(weights)
    alloc = [0] * n
    remaining = total
    open_ = [i for i in range(n) if capacity[i] > 0]
    while remaining > 0 and open_:
        w = {i: weights[i] for i in open_}
        if sum(w.values()) == 0:
            w = {i: capacity[i] - alloc[i] for i in open_}
        wsum = sum(w.values())
        share = {i: remaining * w[i] // wsum for i in open_}
        left = remaining - sum(share.values())
        by_rest = sorted(open_, key=lambda i: (-(remaining * w[i] % wsum), i))
        for i in by_rest[:left]:
            share[i] += 1
        for i in open_:
            take = min(share[i], capacity[i] - alloc[i])
            alloc[i] += take
            remaining -= take
        open_ = [i for i in open_ if alloc[i] < capacity[i]]
    return alloc


class _MaskScheduler:
    """Shared machinery: clock, RNG, logging, distributed agreement, state_dict."""

    _keep_pruned = False  # whether pruned values are kept for set_sparsity revival

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, seed: int = 0) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
        self.model = model
        self.optimizer = optimizer
        self.layers: dict[str, nn.Module] = dict(sparse_modules(model))
        if not self.layers:
            raise ValueError(
                "model has no sparse DynamicLinear/DynamicConv2d layers (sparse=True); "
                "build it from them or convert it with dynprune_lib.sparsify()"
            )
        self.seed = check_int(seed, "seed")
        self.generator = torch.Generator()
        self.generator.manual_seed(self.seed)
        self.step_count = 0
        self.epoch = 0
        self.log: list[dict[str, Any]] = []
        with torch.no_grad():
            masks, _ = _broadcast_masks([m.mask for m in self.layers.values()], [])
            for layer, mask in zip(self.layers.values(), masks):
                layer.apply_mask(mask, optimizer=optimizer)

    # -- clock ----------------------------------------------------------------- #
    def step(self) -> None:
        """Call after every ``optimizer.step()``; updates the masks when one is due."""
        self.step_count += 1
        if self._due(self.step_count):
            self.update()
        self._prepare(self.step_count + 1)

    def epoch_end(self, epoch: int) -> dict[str, float]:
        """Call after epoch ``epoch`` (0-based); returns per-epoch columns for the history."""
        self.epoch = check_int(epoch, "epoch") + 1
        return self._summary()

    def _due(self, step: int) -> bool:  # pragma: no cover - overridden
        return False

    def _prepare(self, next_step: int) -> None:
        """Hook run before the forward/backward of ``next_step`` (RigL asks for dense grads)."""

    # -- update ---------------------------------------------------------------- #
    @torch.no_grad()
    def update(self) -> None:
        """Run one prune/regrow update now (``step`` calls it on schedule)."""
        names = list(self.layers)
        masks, thresholds = self._propose()
        masks, thresholds = _broadcast_masks(masks, thresholds)
        counts = []
        for name, mask in zip(names, masks):
            counts.append(self.layers[name].apply_mask(mask, optimizer=self.optimizer, keep_pruned=self._keep_pruned))
        self._record(thresholds, counts)
        self._after_update(counts)

    def _propose(self) -> tuple[list[Tensor], list[float]]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _after_update(self, counts: list[tuple[int, int]]) -> None:
        pass

    # -- logging --------------------------------------------------------------- #
    def _record(self, thresholds: list[float], counts: list[tuple[int, int]]) -> None:
        for (name, layer), thr, (n_pruned, n_grown) in zip(self.layers.items(), thresholds, counts):
            n_active = int(layer.mask.sum().item())
            self.log.append(
                {
                    "step": self.step_count,
                    "epoch": self.epoch,
                    "layer": name,
                    "sparsity": layer.sparsity,
                    "mask_sparsity": (layer.mask.numel() - n_active) / layer.mask.numel(),
                    "n_active": n_active,
                    "threshold": float(thr),
                    "pruned": n_pruned,
                    "regrown": n_grown,
                }
            )

    def log_frame(self):
        """The update log as a long-format ``pandas.DataFrame`` (one row per update per layer).

        Columns: step, epoch, layer, sparsity (fraction of zero weights),
        mask_sparsity, n_active, threshold (DSR: ``H``; others: largest pruned
        magnitude), pruned, regrown (positions whose mask changed: a SET/RigL weight
        dropped and regrown in the same update keeps its value and counts as
        neither, as in the RigL code). Row ``step == 0`` is the state at construction.
        """
        import pandas as pd

        return pd.DataFrame(self.log, columns=_LOG_COLUMNS)

    def _summary(self) -> dict[str, float]:
        return mask_summary(self.layers.values())

    # -- state ----------------------------------------------------------------- #
    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        pass

    def hparams(self) -> dict[str, Any]:
        """The hyperparameters the scheduler was built with (part of :meth:`state_dict` and of
        ``fit``'s checkpoint fingerprint: a run resumes only under the same ones)."""
        return {"seed": self.seed}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume identically; loads with ``torch.load(weights_only=True)``.

        The masks themselves live in the model's ``state_dict``.
        """
        return {
            "type": type(self).__name__,
            "hparams": self.hparams(),
            "step_count": self.step_count,
            "epoch": self.epoch,
            "generator": self.generator.get_state(),
            "log": [dict(row) for row in self.log],
            **self._extra_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping from state_dict(), got {type(state).__name__}")
        missing = {"type", "hparams", "step_count", "epoch", "generator", "log"} - set(state)
        if missing:
            raise ValueError(f"state is missing keys {sorted(missing)}")
        if state["type"] != type(self).__name__:
            raise ValueError(f"state is from a {state['type']} scheduler, not a {type(self).__name__}")
        mine = self.hparams()
        differ = {k: (state["hparams"].get(k), v) for k, v in mine.items() if state["hparams"].get(k) != v}
        if differ or set(state["hparams"]) != set(mine):
            details = "; ".join(f"{k}: state {a!r} vs this scheduler {b!r}" for k, (a, b) in differ.items())
            raise ValueError(
                f"state was made by a {state['type']} with other hyperparameters ({details or 'other names'}); "
                "build the scheduler as the run that saved it did"
            )
        self.step_count = check_int(state["step_count"], "state['step_count']")
        self.epoch = check_int(state["epoch"], "state['epoch']")
        self.generator.set_state(state["generator"].cpu())
        self.log = [dict(row) for row in state["log"]]
        self._load_extra_state(state)
        self._prepare(self.step_count + 1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layers={len(self.layers)}, step={self.step_count}, epoch={self.epoch})"


class DSR(_MaskScheduler):
    """Dynamic Sparse Reparameterization (Mostafa & Wang 2019, Algorithm 1), as its reference code.

    Every ``period`` iterations (one global magnitude threshold ``H`` for all sparse
    layers):

    1. prune the live weights with ``|w| < H`` in every layer (a layer never loses
       its last weight); ``K`` = number pruned in total;
    2. regrow ``K`` weights at random positions that were zero *before* this
       update (never the ones just pruned), split across layers in proportion to
       each layer's surviving weights (largest-remainder rounding, so exactly
       ``K``); new weights start at zero;
    3. adapt ``H``: halve it if ``K > (1 + tolerance) N_p``, double it if
       ``K < (1 - tolerance) N_p``.

    The number of live (mask) weights is the same after every update.

    A threshold that runs away is reported once (a ``RuntimeWarning``, and
    :attr:`runaway` says when and why; the history's ``threshold_ran_away``
    column turns 1): it doubled past the largest live magnitude (the next update
    may prune every weight), or :data:`RUNAWAY_UPDATES` updates in a row pruned
    under half of ``N_p``. Both mean ``N_p`` is out of reach of the live weights;
    the run goes on, but its accuracy is suspect (the study flags such runs).

    ``N_p`` is, as in the reference (``--n-prune-params``, default 600), an
    absolute number of weights reallocated per update, summed over all layers;
    ``prune_fraction`` is a convenience that sets it to that fraction of the live
    weights at construction.

    Args:
        model: network with sparse ``DynamicLinear``/``DynamicConv2d`` layers.
        optimizer: its per-weight state is zeroed for pruned and regrown weights.
        n_prune: ``N_p`` (default 600 unless ``prune_fraction`` is given).
        prune_fraction: alternative to ``n_prune``, in (0, 1).
        tolerance: ``delta`` of the paper, in [0, 1); 0.1 in the reference.
        initial_threshold: initial ``H``, 1e-3 in the reference.
        period: iterations between updates, either an int (100 in the reference) or
            a schedule ``{first_epoch: period}`` looked up with the current epoch
            (as the reference's ``rewire_period_schedule``; a period of 0 stops
            updates), e.g. ``{0: 100, 25: 200, 80: 400, 140: 800, 190: 0}``, the
            reference's WRN schedule (``learning_schedules/wrnet_schedule.yaml``
            with ``--stop-rewire-epoch 190``; the study's recipes use it). Updates
            happen when the global step count
            is a multiple of the current period (the reference tests the 0-based
            iteration index, i.e. updates one step later).
        end_step: no updates after this step (the reference's
            ``--stop-rewire-epoch``, here in steps so a short run can stop
            mid-epoch); ``None``: updates as long as the period says.
        seed: seed of the scheduler's own generator.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        n_prune: int | None = None,
        prune_fraction: float | None = None,
        tolerance: float = 0.1,
        initial_threshold: float = 1e-3,
        period: int | Mapping[int, int] = 100,
        end_step: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(model, optimizer, seed=seed)
        self.end_step = None if end_step is None else check_int(end_step, "end_step", 1)
        if n_prune is not None and prune_fraction is not None:
            raise ValueError("give n_prune or prune_fraction, not both")
        if prune_fraction is not None:
            prune_fraction = check_real(prune_fraction, "prune_fraction", 0.0, 1.0, low_open=True, high_open=True)
            n_live = sum(int(m.mask.sum().item()) for m in self.layers.values())
            n_prune = max(1, round(prune_fraction * n_live))
        self.n_prune = check_int(600 if n_prune is None else n_prune, "n_prune", 1)
        self.tolerance = check_real(tolerance, "tolerance", 0.0, 1.0, high_open=True)
        self.initial_threshold = check_real(
            initial_threshold, "initial_threshold", 0.0, math.inf, low_open=True, high_open=True
        )
        self.threshold = self.initial_threshold
        self.period = self._check_period(period)
        self.runaway: dict[str, Any] | None = None  # {"step", "reason"} once the threshold ran away
        self._short_updates = 0  # updates in a row that pruned under half of N_p
        self._record([self.threshold] * len(self.layers), [(0, 0)] * len(self.layers))

    @staticmethod
    def _check_period(period: int | Mapping[int, int]) -> int | dict[int, int]:
        if isinstance(period, Mapping):
            if not period:
                raise ValueError("period schedule must not be empty")
            out = {}
            for k, v in period.items():
                out[check_int(k, "period schedule epoch")] = check_int(v, "period schedule value")
            return dict(sorted(out.items()))
        return check_int(period, "period", 1)

    def current_period(self) -> int:
        """Update period in iterations at the current epoch (0 = no updates)."""
        if isinstance(self.period, int):
            return self.period
        value = 0
        for first_epoch, p in self.period.items():
            if first_epoch <= self.epoch:
                value = p
        return value

    def _due(self, step: int) -> bool:
        p = self.current_period()
        return p > 0 and step % p == 0 and (self.end_step is None or step <= self.end_step)

    def _propose(self) -> tuple[list[Tensor], list[float]]:
        H = self.threshold
        survive, candidates, n_pruned, n_survive = [], [], [], []
        for layer in self.layers.values():
            # Contiguous copies so the flat views below also work for channels_last models.
            mask = layer.mask.contiguous()
            mag = layer.weight.detach().abs().contiguous()
            prune = mask & (mag < H)
            n_live = int(mask.sum().item())
            if n_live and int(prune.sum().item()) == n_live:  # keep the largest one
                keep = torch.argmax(mag.masked_fill(~mask, -1.0))
                prune.view(-1)[keep] = False
            keep_mask = mask & ~prune
            survive.append(keep_mask)
            candidates.append((~mask).reshape(-1).nonzero().squeeze(1))
            n_pruned.append(int(prune.sum().item()))
            n_survive.append(int(keep_mask.sum().item()))
        grow = allocate_proportional(sum(n_pruned), n_survive, [c.numel() for c in candidates])
        new_masks = []
        for keep_mask, cand, g in zip(survive, candidates, grow):
            new = keep_mask.clone()
            if g:
                new.view(-1)[_random_choice(cand, g, self.generator)] = True
            new_masks.append(new)
        return new_masks, [H] * len(new_masks)

    def _after_update(self, counts: list[tuple[int, int]]) -> None:
        k = sum(p for p, _ in counts)
        doubled = False
        if k > (1.0 + self.tolerance) * self.n_prune:
            self.threshold /= 2.0
        elif k < (1.0 - self.tolerance) * self.n_prune:
            self.threshold *= 2.0
            doubled = True
        self._short_updates = self._short_updates + 1 if 2 * k < self.n_prune else 0
        if self.runaway is None:
            self._check_runaway(k, doubled)

    def _check_runaway(self, pruned: int, doubled: bool) -> None:
        largest = max(float((layer.weight.detach().abs() * layer.mask).max()) for layer in self.layers.values())
        if doubled and self.threshold > largest:
            reason = f"it doubled to {self.threshold:g}, above the largest live magnitude {largest:g}"
        elif self._short_updates >= RUNAWAY_UPDATES:
            reason = f"{self._short_updates} updates in a row pruned under half of N_p (the last: {pruned})"
        else:
            return
        self.runaway = {"step": self.step_count, "reason": reason}
        live = sum(int(layer.mask.sum()) for layer in self.layers.values())
        warnings.warn(
            f"DSR's threshold ran away at step {self.step_count}: {reason}. N_p={self.n_prune} is out of reach "
            f"of the {live} live weights; updates may prune nearly every weight (lower n_prune)",
            RuntimeWarning,
            stacklevel=4,
        )

    def epoch_end(self, epoch: int) -> dict[str, float]:
        out = super().epoch_end(epoch)
        out["threshold"] = self.threshold
        out["threshold_ran_away"] = float(self.runaway is not None)
        return out

    def hparams(self) -> dict[str, Any]:
        return {
            **super().hparams(),
            "n_prune": self.n_prune,
            "tolerance": self.tolerance,
            "initial_threshold": self.initial_threshold,
            "period": dict(self.period) if isinstance(self.period, dict) else self.period,
            "end_step": self.end_step,
        }

    def _extra_state(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "runaway": self.runaway, "short_updates": self._short_updates}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.threshold = float(state["threshold"])
        runaway = state.get("runaway")  # absent in checkpoints from before the guard
        self.runaway = None if runaway is None else {"step": int(runaway["step"]), "reason": str(runaway["reason"])}
        self._short_updates = int(state.get("short_updates", 0))


class _PruneRegrow(_MaskScheduler):
    """SET/RigL: per-layer drop of the smallest weights, regrowth of as many, cosine-decayed fraction."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        *,
        fraction: float,
        period: int,
        end_step: int | None,
        seed: int,
        fraction_name: str,
    ) -> None:
        super().__init__(model, optimizer, seed=seed)
        self.fraction = check_real(fraction, fraction_name, 0.0, 1.0, high_open=True)
        self.period = check_int(period, "period", 1)
        self.end_step = None if end_step is None else check_int(end_step, "end_step", 1)
        self._record([math.nan] * len(self.layers), [(0, 0)] * len(self.layers))

    def hparams(self) -> dict[str, Any]:
        return {**super().hparams(), "fraction": self.fraction, "period": self.period, "end_step": self.end_step}

    def fraction_at(self, step: int) -> float:
        """Fraction of live weights replaced at ``step``: ``f/2 (1 + cos(pi t / T_end))``, or ``f`` if no end."""
        if self.end_step is None:
            return self.fraction
        if step >= self.end_step:
            return 0.0
        return 0.5 * self.fraction * (1.0 + math.cos(math.pi * step / self.end_step))

    def _due(self, step: int) -> bool:
        return step % self.period == 0 and (self.end_step is None or step < self.end_step)

    def _grow_scores(self, name: str, layer: nn.Module) -> Tensor | None:
        """Scores for regrowth (higher first); ``None`` = uniformly random."""
        return None

    def _propose(self) -> tuple[list[Tensor], list[float]]:
        frac = self.fraction_at(self.step_count)
        new_masks, thresholds = [], []
        for name, layer in self.layers.items():
            mask = layer.mask.reshape(-1)
            n_live = int(mask.sum().item())
            k = min(int(frac * n_live), max(n_live - 1, 0))  # floor, as the RigL code
            new = mask.clone()
            thr = math.nan
            if k > 0:
                mag = layer.weight.detach().abs().reshape(-1)
                drop = torch.topk(mag.masked_fill(~mask, math.inf), k, largest=False).indices
                thr = float(mag[drop].max().item())
                new[drop] = False
                free = (~new).nonzero().squeeze(1)  # includes the just-dropped, as SET/RigL
                scores = self._grow_scores(name, layer)
                if scores is None:
                    grow = _random_choice(free, k, self.generator)
                else:
                    grow = free[torch.topk(scores.reshape(-1)[free], k).indices]
                new[grow] = True
            new_masks.append(new.view_as(layer.mask))
            thresholds.append(thr)
        return new_masks, thresholds


class SET(_PruneRegrow):
    """Sparse Evolutionary Training (Mocanu et al. 2018).

    Every ``period`` steps each layer drops the fraction ``zeta_t`` of its live
    weights with the smallest magnitude and regrows as many at random free
    positions (new weights are zero), so every layer keeps its sparsity.
    ``zeta_t = prune_fraction / 2 * (1 + cos(pi t / end_step))`` (cosine decay, as
    in Evci et al. 2020; no updates from ``end_step`` on); with ``end_step=None``
    ``zeta`` stays constant as in the original SET. Start from an
    Erdős–Rényi mask with ``sparsify(model, s, distribution="erk", mask_init="random")``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        prune_fraction: float = 0.3,
        period: int = 100,
        end_step: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            model,
            optimizer,
            fraction=prune_fraction,
            period=period,
            end_step=end_step,
            seed=seed,
            fraction_name="prune_fraction",
        )


class RigL(_PruneRegrow):
    """Rigged Lottery (Evci et al. 2020): regrowth where the dense gradient is largest.

    Every ``period`` steps (until ``end_step``, 75 % of training in the paper) each
    layer drops the fraction ``alpha_t = drop_fraction / 2 (1 + cos(pi t / end_step))``
    of its live weights with the smallest magnitude and regrows as many at the
    free positions with the largest ``|dL/dW|``, the gradient w.r.t. the *masked*
    weight ``W * M`` (dense, i.e. also where ``M`` is 0). New weights start at zero.

    Dense gradient, cheaply: on the step before an update the scheduler sets
    ``layer.keep_dense_grad``; that forward registers a tensor hook on ``W * M``
    which stores its gradient in ``layer.dense_grad`` during backward. Other steps
    cost nothing extra. With a process group the dense gradients are averaged
    over ranks before the update. Start from an ERK mask with
    ``sparsify(model, s, distribution="erk", mask_init="random")``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        drop_fraction: float = 0.3,
        period: int = 100,
        end_step: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            model,
            optimizer,
            fraction=drop_fraction,
            period=period,
            end_step=end_step,
            seed=seed,
            fraction_name="drop_fraction",
        )
        self._prepare(1)

    def _prepare(self, next_step: int) -> None:
        want = self._due(next_step)
        for layer in self.layers.values():
            layer.keep_dense_grad = want
            if not want:
                layer.dense_grad = None

    def _after_update(self, counts: list[tuple[int, int]]) -> None:
        for layer in self.layers.values():  # each update uses its own step's gradient
            layer.dense_grad = None

    def _grow_scores(self, name: str, layer: nn.Module) -> Tensor:
        grad = layer.dense_grad
        if grad is None:
            raise RuntimeError(
                f"RigL: no dense gradient for layer {name!r} at step {self.step_count}; "
                "run forward and backward before optimizer.step() and call pruner.step() after each step"
            )
        if _distributed():
            grad = grad.clone()
            torch.distributed.all_reduce(grad)
            grad /= torch.distributed.get_world_size()
        return grad.abs()


class MagnitudePruning(_MaskScheduler):
    """ "Traditional" magnitude pruning: train dense, then prune the smallest weights.

    One-shot (``end=None``: prune once to ``sparsity`` at time ``begin``) or
    gradual with the cubic schedule of Zhu & Gupta 2017 (as
    ``torch.ao.pruning.scheduler.CubicSL``): at times
    ``t = begin, begin + frequency, ..., end`` the sparsity is set to
    ``s_t = s_f + (s_i - s_f) (1 - (t - begin) / (end - begin)) ** 3``.
    Time counts optimizer steps (``unit="step"``) or completed epochs
    (``unit="epoch"``, via :meth:`epoch_end`); ``begin=0`` prunes at construction.
    Training after the last prune is the fine-tuning; pruned weights stay zero.

    ``scope="layer"`` prunes every layer to ``s_t`` (for a dense layer exactly the
    mask of ``torch.nn.utils.prune.l1_unstructured``); ``scope="global"`` uses one
    magnitude cut-off over all sparse layers (as ``prune.global_unstructured``, except
    that a layer keeps at least one weight: :func:`~dynprune_lib.layers.global_magnitude_zeros`).
    Pruned values are kept, so ``layer.set_sparsity`` can lower the sparsity again.
    """

    _keep_pruned = True

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        sparsity: float,
        scope: Literal["layer", "global"] = "layer",
        begin: int = 0,
        end: int | None = None,
        frequency: int = 1,
        unit: Literal["step", "epoch"] = "epoch",
        initial_sparsity: float = 0.0,
    ) -> None:
        super().__init__(model, optimizer, seed=0)
        self.final_sparsity = check_sparsity(sparsity, "sparsity")
        self.initial_sparsity = check_sparsity(initial_sparsity, "initial_sparsity")
        self.scope = check_choice(scope, "scope", ("layer", "global"))
        self.unit = check_choice(unit, "unit", ("step", "epoch"))
        self.begin = check_int(begin, "begin")
        self.end = None if end is None else check_int(end, "end", self.begin + 1)
        self.frequency = check_int(frequency, "frequency", 1)
        self._target = math.nan
        self._record([math.nan] * len(self.layers), [(0, 0)] * len(self.layers))
        if self.begin == 0:
            self.prune(self.target_at(0))

    def target_at(self, t: int) -> float | None:
        """Sparsity to prune to at time ``t``, or ``None`` if ``t`` is not a pruning time."""
        if t < self.begin or (t - self.begin) % self.frequency:
            return None
        if self.end is None:
            return self.final_sparsity if t == self.begin else None
        if t > self.end:
            return None
        s_i, s_f = self.initial_sparsity, self.final_sparsity
        frac = min(1.0, (t - self.begin) / (self.end - self.begin))
        return s_f + (s_i - s_f) * (1.0 - frac) ** 3

    def step(self) -> None:
        self.step_count += 1
        if self.unit == "step":
            target = self.target_at(self.step_count)
            if target is not None:
                self.prune(target)

    def epoch_end(self, epoch: int) -> dict[str, float]:
        self.epoch = check_int(epoch, "epoch") + 1
        if self.unit == "epoch":
            target = self.target_at(self.epoch)
            if target is not None:
                self.prune(target)
        return self._summary()

    def prune(self, sparsity: float | None = None) -> None:
        """Prune to ``sparsity`` (default: the final one) now."""
        self._target = self.final_sparsity if sparsity is None else check_sparsity(sparsity, "sparsity")
        self.update()

    def _propose(self) -> tuple[list[Tensor], list[float]]:
        layers = list(self.layers.values())
        s = self._target
        if self.scope == "layer":
            zeros = [n_zeros(s, m.weight.numel()) for m in layers]
        else:
            zeros = global_magnitude_zeros(layers, s)
        masks = [m.magnitude_mask(n) for m, n in zip(layers, zeros)]
        thresholds = []
        for m, new in zip(layers, masks):
            dropped = m.mask & ~new
            thresholds.append(float(m.weight.detach().abs()[dropped].max().item()) if dropped.any() else math.nan)
        return masks, thresholds

    def hparams(self) -> dict[str, Any]:
        return {
            **super().hparams(),
            "sparsity": self.final_sparsity,
            "initial_sparsity": self.initial_sparsity,
            "scope": self.scope,
            "unit": self.unit,
            "begin": self.begin,
            "end": self.end,
            "frequency": self.frequency,
        }

    def _extra_state(self) -> dict[str, Any]:
        return {"target": self._target}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        self._target = float(state.get("target", math.nan))
