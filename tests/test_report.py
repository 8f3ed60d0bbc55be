"""The static HTML report: executed notebooks, then every figure and table, self-contained."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import nbformat
import pandas as pd
import pytest

from dynprune_lib import study

from conftest import load_script

report = load_script("report")
build_report, figure_files, table_files = report.build_report, report.figure_files, report.table_files

ROOT = Path(__file__).resolve().parent.parent


def _embedded(report: str) -> set[bytes]:
    """Every file embedded in ``report`` as a base64 data URI, decoded."""
    return {base64.b64decode(m) for m in re.findall(r"data:image/[a-z+]+;base64,([A-Za-z0-9+/=]+)", report)}


def _assert_every_figure_embedded(report_path: Path, figures_dir: Path) -> None:
    embedded = _embedded(report_path.read_text(encoding="utf-8"))
    files = figure_files(figures_dir)
    assert files, f"no figures in {figures_dir}"
    missing = [p.name for p in files if p.read_bytes() not in embedded]
    assert not missing, f"{report_path} lacks the figure files {missing}"


def _notebook(path: Path, text: str) -> Path:
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell(f"# {text}"),
            nbformat.v4.new_code_cell(
                "print(1 + 1)", outputs=[nbformat.v4.new_output("stream", name="stdout", text="2\n")]
            ),
        ]
    )
    nbformat.write(nb, path)
    return path


def test_report_holds_the_notebooks_in_order_and_every_figure_and_table(tmp_path):
    figures, results = tmp_path / "figures", tmp_path / "results"
    fig = study.plot_history(pd.DataFrame({"epoch": [1, 2], "train_acc": [0.1, 0.2], "test_acc": [0.1, 0.15]}))
    study.save_figure(fig, "history", figures)
    results.mkdir()
    pd.DataFrame({"metric": ["final test_acc"], "ours": [0.8123]}).to_csv(results / "t.csv", index=False)
    (results / "bench.json").write_text('{"speedup": 1.25}')
    notebooks = [
        _notebook(tmp_path / "01_a.ipynb", "first notebook"),
        _notebook(tmp_path / "02_b.ipynb", "second notebook"),
    ]
    out = build_report(notebooks, tmp_path / "out" / "report.html", figures_dir=figures, results_dir=results)
    text = out.read_text(encoding="utf-8")
    assert text.index("first notebook") < text.index("second notebook") < text.index("Appendix A")
    _assert_every_figure_embedded(out, figures)
    assert {p.suffix for p in figure_files(figures)} == {".png", ".svg"}
    assert "0.8123" in text and re.search(r'speedup(&quot;|")\s*:\s*1\.25', text) and "bench.json" in text
    assert [p.name for p in table_files(results)] == ["bench.json", "t.csv"]


def test_report_errors_name_the_bad_input(tmp_path):
    figures, results = tmp_path / "figures", tmp_path / "results"
    figures.mkdir(), results.mkdir()
    with pytest.raises(FileNotFoundError, match="missing.ipynb"):
        build_report([tmp_path / "missing.ipynb"], tmp_path / "r.html", figures_dir=figures, results_dir=results)
    broken = tmp_path / "broken.ipynb"
    broken.write_text('{"cells": [')
    with pytest.raises(ValueError, match="broken.ipynb"):
        build_report([broken], tmp_path / "r.html", figures_dir=figures, results_dir=results)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_report([broken], tmp_path / "r.html", figures_dir=tmp_path / "nowhere", results_dir=results)
    (results / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        build_report(
            [_notebook(tmp_path / "ok.ipynb", "ok")], tmp_path / "r.html", figures_dir=figures, results_dir=results
        )
    assert not (tmp_path / "r.html").exists()  # nothing half-written


def test_report_of_the_committed_figures_and_tables_contains_every_figure(tmp_path):
    """Every committed figure file reaches the report (from the source notebooks, unexecuted)."""
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    out = build_report(notebooks, tmp_path / "report.html", figures_dir=ROOT / "figures", results_dir=ROOT / "results")
    _assert_every_figure_embedded(out, ROOT / "figures")


@pytest.mark.skipif(not os.environ.get("DYNPRUNE_SMOKE_DIR"), reason="run by ./run_tests.sh after the smoke profile")
def test_smoke_run_report_contains_every_figure_it_made():
    smoke = Path(os.environ["DYNPRUNE_SMOKE_DIR"])
    report = smoke / "report.html"
    assert report.is_file(), f"the smoke profile wrote no {report}"
    _assert_every_figure_embedded(report, smoke / "figures")
    text = report.read_text(encoding="utf-8")
    for notebook in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        assert f'id="notebook-{notebook.stem}"' in text, f"{notebook.name} is not in the report"
    for table in table_files(smoke / "results"):
        assert f'id="table-{table.stem}"' in text
