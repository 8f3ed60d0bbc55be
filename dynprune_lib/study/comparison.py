"""The paper's section 4, end to end: Wide ResNet vs the traditional method.

Trains the networks (recipes in :mod:`.profiles`) and the HOG + logistic
regression pipeline (:mod:`.traditional`) on the same images, and measures
the four aspects of Figure 6 (:mod:`.aspects`) for each, one table per
aspect. Training is checkpointed and measurements are cached under a run
directory, so re-running a notebook only redoes what is missing.

A :class:`~.profiles.ComparisonProfile` fixes the workload: ``smoke``
(seconds, for the tests), ``cpu`` (the 2-core reference machine) and ``gpu``
(the published protocols: WRN-28-2 dense and DSR at 0.9, WRN-28-10).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._utils import atomic_write, content_key
from ..data import BatchLoader, CIFAR10Data, make_loaders, stratified_indices
from ..models import WideResNet
from ..schedulers import DSR
from ..train import fit, set_seed
from . import aspects
from .paper import PAPER_CLAIMS
from .profiles import WRN_RECIPES, ComparisonProfile, WRNRecipe
from .rules import RULES, decide
from .traditional import TraditionalClassifier, traditional_flops

__all__ = [
    "TRADITIONAL_NAME",
    "Method",
    "TrainingSetup",
    "WRNRun",
    "aspect_summary",
    "aspect_table",
    "build_training",
    "check_paper_claims",
    "comparison_methods",
    "complexity_table",
    "data_requirements_table",
    "fit_traditional",
    "generalization_table",
    "interpretability_table",
    "learning_curves",
    "published_table",
    "raw_aspect_table",
    "recipes_table",
    "shifted_test_sets",
    "stratified_subset",
    "traditional_learning_curve",
    "traditional_method",
    "train_wrn",
    "train_wrns",
    "wrn_histories",
    "wrn_learning_curve",
    "wrn_checkpoint",
    "wrn_loaders",
]

TRADITIONAL_NAME = "HOG + colour histogram + logistic regression"


@dataclass
class TrainingSetup:
    """A model with its optimizer, learning-rate schedule and (for sparse recipes) DSR."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    pruner: DSR | None


def build_training(recipe: WRNRecipe, *, seed: int = 0, device: str | torch.device = "cpu") -> TrainingSetup:
    """Model, SGD, multi-step schedule and DSR for ``recipe``; same seed, same initial weights.

    Call it after ``torch.distributed.init_process_group`` in multi-process runs:
    DSR agrees its initial masks across ranks when it is constructed.
    """
    if not isinstance(recipe, WRNRecipe):
        raise TypeError(f"recipe must be a WRNRecipe, got {type(recipe).__name__}")
    torch.manual_seed(seed)
    model = WideResNet(
        recipe.depth,
        recipe.widen_factor,
        dropout=recipe.dropout,
        sparse=recipe.sparse,
        sparsity=recipe.sparsity or 0.0,
    )
    # channels_last: oneDNN/cuDNN convolutions run faster on it (about 20 % per training step
    # of WRN-10-2 on the 2-core reference CPU); the masks follow, and are updated in place.
    layout = torch.channels_last if recipe.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=layout)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=recipe.lr,
        momentum=recipe.momentum,
        nesterov=recipe.nesterov,
        weight_decay=recipe.weight_decay,
        fused=True if recipe.fused_sgd else None,
    )
    lr_scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(recipe.milestones), gamma=recipe.gamma)
    pruner = DSR(model, optimizer, seed=seed, **recipe.dsr) if recipe.sparse else None
    if recipe.compile:
        # In place (nn.Module.compile): state_dict keys stay, so checkpoints are the eager run's.
        # Masks are buffers, inputs of the compiled graph: DSR's in-place updates reach it.
        model.compile(mode=recipe.compile)
    return TrainingSetup(model, optimizer, lr_scheduler, pruner)


def recipes_table(recipes: Sequence[WRNRecipe]) -> pd.DataFrame:
    """One row per recipe: architecture, protocol, sparsity and published anchor."""
    return pd.DataFrame(
        [
            {
                "recipe": r.name,
                "architecture": r.architecture,
                "epochs": r.epochs,
                "batch_size": r.batch_size,
                "lr": r.lr,
                "milestones": list(r.milestones),
                "gamma": r.gamma,
                "nesterov": r.nesterov,
                "weight_decay": r.weight_decay,
                "augment": r.augment,
                "sparsity": r.sparsity,
                "precision": r.precision,
                "published_test_acc": r.anchor,
                "source": r.source,
            }
            for r in recipes
        ]
    )


def wrn_loaders(
    recipe: WRNRecipe,
    data: CIFAR10Data,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    eval_batch_size: int = 500,
) -> tuple[BatchLoader, BatchLoader]:
    """Training and test loaders of ``recipe`` (its batch size and augmentation, standardised)."""
    return make_loaders(
        data, recipe.batch_size, augment=recipe.augment, eval_batch_size=eval_batch_size, seed=seed, device=device
    )


def stratified_subset(data: CIFAR10Data, n_train: int, *, seed: int = 0) -> torch.Tensor:
    """Indices of ``data.subset(n_train, None, seed=seed)``'s training images (nested in
    ``n_train`` for one seed), so cached features can be sliced to the same images."""
    return stratified_indices(data.train_labels, n_train, seed)


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
        return self.recipe.label

    def method(self, device: str | torch.device | None = None, batch_size: int = 500) -> Method:
        counts = aspects.count_parameters(self.model)
        flops = aspects.count_flops(self.model)
        last = self.history.iloc[-1].to_dict() if len(self.history) else {}
        key = content_key(str(self.checkpoint), len(self.history), last.get("test_acc"), last.get("train_loss"))
        return Method(
            self.name,
            aspects.model_predictor(self.model, mean=self.mean, std=self.std, device=device, batch_size=batch_size),
            counts["parameters"],
            counts["nonzero_parameters"],
            flops["flops"],
            flops["nonzero_flops"],
            self.train_seconds,
            key,
            self.seed,
        )


def wrn_checkpoint(recipe: WRNRecipe, n_train: int, seed: int, run_dir: str | os.PathLike[str]) -> Path:
    """Where :func:`train_wrn` keeps the run of ``recipe`` on ``n_train`` images with ``seed``: one
    file per protocol, precision and knob that rounds differently (:attr:`WRNRecipe.run_suffix`)."""
    name = f"{recipe.name}_e{recipe.epochs}_n{n_train}_{recipe.precision}{recipe.run_suffix}_seed{seed}.pt"
    return Path(run_dir) / name


def train_wrn(
    recipe: WRNRecipe,
    data: CIFAR10Data,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    run_dir: str | os.PathLike[str],
    monitor_images: int | None = None,
    eval_batch_size: int | None = None,
    verbose: bool = True,
    progress: bool | None = None,
) -> WRNRun:
    """Train ``recipe`` on ``data`` (resumable; a finished run is restored, not retrained).

    ``monitor_images`` evaluates only a stratified subset of the test split after
    each epoch (cheap learning-curve runs); None evaluates all of it.
    ``eval_batch_size`` None: the recipe's.
    """
    n_train = len(data.train_labels)
    eval_batch_size = recipe.eval_batch_size if eval_batch_size is None else eval_batch_size
    checkpoint = wrn_checkpoint(recipe, n_train, seed, run_dir)
    set_seed(seed)
    setup = build_training(recipe, seed=seed, device=device)
    train_loader, test_loader = wrn_loaders(recipe, data, seed=seed, device=device, eval_batch_size=eval_batch_size)
    if monitor_images is not None and monitor_images < len(data.test_labels):
        idx = stratified_indices(data.test_labels, monitor_images, seed)
        test_loader = BatchLoader(
            data.test_images[idx],
            data.test_labels[idx],
            eval_batch_size,
            device=device,
            normalize="standard",
            mean=train_loader.mean,
            std=train_loader.std,
        )
    history = fit(
        setup.model,
        train_loader,
        test_loader,
        epochs=recipe.epochs,
        optimizer=setup.optimizer,
        pruner=setup.pruner,
        lr_scheduler=setup.lr_scheduler,
        device=device,
        checkpoint=checkpoint,
        progress=progress,
        verbose=verbose,
        precision=recipe.precision,
    )
    return WRNRun(recipe, setup.model, history, seed, n_train, train_loader.mean, train_loader.std, checkpoint)


def traditional_method(
    clf: TraditionalClassifier, *, name: str = TRADITIONAL_NAME, image_shape: Sequence[int] = (3, 32, 32)
) -> Method:
    """The fitted traditional pipeline as a :class:`Method`; its FLOPs are the estimate
    of :func:`dynprune_lib.study.traditional.traditional_flops` (no zero weights skipped)."""
    linear = clf.fitted
    flops = sum(traditional_flops(clf.config, image_shape, linear.coef.shape[0]).values())
    key = content_key(dataclasses.asdict(clf.config), linear.fingerprint())

    def predict(images: torch.Tensor) -> np.ndarray:
        return clf.predict_proba(images)

    return Method(
        name, predict, linear.num_parameters, linear.num_nonzero, flops, flops, clf.train_seconds, key, clf.seed
    )


# ----------------------------------------------------------------- caching helpers


def _cached(cache_dir: str | os.PathLike[str] | None, name: str, compute: Callable[[], dict]) -> dict:
    """``compute()``'s JSON-able dict, stored as ``cache_dir/name.json`` and reused."""
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    value = compute()
    atomic_write(path, json.dumps(value, indent=1, sort_keys=True))
    return value


# -------------------------------------------------------------------- the aspects


def complexity_table(methods: Sequence[Method]) -> pd.DataFrame:
    """Parameters, non-zero parameters, FLOPs per image (dense and non-zero), training seconds."""
    return pd.DataFrame(
        [
            {
                "method": m.name,
                "seed": m.seed,
                "parameters": m.parameters,
                "nonzero_parameters": m.nonzero_parameters,
                "flops": m.flops,
                "nonzero_flops": m.nonzero_flops,
                "train_seconds": m.train_seconds,
            }
            for m in methods
        ]
    )


def shifted_test_sets(
    data: CIFAR10Data, shifts: Sequence[tuple[str, int]], *, seed: int = 0
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
    gap_idx = stratified_indices(data.train_labels, n_gap, seed)
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

        key = content_key(m.key, list(map(list, shifts)), n_gap, len(data.test_labels), seed)
        row = _cached(cache_dir, f"generalization-{key}", compute)
        shift_cols = [f"{k}@{s}" for k, s in shifts]
        # fixed column order: the cache stores its keys sorted, a fresh computation does not
        ordered = {k: row[k] for k in ("test_acc", "train_acc", *shift_cols)}
        rows.append(
            {
                "method": m.name,
                "seed": m.seed,
                **ordered,
                "gap": row["train_acc"] - row["test_acc"],
                "shift_acc": float(np.mean([row[c] for c in shift_cols])) if shift_cols else row["test_acc"],
            }
        )
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
    eval_batch_size: int | None = None,
    verbose: bool = True,
) -> pd.DataFrame:
    """Test accuracy after training on each fraction of the training data.

    The run at fraction ``f`` trains on a stratified subset for
    ``aspects.curve_epochs(recipe.epochs, n_f, batch, min_steps)`` epochs, with the
    learning-rate milestones rescaled to that length; fraction 1 is ``full``.
    """
    eval_batch_size = recipe.eval_batch_size if eval_batch_size is None else eval_batch_size
    rows = []
    for f in fractions:
        n = round(f * len(data.train_labels))
        if f == 1.0:
            run, epochs = full, full.recipe.epochs
        else:
            epochs = aspects.curve_epochs(recipe.epochs, n, recipe.batch_size, min_steps)
            sub = data.subset(n, None, seed=seed)
            run = train_wrn(
                recipe.scaled(epochs),
                sub,
                seed=seed,
                device=device,
                run_dir=run_dir,
                monitor_images=monitor_images,
                eval_batch_size=eval_batch_size,
                verbose=verbose,
            )
        method = run.method(device=device, batch_size=eval_batch_size)
        acc = _cached(
            Path(run_dir) / "measures",
            f"curve-{content_key(method.key, len(data.test_labels))}",
            lambda method=method: {"test_acc": aspects.accuracy(method.predict, data.test_images, data.test_labels)},
        )
        rows.append(
            {
                "fraction": f,
                "n_train": n,
                "epochs": epochs,
                "steps": epochs * math.ceil(n / recipe.batch_size),
                "test_acc": acc["test_acc"],
                "train_seconds": run.train_seconds,
            }
        )
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
        sub = TraditionalClassifier(
            clf.config,
            Cs=clf.Cs,
            val_fraction=clf.val_fraction,
            seed=clf.seed,
            n_jobs=clf.n_jobs,
            cache_dir=clf.cache_dir,
            max_iter=clf.max_iter,
        )
        sub.fit_features(train_feats[idx], data.train_labels[idx])
        acc = float((sub.fitted.predict(test_feats) == data.test_labels.numpy()).mean())
        rows.append({"fraction": f, "n_train": n, "C": sub.fitted.C, "test_acc": acc, "train_seconds": sub.fit_seconds})
    return pd.DataFrame(rows)


def data_requirements_table(curves: Mapping[str, pd.DataFrame], *, share: float) -> pd.DataFrame:
    """Per method: full-data accuracy, the fraction reaching ``share`` of it
    (``aspects.fraction_to_reach``) and the smallest fraction measured."""
    rows = []
    for name, curve in curves.items():
        rows.append(
            {
                "method": name,
                "full_data_acc": float(curve["test_acc"].iloc[-1]),
                "share": share,
                "fraction_to_reach": aspects.fraction_to_reach(curve["fraction"], curve["test_acc"], share),
                "fraction_min": float(curve["fraction"].iloc[0]),
            }
        )
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
    idx = stratified_indices(data.test_labels, min(n_images, len(data.test_labels)), seed)
    images = data.test_images[idx]
    mean, _ = data.channel_stats
    fill = (mean * 255).round().to(torch.uint8)
    rows, curves = [], {}
    for m in methods:

        def compute(m: Method = m) -> dict:
            r = aspects.deletion_faithfulness(m.predict, images, patch=patch, fill=fill, seed=seed)
            return {
                "deletion_auc": r.auc,
                "random_deletion_auc": r.random_auc,
                "curve": r.curve.tolist(),
                "random_curve": r.random_curve.tolist(),
            }

        key = content_key(m.key, idx.tolist()[:50], len(idx), patch, fill.tolist(), seed)
        row = _cached(cache_dir, f"interpretability-{key}", compute)
        curves[m.name] = {"curve": row["curve"], "random_curve": row["random_curve"]}
        rows.append(
            {
                "method": m.name,
                "seed": m.seed,
                "n_images": len(idx),
                "regions": (32 // patch) ** 2,
                "deletion_auc": row["deletion_auc"],
                "random_deletion_auc": row["random_deletion_auc"],
                "faithfulness": 1 - row["deletion_auc"] / row["random_deletion_auc"],
            }
        )
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
        {
            m: [fmt(mean.loc[m, col], kind) if col in mean.columns else "n/m" for col, kind in rows.values()]
            for m in mean.index
        },
        index=[label.format(share=share) for label in rows],
    )


def check_paper_claims(scores: pd.DataFrame, *, traditional: str = TRADITIONAL_NAME) -> pd.DataFrame:
    """For each aspect and network: which side the paper says scores higher, the network's score
    minus the traditional method's (paired by ``seed``, else by order), and the verdict of
    :data:`~.rules.RULES` ``"higher score"`` on the paper's side's lead (its 95 % interval over
    seeds must clear the rule's margin; one seed is inconclusive). A missing score is "n/m"."""
    if traditional not in set(scores["method"]):
        raise ValueError(f"scores has no row for the traditional method {traditional!r}")
    rule = RULES["higher score"]
    scores = scores.assign(pair=scores["seed"] if "seed" in scores.columns else scores.groupby("method").cumcount())
    reference = scores[scores["method"] == traditional].set_index("pair")
    rows = []
    for aspect, side in PAPER_CLAIMS.items():
        sign = 1.0 if side == "deep learning" else -1.0
        for method, part in scores[scores["method"] != traditional].groupby("method", sort=False):
            part = part.set_index("pair")
            diff = (part[aspect] - reference[aspect].reindex(part.index)).dropna()
            row = {"aspect": aspect, "paper: higher for": side, "network": method}
            if diff.empty:
                rows.append(
                    row | {"network - traditional": math.nan, "paper's side lead": math.nan, "n": 0, "verdict": "n/m"}
                )
                continue
            found = decide(rule, sign * diff.to_numpy())
            rows.append(
                row
                | {
                    "network - traditional": float(diff.mean()),
                    "paper's side lead": found.mean,
                    "n": found.n,
                    "paper's side leads by": found.interval(rule.unit),
                    "rule": rule.describe(),
                    "verdict": found.verdict,
                }
            )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- notebook 04, step by step


def train_wrns(
    cfg: ComparisonProfile,
    data: CIFAR10Data,
    seeds: Sequence[int],
    *,
    device: str | torch.device = "cpu",
    run_dir: str | os.PathLike[str],
) -> dict[tuple[str, int], WRNRun]:
    """Every recipe of ``cfg`` trained on all of ``data`` for every seed (resumable), keyed (recipe, seed)."""
    return {
        (name, s): train_wrn(cfg.recipe(name), data, seed=s, device=device, run_dir=run_dir)
        for name in cfg.recipes
        for s in seeds
    }


def wrn_histories(runs: Mapping[tuple[str, int], WRNRun]) -> pd.DataFrame:
    """All runs' per-epoch histories in one table indexed by (``"<recipe> seed <s>"``, row)."""
    return pd.concat({f"{name} seed {s}": run.history for (name, s), run in runs.items()}, names=["run", "row"])


def published_table(runs: Mapping[tuple[str, int], WRNRun]) -> pd.DataFrame:
    """Final test accuracy of each run beside its recipe's published one; ``published_protocol``
    says whether the run followed the published protocol to its end (its full epoch count)."""
    rows = []
    for (name, seed), run in runs.items():
        published = WRN_RECIPES[name]
        rows.append(
            {
                "recipe": name,
                "method": run.name,
                "seed": seed,
                "epochs": len(run.history),
                "test_acc": float(run.history["test_acc"].iloc[-1]),
                "published_test_acc": run.recipe.anchor,
                "published_protocol": run.recipe.anchor is not None and len(run.history) == published.epochs,
            }
        )
    return pd.DataFrame(rows)


def fit_traditional(
    cfg: ComparisonProfile, data: CIFAR10Data, seeds: Sequence[int], *, cache_dir: str | os.PathLike[str] | None
) -> dict[int, TraditionalClassifier]:
    """The traditional method of ``cfg`` fitted on all training images, one per seed (its validation split)."""
    return {
        s: TraditionalClassifier(cfg.features, Cs=cfg.Cs, seed=s, n_jobs=cfg.n_jobs, cache_dir=cache_dir).fit(
            data.train_images, data.train_labels
        )
        for s in seeds
    }


def comparison_methods(
    runs: Mapping[tuple[str, int], WRNRun],
    trads: Mapping[int, TraditionalClassifier],
    *,
    device: str | torch.device | None = None,
) -> list[Method]:
    """Every trained network and traditional classifier as a :class:`Method` the aspects measure."""
    return [run.method(device=device) for run in runs.values()] + [traditional_method(t) for t in trads.values()]


def learning_curves(
    cfg: ComparisonProfile,
    data: CIFAR10Data,
    runs: Mapping[tuple[str, int], WRNRun],
    trads: Mapping[int, TraditionalClassifier],
    *,
    seed: int,
    device: str | torch.device = "cpu",
    run_dir: str | os.PathLike[str],
) -> dict[str, pd.DataFrame]:
    """Learning curves of ``cfg.curve_recipes`` and of the traditional method, for ``seed``, by method name."""
    curves = {}
    for name in cfg.curve_recipes:
        full = runs[(name, seed)]
        curves[full.name] = wrn_learning_curve(
            cfg.recipe(name),
            data,
            cfg.fractions,
            full=full,
            min_steps=cfg.curve_min_steps,
            monitor_images=cfg.curve_monitor_images,
            seed=seed,
            device=device,
            run_dir=run_dir,
        )
    curves[TRADITIONAL_NAME] = traditional_learning_curve(trads[seed], data, cfg.fractions, seed=seed)
    return curves


def aspect_table(raw: pd.DataFrame, scores: pd.DataFrame, *, profile: str) -> pd.DataFrame:
    """``raw`` (:func:`raw_aspect_table`) with every score as ``score_<aspect>`` and the profile: Figure 6's data."""
    return raw.assign(profile=profile, **{f"score_{a}": scores[a].to_numpy() for a in aspects.SCORE_FORMULAS})
