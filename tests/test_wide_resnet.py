"""Wide ResNet: published sizes, the sparse switch, and the training recipes of section 4."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dynprune_lib as dp
from dynprune_lib import study


@pytest.mark.parametrize("depth, k, published", [(28, 10, 36.5e6), (28, 2, 1.47e6), (16, 4, 2.75e6)])
def test_parameter_counts_match_the_published_ones(depth, k, published):
    # Zagoruyko & Komodakis 2016, Table 1 and sec. 3; DSR (Mostafa & Wang 2019) for WRN-28-2
    n = sum(p.numel() for p in dp.WideResNet(depth, k).parameters())
    assert abs(n - published) / published < 0.005


def test_exact_parameter_count_by_hand():
    # WRN-10-1: conv 3->16; per group one block (two 3x3 convs + BN) and, when the width or
    # stride changes, a 1x1 shortcut; final BN and a 64->10 classifier
    bn = lambda c: 2 * c  # noqa: E731
    block = lambda cin, cout: bn(cin) + 9 * cin * cout + bn(cout) + 9 * cout * cout  # noqa: E731
    expected = 27 * 16 + block(16, 16) + block(16, 32) + 16 * 32 + block(32, 64) + 32 * 64 + bn(64) + 64 * 10 + 10
    assert sum(p.numel() for p in dp.WideResNet(10, 1).parameters()) == expected


def test_sparse_switch_makes_only_block_3x3_convs_dynamic():
    model = dp.WideResNet(16, 2, sparse=True, sparsity=0.9)
    sparse = dict(dp.sparse_modules(model))
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert set(sparse) == {n for n, m in convs.items() if m.kernel_size == (3, 3) and n != "conv1"}
    assert all(n.startswith("blocks.") and n.endswith(("conv1", "conv2")) for n in sparse)
    assert not isinstance(model.conv1, dp.DynamicConv2d) and not isinstance(model.fc, dp.DynamicLinear)
    for layer in sparse.values():
        assert abs(1 - layer.mask.float().mean().item() - 0.9) < 0.01
        assert torch.count_nonzero(layer.weight[~layer.mask]) == 0
    with pytest.raises(ValueError, match="sparse=True"):
        dp.WideResNet(16, 2, sparsity=0.5)


def test_recipes_hold_the_published_protocols():
    r = study.wrn_recipe("wrn-28-2-dsr0.9")
    assert (r.depth, r.widen_factor, r.epochs, r.batch_size, r.milestones, r.lr, r.gamma) == (
        28,
        2,
        200,
        100,
        (60, 120, 160),
        0.1,
        0.2,
    )
    assert r.nesterov and r.momentum == 0.9 and r.weight_decay == 5e-4 and r.sparsity == 0.9
    assert (r.anchor, study.wrn_recipe("wrn-28-2").anchor, study.wrn_recipe("wrn-28-10").anchor) == (
        0.9359,
        0.9470,
        0.9583,
    )


def test_scaling_keeps_milestones_at_the_same_share_of_training():
    r = study.wrn_recipe("wrn-28-2-dsr0.9", epochs=20)
    assert r.epochs == 20 and r.milestones == (6, 12, 16)
    assert r.dsr["period"] == {0: 100, 2: 200, 8: 400, 14: 800, 19: 0}
    assert study.wrn_recipe("wrn-28-2", epochs=3).milestones == (1, 2)
    with pytest.raises(ValueError, match="recipe"):
        study.wrn_recipe("wrn-99-9")
    with pytest.raises(TypeError, match="unknown"):
        study.wrn_recipe("wrn-28-2", width=3)
    with pytest.raises(ValueError, match="dsr"):
        study.WRNRecipe("x", 10, 1, 1, 8, (), dsr={"period": 4})
    with pytest.raises(ValueError, match="precision"):
        study.WRNRecipe("x", 10, 1, 1, 8, (), precision="half")
    assert study.wrn_recipe("wrn-10-2-cpu", epochs=3).precision == "bf16"  # scaling keeps it


def test_build_training_is_seeded_and_adds_dsr_to_sparse_recipes():
    recipe = study.wrn_recipe("wrn-10-1-dsr-smoke")
    a, b = study.build_training(recipe, seed=3), study.build_training(recipe, seed=3)
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert torch.equal(x, y)
    assert isinstance(a.pruner, dp.DSR) and a.pruner.optimizer is a.optimizer
    group = a.optimizer.param_groups[0]
    assert group["nesterov"] and group["weight_decay"] == 5e-4 and group["lr"] == 0.1
    assert study.build_training(study.wrn_recipe("wrn-10-1-smoke")).pruner is None


def _train_steps(recipe, steps: int = 8, seed: int = 0):
    """``steps`` SGD steps of ``recipe`` (DSR stepping after each) on fixed synthetic batches:
    the losses, the final state and the masks' storage addresses before training."""
    setup = study.build_training(recipe, seed=seed)
    masks = {name: buf for name, buf in setup.model.named_buffers() if name.endswith("mask")}
    storage = {name: buf.data_ptr() for name, buf in masks.items()}
    before = {name: buf.clone() for name, buf in masks.items()}
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x = torch.randn(16, 3, 16, 16, generator=generator)
        y = torch.randint(0, 10, (16,), generator=generator)
        loss = nn.functional.cross_entropy(setup.model(x), y)
        setup.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        setup.optimizer.step()
        if setup.pruner is not None:
            setup.pruner.step()
        losses.append(loss.item())
    state = {k: v.detach().clone() for k, v in setup.model.state_dict().items()}
    return losses, state, storage, before, setup


_SPEED_RECIPE = study.wrn_recipe("wrn-10-1-dsr-smoke", precision="fp32", channels_last=False, dsr={"period": 3})


@pytest.mark.parametrize(
    "knob",
    [{"channels_last": True}, {"fused_sgd": True}, pytest.param({"compile": "default"}, marks=pytest.mark.slow)],
    ids=lambda knob: next(iter(knob)),
)
def test_speed_knobs_give_the_same_training_within_float_rounding(knob):
    """Each speed knob of a recipe changes how fast it runs, not what it computes: the same
    losses, masks and weights after DSR updates, within float32 rounding, with the knob on
    and off; the masks are updated in place (a compiled graph or a captured CUDA graph reads
    the same storage)."""
    plain_losses, plain, _, _, _ = _train_steps(_SPEED_RECIPE)
    losses, state, storage, before, setup = _train_steps(_SPEED_RECIPE.replace(**knob))
    torch.testing.assert_close(losses, plain_losses, rtol=1e-4, atol=1e-5)
    assert state.keys() == plain.keys()  # compiled in place: a checkpoint has the eager keys
    changed = 0
    for name, value in state.items():
        if name.endswith("mask"):
            assert torch.equal(value, plain[name]), name
            changed += int(not torch.equal(value, before[name]))
        else:
            # 8 steps of SGD at lr 0.1 through BatchNorm grow float rounding to a few 1e-5 (measured at one thread)
            torch.testing.assert_close(value, plain[name], rtol=1e-3, atol=1e-4, msg=name)
    assert changed, "no DSR update changed a mask: the test would not see a stale one"
    masks = {name: buf for name, buf in setup.model.named_buffers() if name.endswith("mask")}
    assert {name: buf.data_ptr() for name, buf in masks.items()} == storage


def test_a_sparse_wide_resnet_compiles_without_graph_breaks():
    """``compile`` on the DSR network as ``fit`` runs it (training steps under bf16 autocast,
    then evaluation without grad): one graph per mode and no graph break. The masks' cached
    float copy checked the mask's version counter, a data-dependent guard: every block broke
    the graph there, was recompiled per block and, past dynamo's recompile limit, ran eagerly."""
    from torch._dynamo.testing import CompileCounter
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = dp.WideResNet(10, 1, sparse=True, sparsity=0.9)
    backend = CompileCounter()
    compiled = torch.compile(model, backend=backend)  # "eager" graphs: dynamo's tracing alone
    x = torch.randn(4, 3, 32, 32)
    for _ in range(2):  # the second step finds the first one's caches
        with torch.autocast("cpu", dtype=torch.bfloat16):
            compiled(x).float().sum().backward()
    model.eval()
    with torch.no_grad():
        compiled(x)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert backend.frame_count == 2  # training under autocast, evaluation without grad
    torch._dynamo.reset()


def test_speed_knobs_are_checked_and_name_their_checkpoints():
    recipe = study.wrn_recipe("wrn-10-1-smoke")
    assert recipe.run_suffix == ""
    assert recipe.replace(fused_sgd=True, compile="reduce-overhead").run_suffix == "_fused_compiled-reduce-overhead"
    with pytest.raises(ValueError, match="compile"):
        recipe.replace(compile="fast")
    with pytest.raises(ValueError, match="eval_batch_size"):
        recipe.replace(eval_batch_size=0)
    assert study.build_training(recipe.replace(fused_sgd=True)).optimizer.defaults["fused"]
    model = study.build_training(recipe.replace(channels_last=True)).model
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
