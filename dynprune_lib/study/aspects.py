"""The four aspects of the paper's Figure 6 as computed measures, and their scores.

The paper scores a Wide ResNet and a traditional method on model complexity,
generalization, data requirements and interpretability without saying how.
Here each aspect is a measure anyone can recompute, and each score a stated
formula of the measures (``SCORE_FORMULAS``). Scores keep the paper's
direction: a higher bar means *more* of the aspect (more complex, generalises
better, needs more data, more interpretable).

Every measure that needs the model takes a *predictor*: a callable from uint8
images (N, 3, H, W) to class probabilities (N, K), so the same code measures a
network (:func:`model_predictor`) and the HOG + logistic-regression pipeline
(:class:`dynprune_lib.study.traditional.TraditionalClassifier.predict_proba`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

__all__ = [
    "CIFAR10C_SEVERITIES",
    "COMPLEXITY_ANCHORS",
    "SCORE_FORMULAS",
    "DeletionResult",
    "accuracy",
    "aspect_scores",
    "count_flops",
    "count_parameters",
    "curve_epochs",
    "deletion_faithfulness",
    "fraction_to_reach",
    "gaussian_blur",
    "gaussian_noise",
    "log_position",
    "model_predictor",
    "occlusion_attribution",
    "region_masks",
    "shift_images",
]

Predictor = Callable[[torch.Tensor], "np.ndarray | torch.Tensor"]


def _check_images(images: torch.Tensor, name: str = "images") -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"{name} must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")


# --------------------------------------------------------------- model complexity


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total parameters and non-zero ones (masked weights of sparse layers are exactly zero)."""
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())
    return {"parameters": int(total), "nonzero_parameters": int(nonzero)}


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: Sequence[int] = (3, 32, 32)) -> dict[str, int]:
    """FLOPs of one forward pass of one image, dense and counting only non-zero weights.

    Convolutions and linear layers only, a multiply-add counted as 2 FLOPs and
    biases, normalisation, activations, pooling and additions not counted: the
    convention of ``torch.utils.flop_counter.FlopCounterMode`` (which the tests
    check this against). Counted with forward hooks because the *non-zero* count
    needs each layer's density: a sparse layer only multiplies by its non-zero
    weights, ``flops * nnz(W) / numel(W)`` (as in the DSR and RigL papers).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    totals = {"flops": 0, "nonzero_flops": 0.0}

    def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
        weight = module.weight
        if isinstance(module, nn.Conv2d):
            per_output = weight.shape[1] * math.prod(weight.shape[2:])  # (C_in / groups) * kh * kw
        else:
            per_output = weight.shape[1]
        flops = 2 * (output.numel() // output.shape[0]) * per_output
        totals["flops"] += flops
        totals["nonzero_flops"] += flops * int(torch.count_nonzero(weight)) / weight.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        model.eval()
        model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return {"flops": int(totals["flops"]), "nonzero_flops": int(round(totals["nonzero_flops"]))}


# ----------------------------------------------------------------- generalization

#: Corruption strengths of CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019), severities 1-5:
#: Gaussian noise standard deviation in [0, 1] pixel units, Gaussian blur sigma in pixels.
CIFAR10C_SEVERITIES: Mapping[str, tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "gaussian_blur": (1.0, 2.0, 3.0, 4.0, 6.0),
}


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)


def gaussian_noise(images: torch.Tensor, sigma: float, *, seed: int = 0) -> torch.Tensor:
    """``clip(x + N(0, sigma^2), 0, 1)`` per pixel (x in [0, 1]), rounded back to uint8.

    The noise comes from a CPU generator seeded with ``seed``: same inputs, same output.
    """
    _check_images(images)
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=gen, dtype=torch.float64)
    return _to_uint8(images.cpu().double() / 255.0 + sigma * noise)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Per-channel Gaussian blur with standard deviation ``sigma`` pixels, as CIFAR-10-C
    (``skimage.filters.gaussian``: edges extended with the nearest pixel, kernel
    truncated at 4 sigma), rounded back to uint8. ``scipy.ndimage`` filters the
    whole batch in one call (skimage would loop over images)."""
    from scipy.ndimage import gaussian_filter

    _check_images(images)
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    x = images.cpu().numpy().astype(np.float64) / 255.0
    blurred = gaussian_filter(x, sigma=(0.0, 0.0, sigma, sigma), mode="nearest", truncate=4.0)
    return _to_uint8(torch.from_numpy(blurred))


def shift_images(images: torch.Tensor, kind: str, severity: int, *, seed: int = 0) -> torch.Tensor:
    """``images`` under corruption ``kind`` at CIFAR-10-C ``severity`` (1-5)."""
    if kind not in CIFAR10C_SEVERITIES:
        raise ValueError(f"kind must be one of {sorted(CIFAR10C_SEVERITIES)}, got {kind!r}")
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an int in 1..5, got {severity!r}")
    strength = CIFAR10C_SEVERITIES[kind][severity - 1]
    if kind == "gaussian_noise":
        return gaussian_noise(images, strength, seed=seed)
    return gaussian_blur(images, strength)


def model_predictor(
    model: nn.Module,
    *,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    device: str | torch.device | None = None,
    batch_size: int = 500,
) -> Callable[[torch.Tensor], np.ndarray]:
    """uint8 images -> softmax probabilities (numpy), through ``model`` in eval mode,
    after scaling to [0, 1] and standardising with ``mean``/``std`` (as BatchLoader does)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1).to(device)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1).to(device)

    @torch.no_grad()
    def predict(images: torch.Tensor) -> np.ndarray:
        _check_images(images)
        was_training = model.training
        model.eval()
        out = []
        try:
            for start in range(0, images.shape[0], batch_size):
                x = images[start : start + batch_size].to(device).float().div_(255).sub_(mean_t).div_(std_t)
                out.append(torch.softmax(model(x).double(), dim=1).cpu())
        finally:
            model.train(was_training)
        return torch.cat(out).numpy() if out else np.empty((0, 0))

    return predict


def _proba(predict: Predictor, images: torch.Tensor) -> np.ndarray:
    p = predict(images)
    return p.detach().cpu().numpy() if isinstance(p, torch.Tensor) else np.asarray(p)


def accuracy(predict: Predictor, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of ``images`` whose most probable class is the label."""
    _check_images(images)
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    return float((_proba(predict, images).argmax(axis=1) == labels.cpu().numpy()).mean())


# --------------------------------------------------------------- data requirements


def fraction_to_reach(fractions: Sequence[float], accuracies: Sequence[float], share: float = 0.9) -> float:
    """Smallest training fraction at which a learning curve reaches ``share`` of its
    full-data accuracy (the accuracy at the largest fraction).

    Between the last point below the target and the first at or above it the
    curve is interpolated linearly in log(fraction). If the smallest fraction
    already reaches it, that fraction is returned (the curve says no more).
    """
    f = np.asarray(fractions, dtype=np.float64)
    a = np.asarray(accuracies, dtype=np.float64)
    if f.ndim != 1 or f.shape != a.shape or len(f) < 1:
        raise ValueError("fractions and accuracies must be 1-D sequences of the same non-zero length")
    if np.any(np.diff(f) <= 0) or f[0] <= 0:
        raise ValueError(f"fractions must be positive and strictly increasing, got {list(f)}")
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be in (0, 1], got {share!r}")
    target = share * a[-1]
    i = int(np.argmax(a >= target))  # a[-1] >= target, so some i exists
    if i == 0:
        return float(f[0])
    t = (target - a[i - 1]) / (a[i] - a[i - 1])
    return float(np.exp(np.log(f[i - 1]) + t * (np.log(f[i]) - np.log(f[i - 1]))))


def curve_epochs(epochs: int, n_train: int, batch_size: int, min_steps: int) -> int:
    """Epochs for one learning-curve point: ``epochs``, but at least ``min_steps``
    optimizer steps, ``max(epochs, ceil(min_steps / ceil(n_train / batch_size)))``.

    Without the floor the 1 % run would take ``epochs * 4`` steps and measure an
    untrained network rather than a small data set.
    """
    if n_train < 1 or batch_size < 1 or epochs < 1 or min_steps < 0:
        raise ValueError("epochs, n_train and batch_size must be >= 1 and min_steps >= 0")
    per_epoch = math.ceil(n_train / batch_size)
    return max(epochs, math.ceil(min_steps / per_epoch))


# ----------------------------------------------------------------- interpretability


def region_masks(height: int, width: int, patch: int) -> torch.Tensor:
    """Boolean (R, H, W) masks of the ``patch`` x ``patch`` squares tiling the image, row-major."""
    if patch < 1 or height % patch or width % patch:
        raise ValueError(f"patch must be a positive divisor of {height} and {width}, got {patch!r}")
    rows, cols = height // patch, width // patch
    masks = torch.zeros(rows * cols, height, width, dtype=torch.bool)
    for r in range(rows):
        for c in range(cols):
            masks[r * cols + c, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch] = True
    return masks


def _fill(images: torch.Tensor, keep_out: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """images with pixels where keep_out (B, H, W) is True replaced by the colour fill (C,)."""
    return torch.where(keep_out[:, None], fill.view(1, -1, 1, 1), images)


def _fill_colour(fill: Sequence[int] | torch.Tensor, channels: int) -> torch.Tensor:
    colour = torch.as_tensor(fill).to(torch.uint8).flatten()
    if colour.numel() != channels:
        raise ValueError(f"fill must give {channels} channel values, got {colour.numel()}")
    return colour


def occlusion_attribution(
    predict: Predictor,
    images: torch.Tensor,
    *,
    patch: int = 8,
    fill: Sequence[int] | torch.Tensor = (128, 128, 128),
    target: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Occlusion attribution (Zeiler & Fergus 2014) over a grid of square regions.

    ``a[n, r] = p_t(x_n) - p_t(x_n with region r painted in fill)``, ``t`` the
    predicted class (or ``target``). Returns ``(a, t)``. Model-agnostic, so it
    attributes the network and the feature pipeline in the same units.
    """
    _check_images(images)
    n, c, h, w = images.shape
    regions = region_masks(h, w, patch)
    colour = _fill_colour(fill, c)
    p0 = _proba(predict, images)
    t = p0.argmax(axis=1) if target is None else np.asarray(target)
    occluded = _fill(images.repeat_interleave(len(regions), 0), regions.repeat(n, 1, 1), colour)
    p = _proba(predict, occluded).reshape(n, len(regions), -1)
    pt = np.take_along_axis(p, t[:, None, None], axis=2)[..., 0]
    return p0[np.arange(n), t][:, None] - pt, t


def _deletion_curves(
    predict: Predictor,
    images: torch.Tensor,
    regions: torch.Tensor,
    order: np.ndarray,
    t: np.ndarray,
    colour: torch.Tensor,
) -> np.ndarray:
    """p_t after deleting the first k regions of each image's order, k = 0..R: (N, R + 1)."""
    n, r = order.shape
    removed = torch.zeros(n, r + 1, *regions.shape[1:], dtype=torch.bool)
    for k in range(1, r + 1):
        removed[:, k] = removed[:, k - 1] | regions[torch.from_numpy(order[:, k - 1])]
    probed = _fill(images.repeat_interleave(r + 1, 0), removed.flatten(0, 1), colour)
    p = _proba(predict, probed).reshape(n, r + 1, -1)
    return np.take_along_axis(p, t[:, None, None], axis=2)[..., 0]


@dataclass(frozen=True)
class DeletionResult:
    """Deletion curves and their areas (the interpretability measure).

    ``curve``/``random_curve``: mean p_t after deleting k regions (k = 0..R) in
    attribution order / in random order; ``auc``/``random_auc``: their areas
    (trapezoid over k/R in [0, 1]); ``faithfulness = 1 - auc / random_auc``.
    """

    curve: np.ndarray
    random_curve: np.ndarray
    auc: float
    random_auc: float
    n_images: int
    n_regions: int

    @property
    def faithfulness(self) -> float:
        return 1.0 - self.auc / self.random_auc if self.random_auc > 0 else float("nan")


def deletion_faithfulness(
    predict: Predictor,
    images: torch.Tensor,
    *,
    patch: int = 8,
    fill: Sequence[int] | torch.Tensor = (128, 128, 128),
    seed: int = 0,
) -> DeletionResult:
    """Deletion-curve faithfulness of occlusion explanations (Petsiuk et al. 2018).

    For each image: attribute its predicted class ``t`` to the regions
    (:func:`occlusion_attribution`), delete (paint in ``fill``) the regions one
    by one, most important first, and record ``p_t`` after each deletion; do the
    same in a seeded random order. An explanation that captures how the model
    decides makes ``p_t`` fall fast: a small area under the curve relative to
    the random order. Costs ``3R + 1`` predictions per image.
    """
    _check_images(images)
    n, c, h, w = images.shape
    regions = region_masks(h, w, patch)
    colour = _fill_colour(fill, c)
    attribution, t = occlusion_attribution(predict, images, patch=patch, fill=colour)
    order = np.argsort(-attribution, axis=1, kind="stable")
    gen = np.random.default_rng(seed)
    random_order = np.stack([gen.permutation(len(regions)) for _ in range(n)]) if n else order
    curves = _deletion_curves(predict, images, regions, order, t, colour)
    random_curves = _deletion_curves(predict, images, regions, random_order, t, colour)
    x = np.linspace(0.0, 1.0, len(regions) + 1)
    curve, random_curve = curves.mean(axis=0), random_curves.mean(axis=0)
    return DeletionResult(
        curve,
        random_curve,
        float(np.trapezoid(curve, x)),
        float(np.trapezoid(random_curve, x)),
        n,
        len(regions),
    )


# --------------------------------------------------------------------------- scores

#: [low, high] anchors of the log-scale complexity measures: a quantity at ``low``
#: scores 0, at ``high`` 1 (clipped). Chosen to span a few-thousand-weight linear
#: model to WRN-28-10 (36.5 M weights, 10.5 GFLOPs, about a GPU-day).
COMPLEXITY_ANCHORS: Mapping[str, tuple[float, float]] = {
    "nonzero_parameters": (1e3, 1e8),
    "nonzero_flops": (1e5, 1e10),
    "train_seconds": (1e1, 1e5),
}

#: The formula behind each score, as shown in the notebook and the CSV.
SCORE_FORMULAS: Mapping[str, str] = {
    "complexity": "mean over q in {non-zero parameters, non-zero FLOPs/image, training seconds} of "
    "clip((log10 q - log10 lo_q) / (log10 hi_q - log10 lo_q), 0, 1)",
    "generalization": "(test accuracy + mean accuracy under the shifts + (1 - max(0, train - test accuracy))) / 3",
    "data_requirements": "log(f_share / f_min) / log(1 / f_min), f_share = training fraction reaching "
    "share x full-data accuracy, f_min = smallest fraction measured",
    "interpretability": "clip(1 - deletion AUC / random-order deletion AUC, 0, 1)",
}

_RAW_COLUMNS = (
    "method",
    "nonzero_parameters",
    "nonzero_flops",
    "train_seconds",
    "test_acc",
    "train_acc",
    "shift_acc",
    "fraction_to_reach",
    "fraction_min",
    "deletion_auc",
    "random_deletion_auc",
)


def log_position(value: float | np.ndarray, low: float, high: float) -> float | np.ndarray:
    """``clip((log10 value - log10 low) / (log10 high - log10 low), 0, 1)``."""
    if not 0 < low < high:
        raise ValueError(f"need 0 < low < high, got low={low!r}, high={high!r}")
    value = np.asarray(value, dtype=np.float64)
    if np.any(value <= 0):
        raise ValueError("log_position needs positive values")
    out = np.clip((np.log10(value) - math.log10(low)) / (math.log10(high) - math.log10(low)), 0.0, 1.0)
    return float(out) if out.ndim == 0 else out


def aspect_scores(
    raw: pd.DataFrame, *, anchors: Mapping[str, tuple[float, float]] = COMPLEXITY_ANCHORS
) -> pd.DataFrame:
    """The four scores (``SCORE_FORMULAS``) for each row of the raw measures.

    ``raw`` needs the columns ``method, nonzero_parameters, nonzero_flops,
    train_seconds, test_acc, train_acc, shift_acc, fraction_to_reach,
    fraction_min, deletion_auc, random_deletion_auc``. Returns ``method`` and one
    column per aspect, each in [0, 1] (and ``seed`` when ``raw`` has it).
    """
    missing = [c for c in _RAW_COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(f"raw lacks the columns {missing}")
    quantities = [log_position(raw[q].to_numpy(), *anchors[q]) for q in COMPLEXITY_ANCHORS]
    complexity = np.mean(quantities, axis=0)
    gap = np.maximum(0.0, raw["train_acc"].to_numpy() - raw["test_acc"].to_numpy())
    generalization = (raw["test_acc"].to_numpy() + raw["shift_acc"].to_numpy() + 1.0 - gap) / 3.0
    f_share, f_min = raw["fraction_to_reach"].to_numpy(float), raw["fraction_min"].to_numpy(float)
    if np.any(f_min <= 0) or np.any(f_min >= 1) or np.any(f_share < f_min) or np.any(f_share > 1):
        raise ValueError("need 0 < fraction_min < 1 and fraction_min <= fraction_to_reach <= 1")
    data = np.log(f_share / f_min) / np.log(1.0 / f_min)
    interp = np.clip(1.0 - raw["deletion_auc"].to_numpy() / raw["random_deletion_auc"].to_numpy(), 0.0, 1.0)
    seed = {"seed": raw["seed"].to_numpy()} if "seed" in raw.columns else {}
    return pd.DataFrame(
        {
            "method": raw["method"].to_numpy(),
            **seed,
            "complexity": complexity,
            "generalization": generalization,
            "data_requirements": data,
            "interpretability": interp,
        }
    )
