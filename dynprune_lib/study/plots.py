"""Figures in the paper's form, saved reproducibly.

Every figure is saved as PNG and SVG with no timestamps or software versions
in the metadata and a fixed SVG hash salt, so re-running a notebook on the same
results gives byte-identical files (and clean git diffs).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

__all__ = [
    "plot_accuracy_vs_sparsity",
    "plot_accuracy_vs_sparsity_by_method",
    "plot_aspect_scores",
    "plot_deletion_curves",
    "plot_dynamic_pruning_process",
    "plot_history",
    "plot_latency_vs_sparsity",
    "plot_learning_curves",
    "plot_method_comparison",
    "plot_pruning_log",
    "plot_storage_vs_sparsity",
    "plot_training_time",
    "save_figure",
]

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
    split evaluated after every epoch, as in the paper's Keras set-up. A
    ``seed`` column with several seeds draws their mean and min-max band.
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
    seeds = history["seed"].nunique() if "seed" in history.columns else 1
    stats = history.groupby("epoch")[[train_col, test_col]].agg(["mean", "min", "max"])
    suffix = f", mean of {seeds} seeds (band: min-max)" if seeds > 1 else ""
    for column, marker, name in ((train_col, "o", "training"), (test_col, "s", "validation (test split)")):
        (line,) = ax.plot(stats.index, stats[(column, "mean")], marker=marker, label=f"{prefix}{name}{suffix}")
        if seeds > 1:
            ax.fill_between(
                stats.index, stats[(column, "min")], stats[(column, "max")], color=line.get_color(), alpha=0.2
            )
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


_ASPECTS = ("complexity", "generalization", "data_requirements", "interpretability")
_ASPECT_LABELS = ("Model\ncomplexity", "Generalization", "Data\nrequirements", "Interpretability")


def plot_aspect_scores(scores: pd.DataFrame, table: pd.DataFrame | None = None, *, title: str | None = None) -> Figure:
    """The paper's Figure 6 from measurements: grouped bars of the four aspect scores
    per method (mean over seeds, with their range when there are several), and
    ``table`` (raw measures, one row per measure, one column per method) beside it.

    A score that was not measured (NaN) is marked "n/m" instead of drawn.
    """
    missing = {"method", *_ASPECTS} - set(scores.columns)
    if missing:
        raise ValueError(f"scores lacks the columns {sorted(missing)}")
    grouped = scores.groupby("method", sort=False)[list(_ASPECTS)]
    mean, low, high = grouped.mean(), grouped.min(), grouped.max()
    methods = list(mean.index)
    if table is None:
        fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    else:
        fig, (ax, tax) = plt.subplots(
            1, 2, figsize=(14.0, 4.8), layout="constrained", gridspec_kw={"width_ratios": [1.0, 1.1]}
        )
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(_ASPECTS))
    for i, method in enumerate(methods):
        pos = x - 0.4 + width * (i + 0.5)
        values = mean.loc[method].to_numpy(dtype=float)
        err = np.vstack([values - low.loc[method].to_numpy(float), high.loc[method].to_numpy(float) - values])
        shown = ~np.isnan(values)
        ax.bar(
            pos[shown],
            values[shown],
            width,
            label=method,
            yerr=err[:, shown] if len(scores) > len(methods) else None,
            capsize=3,
        )
        for p, v, ok in zip(pos, values, shown):
            ax.text(p, (v if ok else 0) + 0.015, f"{v:.2f}" if ok else "n/m", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, _ASPECT_LABELS)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score (0-1, higher = more of the aspect)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    if title:
        ax.set_title(title)
    if table is not None:
        tax.axis("off")
        cells = [[str(v) for v in row] for row in table.to_numpy()]
        headers = [textwrap.fill(str(c), 18) for c in table.columns]
        tab = tax.table(
            cellText=cells, rowLabels=[str(i) for i in table.index], colLabels=headers, loc="center", cellLoc="right"
        )
        tab.auto_set_font_size(False)
        tab.set_fontsize(7.5)
        tab.scale(1.0, 1.3)
        lines = max(h.count("\n") + 1 for h in headers)
        for (row, _), cell in tab.get_celld().items():
            if row == 0:
                cell.set_height(cell.get_height() * (0.2 + 0.5 * lines))
    return fig


def plot_learning_curves(
    curves: Mapping[str, pd.DataFrame], *, share: float | None = None, title: str | None = None
) -> Figure:
    """Test accuracy against the fraction of training data used (log axis), one line per
    method; ``share`` draws each method's ``share`` x full-data accuracy as a dotted line."""
    fig, ax = plt.subplots(figsize=(6.0, 4.0), layout="constrained")
    for name, curve in curves.items():
        (line,) = ax.plot(curve["fraction"] * 100, curve["test_acc"], marker="o", label=name)
        if share is not None:
            ax.axhline(share * float(curve["test_acc"].iloc[-1]), color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("training data used (%)")
    ax.set_ylabel("test accuracy")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return fig


def plot_deletion_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], *, title: str | None = None) -> Figure:
    """Mean probability of the predicted class as regions are deleted, in explanation
    order (solid) and in random order (dashed), one colour per method."""
    fig, ax = plt.subplots(figsize=(6.0, 4.0), layout="constrained")
    for name, c in curves.items():
        x = np.linspace(0, 1, len(c["curve"]))
        (line,) = ax.plot(x, c["curve"], label=f"{name}: most important first")
        ax.plot(x, c["random_curve"], color=line.get_color(), linestyle="--", label=f"{name}: random order")
    ax.set_xlabel("share of the image deleted")
    ax.set_ylabel("probability of the predicted class")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    return fig


# --------------------------------------------------------------------------- section 3.2: dynamic pruning

_PROCESS_STEPS = (
    ("Train", "forward and backward\nwith the masked weights W ⊙ M;\noptimizer step"),
    ("Measure importance", "every P steps:\nmagnitude |w| of the\nlive weights"),
    ("Prune", "drop live weights\nwith |w| < H\n(K weights, all layers)"),
    ("Regrow", "K new weights (zero) at\nfree positions, split by the\nlayers' surviving weights"),
    ("Adapt threshold", "K > (1+δ)·Nₚ: H ← H/2\nK < (1−δ)·Nₚ: H ← 2H"),
)


def plot_dynamic_pruning_process(*, title: str | None = None) -> Figure:
    """The paper's Figure 1, drawn: the training-and-pruning loop of dynamic pruning, then CSR export.

    Sparse layers start from a random mask; training alternates optimizer
    steps with DSR updates (Mostafa & Wang 2019): measure weight magnitudes,
    prune below the global threshold ``H``, regrow as many weights, adapt ``H``
    towards ``N_p`` pruned weights per update. After training the pruned weights
    are stored as CSR matrices and the sparsity can still be changed at inference.
    """
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig, ax = plt.subplots(figsize=(11.0, 6.4), layout="constrained")
    ax.set_xlim(0, 11)
    ax.set_ylim(0, 6.4)
    ax.axis("off")
    box_w, box_h = 2.3, 1.1

    def box(cx: float, cy: float, head: str, body: str, color: str) -> FancyBboxPatch:
        patch = FancyBboxPatch(
            (cx - box_w / 2, cy - box_h / 2),
            box_w,
            box_h,
            boxstyle="round,pad=0.05,rounding_size=0.12",
            facecolor=color,
            edgecolor="0.25",
            linewidth=1.2,
        )
        ax.add_patch(patch)
        ax.text(cx, cy + box_h / 2 - 0.2, head, ha="center", va="center", fontsize=10, fontweight="bold")
        ax.text(cx, cy - 0.13, body, ha="center", va="center", fontsize=7.6, linespacing=1.25)
        return patch

    def centre_of(patch: FancyBboxPatch) -> tuple[float, float]:
        return patch.get_x() + box_w / 2, patch.get_y() + box_h / 2

    def arrow(a: FancyBboxPatch, b: FancyBboxPatch, rad: float = 0.0) -> FancyArrowPatch:
        link = FancyArrowPatch(
            centre_of(a),
            centre_of(b),
            patchA=a,
            patchB=b,
            arrowstyle="-|>",
            mutation_scale=16,
            linewidth=1.4,
            color="0.2",
            connectionstyle=f"arc3,rad={rad}",
            shrinkA=3,
            shrinkB=3,
        )
        ax.add_patch(link)
        return link

    # The loop: five steps on an ellipse, clockwise from the top.
    cx0, cy0, rx, ry = 5.3, 3.0, 3.3, 2.3
    steps = []
    for i, (head, body) in enumerate(_PROCESS_STEPS):
        angle = np.pi / 2 - 2 * np.pi * i / len(_PROCESS_STEPS)
        color = "#dbe9f6" if i == 0 else "#fde9d0"
        steps.append(box(cx0 + rx * np.cos(angle), cy0 + ry * np.sin(angle), head, body, color))
    for a, b in zip(steps, steps[1:] + steps[:1]):
        arrow(a, b, rad=-0.15)
    ax.text(
        cx0,
        cy0,
        "repeat every P steps\nuntil the last epoch\n(number of live weights\nstays constant)",
        ha="center",
        va="center",
        fontsize=9,
        color="0.3",
    )
    start = box(1.3, 5.6, "Initialise", "sparse layers with a\nrandom mask M at\nsparsity s; threshold H", "#e3f1de")
    export = box(
        9.6, 5.6, "Export", "pruned weights as CSR\n(save_sparse); sparsity\nadjustable at inference", "#e3f1de"
    )
    arrow(start, steps[0])
    arrow(steps[0], export)
    ax.text(7.85, 5.72, "after the\nlast epoch", ha="center", va="bottom", fontsize=8, style="italic")
    ax.set_title(title or "Figure 1 · Training and pruning process of the dynamic pruning model (DSR)")
    return fig


def plot_pruning_log(log: pd.DataFrame, *, steps_per_epoch: int | None = None, title: str | None = None) -> Figure:
    """Per-layer sparsity (left) and pruning threshold (right) at every mask update.

    ``log`` is a scheduler's ``log_frame()``: one row per update per layer. For DSR
    the threshold is the global ``H`` it adapts; for SET/RigL/magnitude pruning the
    largest magnitude pruned. With ``steps_per_epoch`` the x axis is in epochs.
    """
    missing = {"step", "layer", "sparsity", "threshold"} - set(log.columns)
    if missing:
        raise ValueError(f"log lacks the columns {sorted(missing)}")
    if log.empty:
        raise ValueError("log is empty")
    fig, (ax_s, ax_t) = plt.subplots(1, 2, figsize=(11.0, 4.0), layout="constrained")
    scale = 1.0 / steps_per_epoch if steps_per_epoch else 1.0
    for layer, part in log.groupby("layer", sort=False):
        x = part["step"].to_numpy() * scale
        ax_s.plot(x, part["sparsity"], marker=".", label=layer)
        threshold = part["threshold"].to_numpy(dtype=float)
        if np.isfinite(threshold).any():
            ax_t.plot(x, threshold, marker=".", label=layer)
    xlabel = "epoch" if steps_per_epoch else "optimizer step"
    ax_s.set_xlabel(xlabel)
    ax_s.set_ylabel("sparsity (fraction of zero weights)")
    ax_s.set_title("per-layer sparsity")
    ax_s.grid(True, alpha=0.3)
    ax_s.legend(fontsize=7)
    ax_t.set_xlabel(xlabel)
    ax_t.set_ylabel("threshold (|w|)")
    ax_t.set_yscale("log")
    ax_t.set_title("pruning threshold")
    ax_t.grid(True, which="both", alpha=0.3)
    if ax_t.lines:
        ax_t.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def plot_method_comparison(
    histories: pd.DataFrame,
    *,
    baseline: pd.DataFrame | None = None,
    labels: Mapping[str, str] | None = None,
    title: str | None = None,
) -> Figure:
    """Test accuracy per epoch of every method (mean over seeds, min-max band) and the final
    accuracy as bars (mean, min-max error bars); ``baseline`` is one more (dense) history.

    ``histories`` is a long table with columns ``method``, ``seed``, ``epoch`` and ``test_acc``.
    """
    missing = {"method", "seed", "epoch", "test_acc"} - set(histories.columns)
    if missing:
        raise ValueError(f"histories lacks the columns {sorted(missing)}")
    frames = [histories[["method", "seed", "epoch", "test_acc"]]]
    if baseline is not None:
        frames.append(
            baseline.assign(method="baseline", seed=baseline.get("seed", 0))[["method", "seed", "epoch", "test_acc"]]
        )
    data = pd.concat(frames, ignore_index=True)
    labels = dict(labels or {})
    fig, (ax_c, ax_b) = plt.subplots(
        1, 2, figsize=(12.0, 4.6), layout="constrained", gridspec_kw={"width_ratios": [1.3, 1.0]}
    )
    finals = []
    for method, part in data.groupby("method", sort=False):
        stats = part.groupby("epoch")["test_acc"].agg(["mean", "min", "max"])
        style = {"linestyle": "--", "color": "0.4"} if method == "baseline" else {}
        (line,) = ax_c.plot(
            stats.index, stats["mean"], marker="o", markersize=3, label=labels.get(method, method), **style
        )
        if part["seed"].nunique() > 1:
            ax_c.fill_between(stats.index, stats["min"], stats["max"], color=line.get_color(), alpha=0.2)
        last = part[part["epoch"] == part.groupby("seed")["epoch"].transform("max")]["test_acc"]
        finals.append((labels.get(method, method), last.mean(), last.min(), last.max(), line.get_color()))
    ax_c.set_xlabel("epoch")
    ax_c.set_ylabel("test accuracy")
    ax_c.set_xticks(_epoch_ticks(pd.Series(sorted(data["epoch"].unique()))))
    ax_c.grid(True, alpha=0.3)
    ax_c.legend(fontsize=7)
    ax_c.set_title("test accuracy per epoch")
    names = [textwrap.fill(f[0], 28) for f in finals]
    means = np.array([f[1] for f in finals])
    err = np.vstack([means - [f[2] for f in finals], [f[3] for f in finals] - means])
    y = np.arange(len(finals))
    ax_b.barh(y, means, xerr=err, color=[f[4] for f in finals], capsize=3)
    for yi, m in zip(y, means):
        ax_b.text(m, yi, f" {m:.4f}", va="center", fontsize=8)
    ax_b.set_yticks(y, names, fontsize=7)
    ax_b.invert_yaxis()
    lo = max(0.0, float(np.nanmin(means)) - 0.1)
    ax_b.set_xlim(lo, min(1.0, float(np.nanmax(means)) + 0.08))
    ax_b.set_xlabel("final test accuracy")
    ax_b.grid(True, axis="x", alpha=0.3)
    ax_b.set_title("after the last epoch")
    if title:
        fig.suptitle(title)
    return fig


#: Where sparsity axes put ticks: measured sparsities sit near these, and exact labels would collide.
_SPARSITY_TICKS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


def _nice_ticks(sparsities: pd.Series) -> list[float]:
    """The ticks of ``_SPARSITY_TICKS`` within the range of ``sparsities``."""
    lo, hi = float(sparsities.min()), float(sparsities.max())
    return [s for s in _SPARSITY_TICKS if lo - 0.02 <= s <= hi + 0.002]


def _sparsity_axis(ax: plt.Axes, sparsities: Sequence[float]) -> None:
    """x axis of density ``1 - s`` on a log scale, decreasing, labelled with the sparsity."""
    ax.set_xscale("log")
    ticks = sorted({float(s) for s in sparsities if s < 1.0})
    ax.set_xticks([1.0 - s for s in ticks], [f"{s:g}" for s in ticks])
    ax.minorticks_off()
    ax.invert_xaxis()
    ax.set_xlabel("sparsity (fraction of zero weights; log scale of the density)")


def plot_accuracy_vs_sparsity(
    runs: pd.DataFrame,
    inference: pd.DataFrame | None = None,
    *,
    method: str = "dsr",
    title: str | None = None,
) -> Figure:
    """Test accuracy against sparsity: ``method`` retrained at each sparsity (mean over seeds,
    min-max bars), the dense model as a line, and models whose sparsity was raised at
    inference without retraining (one line per ``source``, mean over its seeds, min-max bars).

    ``runs`` is :func:`~dynprune_lib.study.experiments.run_table` (``method``, ``sparsity_target``,
    ``final_test_acc``; runs flagged ``at_chance`` are drawn apart, as red crosses, and left out of
    the line); ``inference`` is :func:`~dynprune_lib.study.experiments.inference_sweep`
    (``source``, ``sparsity_target``, ``test_acc``).
    """
    missing = {"method", "sparsity_target", "final_test_acc"} - set(runs.columns)
    if missing:
        raise ValueError(f"runs lacks the columns {sorted(missing)}")
    if inference is not None and {"source", "sparsity_target", "test_acc"} - set(inference.columns):
        raise ValueError("inference needs the columns ['source', 'sparsity_target', 'test_acc']")
    retrained = runs[runs["method"] == method]
    if retrained.empty:
        raise ValueError(f"runs has no rows of method {method!r}")
    fig, ax = plt.subplots(figsize=(7.0, 4.4), layout="constrained")
    collapsed = retrained["at_chance"].astype(bool) if "at_chance" in retrained.columns else False
    if collapsed is not False and collapsed.any():
        flagged = retrained[collapsed]
        ax.plot(
            1.0 - flagged["sparsity_target"].to_numpy(),
            flagged["final_test_acc"],
            "x",
            color="tab:red",
            markersize=9,
            label=f"{method} run at chance (flagged: collapsed, not a reference)",
        )
        retrained = retrained[~collapsed]
    stats = retrained.groupby("sparsity_target")["final_test_acc"].agg(["mean", "min", "max"]).sort_index()
    ax.errorbar(
        1.0 - stats.index.to_numpy(),
        stats["mean"],
        yerr=[stats["mean"] - stats["min"], stats["max"] - stats["mean"]],
        marker="o",
        capsize=3,
        label=f"retrained at each sparsity ({method})",
    )
    targets = list(stats.index)
    if inference is not None:
        for source, part in inference.groupby("source", sort=False):
            keys = ["sparsity_target", "seed"] if "seed" in part.columns else ["sparsity_target"]
            points = part.drop_duplicates(keys).groupby("sparsity_target")["test_acc"].agg(["mean", "min", "max"])
            ax.errorbar(
                1.0 - points.index.to_numpy(),
                points["mean"],
                yerr=[points["mean"] - points["min"], points["max"] - points["mean"]],
                marker="s",
                linestyle="--",
                capsize=3,
                label=f"{source}: sparsity raised at inference",
            )
            targets += list(points.index)
    dense = runs.loc[runs["method"] == "dense", "final_test_acc"]
    if len(dense):
        ax.axhline(float(dense.mean()), color="0.3", linestyle=":", label="dense model")
    _sparsity_axis(ax, [round(s, 3) for s in targets])
    ax.set_ylabel("test accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return fig


def plot_latency_vs_sparsity(
    latency: pd.DataFrame,
    *,
    x: str = "sparsity",
    by: str | None = None,
    peers: Sequence[str] = (),
    title: str | None = None,
) -> Figure:
    """Forward time (left, log scale) and speed-up over PyTorch dense (right) against sparsity
    (column ``x``, e.g. ``"sparsity_target"``), one line per batch size and per value of the
    column ``by`` (e.g. ``"source"``): dense (dotted), ours (solid) and each of ``peers``
    (dashed; from its ``<peer>_ms`` column, skipped where not measured). ``latency`` also has
    ``batch``, ``dense_ms``, ``sparse_ms``; several rows at one point (models of several seeds)
    are drawn as their median."""
    needed = {x, "batch", "dense_ms", "sparse_ms"} | ({by} if by else set())
    missing = needed - set(latency.columns)
    if missing:
        raise ValueError(f"latency lacks the columns {sorted(missing)}")
    peers = [p for p in peers if f"{p}_ms" in latency.columns and latency[f"{p}_ms"].notna().any()]
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(11.0, 4.4), layout="constrained")
    keys = [by, "batch"] if by else ["batch"]
    styles = ("--", "-.", (0, (1, 1)))
    for key, part in latency.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        name = f"{key[0]}, batch {key[1]}" if by else f"batch {key[0]}"
        part = part.groupby(x, as_index=False).median(numeric_only=True)  # the median over seeds' models
        density = 1.0 - part[x].to_numpy()
        (line,) = ax_t.plot(density, part["dense_ms"], marker="o", linestyle=":", label=f"PyTorch dense: {name}")
        colour = line.get_color()
        ax_t.plot(density, part["sparse_ms"], marker="s", color=colour, label=f"ours: {name}")
        ax_s.plot(density, part["dense_ms"] / part["sparse_ms"], marker="s", color=colour, label=f"ours: {name}")
        for peer, style in zip(peers, styles):
            ax_t.plot(
                density,
                part[f"{peer}_ms"],
                marker="^",
                linestyle=style,
                color=colour,
                alpha=0.7,
                label=f"{peer}: {name}",
            )
            ax_s.plot(
                density,
                part["dense_ms"] / part[f"{peer}_ms"],
                marker="^",
                linestyle=style,
                color=colour,
                alpha=0.7,
                label=f"{peer}: {name}",
            )
    for ax in (ax_t, ax_s):
        _sparsity_axis(ax, _nice_ticks(latency[x]))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    ax_t.set_yscale("log")
    ax_t.set_ylabel("forward time (ms)")
    ax_s.axhline(1.0, color="0.3", linewidth=1)
    ax_s.set_ylabel("speed-up over PyTorch dense (x)")
    if title:
        fig.suptitle(title)
    return fig


def _by_model(table: pd.DataFrame, needed: set[str], what: str) -> list[tuple[str, pd.DataFrame]]:
    missing = needed - set(table.columns)
    if missing:
        raise ValueError(f"{what} lacks the columns {sorted(missing)}")
    if table.empty:
        raise ValueError(f"{what} is empty")
    return list(table.groupby("model", sort=False))


def _sparsity_panels(
    table: pd.DataFrame, needed: set[str], draw, *, ylabel: str, log_y: bool = False, title: str | None = None
) -> Figure:
    """One panel per ``model`` of ``table`` with a sparsity x axis; ``draw(ax, rows)`` plots a panel."""
    groups = _by_model(table, needed | {"model", "sparsity"}, "table")
    fig, axes = plt.subplots(1, len(groups), figsize=(6.2 * len(groups), 4.4), layout="constrained", squeeze=False)
    for ax, (model, part) in zip(axes[0], groups):
        draw(ax, part)
        _sparsity_axis(ax, _nice_ticks(part["sparsity"]))
        if log_y:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_ylabel(ylabel)
        ax.set_title(model)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def _density(sparsity: pd.Series) -> np.ndarray:
    return np.maximum(1.0 - sparsity.to_numpy(), 1e-4)


def plot_accuracy_vs_sparsity_by_method(table: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Final test accuracy against measured sparsity, one panel per model, one line per method
    (min-max bars over seeds); dense models sit at sparsity 0; a point with a seed at chance
    (``runs_at_chance``) is crossed out in red.

    ``table`` is :func:`dynprune_lib.study.analysis.accuracy_sparsity_table`.
    """

    def draw(ax: plt.Axes, part: pd.DataFrame) -> None:
        for method, rows in part.groupby("method", sort=False):
            rows = rows.sort_values("sparsity")
            acc = rows["final_test_acc"]
            lo, hi = (rows.get(f"final_test_acc_{k}", acc).fillna(acc) for k in ("min", "max"))
            style = {"linestyle": "none", "marker": "D", "color": "0.2"} if method == "dense" else {"marker": "o"}
            ax.errorbar(_density(rows["sparsity"]), acc, yerr=[acc - lo, hi - acc], capsize=3, label=method, **style)
        flagged = part[part.get("runs_at_chance", pd.Series(0, index=part.index)).fillna(0) > 0]
        if len(flagged):
            ax.plot(
                _density(flagged["sparsity"]),
                flagged["final_test_acc"],
                "x",
                color="tab:red",
                markersize=10,
                label="a seed at chance (flagged)",
            )

    return _sparsity_panels(table, {"method", "final_test_acc"}, draw, ylabel="final test accuracy", title=title)


def plot_storage_vs_sparsity(table: pd.DataFrame, *, title: str | None = None) -> Figure:
    """File size against sparsity per storage format, one panel per model (log scale).

    ``table`` is :func:`dynprune_lib.study.analysis.storage_sparsity_table`.
    """

    def draw(ax: plt.Axes, part: pd.DataFrame) -> None:
        for fmt, rows in part.groupby("format", sort=False):
            rows = rows.groupby("sparsity", as_index=False)["bytes"].mean().sort_values("sparsity")
            ax.plot(_density(rows["sparsity"]), rows["bytes"] / 1e6, marker="o", label=fmt)

    return _sparsity_panels(table, {"format", "bytes"}, draw, ylabel="file size (MB)", log_y=True, title=title)


def plot_training_time(table: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Training wall time per method as horizontal bars, one panel per model.

    ``table`` is :func:`dynprune_lib.study.analysis.training_time_table`.
    """
    groups = _by_model(table, {"model", "method", "minutes"}, "table")
    heights = [max(1.6, 0.32 * len(part) + 0.8) for _, part in groups]
    fig, axes = plt.subplots(
        len(groups),
        1,
        figsize=(8.0, sum(heights)),
        layout="constrained",
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    for ax, (model, part) in zip(axes[:, 0], groups):
        y = np.arange(len(part))
        ax.barh(y, part["minutes"], color="tab:blue")
        for yi, m in zip(y, part["minutes"]):
            ax.text(m, yi, f" {m:.1f} min" if m >= 1 else f" {60 * m:.0f} s", va="center", fontsize=8)
        ax.set_yticks(y, part["method"], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, float(part["minutes"].max()) * 1.25)
        ax.set_title(model, fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("training wall time (minutes, this machine)")
    if title:
        fig.suptitle(title)
    return fig
