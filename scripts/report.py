"""One static HTML report of a whole reproduction: the executed notebooks, then every figure and table.

``run_all.sh`` ends by writing ``build/report.html`` with :func:`build_report`:
the executed notebooks in order (as nbconvert renders them, outputs inline),
followed by an appendix that embeds every file of ``figures/`` (PNG shown,
SVG as a download link, both as data URIs so the page is self-contained) and
every table of ``results/`` (CSV as HTML tables, JSON as text). A reader can
then check any figure or number without running anything.

Run as ``python scripts/report.py OUT.html NOTEBOOK... --figures DIR --results DIR``. It
lives beside the notebook driver, not in the library: nbconvert is a
dependency of the notebooks, not of ``dynprune_lib``.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from dynprune_lib._utils import atomic_write

__all__ = ["build_report", "figure_files", "table_files"]

_FIGURE_TYPES = {".png": "image/png", ".svg": "image/svg+xml"}
_TABLE_TYPES = (".csv", ".json")


def figure_files(figures_dir: str | os.PathLike[str]) -> list[Path]:
    """The figure files (PNG, SVG) of ``figures_dir``, sorted by name."""
    return sorted(p for p in Path(figures_dir).iterdir() if p.suffix.lower() in _FIGURE_TYPES)


def table_files(results_dir: str | os.PathLike[str]) -> list[Path]:
    """The tables (CSV, JSON) of ``results_dir``, sorted by name."""
    return sorted(p for p in Path(results_dir).iterdir() if p.suffix.lower() in _TABLE_TYPES)


def _data_uri(path: Path) -> str:
    return f"data:{_FIGURE_TYPES[path.suffix.lower()]};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _figures_html(figures_dir: Path) -> str:
    files = figure_files(figures_dir)
    if not files:
        return f"<p>No figures in <code>{html.escape(str(figures_dir))}</code>.</p>"
    by_stem: dict[str, list[Path]] = {}
    for path in files:
        by_stem.setdefault(path.stem, []).append(path)
    parts = []
    for stem, paths in by_stem.items():
        png = [p for p in paths if p.suffix.lower() == ".png"]
        links = " · ".join(
            f'<a download="{html.escape(p.name)}" href="{_data_uri(p)}">{html.escape(p.name)}</a>' for p in paths
        )
        image = f'<img alt="{html.escape(stem)}" src="{_data_uri(png[0])}" style="max-width:100%">' if png else ""
        parts.append(f'<figure id="figure-{html.escape(stem)}">{image}<figcaption>{links}</figcaption></figure>')
    return "\n".join(parts)


def _table_html(path: Path) -> str:
    if path.suffix.lower() == ".csv":
        body = pd.read_csv(path).to_html(index=False, na_rep="", float_format=lambda v: f"{v:.6g}", border=0)
    else:
        try:
            body = f"<pre>{html.escape(json.dumps(json.loads(path.read_text(encoding='utf-8')), indent=2))}</pre>"
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
    return f'<section id="table-{html.escape(path.stem)}"><h3>{html.escape(path.name)}</h3>{body}</section>'


def _tables_html(results_dir: Path) -> str:
    files = table_files(results_dir)
    if not files:
        return f"<p>No tables in <code>{html.escape(str(results_dir))}</code>.</p>"
    return "\n".join(_table_html(p) for p in files)


_HIDE_INPUT = "report-hide-input"


def _html_cell(body: str):
    """A code cell showing only ``body`` as its HTML output. (nbconvert sanitises raw
    cells, which would strip the data-URI links and figure tags; outputs it keeps.)"""
    import nbformat

    output = nbformat.v4.new_output("display_data", data={"text/html": body})
    return nbformat.v4.new_code_cell("", outputs=[output], metadata={"tags": [_HIDE_INPUT]})


def build_report(
    notebooks: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    figures_dir: str | os.PathLike[str],
    results_dir: str | os.PathLike[str],
    title: str = "dynprune: the paper reproduced",
) -> Path:
    """Write ``out``: the executed ``notebooks`` in order, then every figure and table.

    Raises ``FileNotFoundError`` naming a missing notebook or folder and
    ``ValueError`` naming a notebook that is not valid notebook JSON.
    """
    import nbformat  # the notebook tool chain is an optional dependency of the library
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    figures_dir, results_dir, out = Path(figures_dir), Path(results_dir), Path(out)
    for folder in (figures_dir, results_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder")
    if not notebooks:
        raise ValueError("notebooks is empty: nothing to report")
    merged = nbformat.v4.new_notebook(metadata={"title": title})
    for path in map(Path, notebooks):
        if not path.is_file():
            raise FileNotFoundError(f"executed notebook {path} not found")
        try:
            notebook = nbformat.read(path, as_version=4)
        except Exception as error:  # nbformat raises several types for a damaged file
            raise ValueError(f"{path} is not a readable notebook: {error}") from None
        source = f"<small>from <code>{html.escape(path.name)}</code></small>"
        merged.cells.append(_html_cell(f'<hr><p id="notebook-{html.escape(path.stem)}">{source}</p>'))
        merged.cells.extend(notebook.cells)
        for key in ("kernelspec", "language_info"):
            if key in notebook.metadata:
                merged.metadata.setdefault(key, notebook.metadata[key])
    appendix = (
        f"<hr><h1>Appendix A · every figure in <code>{html.escape(figures_dir.name)}/</code></h1>"
        f"{_figures_html(figures_dir)}"
        f"<h1>Appendix B · every table in <code>{html.escape(results_dir.name)}/</code></h1>"
        f"{_tables_html(results_dir)}"
    )
    merged.cells.append(_html_cell(appendix))
    config = Config()
    config.TagRemovePreprocessor.enabled = True
    config.TagRemovePreprocessor.remove_input_tags = {_HIDE_INPUT}
    exporter = HTMLExporter(config=config, template_name="lab", exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(merged, resources={"metadata": {"name": title}})
    atomic_write(out, body)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/report.py", description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the HTML file to write")
    parser.add_argument("notebooks", nargs="+", help="executed notebooks, in order")
    parser.add_argument("--figures", required=True, help="the figures folder")
    parser.add_argument("--results", required=True, help="the results folder")
    args = parser.parse_args(argv)
    path = build_report(args.notebooks, args.out, figures_dir=args.figures, results_dir=args.results)
    print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
