"""The published Wide ResNet protocol run to its end on a GPU: its record and its read-back.

``scripts/gpu_protocol.py`` trains the recipes of :data:`PROTOCOL_RECIPES` (WRN-28-2 dense and
with DSR at 0.9, 200 epochs each: :data:`~.profiles.WRN_RECIPES`) across as many device commands
as it takes, and writes one row per finished epoch with the machine and commit that ran it
(:func:`protocol_record`; the result ``wrn_published_protocol``). Notebook 04 reads it back
(:func:`published_protocol_table`) whatever its own profile, so a reader on a CPU sees what a
GPU measured, marked as such, beside the published anchors.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import pandas as pd

from .profiles import WRN_RECIPES, WRNRecipe
from .results import read_result, result_path

__all__ = ["PROTOCOL_RECIPES", "protocol_record", "published_protocol_sentence", "published_protocol_table"]

#: The published protocols the GPU run holds to their anchors (TimDettmers/sparse_learning,
#: ``results/WRN-28-2_results_summary.csv``: 94.70 % dense, 93.59 % DSR at 0.9).
PROTOCOL_RECIPES = ("wrn-28-2", "wrn-28-2-dsr0.9")

#: What :func:`published_protocol_table` holds per run (also when no run is on record).
_TABLE_COLUMNS = (
    "recipe",
    "method",
    "seed",
    "epochs",
    "planned_epochs",
    "complete",
    "test_acc",
    "best_test_acc",
    "published_test_acc",
    "difference_pt",
    "median_epoch_s",
    "train_minutes",
    "train_images",
    "device",
    "hardware",
    "torch",
    "commit",
    "date",
)


def protocol_record(
    recipe: WRNRecipe, seed: int, history: pd.DataFrame, provenance: Mapping[str, object]
) -> pd.DataFrame:
    """The ``history`` of the run of ``recipe`` with ``seed`` (one row per finished epoch, as
    ``fit`` keeps it in the run's checkpoint), with the recipe's planned epochs and published
    anchor and ``provenance`` (device, hardware, torch, commit, date, training images) on every
    row."""
    history = pd.DataFrame(history).reset_index(drop=True)
    front = {
        "recipe": recipe.name,
        "method": recipe.label,
        "seed": seed,
        "planned_epochs": recipe.epochs,
        # the published recipe itself, not a shortened or altered copy of it (rehearsals)
        "published_recipe": WRN_RECIPES.get(recipe.name) == recipe,
        "published_test_acc": math.nan if recipe.anchor is None else recipe.anchor,
        **provenance,
    }
    return pd.concat([pd.DataFrame(front, index=history.index), history], axis=1)


def published_protocol_table(results_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per run of the record under ``results_dir``: epochs finished of those planned,
    final and best test accuracy, the published one and the difference (complete runs on all
    training images only: a published number holds for the full protocol), seconds per epoch,
    and what ran it. No rows when no GPU has run the protocol (no record)."""
    try:
        record = read_result(results_dir, "wrn_published_protocol")
    except FileNotFoundError:
        return pd.DataFrame(columns=list(_TABLE_COLUMNS))
    rows = []
    for (recipe, seed), run in record.groupby(["recipe", "seed"], sort=False):
        run = run.sort_values("epoch")
        epochs = run["epoch"].astype(int).tolist()
        if epochs != list(range(1, len(epochs) + 1)):
            raise ValueError(
                f"{result_path(results_dir, 'wrn_published_protocol')}: run {recipe} seed {seed} does not hold "
                f"epochs 1 to {len(epochs)} once each (got {epochs[:5]}...)"
            )
        last = run.iloc[-1]
        complete = len(epochs) == int(last["planned_epochs"])
        # a published number holds for its full protocol on all training images: a rehearsal (fewer
        # epochs, a subset) is never set beside it
        comparable = complete and bool(last["published_recipe"]) and str(last["train_images"]) == "all"
        rows.append(
            {
                "recipe": recipe,
                "method": last["method"],
                "seed": int(seed),
                "epochs": len(epochs),
                "planned_epochs": int(last["planned_epochs"]),
                "complete": complete,
                "test_acc": float(last["test_acc"]),
                "best_test_acc": float(run["test_acc"].max()),
                "published_test_acc": float(last["published_test_acc"]),
                "difference_pt": 100 * (last["test_acc"] - last["published_test_acc"]) if comparable else math.nan,
                "median_epoch_s": float(run["seconds"].median()),
                "train_minutes": float(run["seconds"].sum()) / 60,
                **{key: last[key] for key in ("train_images", "device", "hardware", "torch", "commit", "date")},
            }
        )
    return pd.DataFrame(rows, columns=list(_TABLE_COLUMNS))


def published_protocol_sentence(table: pd.DataFrame) -> str:
    """What :func:`published_protocol_table` says, in words: each run against its published
    accuracy, or that no GPU has run the protocol (then no number is shown)."""
    if table.empty:
        return (
            "No GPU has run the published protocol yet (no `wrn_published_protocol.csv` among the results), "
            "so no 200-epoch number is shown here; `scripts/gpu_protocol.py` runs it on a GPU (README, "
            "'On a GPU')."
        )
    parts = []
    for row in table.itertuples(index=False):
        where = f"on {row.hardware} ({row.device}, torch {row.torch}, commit {str(row.commit)[:10]})"
        if not math.isnan(row.difference_pt):
            parts.append(
                f"{row.method}, seed {row.seed}: {row.test_acc:.2%} after all {row.epochs} epochs {where}, "
                f"against the published {row.published_test_acc:.2%}: {row.difference_pt:+.2f} pt "
                f"(median {row.median_epoch_s:.2f} s per epoch)"
            )
        elif row.complete:
            parts.append(
                f"{row.method}, seed {row.seed}: {row.test_acc:.2%} after all {row.epochs} epochs {where} on "
                f"{row.train_images} training images: a rehearsal, not the published protocol"
            )
        else:
            parts.append(
                f"{row.method}, seed {row.seed}: stopped after {row.epochs} of {row.planned_epochs} epochs {where}, "
                f"at {row.test_acc:.2%}; not comparable with the published {row.published_test_acc:.2%} until it "
                "finishes"
            )
    return "; ".join(parts) + ". One seed per recipe: a difference, not a verdict."
