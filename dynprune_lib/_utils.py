"""Private helpers shared by the library and the study, each written once.

Nothing here is public API: argument checks, atomic file writes, content
keys, the progress switch, random masks and interleaved timing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import numbers
import os
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

# --------------------------------------------------------------------------- argument checks


def check_int(value: object, name: str, minimum: int | None = 0) -> int:
    """``value`` as an int (bools refused) that is at least ``minimum``; TypeError/ValueError naming ``name``."""
    bound = "" if minimum is None else f" >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int{bound}, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int{bound}, got {value!r}")
    return int(value)


def check_real(
    value: object,
    name: str,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a float in the interval ``[low, high]`` (ends open as asked); NaN refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    lo_ok = value > low if low_open else value >= low
    hi_ok = value < high if high_open else value <= high
    if math.isnan(value) or not (lo_ok and hi_ok):
        lb, rb = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name} must be in {lb}{low:g}, {high:g}{rb}, got {value!r}")
    return value


def check_sparsity(value: object, name: str = "sparsity") -> float:
    """A sparsity: a fraction of zeros in [0, 1) (a layer always keeps a weight)."""
    return check_real(value, name, 0.0, 1.0, high_open=True)


def check_choice(value: object, name: str, choices: Collection[object]) -> Any:
    """``value`` if it is one of ``choices``, else ValueError listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


# --------------------------------------------------------------------------- files


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object] | bytes | str) -> Path:
    """Write ``path`` through a temporary file beside it, fsync it and rename it into place.

    Readers never see half a file and an interrupted write leaves the old file
    (or none). ``write`` is the content (bytes, or str as UTF-8) or a function
    writing to the binary file handle it is given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if isinstance(write, str):
                handle.write(write.encode("utf-8"))
            elif isinstance(write, (bytes, bytearray, memoryview)):
                handle.write(write)
            else:
                write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def content_key(*parts: Any, length: int = 16) -> str:
    """Short SHA-1 of ``parts``: arrays and tensors by dtype, shape and bytes, the rest as sorted JSON.

    Names checkpoints and cached measurements after everything that went into
    them, so a changed input never reuses a stale artefact.
    """
    digest = hashlib.sha1()
    for part in parts:
        if isinstance(part, torch.Tensor):
            part = part.detach().cpu().numpy()
        if isinstance(part, np.ndarray):
            digest.update(repr((part.dtype.str, part.shape)).encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:length]


# --------------------------------------------------------------------------- progress

_OFF = {"0", "false", "no", "off"}
_ON = {"1", "true", "yes", "on"}


def progress_enabled(progress: bool | None = None) -> bool:
    """Progress bars unless asked not to: ``progress`` if given, else ``$DYNPRUNE_PROGRESS``
    (``0/false/no/off`` or ``1/true/yes/on``), else off under ``$CI`` and on otherwise.

    ``run_all.sh`` sets ``DYNPRUNE_PROGRESS=0`` so notebooks executed by
    papermill log one line per epoch instead of redrawing bars.
    """
    if progress is not None:
        return bool(progress)
    env = os.environ.get("DYNPRUNE_PROGRESS", "").strip().lower()
    if env in _OFF:
        return False
    if env in _ON:
        return True
    return not os.environ.get("CI")


# --------------------------------------------------------------------------- masks


def n_zeros(sparsity: float, numel: int) -> int:
    """Zeros for a sparsity level: ``round(s * n)`` as ``torch.nn.utils.prune`` rounds, at most ``n - 1``."""
    return min(round(sparsity * numel), numel - 1) if numel > 1 else 0


def random_mask(
    shape: torch.Size | tuple[int, ...],
    n_zero: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Bool mask of ``shape`` with ``n_zero`` False entries at uniformly random positions.

    Drawn on the CPU (``generator``, or torch's global CPU generator), so the
    same seed gives the same mask on every device.
    """
    numel = math.prod(shape)
    flat = torch.ones(numel, dtype=torch.bool)
    if n_zero:
        flat[torch.randperm(numel, generator=generator)[:n_zero]] = False
    return flat.view(tuple(shape)).to(device)


def random_normal(
    shape: torch.Size | tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Float32 standard-normal values of ``shape``, drawn on the CPU (``generator``, or torch's
    global CPU generator) and then moved to ``device``: the same seed gives the same values on
    every device, and a CPU generator never meets a CUDA tensor."""
    return torch.randn(tuple(shape), generator=generator).to(device)


def pair(value: int | Sequence[int]) -> tuple[int, int]:
    """``(value, value)`` for an int, else the two values (as ``nn.Conv2d`` spells sizes)."""
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def replace_module(model: torch.nn.Module, name: str, new: torch.nn.Module) -> torch.nn.Module:
    """Put ``new`` where the submodule ``name`` of ``model`` is; returns the root (``new`` itself
    when ``name`` is empty, i.e. ``model`` is the layer being replaced)."""
    if not name:
        return new
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


# --------------------------------------------------------------------------- arithmetic


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """float32 computed as float32 inside the block: no TF32 in cuDNN convolutions or CUDA
    matrix products (PyTorch allows it for convolutions by default) and no reduced-precision
    float32 matrix products (``torch.set_float32_matmul_precision``); restored on exit.

    A correctness check compares two implementations under it, so that both do the same
    arithmetic: a dense cuDNN convolution in TF32 differs from a float32 sparse kernel by
    about 1e-3 relative, which is the rounding, not an error.
    """
    cudnn_tf32, matmul_precision = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
        torch.set_float32_matmul_precision(matmul_precision)


def float32_arithmetic(device: torch.device | str) -> str:
    """How float32 convolutions and matrix products run on ``device`` now: ``"float32"``, or
    ``"tf32"`` where CUDA may use TensorFloat-32 (PyTorch's default for cuDNN convolutions)."""
    if torch.device(device).type != "cuda":
        return "float32"
    tf32 = torch.backends.cudnn.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
    return "tf32" if tf32 else "float32"


# --------------------------------------------------------------------------- timing


def _synchronize(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    repeats: int,
    budget_s: float | None = None,
    warmup: int = 1,
    block: int = 1,
    device: torch.device | str | None = None,
) -> dict[str, list[float]]:
    """Seconds of single calls of each function, measured in alternation.

    Every round calls each function ``block`` times, in turn, so a load change
    on a shared machine hits all of them alike (``block > 1`` lets a runtime
    with its own thread pool warm it up before its calls are timed); after
    ``warmup`` untimed rounds at most ``repeats`` rounds run (at least 3), fewer
    when ``budget_s`` seconds would be exceeded. Callers reduce the lists: the
    minimum estimates what a kernel costs (other processes only add time), the
    median what a user sees.
    """
    device = None if device is None else torch.device(device)
    check_int(repeats, "repeats", 1)
    check_int(block, "block", 1)
    for _ in range(max(warmup, 0)):
        for fn in fns.values():
            for _ in range(block):
                fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    rounds = max(3, repeats)
    for i in range(rounds):
        for name, fn in fns.items():
            for _ in range(block):
                _synchronize(device)
                start = time.perf_counter()
                fn()
                _synchronize(device)
                times[name].append(time.perf_counter() - start)
        if i == 0 and budget_s is not None:
            per_round = sum(sum(t) for t in times.values())
            rounds = max(3, min(repeats, int(budget_s / max(per_round, 1e-9))))
        if i + 1 >= rounds:
            break
    return times
