"""The paper's section 4, end to end: Wide ResNet vs the traditional method.

Trains the networks (:mod:`dynprune_lib.recipes`) and the HOG + logistic
regression pipeline (:mod:`dynprune_lib.traditional`) on the same images, and
measures the four aspects of Figure 6 (:mod:`dynprune_lib.aspects`) for each,
one table per aspect. Training is checkpointed and measurements are cached
under a run directory, so re-running a notebook only redoes what is missing.

A :class:`ComparisonProfile` fixes the workload: ``smoke`` (seconds, for the
tests), ``cpu`` (the 2-core reference machine) and ``gpu`` (the published
protocols: WRN-28-2 dense and DSR at 0.9, WRN-28-10).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import aspects
from .data import BatchLoader, CIFAR10Data, _stratified_indices
from .recipes import WRNRecipe, build_training, make_loaders, wrn_recipe
from .traditional import DEFAULT_CS, FeatureConfig, TraditionalClassifier, traditional_flops
from .train import check_precision, fit, set_seed

__all__ = [
    "PAPER_CLAIMS",
    "PROFILES",
    "TRADITIONAL_NAME",
    "ComparisonProfile",
    "Method",
    "WRNRun",
    "aspect_summary",
    "check_paper_claims",
    "complexity_table",
    "comparison_profile",
    "data_requirements_table",
    "generalization_table",
    "interpretability_table",
    "raw_aspect_table",
    "shifted_test_sets",
    "stratified_subset",
    "traditional_learning_curve",
    "traditional_method",
    "train_wrn",
    "wrn_learning_curve",
]

TRADITIONAL_NAME = "HOG + colour histogram + logistic regression"


@dataclass(frozen=True)
class ComparisonProfile:
    """The workload of one comparison run.

    recipes: Wide ResNet recipes trained on all the training data (one method each).
    curve_recipes: those that also get a learning curve (the others' data
        requirements are not measured).
    epochs: override every recipe's epochs (milestones rescaled); None keeps them.
    precision: override every recipe's training precision (``"fp32"``/``"bf16"``); None keeps them.
    fractions: learning-curve training fractions; the last must be 1.0 (it reuses
        the full-data run).
    curve_min_steps: optimizer-step floor of a learning-curve run (``aspects.curve_epochs``).
    curve_monitor_images: test images evaluated after each learning-curve epoch
        (the final accuracy is on the whole test split).
    share: the share of full-data accuracy ``fraction_to_reach`` looks for.
    shifts: (kind, CIFAR-10-C severity) distribution shifts of the test split.
    gap_images: training images evaluated for the train-test gap.
    interp_images, patch: test images and region size of the deletion measure.
    features, Cs, n_jobs: the traditional method (and its worker processes).
    """

    name: str
    recipes: tuple[str, ...]
    curve_recipes: tuple[str, ...]
    epochs: int | None = None
    precision: str | None = None
    fractions: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
    curve_min_steps: int = 200
    curve_monitor_images: int = 500
    share: float = 0.9
    shifts: tuple[tuple[str, int], ...] = (("gaussian_noise", 3), ("gaussian_blur", 1))
    gap_images: int = 10_000
    interp_images: int = 100
    patch: int = 8
    features: FeatureConfig = field(default_factory=FeatureConfig)
    Cs: tuple[float, ...] = DEFAULT_CS
    n_jobs: int = 2

    def __post_init__(self) -> None:
        unknown = [r for r in (*self.recipes, *self.curve_recipes) if r not in _recipe_names()]
        if unknown:
            raise ValueError(f"unknown recipes {unknown}; choose from {sorted(_recipe_names())}")
        if not set(self.curve_recipes) <= set(self.recipes):
            raise ValueError("curve_recipes must be among recipes")
        fr = tuple(float(f) for f in self.fractions)
        if not fr or fr[-1] != 1.0 or any(not 0 < a < b for a, b in zip(fr, fr[1:])) or fr[0] <= 0:
            raise ValueError(f"fractions must increase strictly in (0, 1] and end at 1.0, got {self.fractions!r}")
        object.__setattr__(self, "fractions", fr)
        if self.epochs is not None and (isinstance(self.epochs, bool) or not isinstance(self.epochs, int)
                                        or self.epochs < 1):
            raise ValueError(f"epochs must be None or a positive int, got {self.epochs!r}")
        if self.precision is not None:
            check_precision(self.precision)
        for kind, severity in self.shifts:
            aspects.shift_images(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), kind, severity)  # validates

    def recipe(self, name: str) -> WRNRecipe:
        """Recipe ``name`` with this profile's epoch and precision overrides."""
        overrides = {"epochs": self.epochs, "precision": self.precision}
        return wrn_recipe(name, **{k: v for k, v in overrides.items() if v is not None})


def _recipe_names() -> set[str]:
    from .recipes import WRN_RECIPES

    return set(WRN_RECIPES)


#: Workloads; see the notebook 04 for their wall times.
PROFILES: Mapping[str, ComparisonProfile] = {
    "smoke": ComparisonProfile(
        "smoke", recipes=("wrn-10-1-smoke", "wrn-10-1-dsr-smoke"), curve_recipes=("wrn-10-1-smoke",),
        fractions=(0.25, 1.0), curve_min_steps=4, curve_monitor_images=100, gap_images=500,
        interp_images=4, Cs=(0.01, 1.0), n_jobs=1,
    ),
    "cpu": ComparisonProfile(
        "cpu", recipes=("wrn-10-2-cpu",), curve_recipes=("wrn-10-2-cpu",), curve_min_steps=100,
        gap_images=5000, interp_images=100, n_jobs=2,
    ),
    "gpu": ComparisonProfile(
        "gpu", recipes=("wrn-28-2", "wrn-28-2-dsr0.9", "wrn-28-10"), curve_recipes=("wrn-28-2", "wrn-28-2-dsr0.9"),
        curve_min_steps=2000, interp_images=1000, gap_images=50_000, n_jobs=4,
    ),
}


def comparison_profile(name: str, **overrides: Any) -> ComparisonProfile:
    """Profile ``name`` of :data:`PROFILES` with fields replaced; ``None`` values mean "keep"."""
    if name not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {name!r}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ComparisonProfile)}
    if unknown:
        raise TypeError(f"unknown profile fields {sorted(unknown)}")
    for key in ("recipes", "curve_recipes", "fractions", "Cs"):
        if key in overrides:
            overrides[key] = tuple(overrides[key])
    if "shifts" in overrides:
        overrides["shifts"] = tuple(tuple(s) for s in overrides["shifts"])
    return dataclasses.replace(PROFILES[name], **overrides)


def stratified_subset(data: CIFAR10Data, n_train: int, *, seed: int = 0) -> torch.Tensor:
    """Indices of ``data.subset(n_train, None, seed=seed)``'s training images (nested in
    ``n_train`` for one seed), so cached features can be sliced to the same images."""
    return _stratified_indices(data.train_labels, n_train, torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- methods


@dataclass
class Method:
    """A trained classifier as the aspects see it: a predictor and its costs.

    ``key`` identifies the trained artefact; cached measurements are keyed by it.
    """

    name: str
    predict: Callable[[torch.Tensor], np.ndarray]
    parameters: int
    nonzero_parameters: int
    flops: int
    nonzero_flops: int
    train_seconds: float
    key: str
    seed: int = 0


@dataclass
class WRNRun:
    """A trained Wide ResNet with its history (``fit``'s per-epoch table)."""

    recipe: WRNRecipe
    model: nn.Module
    history: pd.DataFrame
    seed: int
    n_train: int
    mean: torch.Tensor
    std: torch.Tensor
    checkpoint: Path

    @property
    def train_seconds(self) -> float:
        """Wall seconds of all epochs (training plus the per-epoch test evaluation)."""
        return float(self.history["seconds"].sum())

    @property
    def name(self) -> str:
        sparse = f", DSR at {self.recipe.sparsity:g}" if self.recipe.sparse else ""
        return f"{self.recipe.architecture}{sparse}"

    def method(self, device: str | torch.device | None = None, batch_size: int = 500) -> Method:
        counts = aspects.count_parameters(self.model)
        flops = aspects.count_flops(self.model)
        last = self.history.iloc[-1].to_dict() if len(self.history) else {}
        key = _key(str(self.checkpoint), len(self.history), last.get("test_acc"), last.get("train_loss"))
        return Method(
            self.name, aspects.model_predictor(self.model, mean=self.mean, std=self.std, device=device,
                                               batch_size=batch_size),
            counts["parameters"], counts["nonzero_parameters"], flops["flops"], flops["nonzero_flops"],
            self.train_seconds, key, self.seed,
        )


def _key(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def train_wrn(
    recipe: WRNRecipe,
    data: CIFAR10Data,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    run_dir: str | os.PathLike[str],
    monitor_images: int | None = None,
    eval_batch_size: int = 500,
    verbose: bool = True,
    progress: bool | None = None,
) -> WRNRun:
    """Train ``recipe`` on ``data`` (resumable; a finished run is restored, not retrained).

    ``monitor_images`` evaluates only a stratified subset of the test split after
    each epoch (cheap learning-curve runs); None evaluates all of it.
    """
    n_train = len(data.train_labels)
    checkpoint = Path(run_dir) / f"{recipe.name}_e{recipe.epochs}_n{n_train}_{recipe.precision}_seed{seed}.pt"
    set_seed(seed)
    setup = build_training(recipe, seed=seed, device=device)
    train_loader, test_loader = make_loaders(recipe, data, seed=seed, device=device,
                                             eval_batch_size=eval_batch_size)
    if monitor_images is not None and monitor_images < len(data.test_labels):
        idx = _stratified_indices(data.test_labels, monitor_images, torch.Generator().manual_seed(seed))
        test_loader = BatchLoader(data.test_images[idx], data.test_labels[idx], eval_batch_size, device=device,
                                  normalize="standard", mean=train_loader.mean, std=train_loader.std)
    history = fit(
        setup.model, train_loader, test_loader, epochs=recipe.epochs, optimizer=setup.optimizer,
        pruner=setup.pruner, lr_scheduler=setup.lr_scheduler, device=device, checkpoint=checkpoint,
        progress=progress, verbose=verbose, precision=recipe.precision,
    )
    return WRNRun(recipe, setup.model, history, seed, n_train, train_loader.mean, train_loader.std, checkpoint)


def traditional_method(clf: TraditionalClassifier, *, name: str = TRADITIONAL_NAME,
                       image_shape: Sequence[int] = (3, 32, 32)) -> Method:
    """The fitted traditional pipeline as a :class:`Method`; its FLOPs are the estimate
    of :func:`dynprune_lib.traditional.traditional_flops` (no zero weights skipped)."""
    linear = clf._fitted()
    flops = sum(traditional_flops(clf.config, image_shape, linear.coef.shape[0]).values())
    key = _key(dataclasses.asdict(clf.config), linear.fingerprint())

    def predict(images: torch.Tensor) -> np.ndarray:
        return clf.predict_proba(images)

    return Method(name, predict, linear.num_parameters, linear.num_nonzero, flops, flops,
                  clf.train_seconds, key, clf.seed)


# ----------------------------------------------------------------- caching helpers


def _cached(cache_dir: str | os.PathLike[str] | None, name: str, compute: Callable[[], dict]) -> dict:
    """``compute()``'s JSON-able dict, stored as ``cache_dir/name.json`` and reused."""
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(tmp, path)
    return value


# -------------------------------------------------------------------- the aspects


def complexity_table(methods: Sequence[Method]) -> pd.DataFrame:
    """Parameters, non-zero parameters, FLOPs per image (dense and non-zero), training seconds."""
    return pd.DataFrame([{
        "method": m.name, "seed": m.seed, "parameters": m.parameters, "nonzero_parameters": m.nonzero_parameters,
        "flops": m.flops, "nonzero_flops": m.nonzero_flops, "train_seconds": m.train_seconds,
    } for m in methods])


def shifted_test_sets(data: CIFAR10Data, shifts: Sequence[tuple[str, int]], *, seed: int = 0
                      ) -> dict[str, torch.Tensor]:
    """The test images under each shift, named ``kind@severity``."""
    return {f"{kind}@{sev}": aspects.shift_images(data.test_images, kind, sev, seed=seed) for kind, sev in shifts}


def generalization_table(
    methods: Sequence[Method],
    data: CIFAR10Data,
    *,
    shifts: Sequence[tuple[str, int]],
    gap_images: int,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Test accuracy, accuracy on ``gap_images`` (un-augmented) training images, their
    gap, and accuracy under each shift of the test split (and their mean, ``shift_acc``)."""
    n_gap = min(gap_images, len(data.train_labels))
    gap_idx = _stratified_indices(data.train_labels, n_gap, torch.Generator().manual_seed(seed))
    shifted: dict[str, torch.Tensor] | None = None
    rows = []
    for m in methods:
        def compute(m: Method = m) -> dict:
            nonlocal shifted
            if shifted is None:
                shifted = shifted_test_sets(data, shifts, seed=seed)
            out = {
                "test_acc": aspects.accuracy(m.predict, data.test_images, data.test_labels),
                "train_acc": aspects.accuracy(m.predict, data.train_images[gap_idx], data.train_labels[gap_idx]),
            }
            for name, images in shifted.items():
                out[name] = aspects.accuracy(m.predict, images, data.test_labels)
            return out

        key = _key(m.key, list(map(list, shifts)), n_gap, len(data.test_labels), seed)
        row = _cached(cache_dir, f"generalization-{key}", compute)
        shift_cols = [f"{k}@{s}" for k, s in shifts]
        # fixed column order: the cache stores its keys sorted, a fresh computation does not
        ordered = {k: row[k] for k in ("test_acc", "train_acc", *shift_cols)}
        rows.append({"method": m.name, "seed": m.seed, **ordered, "gap": row["train_acc"] - row["test_acc"],
                     "shift_acc": float(np.mean([row[c] for c in shift_cols])) if shift_cols else row["test_acc"]})
    return pd.DataFrame(rows)


def wrn_learning_curve(
    recipe: WRNRecipe,
    data: CIFAR10Data,
    fractions: Sequence[float],
    *,
    full: WRNRun,
    min_steps: int,
    monitor_images: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
    run_dir: str | os.PathLike[str],
    eval_batch_size: int = 500,
    verbose: bool = True,
) -> pd.DataFrame:
    """Test accuracy after training on each fraction of the training data.

    The run at fraction ``f`` trains on a stratified subset for
    ``aspects.curve_epochs(recipe.epochs, n_f, batch, min_steps)`` epochs, with the
    learning-rate milestones rescaled to that length; fraction 1 is ``full``.
    """
    rows = []
    for f in fractions:
        n = round(f * len(data.train_labels))
        if f == 1.0:
            run, epochs = full, full.recipe.epochs
        else:
            epochs = aspects.curve_epochs(recipe.epochs, n, recipe.batch_size, min_steps)
            sub = data.subset(n, None, seed=seed)
            run = train_wrn(recipe.scaled(epochs), sub, seed=seed, device=device, run_dir=run_dir,
                            monitor_images=monitor_images, eval_batch_size=eval_batch_size, verbose=verbose)
        method = run.method(device=device, batch_size=eval_batch_size)
        acc = _cached(Path(run_dir) / "measures", f"curve-{_key(method.key, len(data.test_labels))}",
                      lambda: {"test_acc": aspects.accuracy(method.predict, data.test_images, data.test_labels)})
        rows.append({"fraction": f, "n_train": n, "epochs": epochs,
                     "steps": epochs * math.ceil(n / recipe.batch_size), "test_acc": acc["test_acc"],
                     "train_seconds": run.train_seconds})
    return pd.DataFrame(rows)


def traditional_learning_curve(
    clf: TraditionalClassifier,
    data: CIFAR10Data,
    fractions: Sequence[float],
    *,
    seed: int = 0,
) -> pd.DataFrame:
    """As :func:`wrn_learning_curve` for the traditional method, on the same subsets:
    features of the full training set are sliced, ``C`` is re-tuned per fraction."""
    train_feats, _ = clf.features(data.train_images)
    test_feats, _ = clf.features(data.test_images)
    rows = []
    for f in fractions:
        n = round(f * len(data.train_labels))
        idx = stratified_subset(data, n, seed=seed).numpy()
        sub = TraditionalClassifier(clf.config, Cs=clf.Cs, val_fraction=clf.val_fraction, seed=clf.seed,
                                    n_jobs=clf.n_jobs, cache_dir=clf.cache_dir, max_iter=clf.max_iter)
        sub.fit_features(train_feats[idx], data.train_labels[idx])
        acc = float((sub._fitted().predict(test_feats) == data.test_labels.numpy()).mean())
        rows.append({"fraction": f, "n_train": n, "C": sub._fitted().C, "test_acc": acc,
                     "train_seconds": sub.fit_seconds})
    return pd.DataFrame(rows)


def data_requirements_table(curves: Mapping[str, pd.DataFrame], *, share: float) -> pd.DataFrame:
    """Per method: full-data accuracy, the fraction reaching ``share`` of it
    (``aspects.fraction_to_reach``) and the smallest fraction measured."""
    rows = []
    for name, curve in curves.items():
        rows.append({
            "method": name, "full_data_acc": float(curve["test_acc"].iloc[-1]), "share": share,
            "fraction_to_reach": aspects.fraction_to_reach(curve["fraction"], curve["test_acc"], share),
            "fraction_min": float(curve["fraction"].iloc[0]),
        })
    return pd.DataFrame(rows)


def interpretability_table(
    methods: Sequence[Method],
    data: CIFAR10Data,
    *,
    n_images: int,
    patch: int,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[pd.DataFrame, dict[str, dict[str, list[float]]]]:
    """Deletion AUCs of occlusion explanations on ``n_images`` stratified test images,
    painted in the training set's mean colour. Returns the table and the mean curves."""
    idx = _stratified_indices(data.test_labels, min(n_images, len(data.test_labels)),
                              torch.Generator().manual_seed(seed))
    images = data.test_images[idx]
    mean, _ = data.channel_stats
    fill = (mean * 255).round().to(torch.uint8)
    rows, curves = [], {}
    for m in methods:
        def compute(m: Method = m) -> dict:
            r = aspects.deletion_faithfulness(m.predict, images, patch=patch, fill=fill, seed=seed)
            return {"deletion_auc": r.auc, "random_deletion_auc": r.random_auc,
                    "curve": r.curve.tolist(), "random_curve": r.random_curve.tolist()}

        key = _key(m.key, idx.tolist()[:50], len(idx), patch, fill.tolist(), seed)
        row = _cached(cache_dir, f"interpretability-{key}", compute)
        curves[m.name] = {"curve": row["curve"], "random_curve": row["random_curve"]}
        rows.append({"method": m.name, "seed": m.seed, "n_images": len(idx), "regions": (32 // patch) ** 2,
                     "deletion_auc": row["deletion_auc"], "random_deletion_auc": row["random_deletion_auc"],
                     "faithfulness": 1 - row["deletion_auc"] / row["random_deletion_auc"]})
    return pd.DataFrame(rows), curves


def raw_aspect_table(
    complexity: pd.DataFrame,
    generalization: pd.DataFrame,
    data_requirements: pd.DataFrame,
    interpretability: pd.DataFrame,
) -> pd.DataFrame:
    """One row per method and seed with every raw measure ``aspects.aspect_scores`` needs
    (methods without a learning curve get NaN data requirements)."""
    out = complexity.merge(generalization, on=["method", "seed"]).merge(interpretability, on=["method", "seed"])
    return out.merge(data_requirements, on="method", how="left")


def aspect_summary(raw: pd.DataFrame) -> pd.DataFrame:
    """The raw measures behind Figure 6, formatted: one row per measure, one column
    per method (mean over seeds)."""
    mean = raw.groupby("method", sort=False).mean(numeric_only=True)

    def fmt(value: float, kind: str) -> str:
        if pd.isna(value):
            return "n/m"
        if kind == "count":
            return f"{value / 1e6:.2f} M" if value >= 1e6 else f"{value / 1e3:.1f} k"
        if kind == "flops":
            return f"{value / 1e9:.2f} G" if value >= 1e9 else f"{value / 1e6:.2f} M"
        if kind == "seconds":
            return f"{value / 60:.1f} min" if value >= 60 else f"{value:.1f} s"
        if kind == "pct":
            return f"{100 * value:.1f} %"
        return f"{value:.3f}"

    rows = {
        "non-zero parameters": ("nonzero_parameters", "count"),
        "non-zero FLOPs / image": ("nonzero_flops", "flops"),
        "training time": ("train_seconds", "seconds"),
        "test accuracy": ("test_acc", "pct"),
        "train - test accuracy": ("gap", "pct"),
        "accuracy under shifts": ("shift_acc", "pct"),
        "data for {share} of full acc.": ("fraction_to_reach", "pct"),
        "deletion AUC": ("deletion_auc", "plain"),
        "random-order deletion AUC": ("random_deletion_auc", "plain"),
    }
    shares = raw["share"].dropna().unique() if "share" in raw.columns else []
    share = f"{100 * shares[0]:g} %" if len(shares) == 1 else "share"
    return pd.DataFrame(
        {m: [fmt(mean.loc[m, col], kind) if col in mean.columns else "n/m" for col, kind in rows.values()]
         for m in mean.index},
        index=[label.format(share=share) for label in rows],
    )


#: The paper's qualitative reading of its Figure 6 (section 4): which side scores higher.
PAPER_CLAIMS: Mapping[str, str] = {
    "complexity": "deep learning",
    "generalization": "deep learning",
    "data_requirements": "deep learning",
    "interpretability": "traditional",
}


def check_paper_claims(scores: pd.DataFrame, *, traditional: str = TRADITIONAL_NAME) -> pd.DataFrame:
    """For each aspect: which side the paper says scores higher, each network's score
    minus the traditional method's (means over seeds), and whether the measurement
    agrees with the paper for that network."""
    mean = scores.groupby("method", sort=False).mean(numeric_only=True)
    if traditional not in mean.index:
        raise ValueError(f"scores has no row for the traditional method {traditional!r}")
    rows = []
    for aspect, side in PAPER_CLAIMS.items():
        for method in mean.index.drop(traditional):
            diff = float(mean.loc[method, aspect] - mean.loc[traditional, aspect])
            holds = float("nan") if math.isnan(diff) else (diff > 0) == (side == "deep learning")
            rows.append({"aspect": aspect, "paper: higher for": side, "network": method,
                         "network - traditional": diff,
                         "measurement agrees": "n/m" if holds != holds else ("yes" if holds else "no")})
    return pd.DataFrame(rows)

