"""run_all.sh's driver: profiles, parameters, resuming, --force, and the README's generated tables."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


rn = _load("run_notebooks")
update_readme = _load("update_readme")


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
    assert rn.notebook_parameters(baseline, "cpu", [3]) == {"seed": 3}
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
        ["02_dynamic_cnn.ipynb", "smoke", False], ["02_dynamic_cnn.ipynb", "smoke", True]]  # one row each, latest kept


def test_timings_of_another_version_of_a_notebook_are_dropped(tmp_path):
    notebook = tmp_path / "02_x.ipynb"
    notebook.write_text('{"cells": []}')
    rn.record_time(tmp_path, notebook, "cpu", 600.0, True)
    rn.record_time(tmp_path, notebook, "cpu", 60.0, False)
    assert len(pd.read_csv(tmp_path / "run_times.csv")) == 2  # from scratch and resumed, same notebook
    notebook.write_text('{"cells": [], "metadata": {}}')  # edited: the old timings measured other work
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
    assert rn.execute(rn.select_notebooks(["01", "02"]), "smoke", seeds=None, force=False, kernel="k",
                      report=False) == 1
    assert executed == ["01_baseline_cnn.ipynb"]  # stopped at the first failure
    err = capsys.readouterr().err
    assert "01_baseline_cnn.ipynb FAILED" in err and "ValueError: bad sparsity" in err
    assert "cell 4" in err and "layer.set_sparsity(2)" in err
    assert not (where.notebooks / "01_baseline_cnn.stamp.json").exists()


def test_a_notebook_is_stale_when_an_earlier_one_re_ran(tmp_path, monkeypatch):
    where = rn.Layout(tmp_path / "f", tmp_path / "r", tmp_path / "nb", tmp_path / "report.html", tmp_path / "runs")
    monkeypatch.setattr(rn, "layout", lambda profile: where)
    executed = []
    monkeypatch.setattr("papermill.execute_notebook",
                        lambda source, out, **_: (executed.append(Path(source).name[:2]), Path(out).write_text("{}")))
    run = lambda only, force=False: rn.execute(rn.select_notebooks(only), "smoke", seeds=None, force=force,
                                                kernel="k", report=False)
    assert run(["01", "05"]) == 0 and executed == ["01", "05"]
    assert run(["01", "05"]) == 0 and executed == ["01", "05"]  # both up to date
    assert run(["01"], force=True) == 0 and run(["05"]) == 0
    assert executed == ["01", "05", "01", "05"]  # 01 re-ran, so 05 (which reads its results) is stale


def test_cli_rejects_bad_seeds():
    with pytest.raises(SystemExit):
        rn.main(["--seeds", "0,x", "--prepare-only", "unused"])


def test_readme_blocks_are_generated_from_the_results(tmp_path):
    text = "intro\n<!-- results:start -->\nstale\n<!-- results:end -->\n<!-- claims:start -->\n<!-- claims:end -->\nend"
    assert "No `results/paper_vs_ours.csv` yet" in update_readme.update(text, tmp_path)
    pd.DataFrame({"claim": ["CSR storage shrinks the pruned model"], "measurement": ["dense / CSR"], "ours": [7.8],
                  "ours_text": ["7.80x"], "unit": ["x"], "verdict": ["supported"]}).to_csv(
        tmp_path / "paper_claims_checked.csv", index=False)
    pd.DataFrame({"experiment": ["baseline"], "metric": ["final test_acc"], "paper": [0.7042], "paper_claim": [""],
                  "ours": [0.711], "difference": [0.0068], "agrees": [""], "conditions": ["seed=0"],
                  "source": ["baseline_vs_paper.csv"]}).to_csv(tmp_path / "paper_vs_ours.csv", index=False)
    new = update_readme.update(text, tmp_path)
    assert "stale" not in new and new.startswith("intro\n") and new.endswith("end")
    assert "| 70.42 %" in new and "| 71.10 %" in new and "+0.68 pt" in new
    assert "| 7.80x" in new and "supported" in new
    assert update_readme.update(new, tmp_path) == new  # idempotent


def test_readme_timings_sum_only_what_was_measured_from_scratch(tmp_path):
    pd.DataFrame({"notebook": ["01_a.ipynb", "02_b.ipynb", "02_b.ipynb"], "profile": ["cpu"] * 3,
                  "from_scratch": [True, True, False], "minutes": [4.5, 30.0, 2.0], "hardware": ["x"] * 3}).to_csv(
        tmp_path / "run_times.csv", index=False)
    block = update_readme.render("timings", tmp_path)
    assert "sum of the 2 notebooks measured from scratch (not measured from scratch: 01, 02, 03" in block
    assert "|      34.5 |" in block and "no (resumed)" in block


def test_readme_smoke_timings_come_from_the_smoke_results_and_stay_when_absent(tmp_path):
    text = "a\n<!-- smoke-timings:start -->\nold\n<!-- smoke-timings:end -->\nb"
    smoke = tmp_path / "smoke"
    assert update_readme.update(text, tmp_path, smoke) == text  # smoke never ran here: kept
    smoke.mkdir()
    pd.DataFrame({"notebook": ["01_a.ipynb"], "profile": ["smoke"], "from_scratch": [True], "minutes": [0.25],
                  "hardware": ["x"]}).to_csv(smoke / "run_times.csv", index=False)
    new = update_readme.update(text, tmp_path, smoke)
    assert "old" not in new and "| smoke     | 01_a.ipynb" in new and "|      0.25 |" in new
    assert f"from `{smoke}/run_times.csv`" in new
