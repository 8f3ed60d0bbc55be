"""dynprune: dynamic pruning in convolutional networks, reproducibly.

Companion library to Zhu & Joe, "Implementation and Application of a Dynamic
Pruning Model in Convolutional Neural Networks".
"""

from .models import BaselineCNN
from .paper import PAPER, compare_with_paper
from .plots import plot_history, save_figure
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
