"""Tests for nnd.metrics: energy distance, nearest-centre blob width, precision and recall.

References: a brute-force numpy double loop for the U-statistic energy distance,
scipy.stats.energy_distance (a V-statistic square root, converted here), the
closed-form energy distance between two shifted Gaussians, and hand-made point sets
for nearest_centre; for precision and recall, hand-computed 1-D k-NN balls, a
brute-force loop over the paper's definition, and the orderings that identical,
collapsed, under- and over-dispersed samples must show.
"""

import math

import numpy as np
import pytest
from scipy import stats

from nnd import metrics


def brute_energy_distance(x, y):
    """2 mean|x_i - y_j| - mean_{i≠j}|x_i - x_j| - mean_{i≠j}|y_i - y_j| by explicit loops."""
    x = x.reshape(len(x), -1)
    y = y.reshape(len(y), -1)
    xy = sum(np.linalg.norm(a - b) for a in x for b in y) / (len(x) * len(y))
    xx = sum(np.linalg.norm(x[i] - x[j]) for i in range(len(x)) for j in range(len(x)) if i != j)
    yy = sum(np.linalg.norm(y[i] - y[j]) for i in range(len(y)) for j in range(len(y)) if i != j)
    return 2 * xy - xx / (len(x) * (len(x) - 1)) - yy / (len(y) * (len(y) - 1))


def test_energy_distance_matches_brute_force():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 3)), rng.normal(size=(41, 3)) + 0.3
    # metrics uses |x|² + |y|² - 2x·y, whose float64 error on a near-zero distance
    # (the i = i pairs) is up to √eps·|x|² ≈ 1e-8·|x|: hence atol 1e-8, not 0.
    ref = brute_energy_distance(x, y)
    np.testing.assert_allclose(metrics.energy_distance(x, y), ref, rtol=1e-8, atol=1e-8)
    # trailing axes are flattened
    np.testing.assert_allclose(metrics.energy_distance(x.reshape(30, 3, 1), y.reshape(41, 3, 1)),
                               ref, rtol=1e-8, atol=1e-8)
    # float32 input, chunking across many rows
    x2, y2 = rng.normal(size=(2500, 2)).astype(np.float32), rng.normal(size=(300, 2))
    d = np.linalg.norm(x2[:, None].astype(np.float64) - y2[None], axis=-1).mean()
    np.testing.assert_allclose(metrics.mean_pairwise_distance(x2, y2), d, rtol=1e-9)


def test_energy_distance_matches_scipy_1d():
    """scipy returns sqrt(2A - B_v - C_v) with V-statistics B_v = B_u (n-1)/n."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=200), rng.laplace(size=150) + 0.5
    n, m = len(x), len(y)
    b_u = np.abs(x[:, None] - x[None]).sum() / (n * (n - 1))
    c_u = np.abs(y[:, None] - y[None]).sum() / (m * (m - 1))
    scipy_sq = stats.energy_distance(x, y) ** 2
    np.testing.assert_allclose(metrics.energy_distance(x[:, None], y[:, None]),
                               scipy_sq - b_u / n - c_u / m, rtol=1e-8, atol=1e-8)


def test_energy_distance_is_unbiased_for_identical_laws():
    """Mean over replicates is 0 within 5 SE; the V-statistic bias (≈ 2E|X-X'|/n) is not."""
    rng = np.random.default_rng(2)
    n, reps = 40, 400
    eds = np.array([metrics.energy_distance(rng.normal(size=(n, 2)), rng.normal(size=(n, 2)))
                    for _ in range(reps)])
    se = eds.std() / math.sqrt(reps)
    assert abs(eds.mean()) < 5 * se
    v_bias = 2 * math.sqrt(math.pi) / n  # E|X - X'| = √π for 2-D standard normals
    assert v_bias > 10 * se


def test_energy_distance_identical_and_shifted_gaussians():
    rng = np.random.default_rng(3)
    n = 2000
    x, y = rng.normal(size=(n, 1)), rng.normal(size=(n, 1))
    delta = 1.0
    # Closed form, 1-D: ED(N(0,1), N(δ,1)) = 2E|N(δ,2)| - 2E|N(0,2)|,
    # E|N(δ, s²)| = s√(2/π) exp(-δ²/2s²) + δ(1 - 2Φ(-δ/s)).
    s = math.sqrt(2.0)
    e_abs = lambda d: s * math.sqrt(2 / math.pi) * math.exp(-d**2 / (2 * s**2)) + d * (1 - 2 * stats.norm.cdf(-d / s))  # noqa: E731
    closed = 2 * e_abs(delta) - 2 * e_abs(0.0)
    # SE bound: ED = 2A - B - C with SD(A) ≤ sd|X-Y|·√(2/n), SD(B), SD(C) ≤ 2 sd|X-X'|/√n,
    # and SD(sum) ≤ sum of SDs; sd|·| ≤ √2·√(1 + δ²) here. Allow 3 of these bounds.
    sd = math.sqrt(2 * (1 + delta**2))
    bound = 2 * sd * math.sqrt(2 / n) + 2 * 2 * sd / math.sqrt(n)
    ed_shift = metrics.energy_distance(x, y + delta)
    assert abs(ed_shift - closed) < 3 * bound
    assert ed_shift > 0.5 * closed > 0
    ed_same = metrics.energy_distance(x, y)
    # identical laws: tiny relative to the scale E|X - X'| = 2/√π ≈ 1.13
    assert abs(ed_same) < 0.01 * (2 / math.sqrt(math.pi))
    assert ed_shift > 20 * abs(ed_same)


def test_energy_distance_rejects_tiny_samples():
    with pytest.raises(ValueError):
        metrics.energy_distance(np.zeros((1, 2)), np.zeros((5, 2)))


def test_nearest_centre_simple_cases():
    centres = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    width, idx = metrics.nearest_centre(centres, centres)
    assert width == 0.0
    np.testing.assert_array_equal(idx, [0, 1, 2])
    x = np.array([[0.1, 0.0], [1.0, 0.3], [0.0, 1.8], [0.7, 0.0], [0.0, 1.2]])
    width, idx = metrics.nearest_centre(x, centres)
    np.testing.assert_array_equal(idx, [0, 1, 2, 1, 2])
    expected = np.mean([0.01, 0.09, 0.04, 0.09, 0.64])
    assert width == pytest.approx(expected, rel=1e-12)


# -- improved precision and recall ---------------------------------------------------


def brute_precision_recall(real, fake, k):
    """Kynkäänniemi et al. (2019) eqs. (1)-(2) by explicit loops over points."""
    def radius(points, i):
        others = sorted(np.linalg.norm(points[i] - points[j])
                        for j in range(len(points)) if j != i)
        return others[k - 1]

    def inside(p, points):
        return any(np.linalg.norm(p - points[j]) <= radius(points, j) for j in range(len(points)))

    precision = np.mean([inside(g, real) for g in fake])
    recall = np.mean([inside(r, fake) for r in real])
    return precision, recall


def test_knn_radii_hand_computed():
    # 1-D points 0, 1, 3, 7: neighbours of 0 at 1, 3, 7; of 1 at 1, 2, 6; of 3 at 2, 3, 4;
    # of 7 at 4, 6, 7.
    x = np.array([[0.0], [1.0], [3.0], [7.0]])
    np.testing.assert_allclose(metrics.knn_radii(x, k=1), [1, 1, 2, 4])
    np.testing.assert_allclose(metrics.knn_radii(x, k=2), [3, 2, 3, 6])
    np.testing.assert_allclose(metrics.knn_radii(x, k=3), [7, 6, 4, 7])
    # a duplicate is a neighbour at distance 0
    np.testing.assert_allclose(metrics.knn_radii(np.array([[0.0], [0.0], [2.0]]), k=1), [0, 0, 2])
    with pytest.raises(ValueError):
        metrics.knn_radii(x, k=4)


def test_precision_recall_hand_computed():
    # real 0, 1, 3, 7 with k = 1: balls [-1, 1], [0, 2], [1, 5], [3, 11].
    # fake 0.5, 6, 12, -3 (k = 1 radii 3.5, 5.5, 6, 3.5): inside real: 0.5, 6 → precision 1/2;
    # real points within a fake ball: 0 (by 0.5), 1, 3, 7 (by 6) → recall 1.
    real = np.array([[0.0], [1.0], [3.0], [7.0]])
    fake = np.array([[0.5], [6.0], [12.0], [-3.0]])
    assert metrics.precision_recall(real, fake, k=1) == (0.5, 1.0)


def test_precision_recall_matches_brute_force():
    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(40, 3)), 1.5 * rng.normal(size=(25, 3)) + 0.4
    for k in (1, 3):
        expected = brute_precision_recall(real, fake, k)
        # chunk 7: several row blocks, the last one partial
        got = metrics.precision_recall(real.reshape(40, 3, 1), fake, k=k, chunk=7)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_precision_recall_properties():
    rng = np.random.default_rng(5)
    real = rng.normal(size=(300, 4))
    # identical sets: every point lies in its own ball
    assert metrics.precision_recall(real, real) == (1.0, 1.0)
    # collapsed generator: every sample at one real point → all precise, one real point covered
    collapsed = np.repeat(real[:1], 300, axis=0)
    assert metrics.precision_recall(real, collapsed) == (1.0, 1 / 300)
    # fresh draws of the same law score high on both
    precision, recall = metrics.precision_recall(real, rng.normal(size=(300, 4)))
    assert precision > 0.8 and recall > 0.8
    # under-dispersed (std 0.2): precise, low recall
    precision, recall = metrics.precision_recall(real, 0.2 * rng.normal(size=(300, 4)))
    assert precision > 0.95 and recall < 0.3
    # over-dispersed (std 4): imprecise, full recall
    precision, recall = metrics.precision_recall(real, 4.0 * rng.normal(size=(300, 4)))
    assert precision < 0.3 and recall > 0.95


def test_precision_recall_rejects_mismatched_dimensions():
    with pytest.raises(ValueError):
        metrics.precision_recall(np.zeros((5, 2)), np.zeros((5, 3)))
