"""Training engine: determinism, checkpoint/resume, divergence, hooks, baseline model."""

from __future__ import annotations

import contextlib
import math
import warnings

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dynprune_lib as dp
from dynprune_lib import study
from dynprune_lib.train import HISTORY_COLUMNS

from conftest import synthetic_images


def _run(
    seed: int = 0,
    epochs: int = 2,
    checkpoint=None,
    loss_fn=None,
    pruner_cls=None,
    n: int = 192,
    precision: str = "fp32",
    keep_epochs=(),
    device: str = "cpu",
):
    images, labels = synthetic_images(n)
    dp.set_seed(seed)
    model = dp.BaselineCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train = dp.BatchLoader(images, labels, batch_size=32, shuffle=True, seed=seed, normalize="unit")
    test = dp.BatchLoader(images[:64], labels[:64], batch_size=64, shuffle=False, normalize="unit")
    pruner = pruner_cls(model.to(device)) if pruner_cls else None
    history = dp.fit(
        model,
        train,
        test,
        epochs=epochs,
        optimizer=optimizer,
        loss_fn=loss_fn,
        pruner=pruner,
        device=device,
        checkpoint=checkpoint,
        keep_epochs=keep_epochs,
        progress=False,
        verbose=False,
        precision=precision,
    )
    return history, model, pruner


@contextlib.contextmanager
def _no_slow_bf16_warning():
    """Silence the slow-bf16 warning on CI CPUs without native bfloat16 (tested on its own below)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "precision='bf16' on a CPU", RuntimeWarning)
        yield


def _same_history(a: pd.DataFrame, b: pd.DataFrame) -> None:
    cols = [c for c in a.columns if c != "seconds"]
    pd.testing.assert_frame_equal(a[cols], b[cols], check_exact=True)


def _same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


class CountingPruner:
    """A stand-in scheduler: counts steps, contributes a history column."""

    def __init__(self, model: nn.Module) -> None:
        self.steps = 0

    def step(self) -> None:
        self.steps += 1

    def epoch_end(self, epoch: int) -> dict[str, float]:
        return {"sparsity": self.steps / 1000}

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state) -> None:
        self.steps = int(state["steps"])


class InterruptAfter:
    """Cross-entropy that raises KeyboardInterrupt at a given call, like Ctrl-C mid-epoch."""

    def __init__(self, calls: int) -> None:
        self.calls, self.left = calls, calls

    def __call__(self, logits, labels):
        self.left -= 1
        if self.left < 0:
            raise KeyboardInterrupt
        return F.cross_entropy(logits, labels)


def test_baseline_cnn_matches_the_paper_architecture():
    model = dp.BaselineCNN()
    # Hand-computed from the Keras summary of the TensorFlow CIFAR-10 tutorial.
    expected = [3 * 3 * 3 * 32 + 32, 3 * 3 * 32 * 64 + 64, 3 * 3 * 64 * 64 + 64, 1024 * 64 + 64, 64 * 10 + 10]
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [sum(p.numel() for p in m.parameters()) for m in layers] == expected
    assert sum(p.numel() for p in model.parameters()) == 122_570
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert all(torch.count_nonzero(m.bias) == 0 for m in layers)  # Keras zero-bias init


def test_history_columns_and_values_are_sane():
    history, _, _ = _run(epochs=2)
    assert list(history.columns) == HISTORY_COLUMNS
    assert history["epoch"].tolist() == [1, 2]
    assert history[["train_acc", "test_acc"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (history["lr"] == 1e-3).all()
    assert (history["seconds"] > 0).all()


def test_evaluate_matches_a_direct_computation():
    images, labels = synthetic_images(100)
    dp.set_seed(1)
    model = dp.BaselineCNN().eval()
    loader = dp.BatchLoader(images, labels, batch_size=30, shuffle=False, normalize="unit")
    loss, acc = dp.evaluate(model, loader)
    with torch.no_grad():
        logits = model(images.float() / 255)
    assert loss == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert acc == (logits.argmax(1) == labels).sum().item() / len(labels)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_same_seed_same_history_bit_for_bit(precision):
    with _no_slow_bf16_warning():
        h1, m1, _ = _run(seed=3, precision=precision)
        h2, m2, _ = _run(seed=3, precision=precision)
        h3, _, _ = _run(seed=4, precision=precision)
    _same_history(h1, h2)
    _same_weights(m1, m2)
    assert not h1["train_loss"].equals(h3["train_loss"])


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path):
    reference, ref_model, ref_pruner = _run(epochs=3, pruner_cls=CountingPruner)
    ckpt = tmp_path / "run.pt"
    # 6 batches per epoch: interrupt in the middle of epoch 2.
    with pytest.raises(KeyboardInterrupt):
        _run(epochs=3, checkpoint=ckpt, loss_fn=InterruptAfter(6 + 3), pruner_cls=CountingPruner)
    assert dp.load_checkpoint(ckpt)["epoch"] == 1
    resumed, model, pruner = _run(epochs=3, checkpoint=ckpt, pruner_cls=CountingPruner)
    _same_history(reference, resumed)
    _same_weights(ref_model, model)
    assert pruner.steps == ref_pruner.steps == 3 * 6
    assert "sparsity" in resumed.columns


@pytest.mark.cuda
def test_interrupted_cuda_run_resumes(tmp_path):
    """Regression: a checkpoint read onto the GPU handed the loader's CPU generator a CUDA
    tensor ("RNG state must be a torch.ByteTensor"), so no CUDA run could resume. Checkpoints
    are read onto the CPU; each state loader moves what it holds."""
    reference, _, _ = _run(epochs=3, device="cuda", pruner_cls=CountingPruner)
    ckpt = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        _run(epochs=3, checkpoint=ckpt, loss_fn=InterruptAfter(6 + 3), pruner_cls=CountingPruner, device="cuda")
    resumed, model, pruner = _run(epochs=3, checkpoint=ckpt, pruner_cls=CountingPruner, device="cuda")
    assert next(model.parameters()).device.type == "cuda" and pruner.steps == 3 * 6
    first = dp.load_checkpoint(ckpt)["history"][0]
    assert resumed["test_acc"].iloc[0] == first["test_acc"]
    # cuDNN's kernels need not be bit-deterministic; the same run ends close to the uninterrupted one
    loss, expected = resumed["train_loss"].to_numpy(), reference["train_loss"].to_numpy()
    torch.testing.assert_close(loss, expected, rtol=1e-3, atol=1e-3)


def test_kept_epoch_resumes_to_the_uninterrupted_result(tmp_path):
    """``keep_epochs`` keeps the state after an epoch beside the checkpoint: a run started
    from it ends as the run that never stopped (the oracle)."""
    reference, ref_model, _ = _run(
        epochs=3, checkpoint=tmp_path / "run.pt", keep_epochs=(2,), pruner_cls=CountingPruner
    )
    kept = dp.train.epoch_checkpoint(tmp_path / "run.pt", 2)
    assert kept.name == "run.epoch2.pt" and dp.load_checkpoint(kept)["epoch"] == 2
    assert dp.load_checkpoint(tmp_path / "run.pt")["epoch"] == 3
    resumed, model, pruner = _run(epochs=3, checkpoint=kept, pruner_cls=CountingPruner)
    _same_history(reference, resumed)
    _same_weights(ref_model, model)
    assert pruner.steps == 3 * 6  # the kept state's 12 steps restored, then the third epoch's
    with pytest.raises(ValueError, match="keep_epochs needs a checkpoint"):
        _run(epochs=1, keep_epochs=(1,))


def test_finished_run_is_not_retrained(tmp_path, monkeypatch):
    ckpt = tmp_path / "run.pt"
    first, _, _ = _run(epochs=2, checkpoint=ckpt)

    def boom(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(torch.optim.Adam, "step", boom)
    again, _, _ = _run(epochs=2, checkpoint=ckpt)
    _same_history(first, again)
    pd.testing.assert_series_equal(first["seconds"], again["seconds"])  # the recorded history itself


def test_truncated_checkpoint_is_an_error_and_is_kept(tmp_path):
    ckpt = tmp_path / "run.pt"
    _run(epochs=1, checkpoint=ckpt)
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(dp.CheckpointError, match="truncated or corrupt"):
        _run(epochs=2, checkpoint=ckpt)
    assert ckpt.read_bytes() == data[: len(data) // 2]


def test_garbage_and_foreign_checkpoints_are_errors(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(dp.CheckpointError, match="junk.pt"):
        dp.load_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(dp.CheckpointError, match="not a dynprune training checkpoint"):
        dp.load_checkpoint(foreign)
    with pytest.raises(dp.CheckpointError, match="does not exist"):
        dp.load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_from_another_run_is_refused(tmp_path):
    ckpt = tmp_path / "run.pt"
    _run(epochs=1, checkpoint=ckpt, n=192)
    with pytest.raises(dp.CheckpointError, match="different run.*batches_per_epoch"):
        _run(epochs=2, checkpoint=ckpt, n=256)


def test_checkpoint_of_a_pruner_with_other_hyperparameters_is_refused(tmp_path):
    """The pruner's hyperparameters are part of the fingerprint: a DSR run with another N_p does not
    resume from this one's checkpoint."""

    def run(n_prune: int) -> None:
        images, labels = synthetic_images(64)
        dp.set_seed(0)
        model = dp.sparsify(dp.BaselineCNN(), 0.8, mask_init="random", generator=torch.Generator().manual_seed(0))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        loader = dp.BatchLoader(images, labels, batch_size=32, shuffle=False, normalize="unit")
        pruner = dp.DSR(model, optimizer, n_prune=n_prune)
        dp.fit(
            model,
            loader,
            loader,
            epochs=1,
            optimizer=optimizer,
            pruner=pruner,
            checkpoint=tmp_path / "run.pt",
            device="cpu",
            progress=False,
            verbose=False,
        )

    run(600)
    with pytest.raises(dp.CheckpointError, match="different run.*pruner_hparams.*n_prune"):
        run(700)


def test_checkpoint_is_loadable_with_weights_only(tmp_path):
    ckpt = tmp_path / "run.pt"
    _run(epochs=1, checkpoint=ckpt, pruner_cls=CountingPruner)
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 1 and state["pruner"] == {"steps": 6}
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write leaves no temporary file


def test_nan_loss_stops_with_epoch_and_step():
    calls = {"n": 0}

    def loss_fn(logits, labels):
        calls["n"] += 1
        loss = F.cross_entropy(logits, labels)
        return loss * float("nan") if calls["n"] == 9 else loss  # 6 steps + 1 eval call, then step 2

    with pytest.raises(dp.TrainingDivergedError, match=r"epoch 2, step 2"):
        _run(epochs=2, loss_fn=loss_fn)


def test_bad_arguments_are_rejected():
    images, labels = synthetic_images(64)
    model = dp.BaselineCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = dp.BatchLoader(images, labels, batch_size=32)
    with pytest.raises(ValueError, match="epochs"):
        dp.fit(model, loader, loader, epochs=-1, optimizer=opt)
    with pytest.raises(TypeError, match="optimizer"):
        dp.fit(model, loader, loader, epochs=1, optimizer="adam")
    with pytest.raises(TypeError, match="pruner"):
        dp.fit(model, loader, loader, epochs=1, optimizer=opt, pruner=object())
    plain = [(images.float() / 255, labels)]
    with pytest.raises(TypeError, match="train_loader.state_dict"):
        dp.fit(model, plain, plain, epochs=1, optimizer=opt, checkpoint="unused.pt")
    with pytest.raises(TypeError, match="seed"):
        dp.set_seed(1.5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_request_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        dp.resolve_device("cuda")
    assert dp.resolve_device("auto") == torch.device("cpu")


def test_progress_switch(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("DYNPRUNE_PROGRESS", raising=False)
    assert dp.train.progress_enabled() is True
    monkeypatch.setenv("DYNPRUNE_PROGRESS", "0")
    assert dp.train.progress_enabled() is False
    monkeypatch.delenv("DYNPRUNE_PROGRESS")
    monkeypatch.setenv("CI", "true")
    assert dp.train.progress_enabled() is False
    assert dp.train.progress_enabled(True) is True


def test_compare_with_paper_uses_our_history():
    history = pd.DataFrame(
        {"epoch": [1, 2, 3, 4], "test_acc": [0.4, 0.6, 0.65, 0.7], "test_loss": [1.5, 1.2, 1.1, 1.0]}
    )
    table = study.compare_with_paper("dynamic_cnn", history, conditions={"seed": 0})
    got = dict(zip(table["metric"], table["ours"]))
    assert got["test_acc after epoch 1"] == 0.4
    assert got["test_acc after epoch 4"] == 0.7
    assert got["best test_acc"] == 0.7 and got["final test_acc"] == 0.7
    row = table.set_index("metric").loc["final test_acc"]
    assert row["difference"] == pytest.approx(0.7 - row["paper"])
    assert (table["conditions"] == "seed=0").all()
    short = study.compare_with_paper("dynamic_cnn", history.iloc[:2])
    assert math.isnan(dict(zip(short["metric"], short["ours"]))["test_acc after epoch 4"])
    with pytest.raises(ValueError, match="experiment"):
        study.compare_with_paper("nope", history)


def test_figures_are_byte_identical_when_saved_twice(tmp_path):
    history = pd.DataFrame(
        {
            "epoch": [1, 2],
            "train_acc": [0.3, 0.5],
            "test_acc": [0.25, 0.45],
            "train_loss": [2.0, 1.5],
            "test_loss": [2.1, 1.7],
        }
    )
    first = study.save_figure(study.plot_history(history, "loss"), "fig", tmp_path / "a")
    second = study.save_figure(study.plot_history(history, "loss"), "fig", tmp_path / "b")
    assert [p.suffix for p in first] == [".png", ".svg"]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name
    with pytest.raises(ValueError, match="metric"):
        study.plot_history(history, "f1")
    with pytest.raises(ValueError, match="lacks"):
        study.plot_history(history.drop(columns="test_acc"), "acc")


class _DtypeProbe(nn.Module):
    """Records the dtype of its linear layer's output in training and in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 32 * 32, 3)
        self.seen: dict[bool, set[torch.dtype]] = {True: set(), False: set()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x.flatten(1))
        self.seen[self.training].add(out.dtype)
        return out


@pytest.mark.parametrize("precision, train_dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_precision_sets_the_training_forward_dtype_and_evaluation_stays_float32(precision, train_dtype):
    images, labels = synthetic_images(64)
    model = _DtypeProbe()
    loader = dp.BatchLoader(images, labels, batch_size=32, normalize="unit")
    with _no_slow_bf16_warning():
        history = dp.fit(
            model,
            loader,
            loader,
            epochs=1,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            device="cpu",
            progress=False,
            verbose=False,
            precision=precision,
        )
    assert model.seen[True] == {train_dtype}
    assert model.seen[False] == {torch.float32}
    assert model.linear.weight.dtype == torch.float32  # master weights stay float32
    assert math.isfinite(history["train_loss"].iloc[0])


def test_bf16_training_stays_close_to_float32():
    """Same seed, same data: mixed precision changes the numbers a little, not the learning."""
    with _no_slow_bf16_warning():
        losses = {}
        for precision in ("fp32", "bf16"):
            images, labels = synthetic_images(128)
            dp.set_seed(0)
            model = dp.BaselineCNN()
            loader = dp.BatchLoader(images, labels, batch_size=32, normalize="unit")
            h = dp.fit(
                model,
                loader,
                loader,
                epochs=2,
                optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
                device="cpu",
                progress=False,
                verbose=False,
                precision=precision,
            )
            losses[precision] = h["train_loss"].to_numpy()
    assert not (losses["fp32"] == losses["bf16"]).all()  # autocast did change the arithmetic
    assert abs(losses["fp32"] - losses["bf16"]).max() < 0.05


def test_unknown_precision_is_rejected():
    images, labels = synthetic_images(32)
    model = dp.BaselineCNN()
    loader = dp.BatchLoader(images, labels, batch_size=32)
    with pytest.raises(ValueError, match="precision must be one of"):
        dp.fit(model, loader, loader, epochs=1, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), precision="fp16")


def test_bf16_on_a_cpu_without_native_bfloat16_warns(monkeypatch):
    monkeypatch.setattr(dp.train, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="slower than with precision='fp32'"):
        dp.train.check_precision("bf16", "cpu")
    monkeypatch.setattr(dp.train, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dp.train.check_precision("bf16", "cpu")
        dp.train.check_precision("fp32", "cpu")


def test_checkpoint_of_another_precision_is_refused(tmp_path):
    images, labels = synthetic_images(64)
    ckpt = tmp_path / "run.pt"
    with _no_slow_bf16_warning():
        for precision in ("fp32", "bf16"):
            dp.set_seed(0)
            model = dp.BaselineCNN()
            train = dp.BatchLoader(images, labels, batch_size=32, shuffle=True, seed=0)
            kwargs = dict(
                epochs=1,
                optimizer=torch.optim.Adam(model.parameters()),
                device="cpu",
                checkpoint=ckpt,
                progress=False,
                verbose=False,
                precision=precision,
            )
            if precision == "fp32":
                dp.fit(model, train, train, **kwargs)
            else:
                with pytest.raises(dp.CheckpointError, match="precision: checkpoint 'fp32' vs now 'bf16'"):
                    dp.fit(model, train, train, **kwargs)
