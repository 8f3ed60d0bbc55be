"""dynprune: dynamic sparse layers, pruning schedulers, CSR storage and sparse inference for PyTorch.

The library of the companion to Zhu & Joe, "Implementation and Application of
a Dynamic Pruning Model in Convolutional Neural Networks"; the paper's own
experiments live one floor up, in :mod:`dynprune_lib.study`, which this
package never imports.

Modules: :mod:`.layers` (``DynamicLinear``, ``DynamicConv2d``),
:mod:`.schedulers` (DSR, SET, RigL, magnitude pruning), :mod:`.train`
(``fit``), :mod:`.csr` (the storage codec), :mod:`.inference` (sparse
kernels), :mod:`.models`, :mod:`.data` (CIFAR-10) and :mod:`.distributed`.
"""

from importlib.metadata import PackageNotFoundError, version

from .csr import CSRFormatError, CSRMatrix, load_sparse, save_sparse, to_csr
from .data import BatchLoader, CIFAR10Data, DataError, load_cifar10, make_loaders
from .distributed import ShardedLoader, init_distributed, wrap_model
from .inference import LayerChoice, to_sparse_inference
from .layers import DynamicConv2d, DynamicLinear, densify, erk_sparsities, sparse_modules, sparsify
from .models import MLP, BaselineCNN, DynamicCNN, WideResNet
from .schedulers import DSR, SET, MagnitudePruning, RigL
from .train import (
    CheckpointError,
    PruningHook,
    StepSchedule,
    TrainingDivergedError,
    evaluate,
    fit,
    load_checkpoint,
    resolve_device,
    set_seed,
)

try:
    __version__ = version("dynprune")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "DSR",
    "MLP",
    "SET",
    "BaselineCNN",
    "BatchLoader",
    "CIFAR10Data",
    "CSRFormatError",
    "CSRMatrix",
    "CheckpointError",
    "DataError",
    "DynamicCNN",
    "DynamicConv2d",
    "DynamicLinear",
    "LayerChoice",
    "MagnitudePruning",
    "PruningHook",
    "RigL",
    "ShardedLoader",
    "StepSchedule",
    "TrainingDivergedError",
    "WideResNet",
    "densify",
    "erk_sparsities",
    "evaluate",
    "fit",
    "init_distributed",
    "load_checkpoint",
    "load_cifar10",
    "load_sparse",
    "make_loaders",
    "resolve_device",
    "save_sparse",
    "set_seed",
    "sparse_modules",
    "sparsify",
    "to_csr",
    "to_sparse_inference",
    "wrap_model",
]
