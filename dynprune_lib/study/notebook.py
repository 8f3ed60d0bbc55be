"""What every notebook of the study does first: folders, device, and a header line.

``session = study.setup(...)`` in a notebook's first code cell replaces the
folder, device and print boilerplate each notebook used to carry; the
session then saves tables under their declared names (:mod:`.results`) and
figures with deterministic metadata (:func:`.plots.save_figure`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch
from matplotlib.figure import Figure

from ..train import resolve_device
from .plots import save_figure
from .results import write_result

__all__ = ["Session", "setup"]


@dataclass(frozen=True)
class Session:
    """Where one notebook run writes, and on which device it computes."""

    device: torch.device
    figures: Path
    results: Path
    runs: Path | None

    def save_table(self, table: pd.DataFrame, key: str) -> pd.DataFrame:
        """Write ``table`` as the declared result ``key`` (``results/<key>.csv``) and return it."""
        return write_result(table, self.results, key)

    def save_figure(self, fig: Figure, name: str) -> None:
        """Save ``fig`` as ``figures/<name>.png`` and ``.svg`` and, in a notebook, show it as the cell's output."""
        png = next(p for p in save_figure(fig, name, self.figures) if p.suffix == ".png")
        _show_in_notebook(fig, png)


def _show_in_notebook(fig: Figure, png: Path) -> None:
    """In a Jupyter kernel, show the saved PNG as the cell's output whatever matplotlib's backend
    (``run_all.sh`` runs Agg, which shows nothing), then close the figure so that an inline
    backend does not show it a second time. Elsewhere (a script, no IPython) do nothing."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return
    display(Image(data=png.read_bytes(), format="png"))
    plt.close(fig)


def setup(
    *,
    figures_dir: str | os.PathLike[str],
    results_dir: str | os.PathLike[str],
    run_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = "auto",
    **header: object,
) -> Session:
    """Create the output folders, resolve ``device`` and print what this run is on.

    ``header`` adds ``key value`` pairs to the printed line (profile, epochs, seeds...).
    """
    folders = [Path(figures_dir), Path(results_dir)] + ([Path(run_dir)] if run_dir is not None else [])
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    session = Session(
        resolve_device(device), Path(figures_dir), Path(results_dir), None if run_dir is None else Path(run_dir)
    )
    extra = "".join(f"; {k.replace('_', ' ')} {v}" for k, v in header.items())
    print(f"torch {torch.__version__} on {session.device}, {torch.get_num_threads()} threads{extra}")
    return session
