"""Tests for dynprune_lib.schedulers (DSR, SET, RigL, MagnitudePruning) against independent oracles."""

from __future__ import annotations

import copy
import io
import math
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune

from dynprune_lib.layers import DynamicConv2d, DynamicLinear, sparse_modules, sparsify
from dynprune_lib.schedulers import DSR, SET, MagnitudePruning, RigL, allocate_proportional

from conftest import free_port

# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seed: int = 0, sparsity: float = 0.7) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        DynamicConv2d(2, 6, 3, initial_sparsity=sparsity),
        nn.ReLU(),
        nn.Flatten(),
        DynamicLinear(6 * 4 * 4, 20, sparsity),
        nn.ReLU(),
        DynamicLinear(20, 4, sparsity),
    )


def batches(n: int, seed: int = 0, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 2, 6, 6, generator=g), torch.randint(0, 4, (size,), generator=g)) for _ in range(n)]


def train(model, opt, pruner, data, after_step=None):
    for i, (x, y) in enumerate(data):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if after_step is not None:
            after_step(i, "before")
        pruner.step()
        if after_step is not None:
            after_step(i, "after")


def masks(model) -> dict[str, torch.Tensor]:
    return {n: m.mask.clone() for n, m in sparse_modules(model)}


def n_live(model) -> int:
    return sum(int(m.mask.sum()) for _, m in sparse_modules(model))


def one_layer(n_out=10, n_in=10, sparsity=0.5) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(DynamicLinear(n_in, n_out, sparsity, bias=False))


def set_live_magnitudes(layer, values) -> None:
    """Give the live weights of ``layer`` the magnitudes ``values`` (alternating signs)."""
    with torch.no_grad():
        live = layer.mask.view(-1).nonzero().squeeze(1)
        v = torch.as_tensor(values, dtype=layer.weight.dtype)
        assert v.numel() == live.numel()
        sign = torch.tensor([(-1.0) ** i for i in range(live.numel())])
        layer.weight.view(-1)[live] = v * sign


# --------------------------------------------------------------------------- #
# DSR
# --------------------------------------------------------------------------- #
def test_dsr_conserves_live_weights_and_prunes_as_many_as_it_grows():
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    pruner = DSR(model, opt, n_prune=40, period=2)
    total = n_live(model)
    seen = []

    def check(i, when):
        if when == "after":
            seen.append(n_live(model))
            for _, m in sparse_modules(model):
                assert torch.count_nonzero(m.weight[~m.mask]) == 0

    train(model, opt, pruner, batches(60), check)
    assert seen == [total] * 60
    frame = pruner.log_frame()
    per_update = frame[frame.step > 0].groupby("step")[["pruned", "regrown"]].sum()
    assert len(per_update) == 30
    assert (per_update.pruned == per_update.regrown).all()
    assert per_update.pruned.sum() > 100  # it did rewire


def test_dsr_works_on_a_channels_last_model():
    reference = tiny_model()
    model = tiny_model().to(memory_format=torch.channels_last)
    results = []
    for net in (reference, model):
        opt = torch.optim.SGD(net.parameters(), lr=0.2, momentum=0.9)
        pruner = DSR(net, opt, n_prune=40, period=2, seed=3)
        train(net, opt, pruner, batches(10))
        results.append(masks(net))
    assert model[0].mask.is_contiguous(memory_format=torch.channels_last)
    for name in results[0]:  # the memory layout changes nothing in the masks DSR picks
        assert torch.equal(results[0][name], results[1][name]), name


@pytest.mark.parametrize(
    "k, expected_factor",
    [(12, 0.5), (11, 1.0), (10, 1.0), (9, 1.0), (8, 2.0), (0, 2.0)],
)
def test_dsr_threshold_halves_and_doubles(k, expected_factor):
    model = one_layer()  # 50 live weights
    layer = model[0]
    H = 0.01
    pruner = DSR(model, n_prune=10, tolerance=0.1, initial_threshold=H)
    mags = [H * 0.5] * k + [H * 3.0] * (50 - k)
    set_live_magnitudes(layer, mags)
    assert int((layer.weight.abs()[layer.mask] < H).sum()) == k  # oracle count
    pruner.update()
    assert pruner.log[-1]["pruned"] == k and pruner.log[-1]["threshold"] == H
    assert pruner.threshold == pytest.approx(H * expected_factor)


def test_dsr_threshold_adapts_towards_target_over_updates():
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pruner = DSR(model, opt, n_prune=30, period=1, initial_threshold=1e-6)
    train(model, opt, pruner, batches(25))
    frame = pruner.log_frame()
    thresholds = frame[frame.step > 0].groupby("step").threshold.first().tolist()
    assert thresholds[:4] == pytest.approx([1e-6, 2e-6, 4e-6, 8e-6])  # doubled while too few were pruned
    pruned = frame[frame.step > 0].groupby("step").pruned.sum().tolist()
    assert max(pruned[-10:]) > 0.5 * 30


def test_dsr_warns_once_when_its_threshold_runs_away_and_remembers_it():
    """Regression: with N_p beyond the live weights (notebook 03's MLP at 0.99 had to prune
    23,513 of 17,065) no update can prune N_p, so the threshold doubles without end and each
    update prunes nearly everything; nothing said so and the run collapsed to chance."""
    model = tiny_model(sparsity=0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    live = n_live(model)
    pruner = DSR(model, opt, n_prune=2 * live, period=1, initial_threshold=1e-3)
    with pytest.warns(RuntimeWarning, match="threshold ran away") as caught:
        train(model, opt, pruner, batches(40))
    assert sum("ran away" in str(w.message) for w in caught) == 1  # once, not at every update
    assert pruner.runaway is not None and pruner.runaway["step"] >= 1
    assert "above the largest live magnitude" in pruner.runaway["reason"]
    assert pruner.epoch_end(0)["threshold_ran_away"] == 1.0
    restored = DSR(tiny_model(sparsity=0.9), n_prune=2 * live, period=1)
    restored.load_state_dict(pruner.state_dict())
    assert restored.runaway == pruner.runaway


def test_dsr_with_a_reachable_n_prune_never_reports_a_runaway(recwarn):
    model = tiny_model(sparsity=0.7)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pruner = DSR(model, opt, n_prune=max(1, n_live(model) // 10), period=1, initial_threshold=1e-3)
    train(model, opt, pruner, batches(60))
    assert pruner.runaway is None and pruner.epoch_end(0)["threshold_ran_away"] == 0.0
    assert not [w for w in recwarn if "ran away" in str(w.message)]


def test_dsr_regrowth_proportional_to_surviving_weights_and_never_where_just_pruned():
    torch.manual_seed(0)
    model = nn.Sequential(DynamicLinear(40, 30, 0.5), DynamicLinear(30, 20, 0.5), DynamicLinear(20, 7, 0.5))
    H = 0.2  # about half of the live weights go: regrowing at random would hit just-pruned ones
    pruner = DSR(model, n_prune=50, initial_threshold=H, seed=3)
    layers = [m for _, m in sparse_modules(model)]
    with torch.no_grad():
        for m in layers:  # live magnitudes spread over [0, 0.4)
            m.weight.copy_((torch.rand(m.weight.shape) * 0.4 * torch.sign(torch.randn(m.weight.shape))) * m.mask)
    old = [m.mask.clone() for m in layers]
    pruned = [m.mask & (m.weight.abs() < H) for m in layers]  # independent oracle
    k = sum(int(p.sum()) for p in pruned)
    survivors = [int(o.sum()) - int(p.sum()) for o, p in zip(old, pruned)]
    pruner.update()
    grown = [m.mask & ~o for m, o in zip(layers, old)]
    assert k > 30
    assert sum(int(g.sum()) for g in grown) == k
    for g, p, o, kept, m in zip(grown, pruned, old, survivors, layers):
        assert not (g & p).any()  # nothing regrown where just pruned
        assert not (g & o).any()  # regrown only where the weight was zero before
        assert not (m.mask & p).any()  # pruned ones are gone
        assert abs(int(g.sum()) - k * kept / sum(survivors)) < 1.0  # proportional, within rounding
        assert torch.count_nonzero(m.weight[g]) == 0  # new weights start at zero


@settings(max_examples=60, deadline=None)
@given(
    total=st.integers(0, 500),
    parts=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 300)), min_size=1, max_size=6),
)
def test_allocate_proportional(total, parts):
    weights = [w for w, _ in parts]
    capacity = [c for _, c in parts]
    alloc = allocate_proportional(total, weights, capacity)
    assert sum(alloc) == min(total, sum(capacity))
    assert all(0 <= a <= c for a, c in zip(alloc, capacity))
    if sum(weights) and all(total * w / sum(weights) <= c - 1 for w, c in zip(weights, capacity)):
        for a, w in zip(alloc, weights):
            assert abs(a - total * w / sum(weights)) < 1.0


def test_dsr_keeps_at_least_one_weight_per_layer():
    model = one_layer()
    pruner = DSR(model, n_prune=10, initial_threshold=1.0)
    set_live_magnitudes(model[0], [0.1] * 50)
    pruner.update()
    assert pruner.log[-1]["pruned"] == 49 and int(model[0].mask.sum()) == 50


@pytest.mark.parametrize("make_pruner", [DSR, SET, RigL], ids=["dsr", "set", "rigl"])
def test_regrown_weights_start_at_zero_after_a_magnitude_sparsify(make_pruner):
    """The reference rule (DSR's reinitialize_unused, RigL's zero init): a regrown weight starts at
    zero, even where a magnitude sparsify kept the value it had before it was pruned."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(96, 20), nn.ReLU(), nn.Linear(20, 4))
    sparsify(model, 0.9, keep_ends_dense=False)  # magnitude masks: the pruned values are kept
    layers = dict(sparse_modules(model))
    assert all(m.pruned_values is not None and m.pruned_values.count_nonzero() > 0 for m in layers.values())
    before = masks(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: weights move only through the update
    kwargs = {"n_prune": 50, "initial_threshold": 10.0} if make_pruner is DSR else {}
    pruner = make_pruner(model, opt, **kwargs)
    x, y = batches(1)[0]
    if make_pruner is RigL:  # it grows where the dense gradient is largest
        for layer in layers.values():
            layer.keep_dense_grad = True
        F.cross_entropy(model(x), y).backward()
    pruner.update()
    grown = 0
    for name, layer in layers.items():
        new = layer.mask & ~before[name]
        grown += int(new.sum())
        assert torch.count_nonzero(layer.weight[new]) == 0
        assert torch.count_nonzero(layer.pruned_values[new]) == 0  # nor is an old value kept for them
    assert grown > 0


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        lambda p: torch.optim.Adam(p, lr=1e-2),
    ],
)
def test_dsr_resets_optimizer_state_of_pruned_and_regrown(make_opt):
    model = tiny_model()
    opt = make_opt(model.parameters())
    pruner = DSR(model, opt, n_prune=40, period=1000, initial_threshold=0.05)
    train(model, opt, pruner, batches(3))
    keys = [k for k, v in opt.state[model[3].weight].items() if torch.is_tensor(v) and v.dim() == 2]
    layers = [m for _, m in sparse_modules(model)]
    before_mask = [m.mask.clone() for m in layers]
    before_state = [{k: opt.state[m.weight][k].clone() for k in keys} for m in layers]
    pruner.update()
    changed_any = False
    for m, bm, bs in zip(layers, before_mask, before_state):
        changed = bm ^ m.mask
        changed_any |= bool(changed.any())
        for k in keys:
            assert torch.count_nonzero(opt.state[m.weight][k][changed]) == 0
            assert torch.equal(opt.state[m.weight][k][~changed], bs[k][~changed])
            assert torch.count_nonzero(bs[k][bm & ~m.mask]) > 0  # there was state to reset
    assert changed_any
    train(model, opt, pruner, batches(3, seed=1))
    for m in layers:
        assert torch.count_nonzero(m.weight[~m.mask]) == 0


def test_dsr_same_seed_same_masks_different_seed_different():
    def run(seed):
        model = tiny_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        train(model, opt, DSR(model, opt, n_prune=30, period=2, seed=seed), batches(20))
        return masks(model)

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_dsr_period_schedule_follows_epochs():
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = DSR(model, opt, period={0: 2, 1: 3, 2: 0})
    data = batches(6)
    for epoch in range(3):
        train(model, opt, pruner, data)
        pruner.epoch_end(epoch)
    steps = sorted(set(pruner.log_frame().step) - {0})
    assert steps == [2, 4, 6, 9, 12]
    assert pruner.current_period() == 0


# --------------------------------------------------------------------------- #
# resume and state
# --------------------------------------------------------------------------- #
def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("method", ["DSR", "RigL", "SET"])
def test_resume_continues_identically(method):
    make = {
        "DSR": lambda m, o: DSR(m, o, n_prune=30, period=3, seed=7),
        "RigL": lambda m, o: RigL(m, o, period=3, end_step=40, seed=7),
        "SET": lambda m, o: SET(m, o, period=3, end_step=40, seed=7),
    }[method]
    data = batches(24)

    model = tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner = make(model, opt)
    train(model, opt, pruner, data)

    model_a = tiny_model()
    opt_a = torch.optim.Adam(model_a.parameters(), lr=1e-2)
    pruner_a = make(model_a, opt_a)
    train(model_a, opt_a, pruner_a, data[:11])
    saved = _roundtrip({"model": model_a.state_dict(), "opt": opt_a.state_dict(), "pruner": pruner_a.state_dict()})
    train(model_a, opt_a, pruner_a, data[11:13])  # diverge the original object; must not matter

    model_b = tiny_model(seed=99, sparsity=0.2)
    opt_b = torch.optim.Adam(model_b.parameters(), lr=1e-2)
    pruner_b = make(model_b, opt_b)
    model_b.load_state_dict(saved["model"])
    opt_b.load_state_dict(saved["opt"])
    pruner_b.load_state_dict(saved["pruner"])
    train(model_b, opt_b, pruner_b, data[11:])

    for key, value in model.state_dict().items():
        assert torch.equal(value, model_b.state_dict()[key]), key
    assert pruner_b.log_frame().equals(pruner.log_frame())
    assert torch.equal(pruner_b.generator.get_state(), pruner.generator.get_state())
    if method == "DSR":
        assert pruner_b.threshold == pruner.threshold


def test_state_dict_is_plain_and_rejects_other_schedulers():
    model = tiny_model()
    pruner = DSR(model)
    state = _roundtrip(pruner.state_dict())
    assert set(state) >= {"type", "step_count", "epoch", "generator", "log", "threshold"}
    with pytest.raises(ValueError, match="DSR"):
        SET(model).load_state_dict(state)
    with pytest.raises(ValueError, match="missing"):
        pruner.load_state_dict({"type": "DSR"})


@pytest.mark.parametrize(
    ("make", "other"),
    [
        (lambda m: DSR(m, n_prune=600), lambda m: DSR(m, n_prune=700)),
        (lambda m: DSR(m, period={0: 100, 5: 200}), lambda m: DSR(m, period={0: 100, 6: 200})),
        (lambda m: DSR(m, tolerance=0.1), lambda m: DSR(m, tolerance=0.2)),
        (lambda m: SET(m, prune_fraction=0.3), lambda m: SET(m, prune_fraction=0.2)),
        (lambda m: RigL(m, end_step=100), lambda m: RigL(m, end_step=200)),
        (lambda m: MagnitudePruning(m, sparsity=0.5, begin=1), lambda m: MagnitudePruning(m, sparsity=0.6, begin=1)),
    ],
    ids=["dsr-n_prune", "dsr-period", "dsr-tolerance", "set-fraction", "rigl-end", "magnitude-sparsity"],
)
def test_a_state_made_with_other_hyperparameters_is_refused(make, other):
    """Resuming under other hyperparameters would silently change the run: it is an error naming them."""
    state = _roundtrip(make(tiny_model()).state_dict())
    make(tiny_model()).load_state_dict(state)  # the same ones load
    with pytest.raises(ValueError, match="other hyperparameters"):
        other(tiny_model()).load_state_dict(state)


# --------------------------------------------------------------------------- #
# log and epoch_end
# --------------------------------------------------------------------------- #
def test_log_frame_and_epoch_end():
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = DSR(model, opt, n_prune=20, period=4)
    train(model, opt, pruner, batches(12))
    out = pruner.epoch_end(0)
    frame = pruner.log_frame()
    assert list(frame.columns) == [
        "step",
        "epoch",
        "layer",
        "sparsity",
        "mask_sparsity",
        "n_active",
        "threshold",
        "pruned",
        "regrown",
    ]
    assert len(frame) == 4 * 3  # construction + 3 updates, 3 layers each
    assert set(frame.layer) == {"0", "3", "5"}
    last = frame[frame.step == 12].set_index("layer")
    for name, m in sparse_modules(model):
        assert last.loc[name, "n_active"] == int(m.mask.sum())
    layers = [m for _, m in sparse_modules(model)]
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    total = sum(m.weight.numel() for m in layers)
    assert out["sparsity"] == pytest.approx(zeros / total)
    assert out["mask_sparsity"] == pytest.approx(sum(int((~m.mask).sum()) for m in layers) / total)
    assert out["threshold"] == pruner.threshold and pruner.epoch == 1


# --------------------------------------------------------------------------- #
# magnitude pruning
# --------------------------------------------------------------------------- #
def _dense_twin():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(2, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(96, 20), nn.ReLU(), nn.Linear(20, 4))
    return dense, sparsify(copy.deepcopy(dense), 0.0, keep_ends_dense=False)


def test_magnitude_pruning_one_shot_layerwise_equals_l1_unstructured():
    dense, model = _dense_twin()
    MagnitudePruning(model, sparsity=0.77, scope="layer")
    for name, m in sparse_modules(model):
        ref = copy.deepcopy(dense.get_submodule(name))
        prune.l1_unstructured(ref, "weight", amount=0.77)
        assert torch.equal(m.mask, ref.weight_mask.bool()), name
        torch.testing.assert_close(m.weight.detach(), ref.weight.detach())


def test_magnitude_pruning_global_equals_global_unstructured():
    dense, model = _dense_twin()
    MagnitudePruning(model, sparsity=0.6, scope="global")
    ref = copy.deepcopy(dense)
    names = [n for n, _ in sparse_modules(model)]
    prune.global_unstructured(
        [(ref.get_submodule(n), "weight") for n in names], pruning_method=prune.L1Unstructured, amount=0.6
    )
    sparsities = []
    for n in names:
        assert torch.equal(model.get_submodule(n).mask, ref.get_submodule(n).weight_mask.bool()), n
        sparsities.append(model.get_submodule(n).mask_sparsity)
    assert max(sparsities) - min(sparsities) > 0.05  # global, not per layer


def test_magnitude_pruning_cubic_schedule_in_steps():
    _, model = _dense_twin()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = MagnitudePruning(model, opt, sparsity=0.9, begin=2, end=10, frequency=2, unit="step")
    train(model, opt, pruner, batches(14))
    frame = pruner.log_frame()
    steps = sorted(set(frame.step) - {0})
    assert steps == [2, 4, 6, 8, 10]
    total = sum(m.weight.numel() for _, m in sparse_modules(model))
    for t in steps:
        s_t = 0.9 + (0.0 - 0.9) * (1 - (t - 2) / 8) ** 3  # Zhu & Gupta 2017, eq. 1
        rows = frame[frame.step == t]
        for _, row in rows.iterrows():
            n = model.get_submodule(row.layer).weight.numel()
            assert row.n_active == n - min(round(s_t * n), n - 1)
    for _, m in sparse_modules(model):  # fine-tuning after the last prune kept the zeros
        assert m.mask_sparsity == pytest.approx(0.9, abs=1 / m.weight.numel())
        assert torch.count_nonzero(m.weight[~m.mask]) == 0
    assert pruner.epoch_end(0)["mask_sparsity"] == pytest.approx(0.9, abs=3 / total)


def test_magnitude_pruning_one_shot_after_dense_epochs():
    _, model = _dense_twin()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pruner = MagnitudePruning(model, opt, sparsity=0.5, begin=2, unit="epoch")
    data = batches(3)
    for epoch in range(4):
        train(model, opt, pruner, data)
        out = pruner.epoch_end(epoch)
        expected = 0.0 if epoch < 1 else 0.5
        assert out["mask_sparsity"] == pytest.approx(expected, abs=0.01), epoch
    assert sorted(set(pruner.log_frame().step)) == [0, 6]


# --------------------------------------------------------------------------- #
# SET and RigL
# --------------------------------------------------------------------------- #
def test_set_keeps_layer_sparsity_and_replaces_cosine_fraction():
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = SET(model, opt, prune_fraction=0.3, period=5, end_step=20, seed=1)
    before = {n: int(m.mask.sum()) for n, m in sparse_modules(model)}
    train(model, opt, pruner, batches(25))
    assert {n: int(m.mask.sum()) for n, m in sparse_modules(model)} == before
    frame = pruner.log_frame()
    assert sorted(set(frame.step) - {0}) == [5, 10, 15]  # none from end_step on
    dropped = 0
    for _, row in frame[frame.step > 0].iterrows():
        k = int(0.15 * (1 + math.cos(math.pi * row.step / 20)) * before[row.layer])
        # a weight dropped and regrown at once stays (as in the RigL reference): net counts <= k
        assert row.pruned == row.regrown <= k
        dropped += k - row.pruned
    assert dropped < 0.2 * frame.pruned.sum()
    assert pruner.fraction_at(0) == pytest.approx(0.3) and pruner.fraction_at(20) == 0.0


def test_rigl_grows_where_dense_gradient_is_largest():
    torch.manual_seed(0)
    model = nn.Sequential(DynamicLinear(12, 8, 0.75))
    layer = model[0]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # weights fixed: the oracle sees the same ones
    pruner = RigL(model, opt, drop_fraction=0.5, period=2, end_step=100)
    x, y = torch.randn(16, 12), torch.randint(0, 8, (16,))

    def one_step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        pruner.step()

    one_step()
    assert layer.keep_dense_grad and layer.dense_grad is None  # asked for the next (update) step only
    old_mask, w = layer.mask.clone(), layer.weight.detach().clone()
    w_eff = (w * old_mask).requires_grad_()  # oracle dense gradient
    F.cross_entropy(F.linear(x, w_eff, layer.bias.detach()), y).backward()
    one_step()
    assert not layer.keep_dense_grad and layer.dense_grad is None  # released after use
    n = int(old_mask.sum())
    k = int(0.5 * 0.5 * (1 + math.cos(math.pi * 2 / 100)) * n)
    mag = w.abs().view(-1).masked_fill(~old_mask.view(-1), math.inf)
    drop = torch.topk(mag, k, largest=False).indices
    after_drop = old_mask.view(-1).clone()
    after_drop[drop] = False
    free = (~after_drop).nonzero().squeeze(1)
    grow = free[torch.topk(w_eff.grad.abs().view(-1)[free], k).indices]
    expected = after_drop.clone()
    expected[grow] = True
    assert torch.equal(layer.mask.view(-1), expected)
    assert pruner.log[-1]["pruned"] == pruner.log[-1]["regrown"] > 0


def test_rigl_every_step_uses_only_that_steps_gradient():
    model = nn.Sequential(DynamicLinear(12, 8, 0.75))
    pruner = RigL(model, period=1, end_step=100)
    x = torch.randn(4, 12)
    model(x).sum().backward()
    pruner.step()
    assert model[0].keep_dense_grad and model[0].dense_grad is None
    model(x).sum().backward()
    w_eff = (model[0].weight.detach() * model[0].mask).requires_grad_()
    F.linear(x, w_eff, model[0].bias.detach()).sum().backward()
    torch.testing.assert_close(model[0].dense_grad, w_eff.grad)  # not summed with the previous step's


def test_rigl_without_backward_raises():
    model = tiny_model()
    pruner = RigL(model, period=1)
    with pytest.raises(RuntimeError, match="dense gradient"):
        pruner.step()


# --------------------------------------------------------------------------- #
# bad input
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda m: DSR(nn.Linear(3, 3)), ValueError, "no sparse"),
        (lambda m: DSR("model"), TypeError, "model"),
        (lambda m: DSR(m, optimizer="sgd"), TypeError, "optimizer"),
        (lambda m: DSR(m, tolerance=1.5), ValueError, "tolerance"),
        (lambda m: DSR(m, tolerance=float("nan")), ValueError, "tolerance"),
        (lambda m: DSR(m, n_prune=0), ValueError, "n_prune"),
        (lambda m: DSR(m, n_prune=1.5), TypeError, "n_prune"),
        (lambda m: DSR(m, n_prune=5, prune_fraction=0.1), ValueError, "not both"),
        (lambda m: DSR(m, prune_fraction=1.0), ValueError, "prune_fraction"),
        (lambda m: DSR(m, initial_threshold=0.0), ValueError, "initial_threshold"),
        (lambda m: DSR(m, period=0), ValueError, "period"),
        (lambda m: DSR(m, period={0: -1}), ValueError, "period"),
        (lambda m: DSR(m, seed=True), TypeError, "seed"),
        (lambda m: SET(m, prune_fraction=1.0), ValueError, "prune_fraction"),
        (lambda m: SET(m, end_step=0), ValueError, "end_step"),
        (lambda m: RigL(m, drop_fraction=-0.1), ValueError, "drop_fraction"),
        (lambda m: MagnitudePruning(m, sparsity=1.0), ValueError, "sparsity"),
        (lambda m: MagnitudePruning(m, sparsity=True), TypeError, "sparsity"),
        (lambda m: MagnitudePruning(m, sparsity=0.5, scope="net"), ValueError, "scope"),
        (lambda m: MagnitudePruning(m, sparsity=0.5, unit="hour"), ValueError, "unit"),
        (lambda m: MagnitudePruning(m, sparsity=0.5, begin=3, end=3), ValueError, "end"),
    ],
)
def test_bad_scheduler_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make(tiny_model())


def test_bad_epoch_argument():
    pruner = DSR(tiny_model())
    with pytest.raises(ValueError, match="epoch"):
        pruner.epoch_end(-1)
    with pytest.raises(TypeError, match="epoch"):
        pruner.epoch_end(1.0)


# --------------------------------------------------------------------------- #
# torch.distributed: masks agree across ranks
# --------------------------------------------------------------------------- #
def _dist_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = tiny_model(seed=rank)  # different initial masks too: DSR adopts rank 0's
        opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
        pruner = DSR(model, opt, n_prune=30, period=3, seed=rank)
        train(model, opt, pruner, batches(18, seed=100 + rank))  # each rank its own data
        torch.save(
            {
                "masks": masks(model),
                "threshold": pruner.threshold,
                "log": pruner.log,
                "weights": {n: m.weight.detach() for n, m in sparse_modules(model)},
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_masks_identical_across_two_gloo_ranks(tmp_path):
    import torch.multiprocessing as mp

    if not torch.distributed.is_available():
        pytest.skip("torch.distributed not available")
    # control: without a process group the two ranks' data give different masks
    local = []
    for rank in range(2):
        model = tiny_model(seed=0)
        opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
        train(model, opt, DSR(model, opt, n_prune=30, period=3, seed=0), batches(18, seed=100 + rank))
        local.append(masks(model))
    assert not all(torch.equal(local[0][k], local[1][k]) for k in local[0])

    mp.spawn(_dist_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in r0["masks"]:
        assert torch.equal(r0["masks"][k], r1["masks"][k]), k
        for r in (r0, r1):
            assert torch.count_nonzero(r["weights"][k][~r["masks"][k]]) == 0
    assert r0["threshold"] == r1["threshold"]
    strip = lambda log: [{k: v for k, v in row.items() if k != "sparsity"} for row in log]  # noqa: E731
    assert strip(r0["log"]) == strip(r1["log"])  # (zero-valued live weights may differ per rank)
    assert sum(row["pruned"] for row in r0["log"]) > 0
    assert not all(torch.equal(r0["weights"][k], r1["weights"][k]) for k in r0["weights"])  # data differed
