"""The GPU check (``scripts/gpu_check.sh``): what a CPU can show of it.

Its notebook runner needs no Jupyter (the GPU machine's Python has none), a stage that
hangs or fails is stopped and named, its record reads the notebooks' histories, and
without CUDA it refuses at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from conftest import ROOT, load_script

gpu_check = load_script("gpu_check")

NO_JUPYTER = """\
import sys
for name in ("IPython", "nbformat", "papermill", "nbclient", "jupyter_client", "ipykernel"):
    sys.modules[name] = None  # import fails, importlib.util.find_spec says None: as where none is installed
"""


def test_parameters_are_injected_after_the_parameters_cell_and_must_be_declared():
    notebook = gpu_check.notebook_path("03")
    cells = gpu_check.code_cells(notebook, {"epochs": 2, "sparsities": [0.5]})
    injected = [i for i, (_, src) in enumerate(cells) if src.startswith("# injected parameters")]
    assert len(injected) == 1
    (position,) = injected
    assert "profile = " in cells[position - 1][1]  # right after the notebook's own parameters cell
    assert cells[position][1].splitlines()[1:] == ["epochs = 2", "sparsities = [0.5]"]
    assert len(cells) == 1 + sum(c["cell_type"] == "code" for c in json.loads(notebook.read_text())["cells"])
    with pytest.raises(ValueError, match="declares no parameter"):
        gpu_check.code_cells(notebook, {"learning_rate": 1.0})


def test_a_cell_runs_and_shows_its_last_expression():
    namespace: dict = {}
    assert gpu_check.run_cell("x = 2\nx * 21", namespace) == 42 and namespace["x"] == 2
    assert gpu_check.run_cell("y = 1", namespace) is None
    assert gpu_check.as_text(pd.DataFrame({"a": [1]})) == pd.DataFrame({"a": [1]}).to_string()
    assert gpu_check.as_text("x" * 3000).endswith(" ...")


def test_a_hung_stage_is_stopped_and_a_failed_one_keeps_its_tail(tmp_path):
    hung = gpu_check.run_stage("hang", [sys.executable, "-c", "import time; time.sleep(60)"], 1.0, tmp_path / "h.log")
    assert not hung["passed"] and hung["outcome"].startswith("timed out") and hung["seconds"] < 30
    failed = gpu_check.run_stage(
        "fail", [sys.executable, "-c", "print('the last words'); raise SystemExit(3)"], 30.0, tmp_path / "f.log"
    )
    assert failed["outcome"] == "failed (exit 3)" and failed["tail"] == ["the last words"]


def test_epoch_times_name_each_workload(tmp_path):
    pd.DataFrame({"epoch": [1, 2], "seconds": [3.0, 1.0], "seed": [0, 0]}).to_csv(tmp_path / "baseline.csv")
    pd.DataFrame(
        {"method": ["dense", "dsr", "dsr"], "sparsity_target": [float("nan"), 0.9, 0.9], "seconds": [2.0, 4.0, 2.5]}
    ).to_csv(tmp_path / "dynamic_cnn_histories.csv")
    pd.DataFrame({"run": ["wrn-28-2 seed 0"], "seconds": [9.0]}).to_csv(tmp_path / "wrn_history.csv")
    times = gpu_check.epoch_times(tmp_path)
    assert set(times) == {"baseline CNN", "DynamicCNN dense", "DynamicCNN dsr at 0.9", "wrn-28-2"}
    assert times["DynamicCNN dsr at 0.9"]["seconds"] == [4.0, 2.5]
    assert times["baseline CNN"]["first_epoch_s"] == 3.0 and times["baseline CNN"]["later_epochs_median_s"] == 1.0
    assert times["wrn-28-2"]["later_epochs_median_s"] is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA refusal")
def test_without_cuda_the_check_refuses_at_once():
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "no CUDA device" in result.stderr and "--device cpu" in result.stderr


@pytest.mark.skipif(not os.environ.get("DYNPRUNE_DATA"), reason="needs CIFAR-10 (DYNPRUNE_DATA)")
def test_a_notebook_runs_without_jupyter_and_the_record_says_so(tmp_path):
    """Notebook 01 in the gpu profile's shortened form, on a CPU, in a Python where IPython,
    nbformat and papermill cannot be imported (as on the GPU machine)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_JUPYTER)
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    record = tmp_path / "record.json"
    args = ["--device", "cpu", "--subset", "256", "--epochs", "1", "--only", "01", "--record", str(record)]
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = (ROOT / "build" / "gpu_check" / "logs" / "01.log").read_text()
    assert "ModuleNotFoundError" not in log and "final test_acc" in log  # the closing Markdown, as text
    data = json.loads(record.read_text())
    assert data["passed"] and data["device"] == "cpu" and [s["stage"] for s in data["stages"]] == ["notebook 01"]
    assert data["epoch_seconds"]["baseline CNN"]["seconds"] and data["machine"]["torch"] == torch.__version__


def test_a_spent_budget_starts_no_stage_and_the_record_is_written(tmp_path):
    record = tmp_path / "record.json"
    args = ["--device", "cpu", "--only", "01,05", "--budget", "0.5", "--record", str(record)]  # 5 s on a CPU
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1
    data = json.loads(record.read_text())
    assert [s["outcome"] for s in data["stages"]] == ["not run: the budget was spent"] * 2 and not data["passed"]
