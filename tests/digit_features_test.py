"""Tests for nnd.experiments.digit_features: labels of nnd's split, the API, sanity figures.

Oracles: the digits split rebuilt from scikit-learn's arrays with nnd.data's rule (a
seed-0 permutation, the first 20% held out); identical sets (FD 0, precision = recall = 1);
and, in the slow tier, the trained classifier's accuracy and the ordering of FD,
precision and recall on four sets of known character (training digits, noisy digits,
class means, uniform noise).
"""

import numpy as np
import pytest

from nnd import data
from nnd.experiments import digit_features


def test_digits_labels_match_sklearn_split():
    from sklearn import datasets

    bunch = datasets.load_digits()
    order = np.random.default_rng(0).permutation(len(bunch.images))
    n_test = int(round(0.2 * len(bunch.images)))
    for split, idx in (("test", order[:n_test]), ("train", order[n_test:])):
        levels, labels = digit_features.digits(split)
        idx = np.sort(idx)
        np.testing.assert_array_equal(levels[..., 0], bunch.images[idx].astype(np.uint8))
        np.testing.assert_array_equal(labels, bunch.target[idx])
    assert len(digit_features.held_out_digits()) == n_test


def test_held_out_digits_in_data_space():
    x = digit_features.held_out_digits(0)
    assert x.shape == (359,) + data.IMAGES["digits"].shape and x.dtype == np.float32
    assert -1.0 <= x.min() and x.max() < 1.0
    np.testing.assert_array_equal(x, digit_features.held_out_digits(0))


@pytest.fixture
def tiny_classifier():
    """An untrained 16-unit network: features for the plumbing tests, not for figures."""
    return digit_features.fit_classifier(0, hidden=(16,), steps=0)


@pytest.mark.plumbing
def test_sample_quality_api(tiny_classifier):
    reference = digit_features.held_out_digits(0)
    assert digit_features.features(tiny_classifier, reference).shape == (359, 16)
    same = digit_features.sample_quality(tiny_classifier, reference, reference)
    assert abs(same["fd"]) < 1e-8
    assert (same["precision"], same["recall"]) == (1.0, 1.0)
    assert same["num_precision_recall"] == 359
    # flat [N, 64] samples score as images; P/R use the first min(N, M) of each set
    samples = reference[::-1][:100].reshape(100, 64)
    flat = digit_features.sample_quality(tiny_classifier, samples, reference)
    images = digit_features.sample_quality(tiny_classifier, samples.reshape(100, 8, 8, 1),
                                           reference)
    assert flat == images
    assert (flat["num_samples"], flat["num_reference"], flat["num_precision_recall"]) == (
        100, 359, 100)
    with pytest.raises(ValueError):
        digit_features.features(tiny_classifier, np.zeros((4, 28, 28, 1)))


@pytest.mark.slow
def test_classifier_accuracy_and_sanity_figures():
    """Measured (classifier and sets of seed 0): accuracy 0.992; FD / precision / recall /
    energy distance: training 2.5 / 0.93 / 0.91 / -0.005, digits + N(0, 0.5²)
    8.4 / 0.40 / 0.99 / 0.21, class means + N(0, 0.05²) 19.6 / 1.00 / 0.00 / 0.30,
    uniform 459 / 0 / 0 / 3.46. Over classifier seeds 0-2 and set seeds 0-1 the
    training FD is 2.1-4.4 (finite-sample bias of 359 vs 359 in 64 dimensions), the
    noisy one 8.1-11.5 (ratio ≥ 2.3), precision and recall move by ≤ 0.05.
    """
    classifier = digit_features.fit_classifier(0)
    assert classifier.accuracy > 0.96
    reference = digit_features.held_out_digits(0)
    r = {name: digit_features.sample_quality(classifier, images, reference)
         for name, images in digit_features.sanity_sets(0).items()}
    best, noisy, means, uniform = (r[n] for n in ("training", "gaussian_noise", "class_means",
                                                  "uniform"))
    # (a) near-best: both figures high, energy distance ~ 0
    assert best["precision"] > 0.85 and best["recall"] > 0.85
    assert abs(best["energy_distance"]) < 0.02
    # FD: each defect clearly worse than the training digits, and in order
    assert 2 * best["fd"] < noisy["fd"] < means["fd"] < uniform["fd"]
    assert uniform["fd"] > 50 * best["fd"]
    # (b) over-dispersed: covers the data (recall) but half the samples are off it
    assert noisy["recall"] > 0.95 and noisy["precision"] < 0.6
    # (c) under-dispersed: every sample looks real, almost none of the data is covered
    assert means["precision"] > 0.95 and means["recall"] < 0.1
    # (d) no digits: neither
    assert uniform["precision"] < 0.05 and uniform["recall"] < 0.05
    assert min(noisy["energy_distance"], means["energy_distance"]) > 0.1
