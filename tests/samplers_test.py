"""Tests for nnd.samplers with the exact gmm8 score (nnd.oracles) as ground truth."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnd import increments, metrics, oracles, processes, samplers

N = 2000


@pytest.fixture(scope="module")
def setup():
    process = processes.get("vp")
    gmm = oracles.gmm8()
    score = oracles.gmm_score(process, gmm)
    reference = np.asarray(oracles.sample_gmm(jax.random.key(99), gmm, N))
    return process, score, reference


def draw(setup, sampler, law="gaussian", **kwargs):
    process, score, _ = setup
    fn = jax.jit(lambda k: samplers.sample(sampler, process, increments.get(law), score, k,
                                           (N, 2), **kwargs))
    x, nfe = fn(jax.random.key(1))
    return np.asarray(x), int(nfe)


@pytest.mark.parametrize("sampler,law,kwargs", [
    ("ode", "gaussian", dict(num_steps=1, rtol=1e-5, atol=1e-5)),
    ("heun", "gaussian", dict(num_steps=50)),
    ("pc", "gaussian", dict(num_steps=200)),
    ("pc", "laplace", dict(num_steps=200)),
    ("pc", "uniform", dict(num_steps=200)),
    ("walk", "uniform", dict(num_steps=200)),
])
def test_samples_reach_the_mixture(setup, sampler, law, kwargs):
    """Acceptance: energy distance ≤ 0.006 to data (n = 2000) with the exact score."""
    x, _ = draw(setup, sampler, law, **kwargs)
    assert np.all(np.isfinite(x))
    assert metrics.energy_distance(x, setup[2]) <= 0.006
    width, nearest = metrics.nearest_centre(x, oracles.gmm8().means)
    # Mean squared distance to the nearest centre: 0.1²·χ²₂, mean 0.02, sd 0.02.
    assert abs(width - 0.02) < 5 * 0.02 / np.sqrt(N)
    # Each of the 8 modes gets its share within 5 binomial standard errors.
    share = np.bincount(nearest, minlength=8) / N
    assert np.all(np.abs(share - 1 / 8) < 5 * np.sqrt(1 / 8 * 7 / 8 / N))


def test_a_broken_corrector_is_detected(setup):
    """The checks above have power: a corrector with a far too large step fails them.

    At snr = 2 the blobs come out about four times too wide (measured 0.078-0.080 with
    jax 0.10 and 0.12), while the energy distance (0.0057-0.0074) sits near its 0.006 bar.
    """
    x, _ = draw(setup, "pc", "gaussian", num_steps=50, snr=2.0)
    width, _ = metrics.nearest_centre(x, oracles.gmm8().means)
    assert width > 0.04  # twice the true 0.02, far outside the 5-SE band of the check
    assert metrics.energy_distance(x, setup[2]) > 0.003


@pytest.mark.parametrize("sampler,kwargs,expected", [
    ("walk", dict(num_steps=30), 31),
    ("walk", dict(num_steps=30, denoise=False), 30),
    ("pc", dict(num_steps=30, corrector_steps=2), 91),
    ("heun", dict(num_steps=30), 61),
])
def test_nfe_counts(setup, sampler, kwargs, expected):
    assert draw(setup, sampler, **kwargs)[1] == expected


def test_adaptive_ode_nfe_grows_with_tighter_tolerance(setup):
    _, loose = draw(setup, "ode", num_steps=1, rtol=1e-2, atol=1e-2)
    _, tight = draw(setup, "ode", num_steps=1, rtol=1e-5, atol=1e-5)
    assert 1 < loose < tight


def test_ode_sampler_is_deterministic_and_ignores_the_law(setup):
    a, _ = draw(setup, "heun", "gaussian", num_steps=10)
    b, _ = draw(setup, "heun", "laplace", num_steps=10)
    np.testing.assert_array_equal(a, b)


def test_the_law_drives_walk_and_corrector_noise(setup):
    for sampler in ("walk", "pc"):
        a, _ = draw(setup, sampler, "gaussian", num_steps=10)
        b, _ = draw(setup, sampler, "uniform", num_steps=10)
        assert not np.allclose(a, b)


def test_walk_sampler_equals_the_reverse_walk(setup):
    from nnd import walks  # noqa: PLC0415

    process, score, _ = setup
    x, _ = draw(setup, "walk", "laplace", num_steps=20)
    y = walks.reverse(process, increments.get("laplace"), score, jax.random.key(1), (N, 2), 20)
    np.testing.assert_allclose(x, np.asarray(y), rtol=1e-5, atol=1e-5)  # jit vs eager rounding


def test_bad_arguments_raise(setup):
    process, score, _ = setup
    law = increments.get("gaussian")
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="unknown sampler"):
        samplers.sample("euler", process, law, score, key, (4, 2), num_steps=5)
    with pytest.raises(ValueError, match="snr"):
        samplers.sample("pc", process, law, score, key, (4, 2), num_steps=5, snr=0.0)
    with pytest.raises(ValueError, match="num_steps"):
        samplers.sample("pc", process, law, score, key, (4, 2), num_steps=0)


def test_pf_ode_drift_matches_eq6(setup):
    process, score, _ = setup
    x = jnp.asarray(setup[2][:5])
    t = 0.3
    drift = samplers.pf_ode_drift(process, score)(x, jnp.float32(t))
    s = score(x, jnp.full((5,), t))
    expected = process.f(t) * x - 0.5 * process.g(t) ** 2 * s
    np.testing.assert_allclose(np.asarray(drift), np.asarray(expected), rtol=1e-6)
