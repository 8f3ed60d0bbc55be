"""The benchmarks write what ``study.goals_table`` reads: the envelope and their goals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_analysis import _write_results

from dynprune_lib.study import analysis

ROOT = Path(__file__).resolve().parent.parent


def test_dsr_overhead_benchmark_times_notebook_02s_network_and_states_its_goal(tmp_path):
    results = _write_results(tmp_path)  # what a goals table needs besides the benchmarks
    out = results / "bench_dsr_overhead.json"
    args = ["--rounds", "1", "--steps", "2", "--warmup", "1", "--updates", "1", "--threads", "1", "--out", str(out)]
    subprocess.run([sys.executable, str(ROOT / "bench" / "bench_dsr_overhead.py"), *args], check=True, cwd=ROOT)
    bench = json.loads(out.read_text())
    assert "commit" in bench and bench["machine"]["torch_threads"] == 1
    measured = bench["results"]
    assert measured["model"].startswith("DynamicCNN (notebook 02") and measured["batch_size"] == 128
    assert measured["precision"] == "bf16" and measured["dsr"]["n_prune"] > 0
    (goal,) = measured["goals"]
    assert goal["required"] == 1.1 and goal["measured"] == measured["dsr_vs_dense_epoch_ratio"]
    assert goal["met"] == (goal["measured"] <= goal["required"])
    goals = analysis.goals_table(results)
    row = goals[goals["source"].str.startswith("bench_dsr_overhead.json")]
    assert row["goal"].tolist() == [goal["goal"]] and row["source"].iloc[0].endswith("1 thread(s)")
