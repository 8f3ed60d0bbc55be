"""Section 3.2 experiments: configurations, masks, per-step schedule, resumable runs, tables."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import dynprune_lib as dp
from dynprune_lib import study
from dynprune_lib.layers import erk_sparsities, sparse_modules
from dynprune_lib.study.efficiency import sparsity_summary

from conftest import synthetic_cifar

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(**changes) -> study.ExperimentConfig:
    """The smoke CNN profile on 8 steps (2 epochs of 4 batches), every scheduler active."""
    base = study.experiment_profile("dynamic_cnn", "smoke")
    settings = {
        "epochs": 2,
        "batch_size": 16,
        "eval_batch_size": 32,
        "dsr_period": ((0.0, 1),),
        "regrow_period": 1,
        "gradual": (0.25, 0.75),
        "gradual_every": 1,
    }
    return dataclasses.replace(base, **{**settings, **changes})


# --------------------------------------------------------------------------- configuration


def test_profiles_overrides_and_errors():
    cpu = study.experiment_profile("dynamic_cnn", "cpu")
    assert cpu.epochs == 10 and cpu.model == "cnn" and cpu.sparsity == 0.9
    assert study.experiment_profile("dynamic_cnn", "cpu", epochs=None) == cpu  # None keeps
    assert study.experiment_profile("dynamic_cnn", "cpu", epochs=3).epochs == 3
    assert study.experiment_profile("dynamic_mlp", "gpu").seeds == (0, 1, 2)
    with pytest.raises(ValueError, match="profile"):
        study.experiment_profile("dynamic_cnn", "tpu")
    with pytest.raises(ValueError, match="experiment"):
        study.experiment_profile("wrn", "cpu")
    with pytest.raises(TypeError, match="unknown"):
        study.experiment_profile("dynamic_cnn", "cpu", learning_rate=1.0)
    with pytest.raises(ValueError, match="methods"):
        dataclasses.replace(cpu, methods=("dense", "lottery"))
    with pytest.raises(ValueError, match="dsr_period"):
        dataclasses.replace(cpu, dsr_period=((0.5, 100),))
    with pytest.raises(ValueError, match="sparsities"):
        dataclasses.replace(cpu, sparsities=(1.0,))
    with pytest.raises(ValueError, match="precision"):
        dataclasses.replace(cpu, precision="fp16")
    # precision changes a run, so it is part of the checkpoint key
    assert dataclasses.replace(cpu, precision="fp32").training_key("dsr", 0.9) != cpu.training_key("dsr", 0.9)


def test_training_key_ignores_what_a_notebook_runs():
    cpu = study.experiment_profile("dynamic_cnn", "cpu")
    key = cpu.training_key("dsr", 0.9)
    assert dataclasses.replace(cpu, seeds=(0, 1, 2), name="x").training_key("dsr", 0.9) == key
    assert dataclasses.replace(cpu, lr=0.2).training_key("dsr", 0.9) != key
    assert cpu.training_key("set", 0.9) != key and cpu.training_key("dsr", 0.8) != key


# --------------------------------------------------------------------------- masks


def test_sparse_layer_target_meets_conv_sparsity_with_dense_stem():
    model = dp.DynamicCNN(widths=(8, 16, 32), convs_per_stage=1)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    total = sum(m.weight.numel() for m in convs)
    sparse = total - convs[0].weight.numel()  # the first convolution stays dense
    target = study.sparse_layer_target(model, 0.9, "conv")
    assert target == math.ceil(0.9 * total) / sparse
    study.init_random_masks(model, target, distribution="uniform", generator=torch.Generator().manual_seed(0))
    zeros = sum(int((m.weight == 0).sum()) for m in convs)
    assert 0.9 <= zeros / total < 0.9 + len(convs) / total
    with pytest.raises(ValueError, match="dense layers hold too many"):
        study.sparse_layer_target(dp.DynamicCNN(widths=(64, 2), convs_per_stage=1), 0.99, "conv")


def test_init_random_masks_erk_is_the_erk_distribution_and_seeded():
    model = dp.MLP(in_features=48, hidden=(32, 16), sparsity=0.0)
    layers = dict(sparse_modules(model))
    got = study.init_random_masks(model, 0.8, distribution="erk", generator=torch.Generator().manual_seed(1))
    expected = erk_sparsities([m.weight.shape for m in layers.values()], 0.8)
    for (name, layer), s in zip(layers.items(), expected):
        n = layer.weight.numel()
        assert got[name] == math.ceil(s * n - 1e-9) / n
        assert int((~layer.mask).sum()) == math.ceil(s * n - 1e-9)
        assert torch.all(layer.weight[~layer.mask] == 0)
    again = dp.MLP(in_features=48, hidden=(32, 16), sparsity=0.0)
    study.init_random_masks(again, 0.8, distribution="erk", generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(a.mask, b.mask) for (_, a), (_, b) in zip(sparse_modules(model), sparse_modules(again)))
    with pytest.raises(ValueError, match="distribution"):
        study.init_random_masks(model, 0.8, distribution="normal", generator=torch.Generator())


# --------------------------------------------------------------------------- per-step schedule


def test_step_schedule_steps_one_cycle_per_step_and_resumes():
    def make():
        param = nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([param], lr=0.1)
        return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=20, cycle_momentum=False)

    ref_opt, ref = make()
    expected = []
    for _ in range(20):
        ref_opt.step()
        ref.step()
        expected.append(ref_opt.param_groups[0]["lr"])

    class Pruner:
        def __init__(self):
            self.steps = 0

        def step(self):
            self.steps += 1

        def epoch_end(self, epoch):
            return {"sparsity": 0.5}

        def state_dict(self):
            return {"steps": self.steps}

        def load_state_dict(self, state):
            self.steps = state["steps"]

    opt, sched = make()
    hook = dp.StepSchedule(sched, Pruner())
    got = []
    for i in range(20):
        opt.step()
        hook.step()
        got.append(opt.param_groups[0]["lr"])
        if i == 9:  # resume half-way into a fresh hook
            state = hook.state_dict()
            opt, sched = make()
            hook = dp.StepSchedule(sched, Pruner())
            hook.load_state_dict(state)
    assert got == pytest.approx(expected, rel=1e-12)
    assert hook.pruner.steps == 20 and hook.epoch_end(0) == {"sparsity": 0.5}
    assert dp.StepSchedule(sched).epoch_end(0) == {}
    assert dp.StepSchedule(sched, columns=lambda: {"sparsity": 0.0}).epoch_end(0) == {"sparsity": 0.0}
    with pytest.raises(ValueError, match="columns"):
        dp.StepSchedule(sched, Pruner(), columns=lambda: {})
    with pytest.raises(ValueError, match="pruner"):
        dp.StepSchedule(sched).load_state_dict(state)
    with pytest.raises(TypeError, match="lr_scheduler"):
        dp.StepSchedule(object())


# --------------------------------------------------------------------------- runs


@pytest.mark.parametrize("method", study.METHODS + study.ERK_METHODS)
def test_every_method_trains_reaches_its_sparsity_and_resumes(tmp_path, method):
    data, config = synthetic_cifar(), _config()
    run = study.train_run(config, data, method, seed=0, run_dir=tmp_path, progress=False, verbose=False)
    assert list(run.history["epoch"]) == [1, 2]
    summary = sparsity_summary(run.model)
    if method == "dense":
        assert summary["conv"] == 0.0 and run.log is None and run.sparsity is None
    else:
        assert summary["conv"] >= 0.9  # at least 90 % of all convolution weights are zero
        assert run.log is not None and (run.log["pruned"] > 0).any()
        assert "sparsity" in run.history.columns
    if method == "dsr":
        assert "threshold" in run.history.columns
    if method in ("dsr", "set", "rigl"):  # the DSR reference's start: every sparse layer alike (up to rounding)
        values = list(run.layer_sparsity.values())
        assert config.distribution == "uniform" and max(values) - min(values) < 0.005
    if method in study.ERK_METHODS:  # their papers' start: ERK whatever the profile's distribution
        layers = [layer for _, layer in dp.sparse_modules(study.build_model(config))]
        target = study.sparse_layer_target(study.build_model(config), 0.9, "conv")
        expected = erk_sparsities([layer.weight.shape for layer in layers], target)
        assert list(run.layer_sparsity.values()) == pytest.approx(expected, abs=0.005)
        assert method in run.checkpoint.name and run.method == method
    # Finished: a second call restores the run instead of training (the same wall times come back).
    again = study.train_run(config, data, method, seed=0, run_dir=tmp_path, progress=False, verbose=False)
    pd.testing.assert_frame_equal(again.history, run.history)
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(), run.model.state_dict().values()))


def test_oneshot_branches_from_the_dense_run_and_ends_as_the_run_trained_alone(tmp_path, capsys):
    """Until its prune, one-shot pruning is the dense run: started from the dense run's state
    after the shared epochs, it ends bit for bit as the one-shot run trained from scratch (the
    oracle), its pruner included; a state of another run is refused."""
    data, config = synthetic_cifar(), _config(epochs=3)
    assert study.shared_epochs(config, 4) == 2  # the prune follows step round(0.8 * 12) = 10, in epoch 3
    alone = study.train_run(config, data, "magnitude_oneshot", run_dir=tmp_path / "alone", verbose=False)
    dense = study.train_run(config, data, "dense", run_dir=tmp_path / "branch", verbose=False)
    assert dp.train.epoch_checkpoint(dense.checkpoint, 2).exists()
    capsys.readouterr()
    branched = study.train_run(config, data, "magnitude_oneshot", run_dir=tmp_path / "branch", verbose=True)
    assert "starting from its state after them" in capsys.readouterr().out
    cols = [c for c in alone.history.columns if c != "seconds"]
    assert {"sparsity", "mask_sparsity"} <= set(cols) and set(dense.history.columns) == set(alone.history.columns)
    pd.testing.assert_frame_equal(branched.history[cols], alone.history[cols], check_exact=True)
    pd.testing.assert_frame_equal(dense.history[cols].iloc[:2], alone.history[cols].iloc[:2], check_exact=True)
    assert branched.history["seconds"].iloc[:2].tolist() == dense.history["seconds"].iloc[:2].tolist()
    pd.testing.assert_frame_equal(branched.log, alone.log, check_exact=True)
    for x, y in zip(branched.model.state_dict().values(), alone.model.state_dict().values()):
        assert torch.equal(x, y)
    # Without the dense run's state the one-shot run trains the shared epochs itself.
    (tmp_path / "alone" / branched.checkpoint.name).unlink()
    study.train_run(config, data, "magnitude_oneshot", run_dir=tmp_path / "alone", verbose=True)
    assert "none saved, training them" in capsys.readouterr().out
    # Another network's state is not a branch point.
    wider = dataclasses.replace(config, widths=(8, 16, 32, 64, 256))
    model = study.build_model(wider)
    optimizer = study.experiment_optimizer(wider, model)
    loader = study.experiment_loaders(wider, data)[0]
    lr = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    with pytest.raises(dp.CheckpointError, match="parameters"):
        dp.train.branch_checkpoint(
            dp.train.epoch_checkpoint(dense.checkpoint, 2),
            tmp_path / "x.pt",
            model=model,
            optimizer=optimizer,
            train_loader=loader,
            pruner=dp.StepSchedule(lr),
            pruner_state=lambda state: state,
        )
    assert not (tmp_path / "x.pt").exists()


def test_dsr_schedule_derived_from_the_reference_gives_the_reference_back_on_its_own_protocol():
    """On WRN-28-2 for 200 epochs of 500 steps the derivation returns the reference's own settings
    (--n-prune-params 20000, wrnet_schedule.yaml's periods, --stop-rewire-epoch 190); on the cpu
    profile's 10 epochs of 391 steps, its phases at the same fractions and updates per epoch."""
    recipe = study.WRN_RECIPES["wrn-28-2-dsr0.9"]
    wrn = dp.WideResNet(recipe.depth, recipe.widen_factor, sparse=True, sparsity=0.9)
    cpu = study.experiment_profile("dynamic_cnn", "cpu")
    reference = study.dsr_schedule(dataclasses.replace(cpu, epochs=200), wrn, 500)
    assert reference == {"n_prune": 20_000, "period": {0: 100, 25: 200, 80: 400, 140: 800}, "end_step": 190 * 500}
    ours = study.dsr_schedule(cpu, study.build_model(cpu), 391)
    assert ours["period"] == {0: 78, 1: 156, 4: 313, 7: 626}  # 100 * 391 / 500 = 78.2, ...
    assert ours["end_step"] == round(0.95 * 3910)
    wrn_live = sum(int(m.mask.sum()) for _, m in dp.sparse_modules(wrn))
    assert 0.13 < 20_000 / wrn_live < 0.15  # the reference reallocates about 14 % of its live weights
    model = study.build_model(cpu)
    study.init_random_masks(model, 0.9, generator=torch.Generator().manual_seed(0))
    cnn_live = sum(int(m.mask.sum()) for _, m in dp.sparse_modules(model))
    assert study.dsr_schedule(cpu, model, 391)["n_prune"] == round(20_000 * cnn_live / wrn_live)
    fixed = study.dsr_schedule(dataclasses.replace(cpu, dsr_n_prune=600, dsr_period=((0.0, 100), (0.5, 0))), wrn, 391)
    assert fixed["n_prune"] == 600 and fixed["period"] == {0: 100, 5: 0}  # a profile's own values win


@pytest.mark.parametrize("experiment", ["dynamic_cnn", "dynamic_mlp"])
def test_dsr_reallocates_a_small_share_of_the_live_weights_at_every_sparsity_of_the_sweeps(experiment):
    """Regression: N_p was scaled by *all* sparse-layer weights, so the MLP at 0.99 had to prune
    23,513 of its 17,065 live weights each update; no update could, its threshold doubled every
    epoch and the run collapsed to chance. Scaled by live weights it is the reference's ~14 %."""
    for profile in ("cpu", "gpu"):
        config = study.experiment_profile(experiment, profile)
        for sparsity in sorted({config.sparsity, *config.sparsities, *config.inference_sparsities}):
            model = study.build_model(config)
            target = study.sparse_layer_target(model, sparsity, config.sparsity_scope)
            study.init_random_masks(model, target, distribution="uniform", generator=torch.Generator())
            live = sum(int(m.mask.sum()) for _, m in dp.sparse_modules(model))
            share = study.dsr_schedule(config, model, 391)["n_prune"] / live
            assert 0.1 < share < 0.2, (profile, sparsity, share)


def test_dsr_period_schedule_follows_the_epochs_fit_runs(tmp_path):
    """fit tells the scheduler the 0-based index of the epoch just finished: with periods
    {epoch 0: 1, epoch 2: none} DSR updates at every step of epochs 1 and 2, not after."""
    config = _config(epochs=3, dsr_period=((0.0, 1), (0.67, 0)))
    run = study.train_run(config, synthetic_cifar(), "dsr", run_dir=tmp_path, progress=False, verbose=False)
    steps = sorted(set(run.log["step"]) - {0})
    assert steps == list(range(1, 9))  # 4 steps per epoch


def test_runs_are_deterministic_under_the_seed(tmp_path):
    data, config = synthetic_cifar(), _config()
    a = study.train_run(config, data, "rigl", seed=3, run_dir=tmp_path / "a", progress=False, verbose=False)
    b = study.train_run(config, data, "rigl", seed=3, run_dir=tmp_path / "b", progress=False, verbose=False)
    cols = [c for c in a.history.columns if c != "seconds"]
    pd.testing.assert_frame_equal(a.history[cols], b.history[cols], check_exact=True)
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    c = study.train_run(config, data, "rigl", seed=4, run_dir=tmp_path / "a", progress=False, verbose=False)
    assert not torch.equal(c.model.features[4].mask, a.model.features[4].mask)


def test_parallel_runs_train_in_workers_exactly_the_runs_trained_here(tmp_path):
    data, config = synthetic_cifar(), _config(threads_per_run=1)
    here = study.run_methods(
        config, data, methods=["dense", "dsr"], seeds=[0, 1], run_dir=tmp_path / "here", verbose=False
    )
    parallel = dataclasses.replace(config, parallel_runs=2)
    assert parallel.training_key("dsr", 0.9) == config.training_key("dsr", 0.9)  # the same runs, same files
    workers = study.run_methods(
        parallel, data, methods=["dense", "dsr"], seeds=[0, 1], run_dir=tmp_path / "workers", verbose=False
    )
    assert [(r.method, r.seed) for r in workers] == [(r.method, r.seed) for r in here]
    for a, b in zip(here, workers):
        assert b.checkpoint.parent == tmp_path / "workers" and b.checkpoint.name == a.checkpoint.name
        cols = [c for c in a.history.columns if c != "seconds"]
        pd.testing.assert_frame_equal(a.history[cols], b.history[cols], check_exact=True)
        assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    assert torch.get_num_threads() == 1  # the one_thread fixture's setting, restored after each run


def test_workers_get_the_one_shot_runs_last(tmp_path, monkeypatch):
    """Workers train the one-shot runs after every other run: their dense runs are done by then
    (they start from them), and the short runs fill the end instead of a long one alone."""
    from dynprune_lib.study import experiments

    submitted = []
    monkeypatch.setattr(
        experiments, "_train_in_workers", lambda workers, data, calls, verbose: submitted.extend(c[2] for c in calls)
    )
    config = _config(threads_per_run=1, parallel_runs=2)
    methods = ["magnitude_oneshot", "dense", "dsr"]
    runs = study.run_methods(config, synthetic_cifar(), methods=methods, seeds=[0, 1], run_dir=tmp_path, verbose=False)
    assert [job[0] for job in submitted] == ["dense", "dense", "dsr", "dsr", "magnitude_oneshot", "magnitude_oneshot"]
    assert [(r.method, r.seed) for r in runs] == [(m, s) for m in methods for s in (0, 1)]  # returned as asked


def test_fused_sgd_trains_every_method_as_torch_default_sgd(tmp_path):
    """``fused_sgd`` against PyTorch's default (for-loop) SGD, the oracle, through every method's
    pruner and its edits of the momentum buffers: the same training up to rounding, its own run key."""
    data, config = synthetic_cifar(), _config(fused_sgd=True)
    default = dataclasses.replace(config, fused_sgd=False)
    assert study.experiment_optimizer(config, nn.Linear(2, 2)).defaults["fused"]
    assert study.experiment_optimizer(default, nn.Linear(2, 2)).defaults["fused"] is None  # as before the knob
    assert config.training_key("dsr", 0.9) != default.training_key("dsr", 0.9)
    fused = study.run_methods(config, data, seeds=[0], run_dir=tmp_path, verbose=False)
    reference = study.run_methods(default, data, seeds=[0], run_dir=tmp_path, verbose=False)
    assert [r.method for r in fused] == [r.method for r in reference] == list(config.methods)
    for a, b in zip(fused, reference):
        assert a.checkpoint != b.checkpoint
        cols = [c for c in a.history.columns if c != "seconds"]
        pd.testing.assert_frame_equal(a.history[cols], b.history[cols], rtol=1e-4)
        for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


def test_threads_per_run_is_part_of_a_run_and_parallel_runs_needs_it(tmp_path):
    profile = study.experiment_profile("dynamic_cnn", "gpu")  # PyTorch's threads
    assert dataclasses.replace(profile, threads_per_run=1).training_key("dsr", 0.9) != profile.training_key("dsr", 0.9)
    with pytest.raises(ValueError, match="parallel_runs=2 needs threads_per_run"):
        dataclasses.replace(profile, parallel_runs=2)
    torch.set_num_threads(2)
    try:
        study.train_run(_config(threads_per_run=1), synthetic_cifar(), "dense", run_dir=tmp_path, verbose=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_baseline_seeds_train_in_workers_exactly_as_here(tmp_path):
    data = synthetic_cifar()
    recipe = study.BASELINE.replace(epochs=1, seeds=(0, 1), threads_per_run=1, parallel_runs=1)
    here = study.train_baselines(data, recipe=recipe, run_dir=tmp_path / "here", verbose=False)
    workers = study.train_baselines(
        data, recipe=recipe.replace(parallel_runs=2), run_dir=tmp_path / "workers", verbose=False
    )
    cols = [c for c in here.columns if c != "seconds"]
    pd.testing.assert_frame_equal(here[cols], workers[cols], check_exact=True)
    names = sorted(p.name for p in (tmp_path / "here").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "workers").iterdir()) and all("_t1" in n for n in names)
    for seed in recipe.seeds:
        a, _ = study.train_baseline(data, recipe=recipe, seed=seed, run_dir=tmp_path / "here", verbose=False)
        b, _ = study.train_baseline(data, recipe=recipe, seed=seed, run_dir=tmp_path / "workers", verbose=False)
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="parallel_runs=2 needs threads_per_run"):
        study.BaselineRecipe(parallel_runs=2)


def test_run_errors_name_the_argument(tmp_path):
    data = synthetic_cifar()
    with pytest.raises(ValueError, match="method"):
        study.train_run(_config(), data, "lottery", run_dir=tmp_path)
    with pytest.raises(ValueError, match="dense"):
        study.train_run(_config(), data, "dense", sparsity=0.5, run_dir=tmp_path)
    with pytest.raises(ValueError, match="gradual"):  # would end after the last step
        study.train_run(_config(gradual_every=7), data, "magnitude_gradual", run_dir=tmp_path)
    with pytest.raises(ValueError, match="warmup"):
        study.train_run(_config(warmup=0.1), data, "dense", run_dir=tmp_path)


def test_baseline_history_reads_notebook_01_or_trains(tmp_path):
    data = synthetic_cifar()
    rows = pd.DataFrame(
        {
            "epoch": [1, 2],
            "train_loss": [2.0, 1.5],
            "train_acc": [0.3, 0.4],
            "test_loss": [1.9, 1.6],
            "test_acc": [0.35, 0.42],
            "lr": 1e-3,
            "seconds": 1.0,
        }
    )
    rows.to_csv(tmp_path / "baseline.csv", index=False)
    history, source = study.baseline_history(tmp_path, data, epochs=2, run_dir=tmp_path / "runs", verbose=False)
    assert "notebook 01" in source
    pd.testing.assert_frame_equal(history, rows.assign(seed=0))  # a one-run file without a seed column
    history, source = study.baseline_history(tmp_path, data, epochs=1, run_dir=tmp_path / "runs", verbose=False)
    assert "trained here" in source and "2 epochs" in source
    assert history["seed"].tolist() == list(study.BASELINE.seeds) and (history["epoch"] == 1).all()


# --------------------------------------------------------------------------- tables


def _fake_run(method: str, seed: int, accs: list[float], zeros: int = 0) -> study.Run:
    """A run with a given history and a 3x3 convolution holding ``zeros`` zero weights of 9."""
    history = pd.DataFrame(
        {
            "epoch": range(1, len(accs) + 1),
            "train_loss": 1.0,
            "train_acc": 0.5,
            "test_loss": 1.0,
            "test_acc": accs,
            "lr": 0.1,
            "seconds": 2.0,
        }
    )
    model = nn.Conv2d(1, 1, 3, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0).view(-1)[:zeros] = 0.0
    config = study.experiment_profile("dynamic_cnn", "smoke")
    return study.Run(method, seed, 0.9, model, history, None, {}, Path("unused.pt"), config)


def test_method_table_aggregates_seeds_and_adds_the_baseline():
    runs = [_fake_run("dsr", 0, [0.5, 0.7], 8), _fake_run("dsr", 1, [0.6, 0.8], 7), _fake_run("set", 0, [0.4, 0.6])]
    baseline = runs[2].history.assign(test_acc=[0.55, 0.65])
    table = study.method_table(runs, baseline=baseline).set_index("method")
    assert list(table.index) == ["dsr", "set", "baseline"]
    assert table.loc["dsr", "seeds"] == 2
    assert table.loc["dsr", "final_test_acc"] == pytest.approx(0.75)
    assert table.loc["dsr", "final_test_acc_std"] == pytest.approx(np.std([0.7, 0.8], ddof=1))
    assert (table.loc["dsr", "final_test_acc_min"], table.loc["dsr", "final_test_acc_max"]) == (0.7, 0.8)
    assert table.loc["dsr", "best_test_acc"] == pytest.approx(0.75)
    assert table.loc["dsr", "conv_sparsity"] == pytest.approx((8 / 9 + 7 / 9) / 2)
    # compute: a 3x3 convolution over 32x32 has 30 * 30 * 9 multiply-adds, the non-zero weights' share of them
    assert table.loc["dsr", "flop_sparsity"] == pytest.approx((8 / 9 + 7 / 9) / 2)
    assert table.loc["dsr", "nonzero_multiply_adds"] == pytest.approx(900 * (1 + 2) / 2)
    dense_macs = study.count_flops(dp.BaselineCNN())["flops"] / 2
    assert table.loc["baseline", "nonzero_multiply_adds"] == dense_macs and table.loc["baseline", "flop_sparsity"] == 0
    assert table.loc["dsr", "train_minutes"] == pytest.approx(4 / 60)
    assert math.isnan(table.loc["set", "final_test_acc_std"])
    assert table.loc["baseline", "final_test_acc"] == 0.65 and table.loc["baseline", "conv_sparsity"] == 0.0
    assert table.loc["dsr", "precision"] == runs[0].config.precision and table.loc["baseline", "precision"] == "fp32"
    with pytest.raises(ValueError, match="empty"):
        study.method_table([])
    long = study.histories_frame(runs)
    assert len(long) == 6 and set(long["method"]) == {"dsr", "set"}
    assert list(study.mean_history(runs[:2])["test_acc"]) == pytest.approx([0.55, 0.75])


def test_target_table_checks_accuracy_sparsity_and_time():
    paper_final = study.PAPER["dynamic_cnn"]["final test_acc"]
    good = _fake_run("dsr", 0, [0.5, paper_final + 0.01], zeros=9)  # 9 of 9 weights zero
    table = study.target_table(good, time_budget_minutes=1.0).set_index("criterion")
    assert table["met"].all()
    assert table.loc["fraction of conv weights that are zero (least over seeds)", "ours"] == 1.0
    bad = _fake_run("dsr", 0, [0.5, paper_final - 0.01], zeros=1)
    table = study.target_table(bad, time_budget_minutes=0.01)
    assert not table["met"].any() and len(table) == 3
    # over seeds: the mean accuracy (here below the paper's) and the least sparse run decide
    table = study.target_table([good, bad], time_budget_minutes=1.0).set_index("criterion")
    assert table["ours"].iloc[0] == pytest.approx(paper_final) and table["n"].iloc[0] == 2
    assert table.loc["fraction of conv weights that are zero (least over seeds)", "ours"] == pytest.approx(1 / 9)


def test_sparsity_claim_table_pairs_by_seed_and_never_compares_a_model_with_itself():
    runs = pd.DataFrame(
        {
            "method": ["dense", "dsr", "dsr", "dsr", "dsr"],
            "sparsity_target": [math.nan, 0.5, 0.5, 0.9, 0.9],
            "seed": [0, 0, 1, 0, 1],
            "final_test_acc": [0.6, 0.58, 0.57, 0.5, 0.52],
        }
    )
    inference = pd.DataFrame(
        {
            "source": ["dense"] * 3 + ["dsr 0.5"] * 4,
            "source_sparsity": [math.nan] * 3 + [0.5] * 4,
            "seed": [0, 0, 0, 0, 0, 1, 1],
            "sparsity_target": [0.5, 0.9, 0.9, 0.5, 0.9, 0.5, 0.9],
            "test_acc": [0.59, 0.3, 0.3, 0.58, 0.45, 0.57, 0.44],
            "batch": [1, 1, 128, 1, 1, 1, 1],
        }
    )
    table = study.sparsity_claim_table(runs, inference)
    assert set(zip(table["source"], table["sparsity"], table["seed"])) == {
        ("dense", 0.5, 0),
        ("dense", 0.9, 0),  # one row per seed, whatever the batch sizes timed
        ("dsr 0.5", 0.9, 0),
        ("dsr 0.5", 0.9, 1),  # the DSR model trained at 0.5 is not compared at 0.5 with itself
    }
    rows = table.set_index(["source", "sparsity", "seed"])
    assert rows.loc[("dsr 0.5", 0.9, 1), "retrained"] == 0.52  # paired with its own seed
    assert rows.loc[("dsr 0.5", 0.9, 1), "difference"] == pytest.approx(0.44 - 0.52)
    assert rows.loc[("dense", 0.5, 0), "difference"] == pytest.approx(0.59 - 0.58)


def test_a_run_at_chance_is_never_a_reference_and_is_drawn_apart():
    """Regression: notebook 03's DSR MLP at 0.99 collapsed to 10.00 % and was the reference of
    two "sparsity changed at inference" rows; a run within 2 pt of chance is flagged instead."""
    assert study.at_chance(0.1) and study.at_chance(0.1199) and not study.at_chance(0.125)
    runs = pd.DataFrame(
        {
            "method": ["dense", "dsr", "dsr", "dsr"],
            "sparsity_target": [math.nan, 0.5, 0.99, 0.99],
            "seed": [0, 0, 0, 1],
            "final_test_acc": [0.6, 0.58, 0.10, 0.31],
        }
    )
    inference = pd.DataFrame(
        {
            "source": ["dense", "dense", "dense"],
            "source_sparsity": [math.nan] * 3,
            "seed": [0, 0, 1],
            "sparsity_target": [0.5, 0.99, 0.99],
            "test_acc": [0.59, 0.2, 0.21],
        }
    )
    table = study.sparsity_claim_table(runs, inference)
    assert set(zip(table["sparsity"], table["seed"])) == {(0.5, 0), (0.99, 1)}  # not against the collapse
    figure = study.plot_accuracy_vs_sparsity(runs.assign(at_chance=study.at_chance(runs["final_test_acc"])))
    crosses = [line for line in figure.axes[0].lines if "at chance" in str(line.get_label())]
    assert len(crosses) == 1 and list(crosses[0].get_ydata()) == [0.10]
    plt.close(figure)


def test_inference_sweep_and_run_latency_label_their_rows(tmp_path):
    data = synthetic_cifar()
    config = dataclasses.replace(
        study.experiment_profile("dynamic_mlp", "smoke"),
        epochs=2,
        batch_size=16,
        inference_sparsities=(0.5, 0.9),
        latency_batches=(1,),
        latency_seconds=0.01,
    )
    runs = study.sparsity_sweep(
        config, data, methods=["dsr"], sparsities=(0.5,), seeds=[0], run_dir=tmp_path, progress=False, verbose=False
    )
    assert [(r.method, r.sparsity) for r in runs] == [("dense", None), ("dsr", 0.5)]
    test_loader = study.experiment_loaders(config, data)[1]
    sweep = study.inference_sweep({"dense": [runs[0]]}, test_loader)
    assert list(sweep["source"]) == ["dense", "dense"] and list(sweep["sparsity_target"]) == [0.5, 0.9]
    assert list(sweep["seed"]) == [0, 0] and sweep["source_sparsity"].isna().all()
    sources = study.inference_sources(runs)
    assert [[r.method for r in v] for v in sources.values()] == [["dense"], ["dsr"]]
    assert sweep["sparsity"].to_numpy() == pytest.approx([0.5, 0.9], abs=1e-3)
    latency = study.run_latency(runs)
    assert list(latency["method"]) == ["dense", "dsr"] and (latency["sparse_ms"] > 0).all()
    assert list(study.run_latency(runs, methods=["dsr"])["method"]) == ["dsr"]
    with pytest.raises(ValueError, match="no run of methods"):
        study.run_latency(runs, methods=["rigl"])
    table = study.run_table(runs)
    assert table.loc[1, "linear_sparsity"] >= 0.5 and table.loc[0, "linear_sparsity"] == 0.0
    storage = study.run_storage(runs, tmp_path / "export")
    assert list(storage["method"].unique()) == ["dense", "dsr"]
    assert storage["sparsity"].tolist() == pytest.approx(
        [sparsity_summary(r.model)["sparse_layers"] for r in runs for _ in range(4)]
    )
    written = storage[storage["file"] != ""]
    assert [(tmp_path / "export" / f).stat().st_size for f in written["file"]] == written["bytes"].tolist()
    csr = storage[storage["format"].str.startswith("CSR float32")].set_index("method")["bytes"]
    assert csr["dsr"] < csr["dense"]  # half the weights gone: a smaller CSR file


def test_sparsity_sweep_runs_every_pruning_method_at_every_sparsity(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        study.experiments,
        "train_run",
        lambda config, data, method, *, seed, sparsity, **_: calls.append((method, seed, sparsity)),
    )
    config = dataclasses.replace(
        study.experiment_profile("dynamic_mlp", "smoke"),
        seeds=(0, 1),
        all_seeds_at=(),
        methods=("dense", "dsr", "set"),
        sparsities=(0.5, 0.9),
        parallel_runs=1,  # the stand-in train_run lives in this process only
    )
    study.sparsity_sweep(config, synthetic_cifar(), run_dir=tmp_path, verbose=False)
    assert calls == [
        (m, seed, s)
        for seed in (0, 1)
        for m, s in [("dense", None), ("dsr", 0.5), ("dsr", 0.9), ("set", 0.5), ("set", 0.9)]
    ]
    # all_seeds_at: the other seeds train the dense model and only the listed sparsities
    calls.clear()
    study.sparsity_sweep(config.replace(all_seeds_at=(0.9,)), synthetic_cifar(), run_dir=tmp_path, verbose=False)
    assert calls == [
        ("dense", 0, None),
        ("dsr", 0, 0.5),
        ("dsr", 0, 0.9),
        ("set", 0, 0.5),
        ("set", 0, 0.9),
        ("dense", 1, None),
        ("dsr", 1, 0.9),
        ("set", 1, 0.9),
    ]
    with pytest.raises(ValueError, match="besides 'dense'"):
        study.sparsity_sweep(config, synthetic_cifar(), methods=["dense"], run_dir=tmp_path)


def test_paper_marks_come_from_the_paper_table():
    paper = study.PAPER["dynamic_cnn"]
    marks = study.paper_marks("dynamic_cnn", 10)
    assert marks == {
        1: paper["test_acc after epoch 1"],
        4: paper["test_acc after epoch 4"],
        10: paper["final test_acc"],
    }
    assert study.paper_marks("dynamic_cnn", 1)[1] == paper["test_acc after epoch 1"]
    with pytest.raises(ValueError, match="experiment"):
        study.paper_marks("mlp", 10)


def test_the_papers_own_arm_is_its_baseline_cnn_with_dynamic_convolutions_trained_by_dsr(tmp_path):
    """Section 3.2 as the paper describes it: the section-3.1 network with DynamicConv2d
    convolutions (dense classifier), notebook 01's protocol, DSR with its derived schedule."""
    model = dp.BaselineCNN(sparse=True, sparsity=0.9)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3 and all(isinstance(m, dp.DynamicConv2d) for m in convs)
    assert not any(isinstance(m, dp.DynamicLinear) for m in model.modules())
    for conv in convs:
        assert torch.equal(conv.weight == 0, ~conv.mask)  # pruned weights are zero from the start
        assert abs(float((~conv.mask).float().mean()) - 0.9) < 0.01
    with pytest.raises(ValueError, match="sparse=True"):
        dp.BaselineCNN(sparsity=0.5)
    recipe = study.BASELINE.replace(epochs=2, seeds=(0, 1), parallel_runs=1, threads_per_run=0)
    assert study.paper_dsr_jobs(recipe) == [(0.5, 0), (0.8, 0), (0.9, 0), (0.9, 1), (0.95, 0)]
    data = synthetic_cifar(192, 64)
    trained, history = study.train_baseline(data, recipe=recipe, sparsity=0.9, run_dir=tmp_path, verbose=False)
    assert "threshold" in history.columns and history["mask_sparsity"].iloc[-1] == pytest.approx(0.9, abs=0.01)
    assert (tmp_path / "baseline_dsr0.9_seed0_e2_b32_n192_cl.pt").exists()
    dense = study.train_baselines(data, recipe=recipe.replace(seeds=(0,)), run_dir=tmp_path, verbose=False)
    arm = history.assign(method="dsr", sparsity_target=0.9, seed=0)
    table = study.paper_dsr_table(arm, dense)
    assert table["minus_dense"].iloc[0] == pytest.approx(history["test_acc"].iloc[-1] - dense["test_acc"].iloc[-1])
    assert table["paper_dsr_final"].iloc[0] == study.PAPER["dynamic_cnn"]["final test_acc"]
    with pytest.raises(ValueError, match="dsr_all_seeds_at"):
        study.BASELINE.replace(dsr_all_seeds_at=(0.7,))
