"""Tests for nnd.walks: the structured random walks of eq. (8) and Theorem 3.1 (docs/math.md §3).

References used instead of the module's own output:
- Theorem 3.1's limits alpha(1)/alpha(t_eps) and sigma(1)² - m²sigma(t_eps)² with O(Δt) error;
- the per-step update re-derived from the path (a Rademacher walk's normalised
  increments are exactly ±1);
- Monte Carlo mean/variance with standard-error tolerances, scipy's KS test against
  the Gaussian kernel, and the excess kurtosis of a weighted sum of i.i.d. increments
  (weights computed here in numpy);
- the exact gmm8 score (nnd.oracles) with energy distance and blob width against data;
- jit tracing counts and XLA's memory analysis.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from nnd import increments, metrics, oracles, processes, walks

NAMES = ["vp", "subvp", "ve", "vdm"]
SAMPLER_LAWS = ["gaussian", "laplace", "uniform", "rademacher"]


@dataclasses.dataclass(frozen=True)
class WrongScaleLaplace:
    """Laplace with scale 1, variance 2: Lemma A.2's scale g√Δt (docs/math.md §8), not standardised."""

    def sample(self, key, shape, dtype=jnp.float32):
        return jnp.asarray(math.sqrt(2.0), dtype) * increments.get("laplace").sample(key, shape, dtype)


def grid_coefficients(process, num_steps):
    """(t_k, f(t_k), g(t_k), Δt) for k = 0..K in float64, the grid of docs/math.md §3."""
    dt = (1.0 - process.t_eps) / num_steps
    t = process.t_eps + dt * np.arange(num_steps + 1)
    t32 = jnp.asarray(t, jnp.float32)
    return t, np.asarray(process.f(t32), np.float64), np.asarray(process.g(t32), np.float64), dt


def increment_weights(process, num_steps):
    """w_j = Π_{i>j}(1 + f_iΔt) g_j √Δt: x_K = m_K x_0 + Σ_j w_j z_j."""
    _, f, g, dt = grid_coefficients(process, num_steps)
    a = 1.0 + f[:-1] * dt
    tail = np.concatenate([np.cumprod(a[::-1])[::-1][1:], [1.0]])  # Π_{i>j} a_i
    return tail * g[:-1] * math.sqrt(dt)


def theorem_limits(process):
    a1, ae = float(process.alpha(1.0)), float(process.alpha(process.t_eps))
    m = a1 / ae
    return m, float(process.sigma(1.0)) ** 2 - m**2 * float(process.sigma(process.t_eps)) ** 2


# -- Theorem 3.1: moments --------------------------------------------------------------------

@pytest.mark.fast_first
@pytest.mark.parametrize("name", NAMES)
def test_moments_converge_like_one_over_k(name):
    p = processes.get(name)
    m_lim, v_lim = theorem_limits(p)
    # Float32 roundoff over 1000 steps is ~1e-6 relative; the discretisation
    # error at K = 1000 is ~5e-3, so the ratio below measures the O(Δt) term.
    (m1, v1), (m2, v2) = walks.moments(p, 100), walks.moments(p, 1000)
    err_v = [abs(float(v) - v_lim) / v_lim for v in (v1, v2)]
    assert err_v[1] < 0.02
    assert 5.0 < err_v[0] / err_v[1] < 20.0
    if name == "ve":  # f = 0, so m_K = 1 exactly
        assert float(m1) == 1.0 and float(m2) == 1.0
    else:
        err_m = [abs(float(m) - m_lim) / m_lim for m in (m1, m2)]
        assert err_m[1] < 0.02
        assert 5.0 < err_m[0] / err_m[1] < 20.0


@pytest.mark.fast_first
@pytest.mark.parametrize("name", NAMES)
def test_moments_match_weights(name):
    """m_K and v_K equal Π(1 + f_kΔt) and Σ w_j² computed here in float64."""
    p = processes.get(name)
    K = 50
    _, f, _, dt = grid_coefficients(p, K)
    m, v = walks.moments(p, K)
    np.testing.assert_allclose(float(m), np.prod(1.0 + f[:-1] * dt), rtol=1e-5)
    np.testing.assert_allclose(float(v), np.sum(increment_weights(p, K) ** 2), rtol=1e-5)


def test_moments_reject_bad_num_steps():
    with pytest.raises(ValueError):
        walks.moments(processes.get("vp"), 0)


# -- forward walk ----------------------------------------------------------------------------

@pytest.mark.fast_first
@pytest.mark.parametrize("name", NAMES)
def test_forward_step_is_eq8(name):
    """Each forward step is x + f(t_k) x Δt + g(t_k)√Δt z_k: Rademacher z_k come back as ±1."""
    p = processes.get(name)
    K = 8
    x0 = jnp.linspace(-2.0, 2.0, 64).reshape(32, 2)
    x1, path = walks.forward(p, increments.get("rademacher"), x0, jax.random.PRNGKey(3), K,
                             return_path=True)
    path = np.asarray(path, np.float64)
    assert path.shape == (K + 1, 32, 2)
    np.testing.assert_array_equal(path[0], np.asarray(x0))
    np.testing.assert_array_equal(path[-1], np.asarray(x1))
    _, f, g, dt = grid_coefficients(p, K)
    for k in range(K):
        z = (path[k + 1] - path[k] - f[k] * path[k] * dt) / (g[k] * math.sqrt(dt))
        np.testing.assert_allclose(np.abs(z), 1.0, atol=2e-3)
        # the draws differ from step to step
        assert 0 < np.sum(z > 0) < z.size


@pytest.mark.fast_first
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("law_name", ["laplace", "uniform", "rademacher"])
def test_forward_mean_and_variance(name, law_name):
    p = processes.get(name)
    law = increments.get(law_name)
    K, n = 40, 100_000
    starts = np.array([0.5, -2.0])
    x0 = jnp.tile(jnp.asarray(starts, jnp.float32), (n, 1))
    x = np.asarray(walks.forward(p, law, x0, jax.random.PRNGKey(7), K), np.float64)
    m, v = float(walks.moments(p, K)[0]), float(walks.moments(p, K)[1])
    w = increment_weights(p, K)
    kurt = 3.0 + (law.kurtosis() - 3.0) * np.sum(w**4) / np.sum(w**2) ** 2
    # SE(mean) = √(v/n); SE(variance) = v √((κ - 1)/n) for known kurtosis κ; 5 SE.
    for c, start in enumerate(starts):
        assert abs(x[:, c].mean() - m * start) < 5 * math.sqrt(v / n)
        assert abs(x[:, c].var() - v) < 5 * v * math.sqrt((kurt - 1.0) / n)


def test_forward_keeps_dtype_and_accepts_typed_keys():
    p = processes.get("vp")
    law = increments.get("gaussian")
    x0 = jnp.zeros((4, 3), jnp.float32)
    a = walks.forward(p, law, x0, jax.random.key(0), 5)
    b = walks.forward(p, law, x0, jax.random.key(0), 5)
    c = walks.forward(p, law, x0, jax.random.PRNGKey(0), 5)
    assert a.shape == (4, 3) and a.dtype == jnp.float32 and c.shape == (4, 3)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError):
        walks.forward(p, law, x0, jax.random.key(0), 0)


@pytest.mark.slow
@pytest.mark.parametrize("law_name", ["laplace", "uniform"])
def test_forward_marginal_is_gaussian_at_large_k(law_name):
    """Theorem 3.3: at K = 1000 a KS test (n = 2·10⁴) cannot tell x_K from N(m_K x0, v_K)."""
    p = processes.get("vp")
    law = increments.get(law_name)
    n, start = 20_000, 0.5
    x0 = jnp.full((n,), start, jnp.float32)

    def ks_pvalue(K):
        m, v = walks.moments(p, K)
        x = np.asarray(walks.forward(p, law, x0, jax.random.PRNGKey(11), K), np.float64)
        gaussian_kernel = stats.norm(loc=float(m) * start, scale=math.sqrt(float(v)))
        return stats.kstest(x, gaussian_kernel.cdf).pvalue

    assert ks_pvalue(1000) > 0.01
    # The same test has the power to reject a visibly non-Gaussian walk (K = 3).
    assert ks_pvalue(3) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vp", "ve", "vdm"])
@pytest.mark.parametrize("law_name", ["laplace", "uniform", "rademacher"])
def test_forward_excess_kurtosis_at_small_k(name, law_name):
    """At K = 10 the walk is visibly non-Gaussian, with the kurtosis of a weighted sum.

    For x_K = m x0 + Σ_j w_j z_j with i.i.d. z of kurtosis κ,
    excess kurtosis = (κ - 3) Σ w_j⁴ / (Σ w_j²)².
    """
    p = processes.get(name)
    K, n = 10, 1_000_000
    w = increment_weights(p, K)
    ratio = np.sum(w**4) / np.sum(w**2) ** 2
    x0 = jnp.full((n,), 0.5, jnp.float32)

    def excess_kurtosis(law):
        x = np.asarray(walks.forward(p, law, x0, jax.random.PRNGKey(5), K), np.float64)
        z = (x - x.mean()) / x.std()
        kurt = np.mean(z**4)
        # Delta-method SE of the sample kurtosis of a symmetric law: sd(z⁴ - 2κz²)/√n.
        se = np.std(z**4 - 2.0 * kurt * z**2) / math.sqrt(n)
        return kurt - 3.0, se

    law = increments.get(law_name)
    predicted = (law.kurtosis() - 3.0) * ratio
    got, se = excess_kurtosis(law)
    band = 0.2 * abs(predicted)
    assert 5 * se < band, "sample too small for the 20% band"
    assert abs(got - predicted) < band
    # The wrong law (Gaussian increments) lands far outside the band.
    wrong, se_wrong = excess_kurtosis(increments.get("gaussian"))
    assert abs(wrong) < 5 * se_wrong
    assert abs(wrong - predicted) > band


# -- reverse walk ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gmm_setup():
    p = processes.get("vp")
    gmm = oracles.gmm8()
    score = oracles.gmm_score(p, gmm)
    data = np.asarray(oracles.sample_gmm(jax.random.PRNGKey(123), gmm, 2000), np.float64)
    return p, gmm, score, data


def _reverse_samples(p, law, score, K, n=2000, seed=1):
    """The reverse walk of eq. (8) (euler steps on the paper's uniform grid), Theorem 3.3's."""
    fn = jax.jit(lambda key: walks.reverse(p, law, score, key, (n, 2), K, scheme="euler", grid="t"))
    return np.asarray(fn(jax.random.PRNGKey(seed)), np.float64)


# Data blob width: d² to the nearest mean of N(μ, 0.1²I) is 0.1²χ²₂, mean 0.02, sd 0.02,
# so with n = 2000 its SE is 0.02/√2000 ≈ 4.5e-4; the ±0.003 band is ≈ 6.7 SE wide.
BLOB_WIDTH, BLOB_BAND = 2 * 0.1**2, 0.003


@pytest.mark.slow
@pytest.mark.parametrize("law_name", SAMPLER_LAWS)
def test_reverse_with_exact_score_reaches_data(gmm_setup, law_name):
    p, gmm, score, data = gmm_setup
    law = increments.get(law_name)
    x300 = _reverse_samples(p, law, score, 300)
    x10 = _reverse_samples(p, law, score, 10)
    ed300, ed10 = metrics.energy_distance(x300, data), metrics.energy_distance(x10, data)
    # Two independent data samples of n = 2000 give |ED| ~ 1e-4; a K = 300 walk must be
    # within 0.006, and the coarse K = 10 walk visibly worse.
    assert ed300 <= 0.006
    assert ed10 > max(ed300, 0.006)
    width, idx = metrics.nearest_centre(x300, gmm.means)
    assert abs(width - BLOB_WIDTH) < BLOB_BAND
    assert abs(metrics.nearest_centre(data, gmm.means)[0] - BLOB_WIDTH) < BLOB_BAND
    # every mode is visited in roughly its 1/8 share (binomial SE √(n p(1-p)) ≈ 15)
    counts = np.bincount(idx, minlength=8)
    assert np.all(np.abs(counts - 250) < 5 * 15)


@pytest.mark.slow
def test_reverse_with_wrong_scale_laplace_fails_blob_width(gmm_setup):
    """Lemma A.2's Laplace scale (variance 2, docs/math.md §8) leaves the blobs too wide."""
    p, gmm, score, _ = gmm_setup
    x = _reverse_samples(p, WrongScaleLaplace(), score, 300)
    width, _ = metrics.nearest_centre(x, gmm.means)
    assert width - BLOB_WIDTH > BLOB_BAND


def test_reverse_step_is_sde_reversal(gmm_setup):
    """Each reverse step is x - [f x - g² s(x, t_{k+1})]Δt + g√Δt z with f, g at t_{k+1}."""
    p, _, score, _ = gmm_setup
    K, n = 10, 64
    _, path = walks.reverse(p, increments.get("rademacher"), score, jax.random.PRNGKey(2),
                            (n, 2), K, denoise=False, scheme="euler", grid="t", return_path=True)
    path = np.asarray(path, np.float64)  # path[j] is at t_{K - j}
    t, f, g, dt = grid_coefficients(p, K)
    score = jax.jit(score)
    for k in range(K):  # from t_{k+1} (path[K-1-k]) to t_k (path[K-k])
        x_next, x_k = path[K - 1 - k], path[K - k]
        s = np.asarray(score(jnp.asarray(x_next, jnp.float32),
                             jnp.full((n,), t[k + 1], jnp.float32)), np.float64)
        z = (x_k - x_next + (f[k + 1] * x_next - g[k + 1] ** 2 * s) * dt) / (g[k + 1] * math.sqrt(dt))
        np.testing.assert_allclose(np.abs(z), 1.0, atol=2e-3)


def test_reverse_jit_traces_score_once_and_memory_is_flat(gmm_setup):
    p, _, score, _ = gmm_setup
    law = increments.get("laplace")
    calls = []

    def counted_score(x, t):
        calls.append(x.shape)
        return score(x, t)

    stats_by_k = {}
    for K in (10, 1000):
        calls.clear()
        compiled = jax.jit(
            lambda key, K=K: walks.reverse(p, law, counted_score, key, (2000, 2), K)
        ).lower(jax.random.PRNGKey(0)).compile()
        # the scan body traces the score once, the denoising step once: 2, whatever K
        assert len(calls) == 2, (K, calls)
        stats_by_k[K] = compiled.memory_analysis()
    if any(s is None for s in stats_by_k.values()):
        pytest.skip("memory_analysis() is unavailable on this backend")
    small, big = stats_by_k[10], stats_by_k[1000]
    batch_bytes = 2000 * 2 * 4
    assert big.output_size_in_bytes == small.output_size_in_bytes == batch_bytes
    # Only the per-step scalars (t, f, g, k) may grow with K: far below one batch per step,
    # which is what storing the path would cost (990 · 16 kB ≈ 16 MB).
    assert big.temp_size_in_bytes - small.temp_size_in_bytes < 32 * (1000 - 10)


@pytest.mark.slow
def test_reverse_return_path(gmm_setup):
    p, _, score, _ = gmm_setup
    law = increments.get("gaussian")
    K, n = 20, 4000
    key = jax.random.PRNGKey(4)
    x_raw, path = walks.reverse(p, law, score, key, (n, 2), K, denoise=False, return_path=True)
    x_den, path2 = walks.reverse(p, law, score, key, (n, 2), K, return_path=True)
    path = np.asarray(path)
    assert path.shape == (K + 1, n, 2)
    np.testing.assert_array_equal(path, np.asarray(path2))
    # path[0] is the N(0, I) prior at t = 1: std 1 within 5 SE (SE = 1/√(2·8000)).
    assert abs(path[0].std() - 1.0) < 5 / math.sqrt(2 * 2 * n)
    # path[-1] is x at t_eps before denoising
    np.testing.assert_array_equal(path[-1], np.asarray(x_raw))
    # and the denoised samples are Tweedie's (x + σ²s)/α at t_eps, σ, α written out here
    lmc = -0.25 * 1e-3**2 * 19.9 - 0.5 * 1e-3 * 0.1
    alpha, sigma2 = math.exp(lmc), -math.expm1(2 * lmc)
    s = np.asarray(score(jnp.asarray(path[-1]), jnp.full((n,), 1e-3, jnp.float32)), np.float64)
    np.testing.assert_allclose(np.asarray(x_den), (path[-1] + sigma2 * s) / alpha,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # fast-tier budget: CI's slow tier runs it
def test_reverse_denoise_keys_and_determinism(gmm_setup):
    p, _, score, _ = gmm_setup
    law = increments.get("uniform")
    shape, K = (256, 2), 30
    run = jax.jit(lambda key, denoise: walks.reverse(p, law, score, key, shape, K, denoise),
                  static_argnums=1)
    a = run(jax.random.PRNGKey(0), True)
    b = run(jax.random.PRNGKey(0), True)
    c = run(jax.random.PRNGKey(0), False)
    d = run(jax.random.key(0), True)
    e = run(jax.random.key(0), True)
    f = run(jax.random.key(1), True)
    for arr in (a, c, d, f):
        assert arr.shape == shape and arr.dtype == jnp.float32
        assert np.all(np.isfinite(np.asarray(arr)))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(d), np.asarray(e))
    assert not np.allclose(np.asarray(a), np.asarray(c))
    assert not np.allclose(np.asarray(d), np.asarray(f))
    with pytest.raises(ValueError):
        walks.reverse(p, law, score, jax.random.key(0), shape, 2.5)


def test_forward_and_reverse_step_are_the_eq8_formulas():
    p = processes.get("vdm")
    x = jnp.asarray([[0.3, -1.2], [2.0, 0.5]], jnp.float32)
    z = jnp.asarray([[1.0, -1.0], [0.5, 2.0]], jnp.float32)
    s = -x / 0.7
    t, dt = 0.4, 0.01
    f, g = float(p.f(t)), float(p.g(t))
    np.testing.assert_allclose(walks.forward_step(p, x, z, t, dt),
                               x + f * x * dt + g * math.sqrt(dt) * z, rtol=1e-5)
    np.testing.assert_allclose(walks.euler_step(p, x, s, z, t, dt),
                               x - (f * x - g * g * s) * dt + g * math.sqrt(dt) * z, rtol=1e-5)


# -- reverse schemes and grids (docs/math.md §3) ---------------------------------------------------

def test_ancestral_step_is_the_gaussian_posterior_of_the_forward_process():
    p = processes.get("vp")
    t, s = 0.6, 0.45
    a_t, a_s = float(p.alpha(t)), float(p.alpha(s))
    v_t, v_s = float(p.sigma2(t)), float(p.sigma2(s))
    x0 = np.array([[0.4, -0.8]])
    eps = np.array([[1.1, 0.3]])
    x_t = a_t * x0 + np.sqrt(v_t) * eps
    # q(x_s | x_t, x_0): the forward kernel s -> t is N(a x_s, w) with a = a_t/a_s, w = v_t - a² v_s.
    a, w = a_t / a_s, v_t - (a_t / a_s) ** 2 * v_s
    mean = (a * v_s / v_t) * x_t + (a_s * w / v_t) * x0
    var = w * v_s / v_t
    z = np.array([[0.7, -1.5]])
    got = walks.ancestral_step(p, jnp.asarray(x_t, jnp.float32), jnp.asarray(eps, jnp.float32),
                               jnp.asarray(z, jnp.float32), t, s)
    np.testing.assert_allclose(np.asarray(got), mean + np.sqrt(var) * z, rtol=1e-4, atol=1e-5)
    # a posterior variance of x_0 adds (α_s r)² v to the step's variance
    r = w / v_t
    got_v = walks.ancestral_step(p, jnp.asarray(x_t, jnp.float32), jnp.asarray(eps, jnp.float32),
                                 jnp.asarray(z, jnp.float32), t, s, 0.3)
    np.testing.assert_allclose(np.asarray(got_v), mean + np.sqrt(var + (a_s * r) ** 2 * 0.3) * z,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scheme, exact", [("analytic", True), ("ancestral", False)])
def test_one_long_step_with_the_exact_score_keeps_gaussian_data_on_its_marginal(scheme, exact):
    # Data N(0, v I): x_t ~ N(0, α_t² v + σ_t²). The true reverse kernel maps it to the
    # marginal at s; the analytic scheme, given Var[x_0 | x_t] (constant here), has exactly
    # its variance, the ancestral one too little. x_t is standardised to its exact variance,
    # so only the noise z's sample variance is left to the tolerance.
    p, v, n = processes.get("vp"), 0.25, 200_000
    t, s = 0.5, 0.2
    var_t = float(p.alpha(t)) ** 2 * v + float(p.sigma2(t))
    var_s = float(p.alpha(s)) ** 2 * v + float(p.sigma2(s))
    normal = np.asarray(jax.random.normal(jax.random.key(0), (n, 2)), np.float64)
    x_t = jnp.asarray(np.sqrt(var_t) * normal / np.sqrt(np.mean(normal**2)), jnp.float32)
    score = -x_t / var_t
    z = increments.get("laplace").sample(jax.random.key(1), (n, 2))
    x0_var = v * float(p.sigma2(t)) / var_t if exact else None
    x_s = walks.scheme_step(p, scheme, x_t, score, z, t, s,
                            None if x0_var is None else jnp.full_like(x_t, x0_var))
    got = float(np.var(np.asarray(x_s, np.float64)))
    se = var_s * math.sqrt(2.0 / (2 * n))  # sd of a variance estimate from 2n values (kurtosis ~3)
    if exact:
        assert abs(got - var_s) < 5 * se, (got, var_s)
    else:
        assert got < var_s - 20 * se, (got, var_s)


@pytest.mark.parametrize("name", ["vp", "subvp", "vdm", "ve"])
def test_lambda_grid_has_equal_log_snr_steps_and_the_same_ends(name):
    p = processes.get(name)
    t = np.asarray(processes.sampling_grid(p, 12, "lambda"), np.float64)
    assert t[0] == pytest.approx(p.t_eps) and t[-1] == 1.0 and np.all(np.diff(t) > 0)
    lam = np.asarray(p.log_snr(jnp.asarray(t, jnp.float32)), np.float64)
    steps = np.diff(lam)
    np.testing.assert_allclose(steps, np.full(12, (lam[-1] - lam[0]) / 12), rtol=2e-3, atol=2e-3)
    if name in ("ve", "vdm"):  # λ linear in t: the grids agree
        np.testing.assert_allclose(t, np.asarray(processes.sampling_grid(p, 12, "t")), atol=1e-5)


@pytest.mark.fast_first
@pytest.mark.parametrize("scheme, grid", [("analytic", "lambda"), ("ancestral", "lambda"),
                                          ("euler", "lambda")])
def test_every_scheme_and_grid_reaches_the_data_at_k100(gmm_setup, scheme, grid):
    p, _, score, data = gmm_setup
    fn = oracles.gmm_x0_variance(p, oracles.gmm8()) if scheme == "analytic" else None
    x = jax.jit(lambda k: walks.reverse(p, increments.get("uniform"), score, k, (2000, 2), 100,
                                        scheme=scheme, grid=grid, x0_variance_fn=fn))(
        jax.random.PRNGKey(4))
    width, _ = metrics.nearest_centre(np.asarray(x), oracles.gmm8().means)
    assert abs(width - BLOB_WIDTH) < BLOB_BAND, width  # the band of the euler walk at K = 300
    assert metrics.energy_distance(np.asarray(x), data) < 0.003


def test_reverse_refuses_unknown_scheme_and_grid(gmm_setup):
    p, _, score, _ = gmm_setup
    with pytest.raises(ValueError, match="scheme"):
        walks.reverse(p, increments.get("gaussian"), score, jax.random.key(0), (4, 2), 3, scheme="ddim")
    with pytest.raises(ValueError, match="grid"):
        walks.reverse(p, increments.get("gaussian"), score, jax.random.key(0), (4, 2), 3, grid="edm")


@pytest.mark.slow  # fast-tier budget: CI's slow tier runs it
def test_analytic_with_a_per_point_variance():
    process, law = processes.get("vp"), increments.get("laplace")
    gmm = oracles.gmm8()
    score_fn = oracles.gmm_score(process, gmm)
    key, shape = jax.random.key(0), (64, 2)
    zero = walks.reverse(process, law, score_fn, key, shape, 6, scheme="analytic",
                         x0_variance_fn=lambda x, t: jnp.zeros_like(x))
    plain = walks.reverse(process, law, score_fn, key, shape, 6, scheme="ancestral")
    np.testing.assert_allclose(np.asarray(zero), np.asarray(plain), rtol=1e-6, atol=1e-6)
    exact = walks.reverse(process, law, score_fn, key, shape, 6, scheme="analytic",
                          x0_variance_fn=oracles.gmm_x0_variance(process, gmm))
    assert np.all(np.isfinite(np.asarray(exact))) and not np.allclose(exact, plain)
    with pytest.raises(ValueError, match="not 'euler'"):
        walks.reverse(process, law, score_fn, key, shape, 6, scheme="euler",
                      x0_variance_fn=lambda x, t: jnp.zeros_like(x))
    with pytest.raises(ValueError, match="needs a per-point"):
        walks.reverse(process, law, score_fn, key, shape, 6, scheme="analytic")


@pytest.mark.fast_first
@pytest.mark.parametrize("law", ["laplace", "student_t"])
def test_analytic_samples_do_not_depend_on_the_batch_size(law):
    # Per-example keys and a per-point variance: the first 100 of 4000 samples are the 100
    # samples of a batch of 100 (issue 22's acceptance; student_t draws by a ziggurat loop).
    process, gmm = processes.get("vp"), oracles.gmm8()
    draw = lambda n: walks.reverse(  # noqa: E731
        process, increments.get(law), oracles.gmm_score(process, gmm), jax.random.key(3),
        (n, 2), 4, scheme="analytic", x0_variance_fn=oracles.gmm_x0_variance(process, gmm))
    np.testing.assert_allclose(np.asarray(draw(4000))[:100], np.asarray(draw(100)),
                               rtol=1e-5, atol=1e-6)


def test_family_ends_are_ancestral_analytic_and_ddim():
    process = processes.get("vp")
    x = jax.random.normal(jax.random.key(1), (50, 2)) * 0.7
    eps = jax.random.normal(jax.random.key(2), (50, 2))
    z = jax.random.normal(jax.random.key(3), (50, 2))
    v = 0.01 + 0.05 * jnp.square(x)
    t, s = 0.6, 0.3
    step = lambda **kw: np.asarray(walks.ancestral_step(process, x, eps, z, t, s, v, **kw))  # noqa: E731
    ancestral = np.asarray(walks.ancestral_step(process, x, eps, z, t, s))
    np.testing.assert_array_equal(step(eta=1.0, variance_weight=0.0), ancestral)
    analytic = np.asarray(walks.scheme_step(process, "analytic", x, -eps / process.sigma(t), z,
                                            t, s, v))
    np.testing.assert_allclose(step(eta=1.0, variance_weight=1.0), analytic, rtol=1e-5, atol=1e-6)
    # η = 0: DDIM's x_s = α_s x̂_0 + σ_s ε, with no noise
    x0_hat = (x - process.sigma(t) * eps) / process.alpha(t)
    ddim = process.alpha(s) * x0_hat + process.sigma(s) * eps
    np.testing.assert_allclose(step(eta=0.0, variance_weight=0.5), np.asarray(ddim),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_side_of_the_family_keeps_the_noised_marginal_of_a_fixed_x0(eta):
    # x_t = α_t x_0 + σ_t ε with the true ε: x_s has mean α_s x_0 and variance σ_s²
    # (σ_s²(1 - ρr) from ε plus c² = ρσ_s² r from z), for every η ≤ 1.
    process, n, t, s = processes.get("vdm"), 200_000, 0.7, 0.4
    x0 = 0.3
    eps = jax.random.normal(jax.random.key(0), (n, 1))
    z = jax.random.normal(jax.random.key(1), (n, 1))
    x_t = process.alpha(t) * x0 + process.sigma(t) * eps
    x_s = np.asarray(walks.ancestral_step(process, x_t, eps, z, t, s, eta=eta), np.float64)
    var_s = float(process.sigma2(s))
    assert abs(x_s.mean() - float(process.alpha(s)) * x0) < 5 * math.sqrt(var_s / n)
    assert abs(x_s.var() - var_s) < 5 * var_s * math.sqrt(2.0 / n)


def test_family_settings_are_checked():
    process, gmm = processes.get("vp"), oracles.gmm8()
    args = (process, increments.get("gaussian"), oracles.gmm_score(process, gmm),
            jax.random.key(0), (4, 2), 3)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        walks.reverse(*args, eta=-0.1)
    with pytest.raises(ValueError, match=r"variance_weight must be in \[0, 1\]"):
        walks.reverse(*args, variance_weight=1.5, x0_variance_fn=lambda x, t: x)
    with pytest.raises(ValueError, match="needs a per-point"):
        walks.reverse(*args, variance_weight=0.5)
    with pytest.raises(ValueError, match="not 'euler'"):
        walks.reverse(*args, scheme="euler", eta=0.5)


def test_reverse_defaults_are_the_eta_rule():
    process, gmm = processes.get("vdm"), oracles.gmm8()
    args = (process, increments.get("laplace"), oracles.gmm_score(process, gmm), jax.random.key(2),
            (16, 2))
    for num_steps in (30,):  # the rule's table is checked below without walks
        eta = walks.default_eta(num_steps)
        np.testing.assert_array_equal(walks.reverse(*args, num_steps),
                                      walks.reverse(*args, num_steps, eta=eta))
    assert [walks.default_eta(k) for k in (1, 17, 18, 24, 25, 1000)] == [1.0, 1.0, 0.9, 0.9, 0.8, 0.8]
    assert walks.resolve_eta(None, "analytic", None, 30) == 1.0  # the moment-matched end
    assert walks.resolve_eta(0.3, "ancestral", None, 30) == 0.3


@pytest.mark.slow  # ten walks of 20000 samples
@pytest.mark.parametrize("name", ["vp", "vdm"])
def test_the_default_rule_keeps_every_law_within_5_percent_at_k30(name):
    # Issue 22's goal on the exact score: the blob width of the default walk within 5% of the
    # data's 2·0.1² for every law. The squared distance to the nearest centre is 0.1²χ²₂
    # (sd = mean) near the blobs, so the sample mean's relative standard error is 1/√n;
    # allowed: 5% plus 3 standard errors. (Measured: at most 3.1%; η = 1 misses by 12.7%.)
    n, process, gmm = 20000, processes.get(name), oracles.gmm8()
    score = oracles.gmm_score(process, gmm)
    for i, law in enumerate(["gaussian", "laplace", "uniform", "logistic", "student_t"]):
        x = jax.jit(lambda k: walks.reverse(process, increments.get(law), score, k, (n, 2), 30))(
            jax.random.key(100 + i))
        width, _ = metrics.nearest_centre(np.asarray(x), gmm.means)
        assert abs(width / BLOB_WIDTH - 1.0) < 0.05 + 3.0 / math.sqrt(n), (law, width)
