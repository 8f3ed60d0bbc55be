"""Shared test fixtures and builders: synthetic CIFAR-shaped data, free ports, the scripts.

The builders are plain functions (``from conftest import synthetic_cifar``) so
module-level helpers and parametrisations can call them; the fixtures below
hand the same functions to tests that prefer injection.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path
from types import ModuleType
from typing import Literal

import pytest
import torch

from dynprune_lib.data import CIFAR10_CLASSES, CIFAR10Data

ROOT = Path(__file__).resolve().parent.parent

Labels = Literal["brightest", "balanced"]


def synthetic_images(
    n: int, *, size: int = 32, seed: int = 0, labels: Labels = "brightest"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random uint8 images (n, 3, size, size) and int64 labels.

    ``labels="brightest"``: the brightest colour channel (0-2), something a tiny
    network learns in a few steps; ``"balanced"``: the ten classes in equal
    shares (as equal as ``n`` allows), shuffled.
    """
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    if labels == "brightest":
        y = images.float().mean(dim=(2, 3)).argmax(dim=1).long()
    elif labels == "balanced":
        y = (torch.arange(n) % 10)[torch.randperm(n, generator=g)]
    else:
        raise ValueError(f"labels must be 'brightest' or 'balanced', got {labels!r}")
    return images, y


def synthetic_cifar(
    n_train: int = 64,
    n_test: int = 32,
    *,
    size: int = 32,
    seed: int = 0,
    labels: Labels = "brightest",
    source: str = "synthetic",
) -> CIFAR10Data:
    """A :class:`CIFAR10Data` of :func:`synthetic_images` (each split drawn on its own)."""
    train = synthetic_images(n_train, size=size, seed=seed, labels=labels)
    test = synthetic_images(n_test, size=size, seed=seed + 10_000, labels=labels)
    return CIFAR10Data(*train, *test, CIFAR10_CLASSES, source)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for process groups and torchrun)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` imported as module ``name`` (the scripts are not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    scripts = str(ROOT / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)  # the scripts import each other by name
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and are then not slowed by a busy
    machine's other jobs (two OpenMP threads wait for each other on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cifar():
    """:func:`synthetic_cifar`, for tests that take their data as a fixture."""
    return synthetic_cifar


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run where CUDA is (``scripts/gpu_check.sh`` runs them) and are
    skipped, saying so, everywhere else."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (scripts/gpu_check.sh runs these)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
