"""The "traditional method" of the paper's section 4: hand-designed features and a
classical classifier.

Features (Dalal & Triggs 2005; Swain & Ballard 1991): a histogram of oriented
gradients (``skimage.feature.hog``; 9 orientations, 8x8-pixel cells, 2x2-cell
blocks, L2-Hys, on the colour channel with the strongest gradient) followed by a
joint RGB colour histogram (``bins`` levels per channel, normalised to sum 1).
Classifier: multinomial logistic regression on standardised features
(``sklearn``), its inverse regularisation strength ``C`` chosen on a stratified
validation split of the training data and then refitted on all of it.

A fitted classifier is kept as plain arrays (:class:`LinearClassifier`), so it
saves to ``.npz`` and loads without unpickling, like every other artefact here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .._utils import atomic_write, check_int, content_key, progress_enabled
from .profiles import DEFAULT_CS, FeatureConfig

__all__ = [
    "LinearClassifier",
    "TraditionalClassifier",
    "color_histograms",
    "extract_features",
    "hog_features",
    "traditional_flops",
]


#: The default features (frozen, so one instance serves every default argument).
_DEFAULT_FEATURES = FeatureConfig()


def _nhwc(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """uint8 (N, C, H, W) images as a numpy (N, H, W, C) array (skimage's layout)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if not isinstance(images, np.ndarray):
        raise TypeError(f"images must be a torch.Tensor or numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {images.shape}")
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1))


def _hog_chunk(images: np.ndarray, config: FeatureConfig) -> np.ndarray:
    from skimage.feature import hog

    out = np.empty((len(images), config.hog_dim(*images.shape[1:3])), np.float32)
    for i, image in enumerate(images):
        out[i] = hog(
            image,
            orientations=config.orientations,
            pixels_per_cell=(config.pixels_per_cell,) * 2,
            cells_per_block=(config.cells_per_block,) * 2,
            block_norm=config.block_norm,
            channel_axis=-1,
            feature_vector=True,
        )
    return out


def hog_features(
    images: torch.Tensor | np.ndarray,
    config: FeatureConfig = _DEFAULT_FEATURES,
    *,
    n_jobs: int = 1,
    chunk_size: int = 2000,
    progress: bool | None = None,
) -> np.ndarray:
    """``skimage.feature.hog`` of every uint8 (N, 3, H, W) image, as float32 (N, D).

    skimage computes one image per call (0.5-0.7 ms per 32x32 image on one core of
    the reference CPU: 30-45 s for CIFAR-10's 60,000), so chunks of ``chunk_size``
    images can run in ``n_jobs`` worker processes (joblib). That pays off only on
    idle cores: starting the workers takes about 10 s, and on the shared 2-core
    reference machine two workers measured no faster than one.
    """
    arr = _nhwc(images)
    check_int(n_jobs, "n_jobs", 1)
    starts = range(0, len(arr), chunk_size)
    chunks = [arr[s : s + chunk_size] for s in starts]
    if progress_enabled(progress):
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="HOG", unit="chunk")
    if n_jobs == 1:
        parts = [_hog_chunk(c, config) for c in chunks]
    else:
        from joblib import Parallel, delayed

        parts = Parallel(n_jobs=n_jobs)(delayed(_hog_chunk)(c, config) for c in chunks)
    if not parts:
        return np.empty((0, config.hog_dim(*arr.shape[1:3])), np.float32)
    return np.concatenate(parts)


def color_histograms(images: torch.Tensor | np.ndarray, bins: int = 4) -> np.ndarray:
    """Joint RGB histogram of each uint8 (N, 3, H, W) image: ``bins**3`` cells, summing to 1.

    A pixel with values (r, g, b) falls in cell ``(r*bins//256, g*bins//256, b*bins//256)``,
    flattened in that (r, g, b) order, like ``np.histogramdd`` with ``bins`` equal
    ranges of [0, 256) per channel. Vectorised over the batch with one ``bincount``.
    """
    arr = _nhwc(images)
    if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= 256 or 256 % bins:
        raise ValueError(f"bins must be a positive int dividing 256, got {bins!r}")
    n, h, w, _ = arr.shape
    q = arr.astype(np.int64) * bins // 256
    cell = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    cell = cell.reshape(n, h * w) + (np.arange(n, dtype=np.int64) * bins**3)[:, None]
    counts = np.bincount(cell.ravel(), minlength=n * bins**3).reshape(n, bins**3)
    return (counts / (h * w)).astype(np.float32)


def extract_features(
    images: torch.Tensor | np.ndarray,
    config: FeatureConfig = _DEFAULT_FEATURES,
    *,
    n_jobs: int = 1,
    progress: bool | None = None,
) -> np.ndarray:
    """HOG followed by the colour histogram: float32 (N, ``config.dim()``)."""
    return np.concatenate(
        [hog_features(images, config, n_jobs=n_jobs, progress=progress), color_histograms(images, config.color_bins)],
        axis=1,
    )


def traditional_flops(
    config: FeatureConfig, image_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10
) -> dict[str, int]:
    """Estimated arithmetic operations per image of the pipeline, by stage.

    An estimate, stated so it can be checked (per pixel unless noted; ``C``
    channels, ``P = H*W`` pixels, ``L = cells_per_block**2 * orientations``):

    * gradients: 2 central differences per channel, ``2CP``;
    * magnitudes: ``hypot`` as 2 multiplies, 1 add, 1 square root, ``4CP``;
    * strongest channel: ``(C-1)P`` comparisons;
    * orientation and binning: ``atan2``, the conversion to [0, 180) and the bin
      index, 4 operations, plus 1 accumulation: ``5P``;
    * cell averages: one division per cell and orientation;
    * block L2-Hys: norm (``2L + 2``), scale (``L``), clip (``L``), renorm
      (``2L + 2``), scale (``L``): ``7L + 4`` per block;
    * colour histogram: per pixel and channel a multiply and a shift, the cell index
      2 multiply-adds, 1 increment: ``(2C + 2(C-1) + 1)P`` plus one division per bin;
    * standardisation: subtract and divide, ``2D``; linear classifier ``2DK + K``
      (multiply-adds counted as 2, as torch's FLOP counter does for the network).

    A transcendental function counts as one operation.
    """
    c, h, w = (int(s) for s in image_shape)
    p = h * w
    rows, cols = config.hog_cells(h, w)
    b = config.cells_per_block
    n_blocks = (rows - b + 1) * (cols - b + 1)
    block_len = b * b * config.orientations
    d = config.hog_dim(h, w) + config.color_bins**3
    return {
        "hog": 2 * c * p
        + 4 * c * p
        + (c - 1) * p
        + 5 * p
        + rows * cols * config.orientations
        + n_blocks * (7 * block_len + 4),
        "color_histogram": (2 * c + 2 * (c - 1) + 1) * p + config.color_bins**3,
        "classifier": 2 * d + 2 * d * num_classes + num_classes,
    }


# --------------------------------------------------------------------- classifier


@dataclass(frozen=True, eq=False)
class LinearClassifier:
    """A fitted standardise-then-linear classifier as plain arrays.

    ``logits = ((x - mean) / scale) @ coef.T + intercept``; probabilities are their
    softmax (multinomial logistic regression).
    """

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    C: float

    @property
    def num_parameters(self) -> int:
        """Learned numbers: weights, biases, and the scaler's mean and scale."""
        return int(self.coef.size + self.intercept.size + self.mean.size + self.scale.size)

    def fingerprint(self) -> str:
        """A short hash of the fitted numbers (identifies this classifier in caches)."""
        return content_key(self.mean, self.scale, self.coef, self.intercept, self.C)

    @property
    def num_nonzero(self) -> int:
        return int(sum(np.count_nonzero(a) for a in (self.coef, self.intercept, self.mean, self.scale)))

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        x = (np.asarray(features, np.float64) - self.mean) / self.scale
        return x @ self.coef.T + self.intercept

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        z = self.decision_function(features)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.decision_function(features).argmax(axis=1)

    def save(self, path: str | os.PathLike[str]) -> None:
        _atomic_savez(
            Path(path), mean=self.mean, scale=self.scale, coef=self.coef, intercept=self.intercept, C=np.float64(self.C)
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LinearClassifier:
        with np.load(path, allow_pickle=False) as f:
            return cls(f["mean"], f["scale"], f["coef"], f["intercept"], float(f["C"]))


def _atomic_savez(path: Path, **arrays: Any) -> None:
    atomic_write(path, lambda handle: np.savez(handle, **arrays))


def _fit_logreg(x: np.ndarray, y: np.ndarray, C: float, max_iter: int) -> tuple[Any, Any, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    # One BLAS/OpenMP thread: in a process that also holds torch's thread pool,
    # multi-threaded OpenBLAS measured 15-30x slower on the 2-core reference machine.
    t0 = time.perf_counter()
    with threadpool_limits(1):
        scaler = StandardScaler().fit(x)
        model = LogisticRegression(C=C, max_iter=max_iter).fit(scaler.transform(x), y)
    return scaler, model, time.perf_counter() - t0


def _validation_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, validation) indices; the validation part holds at least one
    image per class, and so must the training part."""
    from sklearn.model_selection import train_test_split

    n, n_classes = len(labels), len(np.unique(labels))
    n_val = max(round(fraction * n), n_classes)
    if n - n_val < n_classes:
        raise ValueError(
            f"{n} labelled images are too few to hold out a validation split with every one "
            f"of the {n_classes} classes on both sides; use more data"
        )
    idx = np.arange(n)
    return train_test_split(idx, test_size=n_val, stratify=labels, random_state=seed)


class TraditionalClassifier:
    """HOG + colour histogram features and logistic regression, tuned on a validation split.

    Args:
        config: the features.
        Cs: inverse regularisation strengths tried (``LogisticRegression(C=...)``).
        val_fraction: share of the training data held out to pick ``C``.
        seed: the validation split's seed.
        n_jobs: worker processes for feature extraction and the ``C`` grid.
        cache_dir: if given, features and fitted classifiers are stored there (keyed
            by a hash of their inputs) and reused instead of recomputed; the seconds
            measured when they were computed are stored with them.
        max_iter: L-BFGS iterations of ``LogisticRegression``.
    """

    def __init__(
        self,
        config: FeatureConfig = _DEFAULT_FEATURES,
        *,
        Cs: Sequence[float] = DEFAULT_CS,
        val_fraction: float = 0.1,
        seed: int = 0,
        n_jobs: int = 1,
        cache_dir: str | os.PathLike[str] | None = None,
        max_iter: int = 1000,
        progress: bool | None = None,
    ) -> None:
        if not isinstance(config, FeatureConfig):
            raise TypeError(f"config must be a FeatureConfig, got {type(config).__name__}")
        Cs = tuple(float(c) for c in Cs)
        if not Cs or any(not c > 0 for c in Cs):
            raise ValueError(f"Cs must be a non-empty sequence of positive numbers, got {Cs!r}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        self.config, self.Cs, self.val_fraction, self.seed = config, Cs, float(val_fraction), int(seed)
        self.n_jobs, self.max_iter, self.progress = n_jobs, int(max_iter), progress
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.classifier: LinearClassifier | None = None
        self.validation: pd.DataFrame | None = None
        self.fit_seconds = float("nan")
        self.feature_seconds = float("nan")

    # -- features ------------------------------------------------------------ #
    def features(self, images: torch.Tensor | np.ndarray, *, cache: bool = True) -> tuple[np.ndarray, float]:
        """Features of ``images`` and the seconds their extraction took (from the cache
        when ``cache`` and a ``cache_dir`` are set and they were computed before)."""
        arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        path = None
        if cache and self.cache_dir is not None:
            path = self.cache_dir / f"features-{content_key(asdict(self.config), arr)}.npz"
            if path.exists():
                with np.load(path, allow_pickle=False) as f:
                    return f["features"], float(f["seconds"])
        t0 = time.perf_counter()
        feats = extract_features(arr, self.config, n_jobs=self.n_jobs, progress=self.progress)
        seconds = time.perf_counter() - t0
        if path is not None:
            _atomic_savez(path, features=feats, seconds=np.float64(seconds))
        return feats, seconds

    # -- training -------------------------------------------------------------- #
    def fit(self, images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> TraditionalClassifier:
        """Extract features, pick ``C`` on the validation split, refit on all images."""
        feats, self.feature_seconds = self.features(images)
        return self.fit_features(feats, labels)

    def fit_features(self, features: np.ndarray, labels: torch.Tensor | np.ndarray) -> TraditionalClassifier:
        """As :meth:`fit`, on precomputed features (``feature_seconds`` is left as it is)."""
        y = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        if features.ndim != 2 or len(features) != len(y):
            raise ValueError(f"features must be (N, D) with N = len(labels) = {len(y)}, got {features.shape}")
        key = content_key(features, y, self.Cs, self.val_fraction, self.seed, self.max_iter)
        path = None if self.cache_dir is None else self.cache_dir / f"logreg-{key}"
        if path is not None and path.with_suffix(".npz").exists():
            self.classifier = LinearClassifier.load(path.with_suffix(".npz"))
            table = pd.read_csv(path.with_suffix(".csv"))
            self.fit_seconds = float(table["fit_seconds"].iloc[0])
            self.validation = table.drop(columns="fit_seconds")
            return self
        t0 = time.perf_counter()
        train_idx, val_idx = _validation_split(y, self.val_fraction, self.seed)

        def trial(C: float) -> dict[str, float]:
            scaler, model, seconds = _fit_logreg(features[train_idx], y[train_idx], C, self.max_iter)
            acc = float((model.predict(scaler.transform(features[val_idx])) == y[val_idx]).mean())
            return {"C": C, "val_acc": acc, "seconds": seconds, "final": False}

        if self.n_jobs > 1:
            from joblib import Parallel, delayed

            rows = Parallel(n_jobs=self.n_jobs)(delayed(trial)(C) for C in self.Cs)
        else:
            rows = [trial(C) for C in self.Cs]
        best = max(rows, key=lambda r: (r["val_acc"], -r["C"]))  # ties: the stronger regularisation
        scaler, model, seconds = _fit_logreg(features, y, best["C"], self.max_iter)
        rows.append({"C": best["C"], "val_acc": float("nan"), "seconds": seconds, "final": True})
        self.fit_seconds = time.perf_counter() - t0
        self.classifier = LinearClassifier(
            scaler.mean_.astype(np.float64),
            scaler.scale_.astype(np.float64),
            model.coef_.astype(np.float64),
            model.intercept_.astype(np.float64),
            best["C"],
        )
        self.validation = pd.DataFrame(rows)
        if path is not None:
            self.classifier.save(path.with_suffix(".npz"))
            self.validation.assign(fit_seconds=self.fit_seconds).to_csv(path.with_suffix(".csv"), index=False)
        return self

    # -- inference ------------------------------------------------------------- #
    @property
    def fitted(self) -> LinearClassifier:
        """The fitted classifier; RuntimeError before :meth:`fit`."""
        if self.classifier is None:
            raise RuntimeError("TraditionalClassifier is not fitted; call fit() first")
        return self.classifier

    def predict_proba(self, images: torch.Tensor | np.ndarray, *, cache: bool = False) -> np.ndarray:
        """Class probabilities (N, K) of uint8 (N, 3, H, W) images; ``cache`` stores
        their features in ``cache_dir`` (worth it for whole test sets, not for probes)."""
        feats, _ = self.features(images, cache=cache)
        return self.fitted.predict_proba(feats)

    def predict(self, images: torch.Tensor | np.ndarray, *, cache: bool = False) -> np.ndarray:
        return self.predict_proba(images, cache=cache).argmax(axis=1)

    @property
    def train_seconds(self) -> float:
        """Feature extraction of the training images plus the C search and the final fit."""
        return self.feature_seconds + self.fit_seconds
