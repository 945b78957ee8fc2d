"""Tests for nnd.fid: feature statistics, the Fréchet distance, reference statistics, fid.

References: the closed form Σ(√a − √b)² + |Δμ|² for diagonal covariances; scipy.linalg.sqrtm
for full ones; the sampling error of mean and covariance estimates (Isserlis) for draws from
a known Gaussian; the two-pass statistics for the streamed ones. A cheap stand-in replaces
the Inception features (the network is tested in inception_test).
"""

import logging
import os

import numpy as np
import pytest
import scipy.linalg

from nnd import fid

EPS = np.finfo(np.float64).eps


def random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# ------------------------------------------------------------------ Fréchet distance


def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3, size=5), rng.uniform(0.1, 3, size=5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2) ** 2)
    np.testing.assert_allclose(fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)),
                               expected, rtol=1e-12)


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(1)
    s1, s2 = random_spd(rng, 6), random_spd(rng, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    np.testing.assert_allclose(fid.frechet_distance(mu1, s1, mu2, s2), expected, rtol=1e-10)
    np.testing.assert_allclose(fid.frechet_distance(mu2, s2, mu1, s1), expected, rtol=1e-10)


def test_frechet_distance_is_float64_for_float32_inputs():
    rng = np.random.default_rng(10)
    s1, s2 = random_spd(rng, 4), random_spd(rng, 4)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    d64 = fid.frechet_distance(mu1, s1, mu2, s2)
    d32 = fid.frechet_distance(*(np.float32(a) for a in (mu1, s1, mu2, s2)))
    assert isinstance(d32, float)
    # only the inputs' float32 rounding (relative 2⁻²⁴) separates the two
    np.testing.assert_allclose(d32, d64, rtol=1e-5)


@pytest.mark.parametrize("n, d", [(500, 16), (40, 64)])  # full rank; rank 39 of 64
def test_frechet_distance_of_identical_statistics_is_zero(n, d):
    rng = np.random.default_rng(2)
    f = np.abs(rng.normal(size=(n, d))) * rng.uniform(0.1, 2, size=d)
    mu, sigma = fid.statistics(f)
    # Backward-stable eigh and SVD leave each of the d singular values an absolute error
    # of a few ε‖Σ‖ ≤ ε tr Σ; tr Σ₁ + tr Σ₂ - 2Σσᵢ then cancels to within ~d ε tr Σ.
    # (sqrt of the eigenvalues of Σ^{1/2}ΣΣ^{1/2} would give ~1e-6 on the null space.)
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 10 * d * EPS * np.trace(sigma)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ------------------------------------------------------------------------ statistics


def test_statistics_converge_to_the_law():
    rng = np.random.default_rng(3)
    n, mu = 20_000, np.array([1.0, -2.0, 0.5])
    sigma = random_spd(rng, 3)
    f = rng.multivariate_normal(mu, sigma, size=n)
    mean, cov = fid.statistics(f)
    assert mean.dtype == cov.dtype == np.float64
    # standard errors: √(Σᵢᵢ/n) for the mean; √((ΣᵢᵢΣⱼⱼ + Σᵢⱼ²)/n) for a covariance entry
    var = np.diag(sigma)
    assert np.all(np.abs(mean - mu) < 5 * np.sqrt(var / n))
    assert np.all(np.abs(cov - sigma) < 5 * np.sqrt((np.outer(var, var) + sigma**2) / n))
    with pytest.raises(ValueError, match="N >= 2"):
        fid.statistics(f[:1])


def test_streamed_statistics_equal_two_pass():
    rng = np.random.default_rng(4)
    f = 1e3 + rng.normal(size=(103, 5))  # a large mean: a naive Σx² - n x̄² would lose digits
    batches = [f[:1], f[1:50], f[50:50], f[50:]]
    mean, cov, n = fid._feature_statistics(lambda x: x, batches)
    ref_mean, ref_cov = fid.statistics(f)
    assert n == 103
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-14)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-10)
    with pytest.raises(ValueError, match="at least 2 images, got 1"):
        fid._feature_statistics(lambda x: x, [f[:1], f[1:1]])


def test_frechet_distance_of_two_draws_is_near_zero_and_a_shift_adds_its_square():
    """Two draws of N(0, I_D), n each: d² is only the sampling noise, whose mean is
    2D/n from the means plus D(D+1)/(2n) from the covariances (¼‖Σ̂₁ − Σ̂₂‖²_F to first
    order); over 200 seeds d²/that lay in [0.43, 1.7] (std 23%), hence the bounds [0.4, 2].
    Shifting one draw by δ adds |δ|² + 2δ·(μ̂₂ − μ̂₁) exactly (the covariances stay)."""
    n, d = 2000, 8
    rng = np.random.default_rng(12)
    a, b = rng.normal(size=(2, n, d))
    same = fid.frechet_distance(*fid.statistics(a), *fid.statistics(b))
    noise = (2 * d + d * (d + 1) / 2) / n
    assert 0.4 * noise < same < 2 * noise
    delta = np.full(d, 0.25)  # |δ|² = 0.5, about 20 times the noise
    shifted = fid.frechet_distance(*fid.statistics(a), *fid.statistics(b + delta))
    expected = same + delta @ delta + 2 * delta @ (b.mean(0) - a.mean(0))
    np.testing.assert_allclose(shifted, expected, rtol=1e-10)
    assert shifted > 10 * same
    np.testing.assert_allclose(
        fid.frechet_distance(*fid.statistics(a), *fid.statistics(a + delta)), delta @ delta,
        rtol=1e-10)


# ------------------------------------------------------------------ reference and FID


def fake_feature_fn(calls):
    """Cheap stand-in for the Inception features: 4 pixel values per image."""

    def feature_fn(images):
        calls.append(len(images))
        return np.asarray(images).reshape(len(images), -1)[:, :4]

    return feature_fn


def test_reference_statistics_computed_once_then_loaded(tmp_path, caplog):
    rng = np.random.default_rng(8)
    images = rng.uniform(-1, 1, size=(30, 4, 4, 1))
    calls = []
    path = str(tmp_path / "ref" / "cifar10_train.npz")
    with caplog.at_level(logging.INFO):
        mu, sigma = fid.reference_statistics(fake_feature_fn(calls), np.split(images, 3), path)
    assert calls == [10, 10, 10]
    assert os.listdir(tmp_path / "ref") == ["cifar10_train.npz"]
    assert "30 images cached" in caplog.text
    ref_mu, ref_sigma = fid.statistics(images.reshape(30, -1)[:, :4])
    np.testing.assert_allclose(mu, ref_mu, rtol=1e-12)
    np.testing.assert_allclose(sigma, ref_sigma, rtol=1e-12)

    def untouchable():
        raise AssertionError("batches read although the cache exists")
        yield

    with caplog.at_level(logging.INFO):
        mu2, sigma2 = fid.reference_statistics(fake_feature_fn(calls), untouchable(), path)
    assert calls == [10, 10, 10]
    np.testing.assert_array_equal(mu2, mu)
    np.testing.assert_array_equal(sigma2, sigma)
    assert "loaded from" in caplog.text


def test_reference_statistics_of_one_array_and_no_torn_cache(tmp_path, monkeypatch):
    images = np.random.default_rng(11).uniform(-1, 1, size=(12, 4, 4, 1))
    calls = []
    path = tmp_path / "ref.npz"
    mu, sigma = fid.reference_statistics(fake_feature_fn(calls), images, str(path))
    assert calls == [12]
    ref_mu, ref_sigma = fid.statistics(images.reshape(12, -1)[:, :4])
    np.testing.assert_allclose(mu, ref_mu, rtol=1e-12)
    np.testing.assert_allclose(sigma, ref_sigma, rtol=1e-12)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)

    def failing_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        fid.reference_statistics(fake_feature_fn(calls), images, str(tmp_path / "other.npz"))
    assert sorted(os.listdir(tmp_path)) == ["ref.npz"]  # no cache, no temporary left behind


def test_fid_of_array_or_batches():
    rng = np.random.default_rng(9)
    samples = rng.uniform(-1, 1, size=(40, 4, 4, 1))
    reference = (rng.normal(size=4), random_spd(rng, 4))
    expected = fid.frechet_distance(*fid.statistics(samples.reshape(40, -1)[:, :4]), *reference)
    calls = []
    np.testing.assert_allclose(fid.fid(fake_feature_fn(calls), samples, reference), expected,
                               rtol=1e-12)
    np.testing.assert_allclose(fid.fid(fake_feature_fn(calls), iter(np.split(samples, 4)),
                                       reference), expected, rtol=1e-10)
    assert calls == [40, 10, 10, 10, 10]
