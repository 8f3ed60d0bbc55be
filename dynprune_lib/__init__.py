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
from .paper import PAPER, compare_with_paper, run_conditions
from .plots import (
    plot_accuracy_vs_sparsity,
    plot_aspect_scores,
    plot_deletion_curves,
    plot_dynamic_pruning_process,
    plot_history,
    plot_latency_vs_sparsity,
    plot_learning_curves,
    plot_method_comparison,
    plot_pruning_log,
    save_figure,
)
from . import efficiency, experiments
from .schedulers import DSR, SET, MagnitudePruning, RigL
from .train import (
    PRECISIONS,
    CheckpointError,
    PruningHook,
    TrainingDivergedError,
    check_precision,
    evaluate,
    fit,
    hardware_name,
    load_checkpoint,
    progress_enabled,
    resolve_device,
    set_seed,
)
from .recipes import WRN_RECIPES, TrainingSetup, WRNRecipe, build_training, make_loaders, recipes_table, wrn_recipe
from .traditional import (
    FeatureConfig,
    LinearClassifier,
    TraditionalClassifier,
    color_histograms,
    extract_features,
    hog_features,
    traditional_flops,
)
from .aspects import (
    CIFAR10C_SEVERITIES,
    COMPLEXITY_ANCHORS,
    SCORE_FORMULAS,
    DeletionResult,
    accuracy,
    aspect_scores,
    count_flops,
    count_parameters,
    curve_epochs,
    deletion_faithfulness,
    fraction_to_reach,
    gaussian_blur,
    gaussian_noise,
    log_position,
    model_predictor,
    occlusion_attribution,
    region_masks,
    shift_images,
)
from .comparison import (
    PAPER_CLAIMS,
    PROFILES,
    TRADITIONAL_NAME,
    ComparisonProfile,
    Method,
    WRNRun,
    aspect_summary,
    check_paper_claims,
    complexity_table,
    comparison_profile,
    data_requirements_table,
    generalization_table,
    interpretability_table,
    raw_aspect_table,
    shifted_test_sets,
    stratified_subset,
    traditional_learning_curve,
    traditional_method,
    train_wrn,
    wrn_learning_curve,
)

# Loaded on first use rather than here: ``python -m dynprune_lib.distributed`` runs that
# module as __main__, and runpy warns when the package has imported it already.
_DISTRIBUTED = ("DistContext", "ShardedLoader", "init_distributed", "wrap_model")


def __getattr__(name: str):
    if name in _DISTRIBUTED:
        from . import distributed

        return getattr(distributed, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

