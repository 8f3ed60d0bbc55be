"""Figures in the paper's form, saved reproducibly.

Every figure is saved as PNG and SVG with no timestamps or software versions
in the metadata and a fixed SVG hash salt, so re-running a notebook on the same
results gives byte-identical files (and clean git diffs).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

__all__ = ["plot_history", "save_figure"]

_SVG_SALT = "dynprune"

_METRICS = {
    "acc": ("train_acc", "test_acc", "Accuracy"),
    "loss": ("train_loss", "test_loss", "Loss"),
}


def plot_history(
    history: pd.DataFrame,
    metric: str = "acc",
    *,
    title: str | None = None,
    paper: Mapping[int, float] | None = None,
    label: str | None = None,
    ax: plt.Axes | None = None,
) -> Figure:
    """Training and validation curves per epoch (the paper's Figures 2-5).

    ``metric`` is ``"acc"`` or ``"loss"``. The validation curve is the test
    split evaluated after every epoch, as in the paper's Keras set-up.
    ``paper`` optionally marks the paper's reported values ({epoch: value})
    beside ours.
    """
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
    train_col, test_col, ylabel = _METRICS[metric]
    missing = {"epoch", train_col, test_col} - set(history.columns)
    if missing:
        raise ValueError(f"history lacks the columns {sorted(missing)}")
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.0, 4.0), layout="constrained")
    else:
        fig = ax.figure
    prefix = f"{label}: " if label else ""
    ax.plot(history["epoch"], history[train_col], marker="o", label=f"{prefix}training")
    ax.plot(history["epoch"], history[test_col], marker="s", label=f"{prefix}validation (test split)")
    if paper:
        epochs, values = zip(*sorted(paper.items()))
        ax.scatter(epochs, values, marker="*", s=140, color="black", zorder=3, label="paper (reported)")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_xticks(_epoch_ticks(history["epoch"]))
    ax.grid(True, alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return fig


def save_figure(
    fig: Figure, name: str, directory: str | os.PathLike[str], formats: Sequence[str] = ("png", "svg")
) -> list[Path]:
    """Save ``fig`` as ``directory/name.{png,svg}`` with deterministic metadata."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = directory / f"{name}.{fmt}"
        metadata = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}}.get(fmt, {})
        with matplotlib.rc_context({"svg.hashsalt": _SVG_SALT, "svg.fonttype": "none"}):
            fig.savefig(path, format=fmt, dpi=150, metadata=metadata)
        paths.append(path)
    return paths


def _epoch_ticks(epochs: pd.Series) -> list[int]:
    epochs = [int(e) for e in epochs]
    if len(epochs) <= 12:
        return epochs
    step = -(-len(epochs) // 10)
    return epochs[::step]
