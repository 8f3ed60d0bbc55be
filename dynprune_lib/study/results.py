"""Every table the study writes to ``results/``, declared once: its file, the notebook that writes it.

Notebooks write with :func:`write_result`, the read-back (:mod:`.analysis`)
and ``scripts/update_readme.py`` read with :func:`read_result`; nobody types a
file name, so a renamed table cannot be written under one name and read
under another.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .._utils import atomic_write

__all__ = ["RESULT_FILES", "ResultFile", "read_result", "result_path", "write_result"]


@dataclass(frozen=True)
class ResultFile:
    """One table of ``results/``: file name, writer and whether its index is part of it."""

    name: str
    writer: str  # the notebook (or script) that writes it
    description: str
    index: bool = False  # written with its (multi-)index, e.g. histories keyed by run

    @property
    def notebook_number(self) -> str | None:
        return self.writer[:2] if self.writer[:2].isdigit() else None


def _files(*files: ResultFile) -> dict[str, ResultFile]:
    return {f.name.rsplit(".", 1)[0]: f for f in files}


_01, _02, _03, _04, _05 = (
    "01_baseline_cnn",
    "02_dynamic_cnn",
    "03_dynamic_mlp",
    "04_wide_resnet_vs_traditional",
    "05_analysis",
)

#: Every table, keyed by its file name without the extension.
RESULT_FILES: Mapping[str, ResultFile] = _files(
    ResultFile("baseline.csv", _01, "per-epoch history of the paper's baseline CNN"),
    ResultFile("baseline_vs_paper.csv", _01, "the baseline's final accuracy and loss beside the paper's"),
    ResultFile(
        "paper_dsr_histories.csv", _02, "the paper's own arm: its section-3.1 CNN with DSR, notebook 01's protocol"
    ),
    ResultFile("paper_dsr_runs.csv", _02, "the paper's own arm: final accuracy per run beside the paper and dense"),
    ResultFile("dynamic_cnn_vs_paper.csv", _02, "the DSR CNN's per-epoch accuracies beside the paper's"),
    ResultFile("dynamic_cnn_sparsity.csv", _02, "zero weights per layer of the trained DSR CNN"),
    ResultFile("dynamic_cnn_methods.csv", _02, "every method on the same CNN at the same sparsity, over seeds"),
    ResultFile("dynamic_cnn_histories.csv", _02, "per-epoch histories of every CNN run"),
    ResultFile("dynamic_cnn_storage.csv", _02, "file size of the DSR CNN, dense and in CSR"),
    ResultFile("dynamic_cnn_latency.csv", _02, "dense vs sparse-kernel forward time of the DSR CNN"),
    ResultFile(
        "dynamic_cnn_latency_sweep.csv", _02, "forward time against sparsity (random masks): dense, ours, peers"
    ),
    ResultFile("dynamic_cnn_latency_goals.csv", _02, "the CNN's inference-speed goals against the sweep"),
    ResultFile("dynamic_cnn_goals.csv", _02, "whether the DSR CNN met this reproduction's goals"),
    ResultFile("dynamic_mlp_runs.csv", _03, "every MLP run: method, sparsity, accuracy, time"),
    ResultFile("dynamic_mlp_histories.csv", _03, "per-epoch histories of every MLP run"),
    ResultFile("dynamic_mlp_inference_sparsity.csv", _03, "MLPs with sparsity raised at inference: accuracy, latency"),
    ResultFile("dynamic_mlp_sparsity_claim.csv", _03, "inference-time sparsity against retraining, per sparsity"),
    ResultFile("dynamic_mlp_latency.csv", _03, "dense vs sparse-kernel forward time of the retrained MLPs"),
    ResultFile("dynamic_mlp_storage.csv", _03, "file size of every retrained MLP, dense and in CSR"),
    ResultFile(
        "dynamic_mlp_latency_sweep.csv", _03, "forward time against sparsity (random masks): dense, ours, peers"
    ),
    ResultFile("dynamic_mlp_latency_goals.csv", _03, "the MLP's inference-speed goals against the sweep"),
    ResultFile("wrn_history.csv", _04, "per-epoch histories of the Wide ResNets", index=True),
    ResultFile("wrn_vs_published.csv", _04, "the Wide ResNets' accuracy beside the published one"),
    ResultFile(
        "wrn_published_protocol.csv",
        "scripts/gpu_protocol.py",
        "per-epoch histories of the published WRN-28-2 protocol run on a GPU, with the machine and commit",
    ),
    ResultFile("fig6_learning_curves.csv", _04, "test accuracy against training-set fraction", index=True),
    ResultFile("fig6_aspects.csv", _04, "every raw measure and score of Figure 6"),
    ResultFile("fig6_paper_claims.csv", _04, "the paper's Figure 6 reading against the scores"),
    ResultFile("paper_vs_ours.csv", _05, "every number the paper reports beside ours"),
    ResultFile("paper_claims_checked.csv", _05, "each claim of the paper, its measurement and verdict"),
    ResultFile("goals.csv", _05, "every goal set before the numbers (notebooks, benchmarks): met or missed"),
    ResultFile("run_times.csv", "run_all.sh", "each notebook's wall time as run_all.sh measured it"),
)


def _entry(key: str) -> ResultFile:
    if key not in RESULT_FILES:
        raise KeyError(f"{key!r} is not a declared result; choose from {sorted(RESULT_FILES)}")
    return RESULT_FILES[key]


def result_path(results_dir: str | os.PathLike[str], key: str) -> Path:
    """Where result ``key`` lives under ``results_dir``."""
    return Path(results_dir) / _entry(key).name


def write_result(table: pd.DataFrame, results_dir: str | os.PathLike[str], key: str) -> pd.DataFrame:
    """Write ``table`` as result ``key`` (atomically) and return it, so a notebook cell shows it."""
    entry = _entry(key)
    atomic_write(result_path(results_dir, key), table.to_csv(index=entry.index))
    return table


def read_result(results_dir: str | os.PathLike[str], key: str) -> pd.DataFrame:
    """Result ``key`` from ``results_dir``; a missing file raises ``FileNotFoundError`` naming its writer."""
    entry = _entry(key)
    path = result_path(results_dir, key)
    if not path.is_file():
        number = entry.notebook_number
        writer = f"notebooks/{entry.writer}.ipynb (./run_all.sh --only {number})" if number else entry.writer
        raise FileNotFoundError(f"{path} not found: it is written by {writer}")
    return pd.read_csv(path)
