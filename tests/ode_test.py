"""Tests for nnd.ode against closed-form solutions of linear ODEs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnd import ode


def linear(rates):
    """dy/dt = rate · y per example (rates [B]); solution y0 · exp(rate (t1 - t0))."""
    r = jnp.asarray(rates, jnp.float32)[:, None]
    return lambda y, t: r * y


def test_dopri5_meets_tolerance_for_every_example():
    rates = np.array([-3.0, 0.5, 2.0])
    y0 = jnp.ones((3, 4), jnp.float32)
    y1, stats = ode.dopri5(linear(rates), y0, 0.0, 1.0, rtol=1e-5, atol=1e-5)
    exact = np.exp(rates)[:, None] * np.ones((3, 4))
    # Local tolerance 1e-5 per step; a global error of a few times that is expected.
    np.testing.assert_allclose(np.asarray(y1), exact, rtol=1e-4)
    assert bool(stats.finished)
    assert int(stats.nfe) == 2 + 6 * (int(stats.accepted) + int(stats.rejected))


def test_dopri5_runs_backwards_and_on_pytrees_with_time_dependence():
    # dy/dt = 2t per coordinate, dz/dt = -y: y = y0 + t² - t0², z integrates it.
    def fn(state, t):
        y, z = state
        return jnp.full_like(y, 2.0) * t, -jnp.sum(y, axis=1)

    y0 = jnp.zeros((2, 3)), jnp.zeros((2,))
    (y, z), stats = jax.jit(lambda s: ode.dopri5(fn, s, 1.0, 0.2, rtol=1e-6, atol=1e-6))(y0)
    np.testing.assert_allclose(np.asarray(y), np.full((2, 3), 0.04 - 1.0), rtol=1e-5)
    # z(0.2) = -∫_1^0.2 3 (t² - 1) dt = 3[(t³/3 - t)]_{0.2}^{1} ... computed directly:
    exact_z = -3.0 * ((0.2**3 / 3 - 0.2) - (1.0 / 3 - 1.0))
    np.testing.assert_allclose(np.asarray(z), np.full((2,), exact_z), rtol=1e-5)
    assert bool(stats.finished)


def test_dopri5_tightening_tolerance_reduces_error_and_costs_more():
    rates = np.array([-5.0])
    y0 = jnp.ones((1, 1))
    errors, nfes = [], []
    for tol in (1e-3, 1e-6):
        y1, stats = ode.dopri5(linear(rates), y0, 0.0, 1.0, rtol=tol, atol=tol)
        errors.append(abs(float(y1[0, 0]) - np.exp(-5.0)))
        nfes.append(int(stats.nfe))
    assert errors[1] < errors[0] and nfes[1] > nfes[0]


def test_dopri5_reports_unfinished_when_max_steps_runs_out():
    _, stats = ode.dopri5(linear([-50.0]), jnp.ones((1, 1)), 0.0, 1.0, rtol=1e-8, atol=1e-8,
                          max_steps=3)
    assert not bool(stats.finished)
    assert int(stats.accepted) + int(stats.rejected) == 3


def test_dopri5_rejects_bad_tolerances():
    with pytest.raises(ValueError, match="rtol"):
        ode.dopri5(linear([1.0]), jnp.ones((1, 1)), 0.0, 1.0, rtol=0.0)


def test_heun_is_second_order():
    rates = np.array([-2.0])
    errs = []
    for n in (20, 40):
        y1, stats = ode.heun(linear(rates), jnp.ones((1, 1)), 0.0, 1.0, n)
        errs.append(abs(float(y1[0, 0]) - np.exp(-2.0)))
        assert int(stats.nfe) == 2 * n
    # Halving the step divides a second-order error by 4 (up to the O(h³) term).
    assert 3.5 < errs[0] / errs[1] < 4.5


def test_heun_rejects_zero_steps():
    with pytest.raises(ValueError, match="num_steps"):
        ode.heun(linear([1.0]), jnp.ones((1, 1)), 0.0, 1.0, 0)


def test_dopri5_keeps_a_float64_state_under_x64():
    previous = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    try:
        rates = np.array([-1.0, 0.5])
        y0 = jnp.ones((2, 3), jnp.float64)
        fn = lambda y, t: jnp.asarray(rates, jnp.float64)[:, None] * y  # noqa: E731
        y1, stats = jax.jit(lambda y: ode.dopri5(fn, y, 0.0, 1.0, rtol=1e-10, atol=1e-10))(y0)
        assert y1.dtype == jnp.float64 and bool(stats.finished)
        # Time and step size stay float32: their rounding (~6e-8 per step) bounds the error.
        np.testing.assert_allclose(np.asarray(y1), np.exp(rates)[:, None] * np.ones((2, 3)),
                                   rtol=1e-6)
    finally:
        jax.config.update("jax_enable_x64", previous)


def test_heun_on_given_times_equals_equal_steps_and_integrates_a_nonuniform_grid():
    fn = linear(np.array([-2.0, 1.0]))
    y0 = jnp.ones((2, 3))
    uniform, _ = ode.heun(fn, y0, 0.0, 1.0, 8)
    given, stats = ode.heun(fn, y0, 0.0, 1.0, 8, times=jnp.linspace(0.0, 1.0, 9))
    np.testing.assert_allclose(np.asarray(given), np.asarray(uniform), rtol=1e-6)
    times = jnp.asarray(np.linspace(0.0, 1.0, 201) ** 2)  # steps shrinking towards t = 0
    fine, stats = ode.heun(fn, y0, 0.0, 1.0, 200, times=times)
    np.testing.assert_allclose(np.asarray(fine), np.exp([-2.0, 1.0])[:, None] * np.ones((2, 3)),
                               rtol=1e-4)
    assert int(stats.nfe) == 400
    with pytest.raises(ValueError, match="num_steps \\+ 1"):
        ode.heun(fn, y0, 0.0, 1.0, 8, times=jnp.linspace(0.0, 1.0, 8))
