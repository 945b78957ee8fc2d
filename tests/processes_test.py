"""Tests for nnd.processes: marginals, drift and diffusion of eq. (1) (docs/math.md §1).

Every check compares with an independent reference: the score_sde marginal
formulas re-written here in float64 numpy, central finite differences of
those formulas (f = d log α/dt, g² = dσ²/dt - 2fσ²), scipy.stats.norm for the
prior density, and Monte Carlo moments with tolerances from their standard
errors.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from nnd import processes

NAMES = ["vp", "subvp", "ve", "vdm"]
DEFAULTS = {
    "vp": dict(beta_min=0.1, beta_max=20.0),
    "subvp": dict(beta_min=0.1, beta_max=20.0),
    "ve": dict(sigma_min=0.01, sigma_max=50.0),
    "vdm": dict(gamma_min=-13.3, gamma_max=5.0),
}
T_EPS = {"vp": 1e-3, "subvp": 1e-3, "ve": 1e-5, "vdm": 0.0}


# -- independent float64 references (score_sde / VDM formulas) ---------------------------

def _vp_log_mean_coeff(t, beta_min=0.1, beta_max=20.0):
    return -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min


def ref_alpha_sigma(name, t, **params):
    """(alpha(t), sigma(t)) in float64 numpy, written out from the papers' formulas."""
    t = np.asarray(t, np.float64)
    p = {**DEFAULTS[name], **params}
    if name == "vp":
        lmc = _vp_log_mean_coeff(t, p["beta_min"], p["beta_max"])
        return np.exp(lmc), np.sqrt(1.0 - np.exp(2.0 * lmc))
    if name == "subvp":
        lmc = _vp_log_mean_coeff(t, p["beta_min"], p["beta_max"])
        return np.exp(lmc), 1.0 - np.exp(2.0 * lmc)
    if name == "ve":
        smin, smax = p["sigma_min"], p["sigma_max"]
        return np.ones_like(t), smin * (smax / smin) ** t
    if name == "vdm":
        gamma = p["gamma_min"] + t * (p["gamma_max"] - p["gamma_min"])
        sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
        return np.sqrt(sig(-gamma)), np.sqrt(sig(gamma))
    raise AssertionError(name)


def ref_f_g2(name, t, h=1e-6):
    """f = d log α/dt and g² = dσ²/dt - 2fσ² by central differences of ref_alpha_sigma."""
    a_p, s_p = ref_alpha_sigma(name, t + h)
    a_m, s_m = ref_alpha_sigma(name, t - h)
    _, s = ref_alpha_sigma(name, t)
    f = (np.log(a_p) - np.log(a_m)) / (2 * h)
    ds2 = (s_p**2 - s_m**2) / (2 * h)
    return f, ds2 - 2.0 * f * s**2


def grid_points(name):
    return np.array([T_EPS[name], 0.01, 0.1, 0.37, 0.5, 0.9, 1.0])


# -- marginals, drift, diffusion -----------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_marginals_match_closed_forms(name):
    p = processes.get(name)
    t = grid_points(name)
    alpha_ref, sigma_ref = ref_alpha_sigma(name, t)
    t32 = jnp.asarray(t, jnp.float32)
    # float32 evaluation: a few ulps of relative error.
    np.testing.assert_allclose(np.asarray(p.alpha(t32)), alpha_ref, rtol=2e-5)
    np.testing.assert_allclose(np.asarray(p.sigma(t32)), sigma_ref, rtol=2e-5)
    np.testing.assert_allclose(np.asarray(p.sigma2(t32)), sigma_ref**2, rtol=4e-5)
    x0, eps = np.full((len(t), 3), 0.7), np.full((len(t), 3), -1.3)
    x_t = p.marginal(jnp.asarray(x0, jnp.float32), jnp.asarray(eps, jnp.float32), t32)
    np.testing.assert_allclose(np.asarray(x_t), alpha_ref[:, None] * x0 + sigma_ref[:, None] * eps,
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_f_g_match_finite_differences_of_closed_forms(name):
    p = processes.get(name)
    t = grid_points(name)
    f_ref, g2_ref = ref_f_g2(name, t)
    t32 = jnp.asarray(t, jnp.float32)
    f, g = np.asarray(p.f(t32), np.float64), np.asarray(p.g(t32), np.float64)
    # Central differences with h = 1e-6 in float64 are exact to ~1e-9 relative;
    # the float32 evaluation dominates (rtol 1e-4); atol covers f = 0 for ve.
    np.testing.assert_allclose(f, f_ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g**2, g2_ref, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(p.g2(t32)), g2_ref, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_f_g_match_finite_differences_of_own_marginals_x64(name):
    """f and g are the derivatives of the process's own alpha and sigma (float64)."""
    with jax.enable_x64(True):
        p = processes.get(name)
        t = jnp.asarray(grid_points(name), jnp.float64)
        h = 1e-6
        f_fd = (jnp.log(p.alpha(t + h)) - jnp.log(p.alpha(t - h))) / (2 * h)
        ds2 = (p.sigma(t + h) ** 2 - p.sigma(t - h) ** 2) / (2 * h)
        g2_fd = ds2 - 2.0 * f_fd * p.sigma(t) ** 2
        f, g = p.f(t), p.g(t)
        assert f.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(f), np.asarray(f_fd), rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(np.asarray(g) ** 2, np.asarray(g2_fd), rtol=1e-7)


def test_vdm_g2_over_sigma2_is_gamma_rate():
    p = processes.get("vdm")
    t = jnp.asarray(grid_points("vdm"), jnp.float32)
    ratio = np.asarray(p.g2(t) / p.sigma2(t))
    np.testing.assert_allclose(ratio, 5.0 - (-13.3), rtol=1e-5)


def test_vdm_custom_gamma_range():
    p = processes.get("vdm", gamma_min=-6.0, gamma_max=2.0)
    t = np.array([0.0, 0.3, 1.0])
    a_ref, s_ref = ref_alpha_sigma("vdm", t, gamma_min=-6.0, gamma_max=2.0)
    np.testing.assert_allclose(np.asarray(p.alpha(jnp.asarray(t, jnp.float32))), a_ref, rtol=2e-5)
    np.testing.assert_allclose(np.asarray(p.sigma(jnp.asarray(t, jnp.float32))), s_ref, rtol=2e-5)
    np.testing.assert_allclose(np.asarray(p.g2(jnp.asarray(t, jnp.float32)) /
                                          p.sigma2(jnp.asarray(t, jnp.float32))), 8.0, rtol=1e-5)


def test_vp_sigma_small_t_float32_precision():
    """1 - α² via expm1: float32 sigma(1e-5) within 1e-3 of the float64 value."""
    p = processes.get("vp")
    t = 1e-5
    lmc = _vp_log_mean_coeff(t)
    sigma64 = math.sqrt(-math.expm1(2.0 * lmc))
    sigma32 = float(p.sigma(jnp.float32(t)))
    assert p.sigma(jnp.float32(t)).dtype == jnp.float32
    assert abs(sigma32 - sigma64) / sigma64 < 1e-3
    # subVP's sigma = 1 - α² has the same cancellation.
    sub32 = float(processes.get("subvp").sigma(jnp.float32(t)))
    assert abs(sub32 - (-math.expm1(2.0 * lmc))) / (-math.expm1(2.0 * lmc)) < 1e-3


# -- defaults and prior -------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_default_parameters_and_t_eps(name):
    p = processes.get(name)
    assert p.t_eps == T_EPS[name]
    for k, v in DEFAULTS[name].items():
        assert getattr(p, k) == v
    assert processes.get(name, t_eps=0.25).t_eps == 0.25


@pytest.mark.parametrize("name", NAMES)
def test_prior_sample_moments(name):
    p = processes.get(name)
    expected_std = 50.0 if name == "ve" else 1.0
    n = 200_000
    x = np.asarray(p.prior_sample(jax.random.PRNGKey(0), (1000, 200)), np.float64)
    assert x.shape == (1000, 200)
    # Gaussian: SE(mean) = s/√n, SE(std) = s/√(2n); allow 5 SE.
    assert abs(x.mean()) < 5 * expected_std / math.sqrt(n)
    assert abs(x.std() - expected_std) < 5 * expected_std / math.sqrt(2 * n)
    # typed keys work too
    y = p.prior_sample(jax.random.key(1), (3, 2))
    assert y.shape == (3, 2) and y.dtype == jnp.float32


@pytest.mark.parametrize("name", NAMES)
def test_prior_logp_matches_scipy(name):
    p = processes.get(name)
    scale = 50.0 if name == "ve" else 1.0
    x = np.random.default_rng(0).normal(size=(5, 3, 4)) * scale * 1.3
    ref = stats.norm.logpdf(x, scale=scale).reshape(5, -1).sum(-1)
    got = np.asarray(p.prior_logp(jnp.asarray(x, jnp.float32)))
    assert got.shape == (5,)
    np.testing.assert_allclose(got, ref, rtol=1e-5)


# -- get(): validation and hashability ----------------------------------------------------

@pytest.mark.parametrize(
    "name, params",
    [
        ("vpp", {}),
        ("VP", {}),
        (None, {}),
        ("vp", dict(sigma_max=3.0)),
        ("ve", dict(beta_min=0.1)),
        ("vdm", dict(foo=1.0)),
        ("vp", dict(beta_min=0.0)),
        ("vp", dict(beta_min=-0.1)),
        ("subvp", dict(beta_min=30.0)),  # beta_max < beta_min
        ("vp", dict(beta_max=float("nan"))),
        ("ve", dict(sigma_min=50.0, sigma_max=50.0)),
        ("ve", dict(sigma_min=60.0)),
        ("ve", dict(sigma_min=0.0)),
        ("ve", dict(sigma_max=float("inf"))),
        ("vdm", dict(gamma_min=5.0)),
        ("vdm", dict(gamma_min=6.0)),
        ("vdm", dict(gamma_max=float("nan"))),
        ("vp", dict(t_eps=-1e-3)),
        ("vp", dict(t_eps=1.0)),
        ("ve", dict(t_eps=1.5)),
        ("vdm", dict(t_eps=float("nan"))),
        ("vp", dict(t_eps="0.001")),
        ("vp", dict(beta_min=True)),
    ],
)
def test_get_rejects_bad_input(name, params):
    with pytest.raises(ValueError):
        processes.get(name, **params)


@pytest.mark.parametrize("name", NAMES)
def test_processes_are_hashable_static_args(name):
    p, q = processes.get(name), processes.get(name)
    assert hash(p) == hash(q) and p == q
    assert p != processes.get(name, t_eps=0.5)

    traces = []

    def alpha_at(process, t):
        traces.append(process)
        return process.alpha(t)

    jitted = jax.jit(alpha_at, static_argnums=0)
    t = jnp.asarray(0.3)
    a1 = jitted(p, t)
    a2 = jitted(q, t)  # equal static arg: no retrace
    assert len(traces) == 1
    np.testing.assert_allclose(float(a1), float(a2))
    np.testing.assert_allclose(float(a1), ref_alpha_sigma(name, 0.3)[0], rtol=2e-5)


# -- time grid ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_steps", [1, 7, 1000])
def test_time_grid(name, num_steps):
    p = processes.get(name)
    t, dt = processes.time_grid(p, num_steps)
    t = np.asarray(t)
    assert t.shape == (num_steps + 1,)
    assert t[0] == np.float32(p.t_eps)
    assert t[-1] == np.float32(1.0)
    assert dt == pytest.approx((1.0 - p.t_eps) / num_steps, rel=1e-12)
    np.testing.assert_allclose(np.diff(t), dt, rtol=1e-4)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10", None])
def test_check_num_steps_rejects(bad):
    with pytest.raises(ValueError):
        processes.check_num_steps(bad)
    with pytest.raises(ValueError):
        processes.time_grid(processes.get("vp"), bad)


def test_check_num_steps_accepts_integers():
    assert processes.check_num_steps(3) == 3
    assert processes.check_num_steps(np.int64(5)) == 5


def test_drifts_eps_and_score_converters_are_the_formulas():
    p = processes.get("vp")
    t_B = jnp.asarray([0.1, 0.5, 0.9], jnp.float32)
    x = jnp.asarray(np.arange(12, dtype=np.float32).reshape(3, 2, 2) / 10)
    score = -0.5 * x
    f, g2 = np.asarray(p.f(t_B))[:, None, None], np.asarray(p.g2(t_B))[:, None, None]
    np.testing.assert_allclose(processes.reverse_drift(p, x, score, t_B), f * x - g2 * score,
                               rtol=1e-6)
    np.testing.assert_allclose(processes.pf_ode_drift(p, x, score, t_B), f * x - 0.5 * g2 * score,
                               rtol=1e-6)
    # a scalar t broadcasts the same way
    np.testing.assert_allclose(processes.reverse_drift(p, x, score, 0.5),
                               processes.reverse_drift(p, x, score, jnp.full((3,), 0.5)), rtol=1e-6)
    sigma = np.asarray(p.sigma(t_B))[:, None, None]
    eps_fn = lambda x_, t_: 2.0 * x_  # noqa: E731
    score_fn = processes.score_fn_from_eps(p, eps_fn)
    np.testing.assert_allclose(score_fn(x, t_B), -2.0 * np.asarray(x) / sigma, rtol=1e-6)
    np.testing.assert_allclose(processes.eps_fn_from_score(p, score_fn)(x, t_B), 2.0 * x, rtol=1e-5)


def test_param_names_cover_every_process():
    names = set(processes.param_names())
    assert names == {"beta_min", "beta_max", "sigma_min", "sigma_max", "gamma_min", "gamma_max",
                     "t_eps"}
