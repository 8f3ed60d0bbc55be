"""The four aspects' measures and scores against hand computations and library oracles."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import dynprune_lib as dp
from dynprune_lib import study

from conftest import synthetic_cifar

# ---------------------------------------------------------------- model complexity


def test_flops_of_a_conv_and_a_linear_by_hand():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 32 * 32, 5))
    # conv: 2 * (8 * 32 * 32 outputs) * (3 * 3 * 3 weights each); linear: 2 * 8192 * 5
    assert study.count_flops(model)["flops"] == 2 * 8 * 32 * 32 * 27 + 2 * 8192 * 5


def test_grouped_strided_conv_flops_by_hand():
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=4, bias=False)
    # output 16 x 16 x 16, each from (8 / 4) * 3 * 3 = 18 weights
    assert study.count_flops(conv, (8, 32, 32)) == {
        "flops": 2 * 16 * 16 * 16 * 18,
        "nonzero_flops": 2 * 16 * 16 * 16 * 18,
    }


@pytest.mark.parametrize("depth, k, sparse", [(10, 1, False), (16, 2, True)])
def test_wide_resnet_flops_equal_torch_flop_counter(depth, k, sparse):
    model = dp.WideResNet(depth, k, sparse=sparse, sparsity=0.7 if sparse else 0.0).eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 32, 32))
    assert study.count_flops(model)["flops"] == counter.get_total_flops()


def test_nonzero_flops_and_parameters_follow_the_masks():
    torch.manual_seed(0)
    conv = dp.DynamicConv2d(4, 6, 3, padding=1, bias=False, initial_sparsity=0.75)
    nnz = int(conv.mask.sum())
    dense = 2 * 6 * 8 * 8 * 4 * 9
    out = study.count_flops(conv, (4, 8, 8))
    assert out["flops"] == dense and out["nonzero_flops"] == round(dense * nnz / conv.weight.numel())
    assert nnz == conv.weight.numel() - round(0.75 * conv.weight.numel())
    assert study.count_parameters(conv) == {"parameters": 4 * 6 * 9, "nonzero_parameters": nnz}


def test_flop_count_restores_training_mode():
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2)).train()
    study.count_flops(model)
    assert model.training and not model[0]._forward_hooks


# ----------------------------------------------------------------- generalization


def test_blur_equals_skimage_gaussian_per_image():
    from skimage.filters import gaussian

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8, generator=g)
    ours = study.gaussian_blur(images, 1.5)
    for i in range(3):
        ref = gaussian(images[i].permute(1, 2, 0).numpy() / 255.0, sigma=1.5, channel_axis=-1)
        expected = np.round(np.clip(ref, 0, 1) * 255).astype(np.uint8).transpose(2, 0, 1)
        np.testing.assert_array_equal(ours[i].numpy(), expected)


def test_noise_is_deterministic_and_has_the_stated_strength():
    grey = torch.full((2, 3, 32, 32), 128, dtype=torch.uint8)
    a = study.gaussian_noise(grey, 0.08, seed=1)
    assert torch.equal(a, study.gaussian_noise(grey, 0.08, seed=1))
    assert not torch.equal(a, study.gaussian_noise(grey, 0.08, seed=2))
    std = (a.double() / 255).std().item()
    assert abs(std - 0.08) < 0.004  # 6,144 samples, none clipped at 4.7 sigma from mid-grey
    assert torch.equal(study.gaussian_noise(grey, 0.0), grey)


def test_shift_images_uses_cifar10c_severities():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8, generator=g)
    assert torch.equal(study.shift_images(images, "gaussian_blur", 2), study.gaussian_blur(images, 2.0))
    assert torch.equal(
        study.shift_images(images, "gaussian_noise", 3, seed=4), study.gaussian_noise(images, 0.08, seed=4)
    )
    with pytest.raises(ValueError, match="severity"):
        study.shift_images(images, "gaussian_blur", 6)
    with pytest.raises(ValueError, match="kind"):
        study.shift_images(images, "fog", 1)


def test_model_predictor_standardises_like_batch_loader():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    images = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])
    x, _ = next(
        iter(dp.BatchLoader(images, torch.zeros(6, dtype=torch.long), 6, normalize="standard", mean=mean, std=std))
    )
    expected = torch.softmax(model(x).double(), dim=1).detach().numpy()
    np.testing.assert_allclose(
        study.model_predictor(model, mean=mean, std=std, batch_size=4)(images), expected, rtol=1e-6
    )
    labels = torch.from_numpy(expected.argmax(axis=1))
    assert study.accuracy(study.model_predictor(model, mean=mean, std=std), images, labels) == 1.0


# --------------------------------------------------------------- data requirements


def test_fraction_to_reach_interpolates_in_log_fraction():
    # target 0.9 * 0.6 = 0.54, between (0.1, 0.5) and (1.0, 0.6): 0.4 of the way in log f
    assert study.fraction_to_reach([0.01, 0.1, 1.0], [0.2, 0.5, 0.6], 0.9) == pytest.approx(0.1 * 10**0.4)
    assert study.fraction_to_reach([0.01, 0.1, 1.0], [0.58, 0.59, 0.6], 0.9) == 0.01
    assert study.fraction_to_reach([0.01, 0.1, 1.0], [0.2, 0.3, 0.6], 1.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="increasing"):
        study.fraction_to_reach([0.1, 0.01, 1.0], [0.2, 0.3, 0.6])
    with pytest.raises(ValueError, match="share"):
        study.fraction_to_reach([0.1, 1.0], [0.2, 0.3], share=0.0)


def test_curve_epochs_floor_by_hand():
    assert study.curve_epochs(3, 500, 128, 100) == 25  # 4 batches per epoch
    assert study.curve_epochs(3, 25000, 128, 100) == 3  # 196 per epoch: the recipe's epochs suffice
    assert study.curve_epochs(3, 500, 128, 0) == 3


# ----------------------------------------------------------------- interpretability


def _top_left_predictor(images: torch.Tensor) -> np.ndarray:
    """p(class 1) = brightness of the top-left 8x8 region: only that region matters."""
    p1 = images[:, :, :8, :8].double().mean(dim=(1, 2, 3)) / 255
    return torch.stack([1 - p1, p1], dim=1).numpy()


def test_region_masks_tile_the_image_once():
    masks = study.region_masks(32, 32, 8)
    assert masks.shape == (16, 32, 32) and torch.equal(masks.sum(0), torch.ones(32, 32, dtype=torch.long))
    assert masks[1, 0, 8] and not masks[1, 0, 7] and masks[4, 8, 0]
    with pytest.raises(ValueError, match="patch"):
        study.region_masks(32, 32, 5)


def test_occlusion_attribution_finds_the_only_region_that_matters():
    images = torch.full((2, 3, 32, 32), 60, dtype=torch.uint8)
    images[:, :, :8, :8] = 250
    attribution, target = study.occlusion_attribution(_top_left_predictor, images, patch=8, fill=(128, 128, 128))
    assert list(target) == [1, 1]
    np.testing.assert_allclose(attribution[:, 0], (250 - 128) / 255)
    np.testing.assert_allclose(attribution[:, 1:], 0.0)


def test_deletion_curve_and_faithfulness_by_hand():
    images = torch.full((3, 3, 32, 32), 60, dtype=torch.uint8)
    images[:, :, :8, :8] = 250
    result = study.deletion_faithfulness(_top_left_predictor, images, patch=8, fill=(128, 128, 128), seed=0)
    p0, p1 = 250 / 255, 128 / 255
    expected = np.r_[p0, np.full(16, p1)]  # the explanation deletes the top-left region first
    np.testing.assert_allclose(result.curve, expected)
    assert result.auc == pytest.approx(np.trapezoid(expected, np.linspace(0, 1, 17)))
    assert result.random_auc > result.auc and 0 < result.faithfulness < 1
    uninformative = study.deletion_faithfulness(lambda x: np.full((len(x), 2), 0.5), images, patch=8, seed=0)
    assert uninformative.faithfulness == pytest.approx(0.0)


# --------------------------------------------------------------------------- scores


def test_scores_by_hand():
    raw = pd.DataFrame(
        [
            {
                "method": "a",
                "nonzero_parameters": 1e3,
                "nonzero_flops": 1e10,
                "train_seconds": 1e3,
                "test_acc": 0.8,
                "train_acc": 0.9,
                "shift_acc": 0.5,
                "fraction_to_reach": 0.1,
                "fraction_min": 0.01,
                "deletion_auc": 0.2,
                "random_deletion_auc": 0.4,
            },
            {
                "method": "b",
                "nonzero_parameters": 1e12,
                "nonzero_flops": 1e2,
                "train_seconds": 10**2.5,
                "test_acc": 0.6,
                "train_acc": 0.5,
                "shift_acc": 0.3,
                "fraction_to_reach": 0.01,
                "fraction_min": 0.01,
                "deletion_auc": 0.5,
                "random_deletion_auc": 0.4,
            },
        ]
    )
    scores = study.aspect_scores(raw).set_index("method")
    # a: log positions 0, 1, (3 - 1) / 4; gap 0.1; log(10) / log(100); 1 - 0.5
    assert scores.loc["a"].tolist() == pytest.approx([0.5, (0.8 + 0.5 + 0.9) / 3, 0.5, 0.5])
    # b: clipped to 1 and 0, 1.5 / 4; negative gap counts as 0; smallest fraction; clipped at 0
    assert scores.loc["b"].tolist() == pytest.approx([(1 + 0 + 0.375) / 3, (0.6 + 0.3 + 1) / 3, 0.0, 0.0])


def test_log_position_and_score_input_checks():
    assert study.log_position(1e4, 1e2, 1e6) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="low"):
        study.log_position(1.0, 10.0, 1.0)
    with pytest.raises(ValueError, match="columns"):
        study.aspect_scores(pd.DataFrame({"method": ["a"]}))


def test_paper_claims_check_decides_each_aspect_by_the_rule_over_seeds():
    trad = study.TRADITIONAL_NAME
    # three seeds; the paper says deep learning scores higher on the first three, traditional on the last
    scores = pd.DataFrame(
        {
            "method": ["net"] * 3 + [trad] * 3,
            "seed": [0, 1, 2] * 2,
            "complexity": [0.80, 0.82, 0.81, 0.10, 0.11, 0.09],  # leads by ~0.71: supported
            "generalization": [0.40, 0.41, 0.39, 0.60, 0.61, 0.59],  # trails by 0.2: not supported
            "data_requirements": [math.nan] * 3 + [0.2] * 3,  # not measured
            "interpretability": [0.58, 0.50, 0.62, 0.60, 0.55, 0.61],  # within the noise: inconclusive
        }
    )
    claims = study.check_paper_claims(scores).set_index("aspect")
    assert claims["verdict"].to_dict() == {
        "complexity": "supported",
        "generalization": "not supported",
        "data_requirements": "n/m",
        "interpretability": "inconclusive",
    }
    assert claims.loc["complexity", "network - traditional"] == pytest.approx(0.71)
    assert claims.loc["complexity", "n"] == 3
    # a lead under the rule's margin (0.05) is not "higher", however consistent
    small = scores.assign(complexity=[0.13, 0.14, 0.12, 0.10, 0.11, 0.09])
    assert study.check_paper_claims(small).set_index("aspect").loc["complexity", "verdict"] == "not supported"
    # one seed decides nothing
    one = scores[scores["seed"] == 0]
    assert study.check_paper_claims(one).set_index("aspect").loc["complexity", "verdict"] == "inconclusive"


def test_figure6_draws_every_method_and_marks_missing_scores():
    scores = pd.DataFrame(
        {
            "method": ["net", "net", "trad"],
            "complexity": [0.8, 0.7, 0.1],
            "generalization": [0.4, 0.5, 0.6],
            "data_requirements": [math.nan, math.nan, 0.2],
            "interpretability": [0.3, 0.4, 0.6],
        }
    )
    fig = study.plot_aspect_scores(scores)
    ax = fig.axes[0]
    assert len(ax.patches) == 4 + 3  # net has no data-requirement bar
    assert "n/m" in [t.get_text() for t in ax.texts]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["net", "trad"]


# ----------------------------------------------------------------- the comparison


def test_learning_curve_subsets_are_the_data_subsets_and_nested():
    data = synthetic_cifar(200, 20, size=4, labels="balanced")
    labels = data.train_labels
    small, large = study.stratified_subset(data, 20, seed=1), study.stratified_subset(data, 100, seed=1)
    assert torch.equal(data.train_images[large], data.subset(100, None, seed=1).train_images)
    assert set(small.tolist()) <= set(large.tolist())
    assert torch.equal(torch.bincount(labels[small]), torch.full((10,), 2))


def test_comparison_profiles_validate_and_override():
    cfg = study.comparison_profile("cpu", epochs=2, fractions=[0.1, 1.0], share=None)
    assert cfg.epochs == 2 and cfg.fractions == (0.1, 1.0) and cfg.share == 0.9
    assert cfg.recipe("wrn-10-2-cpu").epochs == 2
    assert cfg.recipe("wrn-10-2-cpu").precision == "bf16"  # the recipe's own
    fp32 = study.comparison_profile("cpu", precision="fp32").recipe("wrn-10-2-cpu")
    assert fp32.precision == "fp32" and fp32.epochs == study.wrn_recipe("wrn-10-2-cpu").epochs
    with pytest.raises(ValueError, match="precision"):
        study.comparison_profile("cpu", precision="int8")
    assert study.comparison_profile("gpu").recipes == ("wrn-28-2", "wrn-28-2-dsr0.9", "wrn-28-10")
    with pytest.raises(ValueError, match="end at 1.0"):
        study.comparison_profile("cpu", fractions=[0.1, 0.5])
    with pytest.raises(ValueError, match="profile"):
        study.comparison_profile("tpu")
    with pytest.raises(TypeError, match="unknown"):
        study.comparison_profile("cpu", width=2)


def test_data_requirements_and_raw_table_join_per_method():
    curves = {"net": pd.DataFrame({"fraction": [0.01, 0.1, 1.0], "test_acc": [0.2, 0.5, 0.6]})}
    req = study.data_requirements_table(curves, share=0.9)
    assert req.loc[0, "fraction_to_reach"] == pytest.approx(0.1 * 10**0.4) and req.loc[0, "fraction_min"] == 0.01
    base = pd.DataFrame({"method": ["net", "other"], "seed": [0, 0]})
    raw = study.raw_aspect_table(
        base.assign(nonzero_parameters=[1, 2]),
        base.assign(test_acc=[0.6, 0.5]),
        req,
        base.assign(deletion_auc=[0.1, 0.2]),
    )
    assert raw.set_index("method").loc["net", "fraction_to_reach"] == pytest.approx(0.1 * 10**0.4)
    assert math.isnan(raw.set_index("method").loc["other", "fraction_to_reach"])


def test_generalization_table_is_the_same_fresh_and_from_its_cache(tmp_path):
    data = synthetic_cifar(40, 20, labels="balanced")
    zero = study.Method("always 0", lambda x: np.eye(10)[np.zeros(len(x), dtype=np.int64)], 1, 1, 1, 1, 1.0, key="zero")
    shifts = (("gaussian_noise", 3), ("gaussian_blur", 1))
    fresh = study.generalization_table([zero], data, shifts=shifts, gap_images=20, cache_dir=tmp_path)
    cached = study.generalization_table([zero], data, shifts=shifts, gap_images=20, cache_dir=tmp_path)
    pd.testing.assert_frame_equal(fresh, cached)
    assert list(fresh.columns[:6]) == ["method", "seed", "test_acc", "train_acc", "gaussian_noise@3", "gaussian_blur@1"]
    # oracle: a constant prediction is right on exactly the images of its class (2 of 20 test images)
    assert fresh.loc[0, "test_acc"] == pytest.approx(0.1) and fresh.loc[0, "gaussian_blur@1"] == pytest.approx(0.1)
