"""run_all.sh's driver: profiles, parameters, resuming, --force, and the README's generated tables."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent


rn = load_script("run_notebooks")
update_readme = load_script("update_readme")


def test_select_notebooks_in_order_and_by_number():
    names = [p.name[:2] for p in rn.select_notebooks(None)]
    assert names == sorted(names) and names[:5] == ["01", "02", "03", "04", "05"]
    assert [p.name[:2] for p in rn.select_notebooks(["3", "01"])] == ["01", "03"]
    with pytest.raises(SystemExit, match="99"):
        rn.select_notebooks(["99"])


def test_parameters_are_the_profiles_and_only_those_a_notebook_declares():
    baseline, dynamic = rn.select_notebooks(["01", "02"])
    assert rn.notebook_parameters(baseline, "cpu", None) == {}  # 01 has no profile: its defaults
    assert rn.notebook_parameters(dynamic, "gpu", [0, 1]) == {"profile": "gpu", "seeds": [0, 1]}
    smoke = rn.notebook_parameters(dynamic, "smoke", None)
    where = rn.layout("smoke")
    assert smoke["train_subset"] == rn.SMOKE_PARAMETERS["train_subset"] and smoke["epochs"] == 1
    assert smoke["figures_dir"] == str(where.figures) and smoke["run_dir"] == str(where.runs / dynamic.stem)
    assert rn.notebook_parameters(baseline, "cpu", [3]) == {"seeds": [3]}
    # --precision reaches the notebooks that declare it (02-04), not the baseline
    assert rn.notebook_parameters(dynamic, "cpu", None, precision="fp32") == {"profile": "cpu", "precision": "fp32"}
    assert rn.notebook_parameters(baseline, "cpu", None, precision="fp32") == {}
    assert rn.run_dir_of(dynamic, {}) == ROOT / "build" / "runs" / "02_dynamic_cnn"  # its declared default


def test_execute_skips_up_to_date_notebooks_and_force_reruns_and_retrains(tmp_path, monkeypatch):
    where = rn.Layout(tmp_path / "f", tmp_path / "r", tmp_path / "nb", tmp_path / "report.html", tmp_path / "runs")
    monkeypatch.setattr(rn, "layout", lambda profile: where)
    executed = []

    def fake_execute(source, out, *, parameters, **_):
        executed.append(Path(source).name)
        Path(parameters["run_dir"]).mkdir(parents=True, exist_ok=True)
        (Path(parameters["run_dir"]) / "trained.pt").write_text("x")  # a training run's checkpoint
        Path(out).write_text("{}")

    monkeypatch.setattr("papermill.execute_notebook", fake_execute)
    notebooks = rn.select_notebooks(["02"])
    run = lambda force: rn.execute(notebooks, "smoke", seeds=None, force=force, kernel="k", report=False)
    assert run(False) == 0 and executed == ["02_dynamic_cnn.ipynb"]
    assert run(False) == 0 and executed == ["02_dynamic_cnn.ipynb"]  # up to date: skipped
    checkpoint = where.runs / "02_dynamic_cnn" / "old.pt"
    checkpoint.write_text("x")
    assert run(True) == 0 and len(executed) == 2 and not checkpoint.exists()  # --force: re-run, retrain
    monkeypatch.setenv("DYNPRUNE_DATA", str(tmp_path / "other-data"))
    assert run(False) == 0 and len(executed) == 3  # other data: not up to date
    times = pd.read_csv(where.results / "run_times.csv")
    assert times[["notebook", "profile", "from_scratch"]].values.tolist() == [
        ["02_dynamic_cnn.ipynb", "smoke", False],
        ["02_dynamic_cnn.ipynb", "smoke", True],
    ]  # one row each, latest kept


def test_timings_of_another_version_of_a_notebook_are_dropped(tmp_path):
    notebook = tmp_path / "02_x.ipynb"
    cell = {"cell_type": "code", "source": ["fit(model)"], "metadata": {}, "outputs": []}
    notebook.write_text(json.dumps({"cells": [cell]}))
    rn.record_time(tmp_path, notebook, "cpu", 600.0, True)
    rn.record_time(tmp_path, notebook, "cpu", 60.0, False)
    assert len(pd.read_csv(tmp_path / "run_times.csv")) == 2  # from scratch and resumed, same notebook
    executed = {**cell, "outputs": [{"output_type": "stream", "name": "stdout", "text": ["epoch 1"]}]}
    notebook.write_text(json.dumps({"cells": [executed], "metadata": {"papermill": {}}}))
    rn.record_time(tmp_path, notebook, "cpu", 30.0, True)  # outputs and metadata are not a new version
    assert len(pd.read_csv(tmp_path / "run_times.csv")) == 2
    notebook.write_text(json.dumps({"cells": [{**cell, "source": ["fit(model, epochs=3)"]}]}))  # edited
    rn.record_time(tmp_path, notebook, "cpu", 90.0, False)
    times = pd.read_csv(tmp_path / "run_times.csv")
    assert times[["from_scratch", "minutes"]].values.tolist() == [[False, 1.5]]


def test_a_failing_notebook_stops_the_run_and_is_named(tmp_path, monkeypatch, capsys):
    from papermill.exceptions import PapermillExecutionError

    where = rn.Layout(tmp_path / "f", tmp_path / "r", tmp_path / "nb", tmp_path / "report.html", tmp_path / "runs")
    monkeypatch.setattr(rn, "layout", lambda profile: where)
    executed = []

    def failing(source, out, **_):
        executed.append(Path(source).name)
        raise PapermillExecutionError(3, 7, "layer.set_sparsity(2)", "ValueError", "bad sparsity", [])

    monkeypatch.setattr("papermill.execute_notebook", failing)
    assert (
        rn.execute(rn.select_notebooks(["01", "02"]), "smoke", seeds=None, force=False, kernel="k", report=False) == 1
    )
    assert executed == ["01_baseline_cnn.ipynb"]  # stopped at the first failure
    err = capsys.readouterr().err
    assert "01_baseline_cnn.ipynb FAILED" in err and "ValueError: bad sparsity" in err
    assert "cell 4" in err and "layer.set_sparsity(2)" in err
    assert not (where.notebooks / "01_baseline_cnn.stamp.json").exists()


@pytest.fixture
def driven(tmp_path, monkeypatch):
    """The driver over a temporary layout with papermill faked: (layout, numbers executed, run)."""
    where = rn.Layout(tmp_path / "f", tmp_path / "r", tmp_path / "nb", tmp_path / "report.html", tmp_path / "runs")
    monkeypatch.setattr(rn, "layout", lambda profile: where)
    executed = []
    monkeypatch.setattr(
        "papermill.execute_notebook",
        lambda source, out, **_: (executed.append(Path(source).name[:2]), Path(out).write_text("{}")),
    )
    run = lambda only, force=False: rn.execute(
        rn.select_notebooks(only), "smoke", seeds=None, force=force, kernel="k", report=False
    )
    return where, executed, run


def test_a_notebook_is_stale_when_an_earlier_one_re_ran(driven):
    _, executed, run = driven
    assert run(["01", "05"]) == 0 and executed == ["01", "05"]
    assert run(["01", "05"]) == 0 and executed == ["01", "05"]  # both up to date
    assert run(["01"], force=True) == 0 and run(["05"]) == 0
    assert executed == ["01", "05", "01", "05"]  # 01 re-ran, so 05 (which reads its results) is stale


def test_a_notebook_is_stale_when_a_benchmark_it_reads_re_ran(driven):
    where, executed, run = driven
    where.results.mkdir(parents=True)
    bench = where.results / "bench_sparse_inference.json"
    bench.write_text('{"commit": "a"}')
    assert run(["04", "05"]) == 0 and run(["04", "05"]) == 0 and executed == ["04", "05"]  # then up to date
    bench.write_text('{"commit": "b"}')  # the benchmark re-ran
    (where.results / "other.csv").write_text("x")  # a file 05 does not declare: no effect
    assert run(["04", "05"]) == 0 and executed == ["04", "05", "05"]  # 05 reads the benchmarks, 04 does not


def test_a_notebook_that_declares_reads_without_a_results_folder_is_refused(tmp_path):
    notebook = tmp_path / "99_reads.ipynb"
    notebook.write_text(
        json.dumps(
            {"cells": [], "metadata": {"dynprune": {"reads": ["bench_*.json"]}}, "nbformat": 4, "nbformat_minor": 5}
        )
    )
    with pytest.raises(ValueError, match="99_reads.ipynb declares dynprune.reads.*no results_dir"):
        rn.read_results_digest(notebook, {})


def test_cli_rejects_bad_seeds():
    with pytest.raises(SystemExit):
        rn.main(["--seeds", "0,x", "--prepare-only", "unused"])


def test_readme_blocks_are_generated_from_the_results(tmp_path):
    text = "intro\n<!-- results:start -->\nstale\n<!-- results:end -->\n<!-- claims:start -->\n<!-- claims:end -->\nend"
    assert "No `results/paper_vs_ours.csv` yet" in update_readme.update(text, tmp_path)
    pd.DataFrame(
        {
            "claim": ["CSR storage shrinks the pruned model"],
            "measurement": ["dense / CSR"],
            "rule": ["smaller: above 1x (exact measurement)"],
            "ours": [7.8],
            "ours_text": ["7.80x (n=1)"],
            "unit": ["x"],
            "verdict": ["supported"],
        }
    ).to_csv(tmp_path / "paper_claims_checked.csv", index=False)
    pd.DataFrame(
        {
            "experiment": ["baseline"],
            "metric": ["final test_acc"],
            "paper": [0.7042],
            "paper_claim": [""],
            "ours": [0.711],
            "ours_std": [0.004],
            "n": [3],
            "difference": [0.0068],
            "agrees": [""],
            "conditions": ["seed=0"],
            "source": ["baseline_vs_paper.csv"],
        }
    ).to_csv(tmp_path / "paper_vs_ours.csv", index=False)
    new = update_readme.update(text, tmp_path)
    assert "stale" not in new and new.startswith("intro\n") and new.endswith("end")
    assert "| 70.42 %" in new and "| 71.10 % ± 0.40 pt (n=3)" in new and "+0.68 pt" in new
    assert "| 7.80x (n=1)" in new and "supported" in new and "smaller: above 1x" in new
    assert update_readme.update(new, tmp_path) == new  # idempotent


def test_readme_timings_sum_only_what_was_measured_from_scratch(tmp_path):
    pd.DataFrame(
        {
            "notebook": ["01_a.ipynb", "02_b.ipynb", "02_b.ipynb"],
            "profile": ["cpu"] * 3,
            "from_scratch": [True, True, False],
            "minutes": [4.5, 30.0, 2.0],
            "hardware": ["x"] * 3,
        }
    ).to_csv(tmp_path / "run_times.csv", index=False)
    block = update_readme.render("timings", tmp_path)
    assert "sum of the 2 notebooks measured from scratch (not measured from scratch: 01, 02, 03" in block
    assert "|      34.5 |" in block and "no (resumed)" in block


def test_readme_smoke_timings_come_from_the_smoke_results_and_stay_when_absent(tmp_path):
    text = "a\n<!-- smoke-timings:start -->\nold\n<!-- smoke-timings:end -->\nb"
    smoke = tmp_path / "smoke"
    assert update_readme.update(text, tmp_path, smoke) == text  # smoke never ran here: kept
    smoke.mkdir()
    pd.DataFrame(
        {"notebook": ["01_a.ipynb"], "profile": ["smoke"], "from_scratch": [True], "minutes": [0.25], "hardware": ["x"]}
    ).to_csv(smoke / "run_times.csv", index=False)
    new = update_readme.update(text, tmp_path, smoke)
    assert "old" not in new and "| smoke     | 01_a.ipynb" in new and "|      0.25 |" in new
    assert f"from `{smoke}/run_times.csv`" in new


# ------------------------------------------------- executed notebooks written back to notebooks/


def _executed_copy(source: Path, out: Path, parameters: dict) -> None:
    """What papermill writes: the notebook with outputs, volatile metadata and (maybe) an injected cell."""
    import nbformat

    notebook = nbformat.read(source, as_version=4)
    for i, cell in enumerate(notebook.cells):
        cell.metadata["papermill"] = {"duration": 1.5, "start_time": "2026-12-02T10:00:00", "status": "completed"}
        cell.metadata["execution"] = {"iopub.status.busy": "2026-12-02T10:00:00"}
        if cell.cell_type == "code":
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"output of cell {i}\n")]
            cell.execution_count = i
    if parameters:
        injected = nbformat.v4.new_code_cell(repr(parameters), metadata={"tags": [rn.INJECTED]})
        notebook.cells.insert(3, injected)
    notebook.metadata["papermill"] = {
        "start_time": "2026-12-02T10:00:00",
        "duration": 12.0,
        "parameters": parameters,
        "input_path": str(source),
        "output_path": str(out),
        "version": "2.7.0",
    }
    notebook.metadata["widgets"] = {"state": {"model-id-1234": {}}}
    nbformat.write(notebook, out)


def _layout(tmp_path: Path, published: Path | None) -> rn.Layout:
    return rn.Layout(
        tmp_path / "f",
        tmp_path / "r",
        tmp_path / "nb",
        tmp_path / "report.html",
        tmp_path / "runs",
        published=published,
    )


def test_cpu_runs_write_executed_notebooks_back_without_volatile_metadata(tmp_path, monkeypatch):
    import nbformat

    published = tmp_path / "notebooks"
    monkeypatch.setattr(rn, "layout", lambda profile: _layout(tmp_path, published))
    injected = []

    def fake_execute(source, out, *, parameters, **_):
        injected.append(parameters)
        _executed_copy(Path(source), Path(out), parameters)

    monkeypatch.setattr("papermill.execute_notebook", fake_execute)
    notebook = rn.select_notebooks(["02"])[0]
    assert rn.execute([notebook], "cpu", seeds=None, force=False, kernel="k", report=False) == 0
    assert injected == [{}]  # profile "cpu" is the parameters cell's own value: nothing injected
    written = nbformat.read(published / notebook.name, as_version=4)
    code = [c for c in written.cells if c.cell_type == "code"]
    assert code and all(c.outputs for c in code)  # the outputs are kept
    assert all("papermill" not in c.metadata and "execution" not in c.metadata for c in written.cells)
    assert set(written.metadata["papermill"]) == {"parameters"} and "widgets" not in written.metadata
    assert rn.source_digest(published / notebook.name) == rn.source_digest(notebook)  # same cells, same stamp

    monkeypatch.setattr(rn, "layout", lambda profile: _layout(tmp_path, published))
    assert rn.execute([notebook], "gpu", seeds=None, force=False, kernel="k", report=False) == 0
    assert injected[-1] == {"profile": "gpu"}  # a non-default value is injected, and shows in the notebook
    written = nbformat.read(published / notebook.name, as_version=4)
    assert sum(rn.INJECTED in c.metadata.get("tags", []) for c in written.cells) == 1


def test_smoke_runs_never_write_to_the_notebooks(tmp_path, monkeypatch):
    assert rn.layout("smoke").published is None and rn.layout("cpu").published == rn.NOTEBOOKS
    smoke = rn.layout("smoke")
    monkeypatch.setattr(rn, "layout", lambda profile: _layout(tmp_path, smoke.published))
    monkeypatch.setattr(
        "papermill.execute_notebook",
        lambda source, out, *, parameters, **_: _executed_copy(Path(source), Path(out), parameters),
    )
    before = {p.name: p.read_bytes() for p in rn.NOTEBOOKS.glob("*.ipynb")}
    assert rn.execute(rn.select_notebooks(["01"]), "smoke", seeds=None, force=False, kernel="k", report=False) == 0
    assert (tmp_path / "nb" / "01_baseline_cnn.ipynb").exists()
    assert {p.name: p.read_bytes() for p in rn.NOTEBOOKS.glob("*.ipynb")} == before


@pytest.mark.skipif("DYNPRUNE_NOTEBOOKS_DIGEST" not in os.environ, reason="run by ./run_tests.sh around the smoke run")
def test_the_smoke_profile_left_the_committed_notebooks_as_they_were():
    import hashlib

    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(rn.NOTEBOOKS.glob("*.ipynb")))).hexdigest()
    assert digest == os.environ["DYNPRUNE_NOTEBOOKS_DIGEST"]


@pytest.mark.skipif(not os.environ.get("DYNPRUNE_SMOKE_DIR"), reason="run by ./run_tests.sh after the smoke profile")
def test_every_figure_cell_of_a_driven_notebook_shows_its_figure():
    """``run_all.sh`` runs the kernel with matplotlib's Agg backend, which shows nothing: each
    ``save_figure`` cell of a notebook the driver executed must still carry its PNG."""
    executed = Path(os.environ["DYNPRUNE_SMOKE_DIR"]) / "notebooks"
    figure_cells = 0
    for source in rn.select_notebooks(None):
        cells = json.loads((executed / source.name).read_text())["cells"]
        for index, cell in enumerate(cells):
            if cell["cell_type"] == "code" and "save_figure(" in "".join(cell["source"]):
                figure_cells += 1
                kinds = [kind for output in cell.get("outputs", []) for kind in output.get("data", {})]
                assert kinds.count("image/png") == 1, f"{source.name} cell {index} shows {kinds}"
    assert figure_cells >= 10


def test_source_digest_ignores_outputs_metadata_and_the_injected_cell(tmp_path):
    source = rn.select_notebooks(["03"])[0]
    executed = tmp_path / source.name
    _executed_copy(source, executed, {"profile": "gpu"})
    assert rn.source_digest(executed) == rn.source_digest(source)
    edited = json.loads(source.read_text())
    edited["cells"][0]["source"] = ["# another title"]
    (tmp_path / "edited.ipynb").write_text(json.dumps(edited))
    assert rn.source_digest(tmp_path / "edited.ipynb") != rn.source_digest(source)


def test_library_digest_covers_the_study_subpackage(tmp_path, monkeypatch):
    for name in ("dynprune_lib/layers.py", "dynprune_lib/study/experiments.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    monkeypatch.setattr(rn, "ROOT", tmp_path)
    before = rn._library_digest()
    (tmp_path / "dynprune_lib/study/experiments.py").write_text("x = 2\n")
    assert rn._library_digest() != before


def test_prepared_notebooks_for_nbval_carry_no_committed_outputs(tmp_path):
    import nbformat

    source = tmp_path / "src" / "01_baseline_cnn.ipynb"
    source.parent.mkdir()
    _executed_copy(rn.select_notebooks(["01"])[0], source, {})
    rn.prepare([source], "smoke", tmp_path / "prepared", None)
    prepared = nbformat.read(tmp_path / "prepared" / source.name, as_version=4)
    assert all(not c.outputs for c in prepared.cells if c.cell_type == "code")
    assert any(rn.INJECTED in c.metadata.get("tags", []) for c in prepared.cells)  # smoke parameters injected
