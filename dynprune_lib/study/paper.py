"""What the paper reports, kept only to be shown beside ours: its numbers and its readings.

Nothing here feeds a computation: these values appear solely as the "paper"
column of comparison tables, as reference marks on figures and as the side
each Figure 6 claim is checked against.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch

from ..train import hardware_name

if TYPE_CHECKING:
    from ..data import CIFAR10Data

__all__ = [
    "PAPER",
    "PAPER_CLAIMS",
    "compare_with_paper",
    "comparison_sentence",
    "paper_marks",
    "run_conditions",
    "split_seeds",
]

#: Section 3.1, baseline CNN on CIFAR-10 after 10 epochs.
#: Section 3.2, dynamic-pruning CNN: test accuracy after epochs 1 and 4, best
#: (epochs 5-6) and after the last (10th) epoch.
PAPER: Mapping[str, Mapping[str, float]] = {
    "baseline": {"final test_acc": 0.7042, "final test_loss": 1.0866},
    "dynamic_cnn": {
        "test_acc after epoch 1": 0.5010,
        "test_acc after epoch 4": 0.7315,
        "best test_acc": 0.7518,
        "final test_acc": 0.7701,
    },
}


#: The paper's qualitative reading of its Figure 6 (section 4): which side scores higher.
PAPER_CLAIMS: Mapping[str, str] = {
    "complexity": "deep learning",
    "generalization": "deep learning",
    "data_requirements": "deep learning",
    "interpretability": "traditional",
}


def run_conditions(data: CIFAR10Data, device: str | torch.device, **extra: object) -> dict[str, object]:
    """What a result was measured under, for the "conditions" column: the data copy and its
    size, ``extra`` (epochs, seeds, sparsity, network...), the device, the hardware and torch."""
    return {
        "data": Path(data.source).name,
        "train_images": len(data.train_labels),
        "test_images": len(data.test_labels),
        **extra,
        "device": torch.device(device).type,
        "hardware": hardware_name(device),
        "torch": torch.__version__,
    }


def _ours(history: pd.DataFrame, metric: str) -> float:
    if metric.startswith("final "):
        return float(history[metric.removeprefix("final ")].iloc[-1])
    if metric.startswith("best "):
        return float(history[metric.removeprefix("best ")].max())
    column, _, epoch = metric.partition(" after epoch ")
    rows = history.loc[history["epoch"] == int(epoch), column]
    return float(rows.iloc[0]) if len(rows) else float("nan")


def split_seeds(history: pd.DataFrame) -> list[pd.DataFrame]:
    """One history per seed of a long table with a ``seed`` column; a table without one is one run."""
    return [h for _, h in history.groupby("seed")] if "seed" in history.columns else [history]


def compare_with_paper(
    experiment: str, history: pd.DataFrame, conditions: Mapping[str, object] | None = None
) -> pd.DataFrame:
    """Paper vs reproduced table for one experiment of ``PAPER``.

    One row per number the paper reports, with ours from ``history`` (a ``fit``
    history, or several in one table with a ``seed`` column: ours is then their mean,
    with ``ours_std`` and ``n``), their difference, and the conditions ours were
    measured under (data copy, epochs, seeds, device...). A metric for an epoch we
    did not run is NaN, never filled in.
    """
    if experiment not in PAPER:
        raise ValueError(f"experiment must be one of {sorted(PAPER)}, got {experiment!r}")
    per_seed = split_seeds(history)
    rows = []
    for metric, paper_value in PAPER[experiment].items():
        values = pd.Series([_ours(h, metric) for h in per_seed], dtype=float)
        ours = float(values.mean())
        rows.append(
            {
                "experiment": experiment,
                "metric": metric,
                "paper": paper_value,
                "ours": ours,
                "ours_std": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
                "n": len(values),
                "difference": ours - paper_value,
            }
        )
    table = pd.DataFrame(rows)
    conditions_text = "; ".join(f"{k}={v}" for k, v in (conditions or {}).items())
    table["conditions"] = conditions_text
    return table


def paper_marks(experiment: str, last_epoch: int, metric: str = "test_acc") -> dict[int, float]:
    """The paper's per-epoch points of ``metric`` in ``experiment`` as {epoch: value} for ``plot_history``.

    "after epoch N" is placed at N and "final" at ``last_epoch`` (unless an
    "after epoch" point is already there); "best" has no single epoch and is left
    out (it is in the comparison table). A metric the paper does not report
    gives no marks.
    """
    if experiment not in PAPER:
        raise ValueError(f"experiment must be one of {sorted(PAPER)}, got {experiment!r}")
    marks: dict[int, float] = {}
    items = PAPER[experiment].items()
    for name, value in items:  # per-epoch points first: they win over "final" on the same epoch
        if name.startswith(f"{metric} after epoch "):
            marks[int(name.rpartition(" ")[2])] = float(value)
    for name, value in items:
        if name == f"final {metric}":
            marks.setdefault(last_epoch, float(value))
    return dict(sorted(marks.items()))


def comparison_sentence(table: pd.DataFrame) -> str:
    """One sentence per row of :func:`compare_with_paper`'s table: ours (mean ± standard deviation
    over ``n`` seeds), the paper's value and the difference; accuracies in %, losses as they are."""

    def fmt(metric: str, value: float, sign: str = "") -> str:
        return f"{100 * value:{sign}.2f} {'pt' if sign else '%'}" if "acc" in metric else f"{value:{sign}.4f}"

    parts = []
    for r in table.to_dict("records"):
        if pd.isna(r["ours"]):
            parts.append(f"{r['metric']}: not measured (the paper: {fmt(r['metric'], r['paper'])})")
            continue
        spread = "" if pd.isna(r.get("ours_std", float("nan"))) else f" ± {fmt(r['metric'], r['ours_std'])}"
        spread = spread.replace(" %", " pt")
        parts.append(
            f"{r['metric']}: ours {fmt(r['metric'], r['ours'])}{spread} (n={r.get('n', 1)}) against the paper's "
            f"{fmt(r['metric'], r['paper'])}, a difference of {fmt(r['metric'], r['difference'], '+')}"
        )
    return "; ".join(parts) + "."
