"""The traditional method: hand-designed features against skimage/numpy, the classifier against sklearn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.feature import hog

from dynprune_lib import study
from dynprune_lib.study import traditional

from conftest import synthetic_images


def _random_images(n: int, seed: int = 0) -> torch.Tensor:
    return synthetic_images(n, seed=seed)[0]


def _stripes(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: horizontal stripes, class 1: vertical, class 2: red-tinted noise; learnable by HOG + colour."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = rng.integers(60, 120, (n, 3, 32, 32)).astype(np.uint8)
    period = rng.integers(3, 6, n)
    for i, (c, p) in enumerate(zip(labels, period)):
        band = (np.arange(32) // p) % 2 == 0
        if c == 0:
            images[i][:, band, :] += 120
        elif c == 1:
            images[i][:, :, band] += 120
        else:
            images[i][0] += 100
    return torch.from_numpy(images), torch.from_numpy(labels)


# ------------------------------------------------------------------------ features


@pytest.mark.parametrize(
    "config", [study.FeatureConfig(), study.FeatureConfig(orientations=6, pixels_per_cell=4, cells_per_block=3)]
)
def test_hog_equals_skimage_on_single_images(config):
    images = _random_images(3)
    ours = study.hog_features(images, config, progress=False)
    for i in range(3):
        expected = hog(
            images[i].permute(1, 2, 0).numpy(),
            orientations=config.orientations,
            pixels_per_cell=(config.pixels_per_cell,) * 2,
            cells_per_block=(config.cells_per_block,) * 2,
            block_norm="L2-Hys",
            channel_axis=-1,
        )
        np.testing.assert_allclose(ours[i], expected, rtol=1e-6, atol=1e-7)
    assert ours.shape == (3, config.hog_dim()) and ours.dtype == np.float32


def test_hog_in_parallel_chunks_equals_in_one_piece():
    from joblib import parallel_config

    images = _random_images(10, seed=1)
    # joblib's threads stand in for its worker processes (which take ~10 s to start here):
    # what is tested is our chunking and reassembly, in order.
    with parallel_config(backend="threading"):
        parallel = study.hog_features(images, n_jobs=2, chunk_size=3, progress=False)
    np.testing.assert_array_equal(parallel, study.hog_features(images, n_jobs=1, chunk_size=10, progress=False))
    with pytest.raises(ValueError, match="n_jobs"):
        study.hog_features(images, n_jobs=0)


def test_color_histogram_equals_numpy_histogramdd():
    images = _random_images(4, seed=2)
    images[1] = 255  # edge bins
    ours = study.color_histograms(images, bins=4)
    for i in range(4):
        pixels = images[i].reshape(3, -1).T.numpy()
        expected, _ = np.histogramdd(pixels, bins=(4, 4, 4), range=[(0, 256)] * 3)
        np.testing.assert_allclose(ours[i], expected.ravel() / pixels.shape[0], rtol=1e-6)
    assert np.allclose(ours.sum(axis=1), 1.0)


def test_feature_vector_is_hog_then_colour_of_stated_length():
    config = study.FeatureConfig()
    images = _random_images(2)
    feats = study.extract_features(images, config, progress=False)
    assert feats.shape == (2, config.dim()) == (2, 324 + 64)
    np.testing.assert_array_equal(feats[:, :324], study.hog_features(images, config, progress=False))
    np.testing.assert_array_equal(feats[:, 324:], study.color_histograms(images, 4))


@pytest.mark.parametrize(
    "bad, exc",
    [
        (torch.zeros(2, 3, 32, 32), ValueError),
        (torch.zeros(2, 1, 32, 32, dtype=torch.uint8), ValueError),
        ([[0]], TypeError),
    ],
)
def test_features_reject_bad_images(bad, exc):
    with pytest.raises(exc, match="images"):
        study.extract_features(bad)


def test_feature_config_rejects_bad_values():
    with pytest.raises(ValueError, match="orientations"):
        study.FeatureConfig(orientations=0)
    with pytest.raises(ValueError, match="color_bins"):
        study.FeatureConfig(color_bins=3)
    with pytest.raises(ValueError, match="too small"):
        study.FeatureConfig(pixels_per_cell=16, cells_per_block=3).hog_dim(32, 32)


def test_operation_estimate_by_hand():
    # 3x16x16, 8-px cells: 2x2 cells, one 2x2 block of L = 4*9 = 36 values; 2 colour bins -> 8; D = 44
    ops = study.traditional_flops(study.FeatureConfig(color_bins=2), (3, 16, 16), num_classes=10)
    p = 256
    assert ops["hog"] == 6 * p + 12 * p + 2 * p + 5 * p + 4 * 9 + (7 * 36 + 4)
    assert ops["color_histogram"] == (6 + 4 + 1) * p + 8
    assert ops["classifier"] == 2 * 44 + 2 * 44 * 10 + 10


# ---------------------------------------------------------------------- classifier


def test_linear_classifier_reproduces_sklearn(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 7)) * rng.uniform(0.5, 3, 7) + rng.normal(size=7)
    y = rng.integers(0, 3, 120)
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=0.5, max_iter=1000).fit(scaler.transform(x), y)
    ours = study.LinearClassifier(scaler.mean_, scaler.scale_, model.coef_, model.intercept_, 0.5)
    np.testing.assert_allclose(ours.predict_proba(x), model.predict_proba(scaler.transform(x)), rtol=1e-9)
    ours.save(tmp_path / "clf.npz")
    loaded = study.LinearClassifier.load(tmp_path / "clf.npz")
    np.testing.assert_array_equal(loaded.coef, ours.coef)
    assert loaded.C == 0.5 and loaded.num_parameters == 3 * 7 + 3 + 7 + 7


def test_classifier_learns_and_picks_best_validation_c(tmp_path):
    images, labels = _stripes(90)
    clf = study.TraditionalClassifier(Cs=(1e-4, 1.0), val_fraction=0.2, seed=0, progress=False)
    clf.fit(images, labels)
    test_images, test_labels = _stripes(30, seed=1)
    assert (clf.predict(test_images) == test_labels.numpy()).mean() > 0.9
    trials = clf.validation[~clf.validation["final"]]
    assert trials.loc[trials["val_acc"].idxmax(), "C"] == clf.classifier.C
    assert clf.validation["final"].sum() == 1 and clf.train_seconds > 0
    proba = clf.predict_proba(test_images)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_classifier_reuses_its_cache(tmp_path, monkeypatch):
    images, labels = _stripes(60)
    first = study.TraditionalClassifier(Cs=(0.1,), seed=0, cache_dir=tmp_path, progress=False).fit(images, labels)

    def boom(*args, **kwargs):
        raise AssertionError("recomputed instead of read from the cache")

    monkeypatch.setattr(traditional, "extract_features", boom)
    monkeypatch.setattr(traditional, "_fit_logreg", boom)
    second = study.TraditionalClassifier(Cs=(0.1,), seed=0, cache_dir=tmp_path, progress=False).fit(images, labels)
    np.testing.assert_array_equal(first.classifier.coef, second.classifier.coef)
    assert second.fit_seconds == pytest.approx(first.fit_seconds)
    assert second.feature_seconds == pytest.approx(first.feature_seconds)
    with pytest.raises(AssertionError, match="recomputed"):  # other data: not in the cache
        study.TraditionalClassifier(Cs=(0.1,), seed=0, cache_dir=tmp_path, progress=False).fit(images[:30], labels[:30])


def test_classifier_rejects_bad_settings():
    with pytest.raises(ValueError, match="Cs"):
        study.TraditionalClassifier(Cs=())
    with pytest.raises(ValueError, match="val_fraction"):
        study.TraditionalClassifier(val_fraction=1.0)
    with pytest.raises(TypeError, match="config"):
        study.TraditionalClassifier(config={"orientations": 9})
    with pytest.raises(RuntimeError, match="not fitted"):
        study.TraditionalClassifier().predict(_random_images(1))


def test_validation_split_keeps_every_class_on_both_sides():
    labels = np.repeat(np.arange(10), 3)  # 30 images: 10 % would be 3, fewer than the 10 classes
    train, val = traditional._validation_split(labels, 0.1, seed=0)
    assert len(val) == 10 and set(labels[val]) == set(range(10)) == set(labels[train])
    with pytest.raises(ValueError, match="too few"):
        traditional._validation_split(np.repeat(np.arange(10), 1), 0.1, seed=0)
