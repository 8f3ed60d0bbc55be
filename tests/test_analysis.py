"""Notebook 05's analysis: paper vs ours, tables against sparsity, claims and their verdicts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import dynprune_lib as dp
from dynprune_lib import study
from dynprune_lib.study import analysis

from conftest import synthetic_cifar

PAPER_CNN = study.PAPER["dynamic_cnn"]


def _history(final_acc: float, epochs: int = 10) -> pd.DataFrame:
    accs = [final_acc - 0.01 * (epochs - e) for e in range(1, epochs + 1)]
    return pd.DataFrame(
        {
            "epoch": range(1, epochs + 1),
            "train_acc": accs,
            "test_acc": accs,
            "train_loss": 1.0,
            "test_loss": [0.9] * (epochs - 1) + [0.8],
        }
    )


def _write_results(
    directory: Path,
    *,
    dsr: float = 0.80,
    dense: float = 0.805,
    oneshot: float = 0.79,
    speedup: float = 0.99,
    dense_bytes: int = 1000,
    csr_bytes: int = 200,
) -> Path:
    """A results folder with every table the analysis reads, in the notebooks' schemas."""
    directory.mkdir(parents=True, exist_ok=True)
    study.compare_with_paper("baseline", _history(0.71), conditions={"seed": 0}).to_csv(
        directory / "baseline_vs_paper.csv", index=False
    )
    study.compare_with_paper("dynamic_cnn", _history(dsr), conditions={"seeds": [0]}).to_csv(
        directory / "dynamic_cnn_vs_paper.csv", index=False
    )
    methods = pd.DataFrame(
        {
            "method": ["dense", "dsr", "magnitude_oneshot", "baseline"],
            "seeds": [1, 1, 1, 1],
            "final_test_acc": [dense, dsr, oneshot, 0.71],
            "final_test_acc_min": [dense, dsr, oneshot, 0.71],
            "final_test_acc_max": [dense, dsr, oneshot, 0.71],
            "final_train_acc": [0.9, dsr + 0.02, 0.85, 0.8],
            "conv_sparsity": [0.0, 0.9, 0.9, 0.0],
            "sparse_layer_sparsity": [0.0, 0.905, 0.905, math.nan],
            "epochs": [10] * 4,
            "seconds_per_epoch": [30.0, 33.0, 31.0, 20.0],
            "train_minutes": [5.0, 5.5, 5.2, 3.3],
            "precision": ["bf16", "bf16", "bf16", "fp32"],
        }
    )
    methods.to_csv(directory / "dynamic_cnn_methods.csv", index=False)
    pd.DataFrame(
        {
            "format": ["dense (torch.save)", "CSR float32 (save_sparse)", "CSR float16 (save_sparse)"],
            "bytes": [dense_bytes, csr_bytes, csr_bytes // 2],
            "ratio_to_dense": [1.0, csr_bytes / dense_bytes, csr_bytes / dense_bytes / 2],
        }
    ).to_csv(directory / "dynamic_cnn_storage.csv", index=False)
    pd.DataFrame(
        {
            "batch": [1],
            "dense_ms": [1.0],
            "sparse_ms": [1.0 / speedup],
            "speedup": [speedup],
            "threads": [2],
            "device": ["cpu"],
        }
    ).to_csv(directory / "dynamic_cnn_latency.csv", index=False)
    runs = pd.DataFrame(
        {
            "method": ["dense", "dsr", "dsr"],
            "sparsity_target": [math.nan, 0.5, 0.9],
            "seed": [0, 0, 0],
            "final_test_acc": [0.57, 0.58, 0.56],
            "linear_sparsity": [0.0, 0.5, 0.9],
            "epochs": [10] * 3,
            "seconds_per_epoch": [10.0] * 3,
            "train_minutes": [1.7] * 3,
        }
    )
    runs.to_csv(directory / "dynamic_mlp_runs.csv", index=False)
    storage = pd.DataFrame(
        {
            "method": ["dense", "dsr"],
            "sparsity_target": [math.nan, 0.9],
            "seed": [0, 0],
            "sparsity": [0.0, 0.9],
            "format": ["CSR float32 (save_sparse)"] * 2,
            "bytes": [900, 150],
            "ratio_to_dense": [0.9, 0.15],
        }
    )
    storage.to_csv(directory / "dynamic_mlp_storage.csv", index=False)
    latency = pd.DataFrame(
        {
            "method": ["dense", "dsr", "set"],
            "sparsity": [0.0, 0.9, 0.9],
            "batch": [1, 1, 1],
            "dense_ms": [1.0, 1.0, 1.0],
            "sparse_ms": [1.0, 0.5, 0.5],
            "speedup": [1.0, 2.0, 2.0],
            "threads": [2] * 3,
            "device": ["cpu"] * 3,
        }
    )
    latency.to_csv(directory / "dynamic_mlp_latency.csv", index=False)
    pd.DataFrame(
        {
            "sparsity": [0.5, 0.9],
            "retrained": [0.58, 0.56],
            "dense MLP": [0.575, 0.30],
            "dense MLP - retrained": [-0.005, -0.26],
        }
    ).to_csv(directory / "dynamic_mlp_sparsity_claim.csv", index=False)
    pd.DataFrame(
        {
            "method": ["wrn-10-2-cpu", "HOG + logistic regression"],
            "seed": [0, 0],
            "train_seconds": [1200.0, 300.0],
            "profile": ["cpu", "cpu"],
        }
    ).to_csv(directory / "fig6_aspects.csv", index=False)
    pd.DataFrame(
        {
            "aspect": ["complexity", "interpretability"],
            "paper: higher for": ["deep learning", "traditional"],
            "network": ["wrn-10-2-cpu"] * 2,
            "network - traditional": [0.4, 0.1],
            "measurement agrees": ["yes", "no"],
        }
    ).to_csv(directory / "fig6_paper_claims.csv", index=False)
    pd.DataFrame(
        {"recipe": ["wrn-10-2-cpu"], "method": ["wrn-10-2-cpu"], "seed": [0], "epochs": [2], "test_acc": [0.6]}
    ).to_csv(directory / "wrn_vs_published.csv", index=False)
    return directory


def test_paper_vs_ours_holds_every_reported_number_and_the_figure6_reading(tmp_path):
    table = analysis.paper_vs_ours(_write_results(tmp_path))
    numeric = table[table["experiment"] != "wrn_vs_traditional"]
    expected = {(e, m): v for e in ("baseline", "dynamic_cnn") for m, v in study.PAPER[e].items()}
    assert {(e, m): p for e, m, p in zip(numeric["experiment"], numeric["metric"], numeric["paper"])} == expected
    final = numeric.set_index(["experiment", "metric"]).loc[("dynamic_cnn", "final test_acc")]
    assert final["ours"] == pytest.approx(0.80) and final["difference"] == pytest.approx(
        0.80 - PAPER_CNN["final test_acc"]
    )
    assert final["conditions"].endswith("; precision=bf16")  # from the DSR row of the methods table
    baseline = numeric.set_index(["experiment", "metric"]).loc[("baseline", "final test_acc")]
    assert "precision" not in baseline["conditions"]
    fig6 = table[table["experiment"] == "wrn_vs_traditional"]
    assert fig6["paper_claim"].tolist() == ["higher for deep learning", "higher for traditional"]
    assert fig6["ours"].tolist() == [0.4, 0.1] and fig6["agrees"].tolist() == ["yes", "no"]
    assert fig6["paper"].isna().all() and "profile=cpu" in fig6["conditions"].iloc[0]
    markdown = analysis.paper_vs_ours_markdown(table)
    assert f"{100 * PAPER_CNN['final test_acc']:.2f} %" in markdown and "80.00 %" in markdown
    assert "| disagrees" in markdown and "higher for traditional" in markdown


def test_a_missing_table_names_the_notebook_that_writes_it(tmp_path):
    results = _write_results(tmp_path)
    (results / "dynamic_cnn_methods.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"02_dynamic_cnn.*--only 02"):
        analysis.claims_table(results)
    with pytest.raises(KeyError, match="not a declared result"):
        study.read_result(results, "no_such")


@pytest.mark.parametrize("dense, kept", [(0.805, "supported"), (0.83, "not supported")])
def test_claim_verdicts_follow_the_stated_rules(tmp_path, dense, kept):
    claims = analysis.claims_table(_write_results(tmp_path, dense=dense)).set_index("measurement")
    keeps = claims[claims["claim"] == "dynamic pruning keeps or improves accuracy"]
    assert keeps["ours"].iloc[0] == pytest.approx(0.80 - dense) and keeps["verdict"].iloc[0] == kept
    beats = claims[claims.index.str.contains("magnitude_oneshot")]
    assert beats["ours"].iloc[0] == pytest.approx(0.01) and beats["verdict"].iloc[0] == "supported"
    size = claims[claims["claim"] == "CSR storage shrinks the pruned model"]
    assert size["ours"].iloc[0] == pytest.approx(5.0) and size["ours_text"].iloc[0] == "5.00x"
    speed = claims[claims["claim"] == "dynamic pruning improves inference speed"]
    assert speed["verdict"].tolist() == ["not supported"]  # 0.99x is no gain
    changed = claims[claims["claim"].str.startswith("sparsity can be changed")]["verdict"].tolist()
    assert changed == ["supported", "not supported"]  # -0.5 pt is kept, -26 pt is not
    fig6 = claims[claims["claim"].str.startswith("Figure 6")]["verdict"].tolist()
    assert fig6 == ["supported", "not supported"]
    reached = claims[claims["claim"].str.contains("reaches the reported")]
    assert reached["verdict"].iloc[0] == "supported"  # 80.00 % >= the paper's final


def test_tables_against_sparsity_and_training_time(tmp_path):
    results = _write_results(tmp_path)
    accuracy = analysis.accuracy_sparsity_table(results)
    assert "baseline" not in set(accuracy["method"])
    cnn = accuracy[accuracy["model"].str.startswith("CNN")].set_index("method")
    assert cnn.loc["dsr", "sparsity"] == 0.9 and cnn.loc["dsr", "final_test_acc"] == 0.80
    mlp = accuracy[accuracy["model"].str.startswith("MLP")]
    assert mlp["sparsity"].tolist() == [0.0, 0.5, 0.9]
    latency = analysis.latency_sparsity_table(results)
    assert "set" not in set(latency["method"])  # dense and DSR only, by default
    assert len(analysis.latency_sparsity_table(results, methods=("set",))) == 2  # the MLP's SET + the CNN row
    storage = analysis.storage_sparsity_table(results)
    assert storage.loc[storage["model"].str.startswith("CNN"), "sparsity"].unique().tolist() == [0.9]  # conv weights
    times = analysis.training_time_table(results).set_index(["model", "method"])["minutes"]
    assert times[("CNN (notebook 02)", "dsr")] == 5.5
    assert times[("WRN vs traditional (notebook 04)", "wrn-10-2-cpu")] == pytest.approx(20.0)
    per_epoch = analysis.training_time_table(results).set_index("method")["seconds_per_epoch"]
    assert per_epoch["wrn-10-2-cpu"] == pytest.approx(600.0) and np.isnan(per_epoch["HOG + logistic regression"])
    assert times[("MLP (notebook 03)", "dsr 0.9")] == 1.7


def test_run_conditions_record_the_data_copy_hardware_and_extras():
    data = synthetic_cifar(4, 2, source="/somewhere/cifar10-jpeg.tar.gz")
    conditions = study.run_conditions(data, "cpu", epochs=10, seeds=[0, 1])
    assert conditions["data"] == "cifar10-jpeg.tar.gz"  # the copy, not the machine's path
    assert (conditions["train_images"], conditions["test_images"], conditions["epochs"]) == (4, 2, 10)
    assert conditions["device"] == "cpu" and conditions["torch"] == torch.__version__
    assert conditions["hardware"] == dp.train.hardware_name("cpu")
    assert dp.train.hardware_name("cpu").endswith(f", {torch.get_num_threads()} threads")
