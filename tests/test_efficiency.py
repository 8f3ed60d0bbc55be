"""Sparsity counts, CSR storage, latency, sparsity changed at inference; DynamicCNN options."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import dynprune_lib as dp
from dynprune_lib import study
from dynprune_lib.layers import sparse_modules
from dynprune_lib.study import efficiency as ef

pytestmark = pytest.mark.usefixtures("one_thread")


def _sparse_cnn(sparsity: float = 0.9) -> nn.Module:
    torch.manual_seed(0)
    model = dp.DynamicCNN(widths=(8, 16, 32), sparsity=sparsity, convs_per_stage=1)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 16, 16))  # non-trivial BatchNorm statistics
    return model.eval()


def test_sparsity_table_counts_zero_weights():
    model = _sparse_cnn()
    table = ef.sparsity_table(model).set_index("layer")
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    for name, module in convs:
        assert table.loc[name, "zeros"] == int((module.weight == 0).sum())
        assert table.loc[name, "weights"] == module.weight.numel()
    assert not table.loc[convs[0][0], "dynamic"] and table.loc[convs[1][0], "dynamic"]
    conv_zeros = sum(int((m.weight == 0).sum()) for _, m in convs)
    conv_total = sum(m.weight.numel() for _, m in convs)
    assert table.loc["all convolutions", "sparsity"] == pytest.approx(conv_zeros / conv_total)
    sparse = [m for _, m in sparse_modules(model)]
    assert table.loc["sparse layers", "weights"] == sum(m.weight.numel() for m in sparse)
    summary = ef.sparsity_summary(model)
    assert summary["conv"] == table.loc["all convolutions", "sparsity"] and summary["linear"] == 0.0
    assert 0.85 < summary["sparse_layers"] < 0.95  # random init masks at 0.9, per layer rounded
    with pytest.raises(ValueError, match="no Conv2d or Linear"):
        ef.sparsity_table(nn.ReLU())


def test_set_global_sparsity_equals_global_unstructured_pruning():
    torch.manual_seed(1)
    model = dp.MLP(in_features=48, hidden=(32, 16), sparsity=0.0)
    reference = nn.Sequential(*[m.to_dense() for _, m in sparse_modules(model)])
    prune.global_unstructured([(m, "weight") for m in reference], prune.L1Unstructured, amount=0.7)
    per_layer = ef.set_global_sparsity(model, 0.7)
    for (name, layer), ref in zip(sparse_modules(model), reference):
        assert torch.equal(layer.mask, ref.weight_mask.bool()), name
        assert per_layer[name] == layer.mask_sparsity
    total = sum(m.weight.numel() for _, m in sparse_modules(model))
    zeros = sum(int((~m.mask).sum()) for _, m in sparse_modules(model))
    assert zeros == round(0.7 * total)
    with pytest.raises(ValueError, match="sparsity"):
        ef.set_global_sparsity(model, 1.0)


def test_storage_table_csr_is_smaller_and_lossless(tmp_path):
    model = _sparse_cnn(0.9)
    x = torch.randn(16, 3, 16, 16)
    y = model(x).argmax(1)
    loader = [(x, y)]
    table = ef.storage_table(model, tmp_path, name="m", loader=loader).set_index("format")
    dense = table.loc["dense (torch.save)", "bytes"]
    csr = table.loc["CSR float32 (save_sparse)", "bytes"]
    assert csr < 0.5 * dense
    assert (tmp_path / "m_csr_float32.dpsm").stat().st_size == csr
    assert table.loc["CSR float32 (save_sparse)", "test_acc_after_load"] == 1.0  # lossless
    loaded = dp.load_sparse(tmp_path / "m_csr_float32.dpsm", copy.deepcopy(model))
    assert torch.equal(loaded(x), model(x))


def test_latency_table_times_dense_ours_and_the_peers():
    table = ef.latency_table(
        _sparse_cnn(0.95), (1, 4), input_shape=(3, 16, 16), seconds=0.01, rounds=1, peers=("onnxruntime",)
    )
    assert list(table["batch"]) == [1, 4]
    assert (table["dense_ms"] > 0).all() and (table["sparse_ms"] > 0).all()
    assert table["speedup"].to_numpy() == pytest.approx((table["dense_ms"] / table["sparse_ms"]).to_numpy())
    ort_ms = table["onnxruntime_ms"].to_numpy()
    assert table["onnxruntime_speedup"].to_numpy() == pytest.approx(table["dense_ms"].to_numpy() / ort_ms)
    assert (table["layers"] == 4).all() and (table["conversion_s"] > 0).all()  # 2 sparse, 1 dense conv, 1 linear
    with pytest.raises(ValueError, match="batch"):
        ef.latency_table(_sparse_cnn(), (0,))


def test_a_missing_peer_is_named_and_the_measurement_goes_on(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_sparseprop(name, *args, **kwargs):
        if name.startswith("sparseprop"):
            raise ImportError("No module named 'sparseprop'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sparseprop)
    table = ef.latency_table(
        _sparse_cnn(0.9), (2,), input_shape=(3, 16, 16), seconds=0.01, rounds=1, peers=("sparseprop",)
    )
    assert table["sparseprop_ms"].isna().all() and "sparseprop: not installed" in table["peers_missing"].iloc[0]
    assert table["sparse_ms"].iloc[0] > 0
    with pytest.raises(ValueError, match="unknown peers"):
        study.peer_runners(_sparse_cnn(), torch.randn(1, 3, 16, 16), ("tensorrt",))


def test_random_masks_set_every_sparse_layer_to_the_sparsity_and_leave_the_model():
    model = _sparse_cnn(0.5)
    before = copy.deepcopy(model.state_dict())
    masked = ef.with_random_masks(model, 0.95, seed=3)
    for _, layer in sparse_modules(masked):
        assert abs(float((layer.weight == 0).float().mean()) - 0.95) < 0.01  # live weights are non-zero
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    sweep = ef.latency_sweep(model, (0.5, 0.9), (1,), input_shape=(3, 16, 16), seconds=0.01)
    assert list(sweep["sparsity"]) == [0.5, 0.9] and (sweep["sparse_ms"] > 0).all()


@pytest.mark.cuda
def test_random_masks_on_a_cuda_model_stay_on_cuda_and_equal_the_cpu_ones():
    """Regression: the masks and values were drawn on the CPU generator and multiplied with the
    CUDA model's tensors ("Expected all tensors to be on the same device")."""
    cpu = ef.with_random_masks(_sparse_cnn(0.5), 0.9, seed=1)
    gpu = ef.with_random_masks(_sparse_cnn(0.5).cuda(), 0.9, seed=1)
    for (_, a), (_, b) in zip(sparse_modules(cpu), sparse_modules(gpu)):
        assert b.weight.device.type == "cuda" and b.mask.device.type == "cuda"
        assert torch.equal(a.mask, b.mask.cpu())
        torch.testing.assert_close(a.weight, b.weight.cpu())


class _FlagRecorder(nn.Module):
    """Wraps a model and records, at every call, whether float32 may run reduced (TF32)."""

    def __init__(self, inner: nn.Module, calls: list) -> None:
        super().__init__()
        self.inner, self.calls = inner, calls

    def forward(self, x):
        self.calls.append((torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()))
        return self.inner(x)


def test_latency_check_compares_both_models_in_full_float32(monkeypatch):
    """Regression (CUDA): the dense reference ran cuDNN convolutions in TF32 (PyTorch's default)
    and the sparse path in float32, and the check failed on the rounding. The check now runs
    both in full float32, and the timing under the process's own settings, which the table names."""
    calls: list = []
    monkeypatch.setattr(ef, "densify", lambda model: _FlagRecorder(dp.densify(model), calls))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        table = ef.latency_table(_sparse_cnn(0.95), (2,), input_shape=(3, 16, 16), seconds=0.01, rounds=1)
        assert calls[0] == (False, "highest")  # the check: the first call of the dense reference
        assert calls[-1] == (True, "high")  # the timing: as the user set it, restored after the check
        assert torch.backends.cudnn.allow_tf32 and torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(previous)
    assert table["dense_arithmetic"].tolist() == ["float32"]  # a CPU has no TF32
    assert table["sparse_backends"].iloc[0].split(", ")[0].split(": ")[0] in {
        "compiled",
        "numba",
        "torch.sparse",
        "dense",
    }


@pytest.mark.cuda
def test_latency_table_runs_on_cuda_and_says_what_ran():
    """Regression: ``latency_table`` on CUDA raised in its check (TF32 against float32)."""
    table = ef.latency_table(_sparse_cnn(0.95).cuda(), (1, 8), input_shape=(3, 16, 16), seconds=0.02, rounds=1)
    assert (table["device"] == "cuda").all() and (table["sparse_ms"] > 0).all()
    assert set(table["dense_arithmetic"]) <= {"tf32", "float32"}
    assert set(table["sparse_backends"].str.split(", ").explode().str.split(": ").str[0]) <= {"torch.sparse", "dense"}
    model = _sparse_cnn(0.5).cuda()
    sweep = ef.latency_sweep(model, (0.9,), (1,), input_shape=(3, 16, 16), seconds=0.02, device="cuda")
    assert (sweep["sparse_ms"] > 0).all()


def test_latency_goals_are_checked_on_the_sweep_with_their_numbers():
    sweep = pd.DataFrame(
        {
            "sparsity": [0.5, 0.9, 0.95, 0.95],
            "batch": [64, 64, 1, 64],
            "threads": 2,
            "speedup": [0.9, 3.5, 2.0, 7.0],
            "sparse_ms": [1.0, 1.0, 0.5, 1.0],
            "onnxruntime_ms": [1.0, 1.0, 0.4, 1.0],
        }
    )
    goals = ef.latency_goals(sweep, "DynamicCNN")
    # 0.95/64 >= 6x, 0.95/1 >= 5x, 0.95/1 faster than ONNX Runtime, 0.9/64 >= 4x, never slower
    assert goals["met"].tolist() == [True, False, False, False, False]
    assert goals["measured"].tolist() == pytest.approx([7.0, 2.0, 0.8, 3.5, 0.9])
    assert "onnxruntime (dense graph)" in goals["goal"].iloc[2]
    sentence = ef.goals_sentence(goals)
    assert sentence.startswith("1 of 5 goals met") and "missed" in sentence and "0.80x" in sentence
    no_peer = ef.latency_goals(sweep.drop(columns="onnxruntime_ms"), "DynamicCNN")
    assert no_peer["met"].isna().tolist() == [False, False, True, False, False]  # the peer's goal: not measured
    assert ef.latency_goals(sweep.assign(speedup=1.0), "MLP")["met"].isna().sum() == 1  # no row at 0.9, batch 1


def test_inference_sparsity_sweep_changes_sparsity_without_touching_the_model():
    model = _sparse_cnn(0.5)
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(32, 3, 16, 16)
    loader = [(x, model(x).argmax(1))]
    sweep = ef.inference_sparsity_sweep(model, loader, [0.5, 0.9, 0.99])
    assert list(sweep["sparsity_target"]) == [0.5, 0.9, 0.99]
    assert sweep["sparsity"].to_numpy() == pytest.approx([0.5, 0.9, 0.99], abs=1e-3)
    assert sweep["test_acc"].iloc[0] == 1.0  # nothing pruned beyond training: predictions unchanged
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    timed = ef.inference_sparsity_sweep(
        model, loader, [0.9], latency_batches=(2,), input_shape=(3, 16, 16), seconds=0.01
    )
    assert list(timed["batch"]) == [2] and timed["sparse_ms"].iloc[0] > 0


# --------------------------------------------------------------------------- DynamicCNN options


def test_dynamic_cnn_default_is_unchanged_and_options_keep_shapes():
    assert sum(p.numel() for p in dp.DynamicCNN().parameters()) == 1_148_874
    torch.manual_seed(0)
    plain = dp.DynamicCNN(widths=(8, 16), convs_per_stage=1, sparsity=0.5)
    torch.manual_seed(0)
    reordered = dp.DynamicCNN(widths=(8, 16), convs_per_stage=1, sparsity=0.5, pool_before_norm=True)
    kinds = [type(m).__name__ for m in reordered.features]
    assert kinds == ["Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU", "DynamicConv2d", "MaxPool2d", "BatchNorm2d", "ReLU"]
    assert [p.shape for p in plain.parameters()] == [p.shape for p in reordered.parameters()]
    # In eval mode with default BatchNorm statistics (identity), max pooling commutes with BN and ReLU.
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(plain.eval()(x), reordered.eval()(x), atol=1e-6)
    torch.manual_seed(0)
    fast = dp.DynamicCNN(widths=(8, 16), convs_per_stage=1, sparsity=0.5, pool_before_norm=True, channels_last=True)
    with torch.no_grad():
        assert torch.allclose(fast.eval()(x), reordered(x), atol=1e-5)
    assert all(m.mask.is_contiguous() for _, m in sparse_modules(fast))
    with pytest.raises(ValueError, match="convs_per_stage"):
        dp.DynamicCNN(convs_per_stage=0)
