"""The published protocol on a GPU (``scripts/gpu_protocol.py``): what a CPU can show of it.

A run split over device commands must follow the uninterrupted one exactly (the child is
killed at the deadline and the next call resumes from the last finished epoch); the record
carries the machine; notebook 04's read-back sets only complete, full-data runs of the
published recipe beside the published accuracy; without CUDA the script refuses at once.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from dynprune_lib.study import protocol
from dynprune_lib.study.profiles import WRN_RECIPES, wrn_recipe
from dynprune_lib.study.results import write_result
from dynprune_lib.train import load_checkpoint

from conftest import ROOT, load_script

gpu_protocol = load_script("gpu_protocol")
SCRIPT = str(ROOT / "scripts" / "gpu_protocol.py")
needs_data = pytest.mark.skipif(not os.environ.get("DYNPRUNE_DATA"), reason="needs CIFAR-10 (DYNPRUNE_DATA)")

#: A rehearsal small enough for a test: the tiny sparse recipe (DSR updates every 4 steps),
#: 256 images, 6 epochs of 2 steps each.
REHEARSAL = ["--device", "cpu", "--recipes", "wrn-10-1-dsr-smoke", "--subset", "256", "--epochs", "6"]
VOLATILE = ["seconds", "date", "commit"]


def _run(state, *extra, budget="600"):
    args = [sys.executable, SCRIPT, *REHEARSAL, "--state", str(state), "--budget", budget, *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=ROOT)


@needs_data
def test_a_run_killed_mid_way_resumes_to_the_uninterrupted_result(tmp_path):
    straight = _run(tmp_path / "straight")
    assert straight.returncode == 0, straight.stdout[-3000:] + straight.stderr[-3000:]

    # the child, killed as the deadline kills it, once its checkpoint holds a finished epoch
    split = tmp_path / "split"
    split.mkdir()
    child = subprocess.Popen(
        [sys.executable, SCRIPT, "--train", *REHEARSAL, "--state", str(split)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = None
    deadline = time.monotonic() + 600
    while child.poll() is None and time.monotonic() < deadline:
        found = list(split.glob("*.pt"))
        if found:
            checkpoint = found[0]
            child.kill()
            break
        time.sleep(0.02)
    child.wait()
    assert checkpoint is not None, "the child ended before it wrote a checkpoint"
    interrupted_at = int(load_checkpoint(checkpoint)["epoch"])
    assert 1 <= interrupted_at < 6  # a real interruption: the run was not finished

    resumed = _run(split, "--out", str(tmp_path / "out"))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumed from {checkpoint} after epoch {interrupted_at}" in resumed.stdout
    assert "every run is complete" in resumed.stdout

    a = pd.read_csv(tmp_path / "straight" / "wrn_published_protocol.csv").drop(columns=VOLATILE)
    b = pd.read_csv(tmp_path / "out" / "wrn_published_protocol.csv").drop(columns=VOLATILE)
    pd.testing.assert_frame_equal(a, b)  # every loss, accuracy, learning rate and DSR statistic
    assert a["epoch"].tolist() == [1, 2, 3, 4, 5, 6] and (a["device"] == "cpu").all()
    weights_a = load_checkpoint(next((tmp_path / "straight").glob("*.pt")))["model"]
    weights_b = load_checkpoint(tmp_path / "out" / checkpoint.name)["model"]
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


@needs_data
def test_a_spent_budget_records_what_finished_and_says_how_to_go_on(tmp_path):
    result = _run(tmp_path, budget="21")  # 1 s of training: data loading alone takes longer
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "timed out" in result.stdout and "nothing recorded" in result.stdout
    assert not (tmp_path / "wrn_published_protocol.csv").exists()


def _record(recipe, epochs, *, seed=0, train_images="all"):
    """A record of ``epochs`` finished epochs of ``recipe``, built as the script builds it."""
    history = pd.DataFrame(
        {"epoch": range(1, epochs + 1), "test_acc": [0.5 + e / 1000 for e in range(1, epochs + 1)], "seconds": 2.0}
    )
    provenance = {"device": "cuda", "hardware": "a GPU", "torch": "2.x", "commit": "abc", "date": "today"}
    return protocol.protocol_record(recipe, seed, history, {**provenance, "train_images": train_images})


def test_only_complete_full_data_runs_of_the_published_recipe_are_set_beside_the_anchor(tmp_path):
    dense, dsr = WRN_RECIPES["wrn-28-2"], WRN_RECIPES["wrn-28-2-dsr0.9"]
    shortened = wrn_recipe("wrn-28-2", epochs=3)
    cases = {
        "complete": _record(dense, dense.epochs),
        "partial": _record(dsr, 120),
        "subset": _record(dense, dense.epochs, train_images=512, seed=1),
        "shortened": _record(shortened, 3, seed=2),
    }
    write_result(pd.concat(cases.values(), ignore_index=True), tmp_path, "wrn_published_protocol")
    table = protocol.published_protocol_table(tmp_path).set_index(["recipe", "seed"])
    complete = table.loc[("wrn-28-2", 0)]
    assert complete["complete"] and complete["epochs"] == dense.epochs
    last = 0.5 + dense.epochs / 1000  # the last epoch's test accuracy in _record
    assert math.isclose(complete["difference_pt"], 100 * (last - dense.anchor))
    assert complete["best_test_acc"] == pytest.approx(last) and complete["median_epoch_s"] == 2.0
    partial = table.loc[("wrn-28-2-dsr0.9", 0)]
    assert not partial["complete"] and partial["epochs"] == 120 and math.isnan(partial["difference_pt"])
    for seed in (1, 2):  # a subset, a shortened recipe: complete, never beside the anchor
        assert table.loc[("wrn-28-2", seed), "complete"] and math.isnan(table.loc[("wrn-28-2", seed), "difference_pt"])
    sentence = protocol.published_protocol_sentence(protocol.published_protocol_table(tmp_path))
    assert f"{100 * (last - dense.anchor):+.2f} pt" in sentence
    assert f"stopped after 120 of {dsr.epochs} epochs" in sentence
    assert sentence.count("a rehearsal, not the published protocol") == 2


def test_a_record_with_missing_or_repeated_epochs_is_refused(tmp_path):
    record = _record(WRN_RECIPES["wrn-28-2"], 5)
    write_result(record.drop(index=2), tmp_path, "wrn_published_protocol")
    with pytest.raises(ValueError, match="does not hold epochs 1 to 4 once each"):
        protocol.published_protocol_table(tmp_path)


def test_without_a_record_nothing_is_shown_and_the_sentence_says_why(tmp_path):
    table = protocol.published_protocol_table(tmp_path)
    assert table.empty and "difference_pt" in table.columns
    assert "No GPU has run the published protocol" in protocol.published_protocol_sentence(table)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA refusal")
def test_without_cuda_the_protocol_refuses_at_once(tmp_path):
    result = subprocess.run(
        [sys.executable, SCRIPT, "--state", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and "no CUDA device" in result.stderr and "--device cpu" in result.stderr
    assert not any(tmp_path.iterdir())


def test_unknown_recipes_and_budgets_too_small_to_train_are_refused(tmp_path):
    with pytest.raises(ValueError, match="wrn-99"):
        gpu_protocol.main(["--device", "cpu", "--recipes", "wrn-99", "--state", str(tmp_path)])
    with pytest.raises(SystemExit, match="--budget must exceed"):
        gpu_protocol.main(["--device", "cpu", "--budget", "5", "--state", str(tmp_path)])
