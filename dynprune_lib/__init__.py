"""dynprune: dynamic pruning in convolutional networks, reproducibly.

Companion library to Zhu & Joe, "Implementation and Application of a Dynamic
Pruning Model in Convolutional Neural Networks".
"""

from .csr import (
    CSRFormatError,
    CSRMatrix,
    accuracy_after_roundtrip,
    decode,
    encode,
    load_sparse,
    save_sparse,
    to_csr,
)
from .data import CIFAR10_CLASSES, BatchLoader, CIFAR10Data, DataError, channel_stats, load_cifar10
from .models import BaselineCNN, DynamicCNN, MLP, WideResNet
from .layers import DynamicConv2d, DynamicLinear, densify, erk_sparsities, sparse_modules, sparsify
from .inference import to_sparse_inference
from .paper import PAPER, compare_with_paper
from .plots import plot_history, save_figure
from .schedulers import DSR, SET, MagnitudePruning, RigL
from .train import (
    CheckpointError,
    PruningHook,
    TrainingDivergedError,
    evaluate,
    fit,
    load_checkpoint,
    progress_enabled,
    resolve_device,
    set_seed,
)
