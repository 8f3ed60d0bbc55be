"""Figures of section 3.2: Figure 1 drawn by code, pruning logs, method comparison, sparsity curves."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from dynprune_lib.study import plots


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _texts(fig) -> str:
    return " ".join(t.get_text() for ax in fig.axes for t in ax.texts)


def test_figure_1_draws_the_loop_and_the_export(tmp_path):
    fig = plots.plot_dynamic_pruning_process()
    ax = fig.axes[0]
    boxes = [p for p in ax.patches if isinstance(p, FancyBboxPatch)]
    arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
    assert len(boxes) == 7  # five loop steps, initialise, export
    assert len(arrows) == 7  # the closed loop of five, into it, out of it
    text = _texts(fig)
    for word in ("Train", "Measure importance", "Prune", "Regrow", "Adapt threshold", "Initialise", "CSR"):
        assert word in text
    # Regenerates byte for byte (deterministic metadata through save_figure).
    first = plots.save_figure(fig, "fig1", tmp_path / "a", formats=("svg",))[0].read_bytes()
    second = plots.save_figure(plots.plot_dynamic_pruning_process(), "fig1", tmp_path / "b", formats=("svg",))
    assert second[0].read_bytes() == first


def test_pruning_log_plots_each_layer_and_skips_nan_thresholds():
    log = pd.DataFrame(
        {
            "step": [0, 0, 100, 100],
            "layer": ["a", "b", "a", "b"],
            "sparsity": [0.9, 0.8, 0.91, 0.79],
            "threshold": [1e-3, 1e-3, 2e-3, 2e-3],
        }
    )
    fig = plots.plot_pruning_log(log, steps_per_epoch=100)
    left, right = fig.axes
    assert len(left.lines) == 2 and len(right.lines) == 2
    assert list(left.lines[0].get_xdata()) == [0.0, 1.0]  # in epochs
    fig = plots.plot_pruning_log(log.assign(threshold=np.nan))
    assert len(fig.axes[1].lines) == 0
    with pytest.raises(ValueError, match="threshold"):
        plots.plot_pruning_log(log.drop(columns="threshold"))
    with pytest.raises(ValueError, match="empty"):
        plots.plot_pruning_log(log.iloc[:0])


def test_method_comparison_means_over_seeds():
    histories = pd.DataFrame(
        {
            "method": ["dsr"] * 4 + ["set"] * 2,
            "seed": [0, 0, 1, 1, 0, 0],
            "epoch": [1, 2, 1, 2, 1, 2],
            "test_acc": [0.5, 0.7, 0.6, 0.8, 0.4, 0.6],
        }
    )
    baseline = pd.DataFrame({"epoch": [1, 2], "test_acc": [0.55, 0.65]})
    fig = plots.plot_method_comparison(histories, baseline=baseline, labels={"dsr": "DSR"})
    curves, bars = fig.axes
    lines = {line.get_label(): line for line in curves.lines}
    assert set(lines) == {"DSR", "set", "baseline"}
    assert list(lines["DSR"].get_ydata()) == pytest.approx([0.55, 0.75])
    assert [p.get_width() for p in bars.patches] == pytest.approx([0.75, 0.6, 0.65])
    with pytest.raises(ValueError, match="test_acc"):
        plots.plot_method_comparison(histories.drop(columns="test_acc"))


def test_accuracy_and_latency_against_sparsity():
    runs = pd.DataFrame(
        {
            "method": ["dense", "dsr", "dsr", "dsr", "dsr"],
            "sparsity_target": [np.nan, 0.5, 0.9, 0.5, 0.9],
            "final_test_acc": [0.53, 0.5, 0.45, 0.52, 0.47],
        }
    )
    inference = pd.DataFrame(
        {
            "source": ["dense"] * 4,
            "seed": [0, 0, 0, 1],
            "sparsity_target": [0.5, 0.9, 0.9, 0.9],
            "batch": [1, 1, 8, 1],
            "test_acc": [0.5, 0.3, 0.3, 0.4],
        }
    )
    fig = plots.plot_accuracy_vs_sparsity(runs, inference)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.5", "0.9"]
    assert ax.xaxis_inverted()
    raised = {c.get_label(): c for c in ax.containers}["dense: sparsity raised at inference"]
    assert list(raised.lines[0].get_ydata()) == pytest.approx([0.5, 0.35])  # the mean over seeds, once per seed
    lines = {line.get_label(): line for line in ax.lines}
    assert list(lines["dense model"].get_ydata()) == [0.53, 0.53]
    with pytest.raises(ValueError, match="final_test_acc"):
        plots.plot_accuracy_vs_sparsity(runs.drop(columns="final_test_acc"))
    with pytest.raises(ValueError, match="method"):
        plots.plot_accuracy_vs_sparsity(runs, method="set")
    latency = pd.DataFrame(
        {
            "sparsity": [0.5, 0.9] * 2,
            "batch": [1, 1, 8, 8],
            "dense_ms": [1.0, 1.0, 4.0, 4.0],
            "sparse_ms": [2.0, 0.5, 8.0, 2.0],
            "source": ["a", "a", "b", "b"],
        }
    )
    fig = plots.plot_latency_vs_sparsity(latency)
    speed = fig.axes[1]
    assert list(speed.lines[0].get_ydata()) == pytest.approx([0.5, 2.0])
    fig = plots.plot_latency_vs_sparsity(
        latency.rename(columns={"sparsity": "sparsity_target"}), x="sparsity_target", by="source"
    )
    assert [line.get_label() for line in fig.axes[1].lines][:2] == ["ours: a, batch 1", "ours: b, batch 8"]
    # a peer is drawn beside ours from its <peer>_ms column; one never measured is left out
    latency["onnxruntime_ms"] = [0.5, 0.5, 2.0, 2.0]
    latency["sparseprop_ms"] = np.nan
    fig = plots.plot_latency_vs_sparsity(latency, by="source", peers=("onnxruntime", "sparseprop"))
    labels = [line.get_label() for line in fig.axes[1].lines]
    assert labels[:2] == ["ours: a, batch 1", "onnxruntime: a, batch 1"]
    assert not any(label.startswith("sparseprop") for label in labels)
    assert list(fig.axes[1].lines[1].get_ydata()) == pytest.approx([2.0, 2.0])
    with pytest.raises(ValueError, match="sparse_ms"):
        plots.plot_latency_vs_sparsity(latency.drop(columns="sparse_ms"))
    with pytest.raises(ValueError, match="origin"):
        plots.plot_latency_vs_sparsity(latency, by="origin")


def test_analysis_figures_plot_every_model_method_and_format():
    accuracy = pd.DataFrame(
        {
            "model": ["CNN", "CNN", "MLP", "MLP", "MLP", "MLP"],
            "method": ["dense", "dsr", "dense", "dsr", "dsr", "set"],
            "sparsity": [0.0, 0.9, 0.0, 0.5, 0.9, 0.9],
            "final_test_acc": [0.83, 0.81, 0.57, 0.58, 0.56, 0.55],
        }
    )
    fig = plots.plot_accuracy_vs_sparsity_by_method(accuracy)
    assert [ax.get_title() for ax in fig.axes] == ["CNN", "MLP"]
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["dense", "dsr", "set"]
    dsr_line = fig.axes[1].containers[1].lines[0]  # errorbar container of 'dsr' in the MLP panel
    assert dsr_line.get_ydata().tolist() == [0.58, 0.56]
    assert dsr_line.get_xdata() == pytest.approx([0.5, 0.1])  # plotted against the density 1 - s
    storage = pd.DataFrame(
        {
            "model": ["MLP"] * 4,
            "sparsity": [0.0, 0.9, 0.0, 0.9],
            "format": ["dense", "dense", "CSR", "CSR"],
            "bytes": [4e6, 4e6, 4e6, 5e5],
        }
    )
    fig = plots.plot_storage_vs_sparsity(storage)
    assert [line.get_ydata().tolist() for line in fig.axes[0].lines] == [[4.0, 4.0], [4.0, 0.5]]
    times = pd.DataFrame({"model": ["CNN", "CNN", "WRN"], "method": ["dense", "dsr", "wrn"], "minutes": [5.0, 5.5, 20]})
    fig = plots.plot_training_time(times)
    assert [len(ax.patches) for ax in fig.axes] == [2, 1]
    with pytest.raises(ValueError, match="final_test_acc"):
        plots.plot_accuracy_vs_sparsity_by_method(accuracy.drop(columns="final_test_acc"))
    with pytest.raises(ValueError, match="empty"):
        plots.plot_training_time(times.iloc[:0])
