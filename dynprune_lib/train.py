"""Training engine: epochs, evaluation, checkpoint/resume, pruning hooks.

``fit`` is the one loop every notebook uses. It evaluates on the test split
after every epoch (the paper's Figures 2-5 plot exactly that history), calls an
optional pruning scheduler after every optimizer step (DSR prunes *during*
training, paper section 2), and checkpoints atomically after every epoch so an
interrupted run resumes and ends with the same history, bit for bit on CPU.
"""

from __future__ import annotations

import os
import platform
import random
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
from torch import nn

from ._utils import atomic_write, check_int, progress_enabled

__all__ = [
    "PRECISIONS",
    "CheckpointError",
    "PruningHook",
    "StepSchedule",
    "TrainingDivergedError",
    "branch_checkpoint",
    "check_precision",
    "cpu_has_native_bf16",
    "epoch_checkpoint",
    "evaluate",
    "fit",
    "hardware_name",
    "load_checkpoint",
    "progress_enabled",
    "resolve_device",
    "set_seed",
]

CHECKPOINT_FORMAT = "dynprune-checkpoint"
CHECKPOINT_VERSION = 1
#: Training precisions of :func:`fit`: float32 throughout, or a bfloat16-autocast forward pass.
PRECISIONS = ("fp32", "bf16")
HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"]

# How often (in optimizer steps) the loss is checked for NaN/inf. Checking
# every step would force a device synchronisation per step on CUDA; the step
# that diverged is still reported exactly.
_FINITE_CHECK_EVERY = 50


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: unreadable, truncated, or from another run."""


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


@runtime_checkable
class PruningHook(Protocol):
    """What ``fit`` needs from a pruning scheduler (see ``schedulers.py``).

    ``step()`` runs after every optimizer step. An optional
    ``epoch_end(epoch) -> dict`` adds columns (e.g. ``sparsity``) to the history;
    ``epoch`` is the 0-based index of the epoch just finished, as the schedulers
    expect (the history's ``epoch`` column counts from 1).
    """

    def step(self) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class StepSchedule:
    """``fit`` hook that steps a learning-rate scheduler after every optimizer step, then a pruner.

    ``fit`` steps its ``lr_scheduler`` once per epoch; a one-cycle schedule over
    ten epochs needs per-step updates. Pass this as ``fit(pruner=...)``; it
    forwards ``epoch_end`` to the pruner (its history columns) and checkpoints both.
    Without a pruner, ``columns()`` (if given) supplies the history columns instead,
    e.g. :func:`~dynprune_lib.layers.mask_summary` of a dense run's layers, so that its
    history has the columns of the pruned runs it is compared with.
    """

    def __init__(
        self,
        lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
        pruner: PruningHook | None = None,
        *,
        columns: Callable[[], Mapping[str, float]] | None = None,
    ) -> None:
        if not isinstance(lr_scheduler, torch.optim.lr_scheduler.LRScheduler):
            raise TypeError(f"lr_scheduler must be a torch LRScheduler, got {type(lr_scheduler).__name__}")
        if columns is not None and pruner is not None:
            raise ValueError("columns is for a schedule without a pruner (the pruner's epoch_end gives them)")
        self.lr_scheduler = lr_scheduler
        self.pruner = pruner
        self.columns = columns

    def step(self) -> None:
        if self.pruner is not None:
            self.pruner.step()
        self.lr_scheduler.step()

    def epoch_end(self, epoch: int) -> dict[str, float]:
        if self.columns is not None:
            return dict(self.columns())
        epoch_end = getattr(self.pruner, "epoch_end", None)
        return dict(epoch_end(epoch)) if callable(epoch_end) else {}

    def hparams(self) -> dict[str, Any]:
        """The pruner's hyperparameters (what ``fit``'s checkpoint fingerprint compares) and its type."""
        hparams = getattr(self.pruner, "hparams", None)
        return {"pruner": type(self.pruner).__name__, **(hparams() if callable(hparams) else {})}

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


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) for model initialisation."""
    check_int(seed, "seed", None)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` means CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was requested but CUDA is not available")
    return device


def hardware_name(device: str | torch.device | None = None) -> str:
    """What ``device`` is, for the record: the GPU's name, or the CPU model and torch's thread count."""
    device = resolve_device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} threads"


def _tqdm(iterable=None, **kwargs):
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    device: str | torch.device | None = None,
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` over ``loader`` (eval mode, no grad)."""
    loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
    device = _model_device(model) if device is None else resolve_device(device)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        logits = model(images)
        loss_sum += loss_fn(logits, labels).double() * labels.numel()
        correct += (logits.argmax(dim=1) == labels).sum()
        count += labels.numel()
    model.train(was_training)
    if count == 0:
        raise ValueError("evaluate() got an empty loader")
    return loss_sum.item() / count, correct.item() / count


def fit(
    model: nn.Module,
    train_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    test_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    pruner: PruningHook | None = None,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    device: str | torch.device | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    keep_epochs: Iterable[int] = (),
    progress: bool | None = None,
    verbose: bool = True,
    precision: Literal["fp32", "bf16"] = "fp32",
) -> pd.DataFrame:
    """Train ``model`` for ``epochs`` epochs and return the per-epoch history.

    The history has one row per epoch with ``epoch, train_loss, train_acc,
    test_loss, test_acc, lr, seconds`` (train metrics are running means over
    the epoch, as Keras reports them in the paper's figures) plus whatever the
    pruner's ``epoch_end`` returns.

    ``pruner.step()`` is called after every ``optimizer.step()``;
    ``lr_scheduler.step()`` after every epoch. With ``checkpoint`` set, state
    is saved there atomically after every epoch; if the file exists the run
    resumes from it (a finished run returns its history without training); the
    state after each of ``keep_epochs`` is also kept, at :func:`epoch_checkpoint`
    (where a run that shares those epochs can start: :func:`branch_checkpoint`).
    ``train_loader`` must provide ``state_dict()``/``load_state_dict()`` for
    its shuffling generator when checkpointing (``BatchLoader`` does).

    ``precision="bf16"`` runs the training forward pass and loss under bfloat16
    autocast (mixed precision: weights, gradients, optimizer state and the
    per-epoch evaluation stay float32), faster per step on CPUs with AMX and on
    recent GPUs (``bench/bench_precision.py`` measures it); the reported
    accuracy is the float32 model's.

    Raises ``TrainingDivergedError`` on a NaN/inf loss and ``CheckpointError``
    for an unreadable checkpoint or one written by a different run; neither
    case overwrites the checkpoint on disk.
    """
    check_int(epochs, "epochs", 0)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if pruner is not None and not isinstance(pruner, PruningHook):
        raise TypeError(f"pruner must provide step(), state_dict() and load_state_dict(); got {type(pruner).__name__}")
    loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
    device = resolve_device(device)
    check_precision(precision, device)
    model.to(device)
    checkpoint = None if checkpoint is None else Path(checkpoint)
    if checkpoint is not None:
        for name in ("state_dict", "load_state_dict"):
            if not callable(getattr(train_loader, name, None)):
                raise TypeError(
                    f"checkpointing needs train_loader.{name}() to save and restore its "
                    f"shuffling state; {type(train_loader).__name__} has none"
                )
    keep_epochs = {check_int(e, "keep_epochs", 1) for e in keep_epochs}
    if keep_epochs and checkpoint is None:
        raise ValueError("keep_epochs needs a checkpoint path")
    fingerprint = _fingerprint(model, optimizer, train_loader, pruner, precision)

    history: list[dict[str, Any]] = []
    start_epoch = 0
    if checkpoint is not None and checkpoint.exists():
        # Read onto the CPU: each state_dict loader moves what it holds to where it lives (the model
        # and optimizer to their parameters' device; RNG states stay CPU ByteTensors).
        state = load_checkpoint(checkpoint)
        _restore(state, fingerprint, checkpoint, model, optimizer, pruner, lr_scheduler, train_loader)
        history = list(state["history"])
        start_epoch = int(state["epoch"])
        if verbose:
            print(f"resumed from {checkpoint} after epoch {start_epoch}", flush=True)

    bars = progress_enabled(progress)
    epoch_bar = _tqdm(total=epochs, initial=start_epoch, desc="epochs", unit="epoch") if bars else None
    try:
        for epoch in range(start_epoch + 1, epochs + 1):
            t0 = time.perf_counter()
            train_loss, train_acc = _train_one_epoch(
                model, train_loader, optimizer, loss_fn, pruner, device, epoch, bars, precision
            )
            test_loss, test_acc = evaluate(model, test_loader, loss_fn, device)
            row: dict[str, Any] = {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "test_loss": test_loss,
                "test_acc": test_acc,
                "lr": float(optimizer.param_groups[0]["lr"]),
            }
            if lr_scheduler is not None:
                lr_scheduler.step()
            epoch_end = getattr(pruner, "epoch_end", None)
            if callable(epoch_end):
                row.update({k: float(v) for k, v in epoch_end(epoch - 1).items()})  # 0-based index
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            if checkpoint is not None:
                kept = (epoch_checkpoint(checkpoint, epoch),) if epoch in keep_epochs else ()
                for path in (checkpoint, *kept):
                    _save_checkpoint(
                        path, epoch, history, fingerprint, model, optimizer, pruner, lr_scheduler, train_loader
                    )
            if epoch_bar is not None:
                epoch_bar.update(1)
                epoch_bar.set_postfix(test_acc=f"{test_acc:.4f}", loss=f"{train_loss:.4f}")
            elif verbose:
                extra = "".join(f" {k}={v:.4f}" for k, v in row.items() if k not in HISTORY_COLUMNS)
                print(
                    f"epoch {epoch}/{epochs}: train_loss={train_loss:.4f} train_acc={train_acc:.4f} "
                    f"test_loss={test_loss:.4f} test_acc={test_acc:.4f}{extra} ({row['seconds']:.1f} s)",
                    flush=True,
                )
    finally:
        if epoch_bar is not None:
            epoch_bar.close()
    return _history_frame(history)


def epoch_checkpoint(checkpoint: str | os.PathLike[str], epoch: int) -> Path:
    """Where ``fit(checkpoint=..., keep_epochs=...)`` keeps its run's state after ``epoch``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.epoch{check_int(epoch, 'epoch', 1)}{checkpoint.suffix}")


def branch_checkpoint(
    source: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: Any,
    pruner: PruningHook,
    pruner_state: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    precision: Literal["fp32", "bf16"] = "fp32",
) -> int:
    """Start a run from ``source``, the checkpoint of a run that trained the same way up to its
    epoch but with another pruner, one that had not acted yet (one-shot pruning late in training
    is a branch of the dense run: both train the same first epochs, bit for bit).

    Writes ``source``'s weights, optimizer, schedule, data order, RNG and history as ``checkpoint``,
    the checkpoint of the run ``fit`` trains with these arguments, with ``pruner_state(state)``
    (``state``: ``source``'s pruner state) as this run's pruner state; ``fit(checkpoint=checkpoint)``
    then continues from there. Returns the epoch it continues after. Raises ``CheckpointError``
    when ``source`` differs from this run in anything but the pruner, and ``ValueError`` when
    ``pruner`` rejects the state (it is loaded into ``pruner``).
    """
    state = load_checkpoint(source)
    fingerprint = _fingerprint(model, optimizer, train_loader, pruner, precision)
    saved = {"precision": "fp32", **state["fingerprint"]}
    diff = {k: (saved.get(k), v) for k, v in fingerprint.items() if k not in _PRUNER_KEYS and saved.get(k) != v}
    if diff:
        details = "; ".join(f"{k}: source {a!r} vs this run {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(f"checkpoint {source} is not of a run this one branches from ({details})")
    state["pruner"] = pruner_state(state["pruner"])
    pruner.load_state_dict(state["pruner"])
    state["fingerprint"] = fingerprint
    atomic_write(Path(checkpoint), lambda handle: torch.save(state, handle))
    return int(state["epoch"])


def check_precision(precision: str, device: str | torch.device | None = None) -> None:
    """Raise for an unknown ``precision``; with ``device``, also raise for bf16 on a GPU without
    it and warn for bf16 on a CPU without native bfloat16 (correct, but slower than float32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "bf16" or device is None:
        return
    device = resolve_device(device)
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"{torch.cuda.get_device_name(device)} has no bfloat16 support; use precision='fp32'")
    if device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(
            "precision='bf16' on a CPU without native bfloat16 (AVX512-BF16/AMX): results are "
            "correct but training is slower than with precision='fp32'",
            RuntimeWarning,
            stacklevel=3,
        )


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), where ``precision="bf16"`` pays off."""
    try:  # the check PyTorch's own bf16 tests use; private, hence the guard
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _train_one_epoch(model, loader, optimizer, loss_fn, pruner, device, epoch, bars, precision):
    model.train()
    # Per-step statistics stay on the device and are reduced once per epoch:
    # reading them every step would synchronise CUDA and cost time on CPU too.
    losses: list[torch.Tensor] = []
    corrects: list[torch.Tensor] = []
    sizes: list[int] = []
    batches = _tqdm(loader, desc=f"epoch {epoch}", unit="batch", leave=False) if bars else loader
    for step, (images, labels) in enumerate(batches, start=1):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(images)
            loss = loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if pruner is not None:
            pruner.step()
        losses.append(loss.detach())
        corrects.append((logits.detach().argmax(dim=1) == labels).sum())
        sizes.append(labels.numel())
        if step % _FINITE_CHECK_EVERY == 0:
            _check_finite(losses[-_FINITE_CHECK_EVERY:], epoch, step - _FINITE_CHECK_EVERY + 1)
    if not losses:
        raise ValueError("the training loader yielded no batches")
    tail = len(losses) % _FINITE_CHECK_EVERY
    if tail:
        _check_finite(losses[-tail:], epoch, len(losses) - tail + 1)
    count = sum(sizes)
    weights = torch.tensor(sizes, dtype=torch.float64, device=device)
    loss_sum = (torch.stack(losses).double() * weights).sum()
    return loss_sum.item() / count, torch.stack(corrects).sum().item() / count


def _check_finite(losses: list[torch.Tensor], epoch: int, first_step: int) -> None:
    finite = torch.isfinite(torch.stack(losses))
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0, 0])
        raise TrainingDivergedError(
            f"training diverged: loss is {losses[bad].item()} at epoch {epoch}, step {first_step + bad}; "
            "lower the learning rate or check the data"
        )


_PRUNER_KEYS = ("pruner", "pruner_hparams")  # the fingerprint's keys a branch may change


def _fingerprint(model, optimizer, train_loader, pruner, precision) -> dict[str, Any]:
    """What must match for a checkpoint to belong to this run (epochs may grow)."""
    hyper = {k: v for k, v in optimizer.defaults.items() if isinstance(v, (int, float, str, bool)) or v is None}
    return {
        "model": type(model).__name__,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "optimizer": type(optimizer).__name__,
        "optimizer_defaults": repr(sorted(hyper.items())),
        "batches_per_epoch": len(train_loader) if hasattr(train_loader, "__len__") else -1,
        "pruner": type(pruner).__name__ if pruner is not None else "",
        "pruner_hparams": repr(sorted(pruner.hparams().items())) if hasattr(pruner, "hparams") else "",
        "precision": precision,
    }


def _save_checkpoint(path, epoch, history, fingerprint, model, optimizer, pruner, lr_scheduler, loader):
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "epoch": epoch,
        "history": history,
        "fingerprint": fingerprint,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "pruner": pruner.state_dict() if pruner is not None else None,
        "lr_scheduler": lr_scheduler.state_dict() if lr_scheduler is not None else None,
        "train_loader": loader.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    atomic_write(path, lambda handle: torch.save(state, handle))


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``fit`` safely (``weights_only=True``).

    Raises ``CheckpointError`` naming the file when it is truncated, corrupt or
    not a dynprune checkpoint.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as err:  # torch raises many types for damaged zip/pickle data
        raise CheckpointError(
            f"checkpoint {path} is unreadable (truncated or corrupt: {type(err).__name__}: {err}). "
            "It was left in place so no finished epochs are lost; move or delete it to start the run over."
        ) from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a dynprune training checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {state.get('version')!r}; this dynprune reads "
            f"version {CHECKPOINT_VERSION}"
        )
    missing = {"epoch", "history", "fingerprint", "model", "optimizer", "train_loader", "rng_cpu"} - state.keys()
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {sorted(missing)}")
    return state


def _restore(state, fingerprint, path, model, optimizer, pruner, lr_scheduler, loader) -> None:
    saved = {"precision": "fp32", **state["fingerprint"]}  # checkpoints from before precision existed
    diff = {k: (saved.get(k), v) for k, v in fingerprint.items() if saved.get(k) != v}
    if diff:
        details = "; ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(
            f"checkpoint {path} belongs to a different run ({details}); "
            "use another checkpoint path or delete this one to start over"
        )
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if pruner is not None:
            if state.get("pruner") is None:
                raise CheckpointError(f"checkpoint {path} has no pruner state but a pruner was given")
            pruner.load_state_dict(state["pruner"])
        if lr_scheduler is not None and state.get("lr_scheduler") is not None:
            lr_scheduler.load_state_dict(state["lr_scheduler"])
        loader.load_state_dict(state["train_loader"])
    except CheckpointError:
        raise
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} does not fit this run: {err}") from err
    torch.set_rng_state(state["rng_cpu"].cpu())
    if state.get("rng_cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])


def _history_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=HISTORY_COLUMNS)
    extra = [c for c in frame.columns if c not in HISTORY_COLUMNS]
    return frame[HISTORY_COLUMNS[:-1] + extra + ["seconds"]].reset_index(drop=True)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")
