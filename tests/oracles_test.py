"""Tests for nnd.oracles: the exact score, density and components of noised Gaussian mixtures.

The references are independent: scipy.stats.multivariate_normal log-densities of the
noised mixture (means alpha μ_j, covariances alpha² Σ_j + sigma² I, with alpha and
sigma written out here in numpy), central finite differences of that log-density
for the score, jax.grad of the log-density, Monte Carlo moments with
standard-error tolerances for the sampler, and the Gaussian conditioning formulas in
float64 numpy for the components' posterior of ε. (The loss minimiser built on that
posterior is the bias experiment's, tested in tests/bias_test.py.)

The shared-covariance path of the score and density (gmm8 and any mixture whose components
share one diagonal covariance) is checked against the general per-component path.

Parametrised tests run their first case in the fast tier and the rest under ``slow``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from nnd import oracles, processes


def fast_first(cases):
    """The first case in the fast tier, every other one marked slow."""
    return [cases[0]] + [pytest.param(*(c if isinstance(c, tuple) else (c,)), marks=pytest.mark.slow)
                         for c in cases[1:]]


def ref_alpha_sigma(name, t):
    """alpha(t), sigma(t) in float64 from the schedules' formulas."""
    if name == "vp":
        lmc = -0.25 * t**2 * 19.9 - 0.5 * t * 0.1
        return math.exp(lmc), math.sqrt(-math.expm1(2 * lmc))
    if name == "ve":
        return 1.0, 0.01 * 5000.0**t
    if name == "vdm":
        gamma = -13.3 + t * 18.3
        return math.sqrt(special.expit(-gamma)), math.sqrt(special.expit(gamma))
    raise AssertionError(name)


def ref_log_prob(x, t, name, weights, means, covs):
    """log Σ_j w_j N(x; alpha μ_j, alpha² Σ_j + sigma² I) with scipy, float64."""
    alpha, sigma = ref_alpha_sigma(name, t)
    d = means.shape[1]
    comps = [
        math.log(w) + stats.multivariate_normal(alpha * mu, alpha**2 * cov + sigma**2 * np.eye(d)).logpdf(x)
        for w, mu, cov in zip(weights, means, covs)
    ]
    return special.logsumexp(np.stack(comps, axis=-1), axis=-1)


def ref_score(x, t, name, weights, means, covs, h=1e-5):
    """Central finite differences of ref_log_prob (float64, error ~h² ≈ 1e-10)."""
    out = np.zeros_like(x)
    for i in range(x.shape[1]):
        e = np.zeros(x.shape[1])
        e[i] = h
        out[:, i] = (ref_log_prob(x + e, t, name, weights, means, covs)
                     - ref_log_prob(x - e, t, name, weights, means, covs)) / (2 * h)
    return out


def full_mixture():
    """3 components in 3-D with full (non-diagonal) covariances."""
    rng = np.random.default_rng(0)
    weights = np.array([0.2, 0.5, 0.3])
    means = rng.normal(size=(3, 3))
    a = rng.normal(size=(3, 3, 3)) * 0.4
    covs = np.einsum("jab,jcb->jac", a, a) + 0.05 * np.eye(3)
    return weights, means, covs


def gmm8_arrays():
    g = oracles.gmm8()
    return g.weights, g.means, g.covs


MIXTURES = {"full": full_mixture, "gmm8": gmm8_arrays}
CASES = fast_first([(m, name, t) for m in MIXTURES for name, t in
                    [("vp", 1e-3), ("vp", 0.1), ("vp", 0.5), ("vp", 1.0), ("ve", 0.3), ("vdm", 0.2)]])


def _points(dim, n=16, seed=1):
    return np.random.default_rng(seed).normal(size=(n, dim)) * 1.2


@pytest.mark.parametrize("mixture, name, t", CASES)
def test_log_prob_and_score_match_scipy(mixture, name, t):
    weights, means, covs = MIXTURES[mixture]()
    p = processes.get(name)
    x = _points(means.shape[1])
    logp_ref = ref_log_prob(x, t, name, weights, means, covs)
    score_ref = ref_score(x, t, name, weights, means, covs)
    t_B = jnp.full((len(x),), t, jnp.float32)
    x32 = jnp.asarray(x, jnp.float32)
    logp = np.asarray(oracles.gmm_log_prob(p, weights, means, covs)(x32, t_B))
    score = np.asarray(oracles.gmm_score(p, weights, means, covs)(x32, t_B))
    assert score.shape == x.shape and logp.shape == (len(x),)
    # float32: a few ulps relative to the scale of the values
    np.testing.assert_allclose(logp, logp_ref, rtol=1e-4, atol=1e-4 * np.abs(logp_ref).max())
    np.testing.assert_allclose(score, score_ref, rtol=1e-3, atol=1e-4 * np.abs(score_ref).max())


@pytest.mark.parametrize("mixture, name, t", CASES)
def test_score_matches_scipy_float64(mixture, name, t):
    """In float64 the oracle agrees with the finite-difference reference to ~1e-7."""
    weights, means, covs = MIXTURES[mixture]()
    x = _points(means.shape[1], seed=2)
    score_ref = ref_score(x, t, name, weights, means, covs)
    with jax.enable_x64(True):
        p = processes.get(name)
        t_B = jnp.full((len(x),), t, jnp.float64)
        score = np.asarray(oracles.gmm_score(p, weights, means, covs)(jnp.asarray(x), t_B))
    np.testing.assert_allclose(score, score_ref, rtol=1e-6, atol=1e-7 * np.abs(score_ref).max())


@pytest.mark.parametrize("mixture, t", fast_first([(m, t) for m in MIXTURES for t in (1e-3, 0.3, 1.0)]))
def test_score_is_grad_of_log_prob(mixture, t):
    weights, means, covs = MIXTURES[mixture]()
    p = processes.get("vp")
    gmm = oracles._as_gmm(weights, means, covs)
    assert gmm.diagonal == (mixture == "gmm8")
    x = jnp.asarray(_points(means.shape[1], seed=3), jnp.float32)
    t_B = jnp.full((x.shape[0],), t, jnp.float32)
    log_prob = oracles.gmm_log_prob(p, gmm)
    grad = jax.grad(lambda x: jnp.sum(log_prob(x, t_B)))(x)
    score = oracles.gmm_score(p, gmm)(x, t_B)
    np.testing.assert_allclose(np.asarray(score), np.asarray(grad), rtol=1e-4,
                               atol=1e-5 * float(jnp.abs(grad).max()))
    # jit path agrees with the eager one
    np.testing.assert_allclose(np.asarray(jax.jit(oracles.gmm_score(p, gmm))(x, t_B)),
                               np.asarray(score), rtol=1e-5, atol=1e-6 * float(jnp.abs(grad).max()))


def shared_mixtures():
    """Mixtures for the shared-covariance path: (weights, means, covs, shares a diagonal Σ)."""
    rng = np.random.default_rng(4)
    aniso = np.diag([0.01, 0.2, 1.0])
    big = np.diag(rng.uniform(0.01, 1.0, 8))  # 40 × 8 > oracles._ROWS_MAX: the array branch
    diag_not_shared = np.stack([np.diag([0.05, 0.3]), np.diag([0.2, 0.02])])
    return {
        "gmm8": (*gmm8_arrays(), True),
        "anisotropic": (np.array([0.2, 0.5, 0.3]), rng.normal(size=(3, 3)),
                        np.tile(aniso, (3, 1, 1)), True),
        "many": (np.full(40, 1 / 40), rng.normal(size=(40, 8)), np.tile(big, (40, 1, 1)), True),
        "full": (*full_mixture(), False),
        "diagonal-not-shared": (np.array([0.4, 0.6]), rng.normal(size=(2, 2)), diag_not_shared,
                                False),
    }


@pytest.mark.slow  # fast-tier budget: CI's slow tier runs it
@pytest.mark.parametrize("mixture", fast_first(["gmm8", "anisotropic", "many", "full",
                                                 "diagonal-not-shared"]))
def test_shared_covariance_path_matches_the_general_path(mixture):
    # gmm_score and gmm_log_prob against the general per-component path (logs over
    # [B, J, D], a score per component): in float64 equal to 1e-12 of the values' scale
    # (the algebra is exact; only the order of sums differs). In float32 both paths are
    # off the float64 values by float32 rounding, ~1e-6 of the scale (the logits of 40
    # components in 8-D carry relative errors ~1e-7 each), so each is held to the same
    # 3e-6 there. Mixtures without a shared diagonal covariance take the general path.
    weights, means, covs, shared = shared_mixtures()[mixture]
    gmm = oracles._as_gmm(weights, means, covs)
    assert (gmm.shared and gmm.diagonal) == shared
    x = _points(means.shape[1], n=64, seed=5) * 1.5
    for name, t in [("vp", 1e-3), ("vp", 0.1), ("vp", 0.5), ("vp", 1.0), ("ve", 1e-3),
                    ("ve", 0.5), ("vdm", 0.1)]:
        for public, general in ((oracles.gmm_score, oracles._score_fn),
                                (oracles.gmm_log_prob, oracles._log_prob_fn)):
            with jax.enable_x64(True):
                p = processes.get(name)
                x64, t64 = jnp.asarray(x), jnp.full((len(x),), t)
                ref = np.asarray(general(p, gmm, shared=False)(x64, t64))
                got = np.asarray(public(p, gmm)(x64, t64))
            scale = np.abs(ref).max()
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12 * scale, err_msg=f"{name} {t}")
            x32, t32 = jnp.asarray(x, jnp.float32), jnp.full((len(x),), t, jnp.float32)
            for fn in (public(p, gmm), general(p, gmm, shared=False)):
                out = fn(x32, t32)
                assert out.dtype == jnp.float32
                np.testing.assert_allclose(np.asarray(out, np.float64), ref, rtol=0,
                                           atol=3e-6 * scale, err_msg=f"{name} {t} float32")


def test_gmm8_parameters():
    g = oracles.gmm8()
    np.testing.assert_array_equal(g.weights, np.full(8, 0.125))
    j = np.arange(8)
    np.testing.assert_allclose(g.means, np.stack([np.cos(2 * np.pi * j / 8),
                                                  np.sin(2 * np.pi * j / 8)], 1), atol=1e-15)
    np.testing.assert_allclose(g.covs, np.tile(0.01 * np.eye(2), (8, 1, 1)), rtol=1e-15)
    assert g.dim == 2 and g.diagonal and g.shared


def test_sample_gmm8_moments():
    g = oracles.gmm8()
    n = 100_000
    x = np.asarray(oracles.sample_gmm(jax.random.PRNGKey(0), g, n), np.float64)
    assert x.shape == (n, 2)
    # per-coordinate variance of gmm8 is ½ + 0.01; SE(mean) = √(0.51/n); 5 SE
    assert np.all(np.abs(x.mean(0)) < 5 * math.sqrt(0.51 / n))
    # blob width: d² = 0.01 χ²₂ has mean 0.02 and sd 0.02, so SE = 0.02/√n; 5 SE
    d2 = np.min(np.sum((x[:, None] - g.means[None]) ** 2, -1), 1)
    assert abs(d2.mean() - 0.02) < 5 * 0.02 / math.sqrt(n)
    # each component gets its 1/8 share: binomial SE √(n·⅛·⅞)
    counts = np.bincount(np.argmin(np.sum((x[:, None] - g.means[None]) ** 2, -1), 1), minlength=8)
    assert np.all(np.abs(counts - n / 8) < 5 * math.sqrt(n * 7 / 64))
    # typed keys, same key → same draws
    a = oracles.sample_gmm(jax.random.key(1), g, 10)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(oracles.sample_gmm(jax.random.key(1), g, 10)))


def test_sample_full_mixture_moments():
    weights, means, covs = full_mixture()
    gmm = oracles._as_gmm(weights, means, covs)
    n = 100_000
    x = np.asarray(oracles.sample_gmm(jax.random.PRNGKey(5), gmm, n), np.float64)
    mean = weights @ means
    cov = np.einsum("j,jab->ab", weights, covs + np.einsum("ja,jb->jab", means, means)) - np.outer(mean, mean)
    assert np.all(np.abs(x.mean(0) - mean) < 5 * np.sqrt(np.diag(cov) / n))
    xc = x - mean
    prods = xc[:, :, None] * xc[:, None, :]
    se = prods.std(0) / math.sqrt(n)  # SE of each sample covariance entry
    assert np.all(np.abs(prods.mean(0) - cov) < 5 * se)


@pytest.mark.parametrize(
    "weights, means, covs",
    fast_first([
        ([0.5, 0.6], np.zeros((2, 2)), np.tile(np.eye(2), (2, 1, 1))),  # sum ≠ 1
        ([1.5, -0.5], np.zeros((2, 2)), np.tile(np.eye(2), (2, 1, 1))),  # negative
        ([0.5, 0.5], np.zeros((3, 2)), np.tile(np.eye(2), (2, 1, 1))),  # J mismatch
        ([0.5, 0.5], np.zeros(2), np.tile(np.eye(2), (2, 1, 1))),  # means not [J, D]
        ([[0.5, 0.5]], np.zeros((2, 2)), np.tile(np.eye(2), (2, 1, 1))),  # weights not [J]
        ([0.5, 0.5], np.zeros((2, 2)), np.tile(np.eye(3), (2, 1, 1))),  # covs D mismatch
        ([0.5, 0.5], np.zeros((2, 2)), np.ones((2, 2))),  # covs not [J, D, D]
        ([0.5, 0.5], np.zeros((2, 2)), np.tile([[1.0, 0.5], [0.0, 1.0]], (2, 1, 1))),  # asymmetric
        ([0.5, 0.5], np.zeros((2, 2)), np.tile([[1.0, 2.0], [2.0, 1.0]], (2, 1, 1))),  # not PSD
    ]),
)
def test_invalid_mixtures_raise(weights, means, covs):
    p = processes.get("vp")
    with pytest.raises(ValueError):
        oracles.gmm_score(p, weights, means, covs)
    with pytest.raises(ValueError):
        oracles.gmm_log_prob(p, weights, means, covs)


# -- the components of p_t and the posterior of ε --------------------------------------


def ref_posterior(x, t, name, weights, means, covs):
    """Gaussian conditioning in float64: r_j, E[ε | x, j] = σC⁻¹(x - αμ_j), sd of ε_i | x, j."""
    alpha, sigma = ref_alpha_sigma(name, t)
    d = means.shape[1]
    r, m, s = [], [], []
    for w, mu, cov in zip(weights, means, covs):
        c = alpha**2 * cov + sigma**2 * np.eye(d)
        inv = np.linalg.inv(c)
        r.append(math.log(w) + stats.multivariate_normal(alpha * mu, c).logpdf(x))
        m.append(sigma * (x - alpha * mu) @ inv)
        s.append(np.broadcast_to(np.sqrt(np.diag(np.eye(d) - sigma**2 * inv)), x.shape))
    r = np.stack(r, axis=-1)
    return np.exp(r - special.logsumexp(r, axis=-1, keepdims=True)), np.stack(m, 1), np.stack(s, 1)


def _posterior(process, gmm, x, t_B):
    """(r, E[ε | x, j], sd of ε_i | x, j) from gmm_components."""
    components = oracles.gmm_components(process, gmm, x, t_B, posterior_var=True)
    sigma = np.asarray(process.sigma(t_B))[:, None, None]
    return (np.asarray(jax.nn.softmax(components.log_joint_BxJ, axis=-1)),
            -sigma * np.asarray(components.score_BxJxD), np.sqrt(np.asarray(components.eps_var_BxJxD)))


@pytest.mark.parametrize("mixture, name, t", CASES)
def test_components_match_gaussian_conditioning(mixture, name, t):
    weights, means, covs = MIXTURES[mixture]()
    gmm = oracles._as_gmm(weights, means, covs)
    x = _points(means.shape[1], seed=4)
    with jax.enable_x64(True):
        p = processes.get(name)
        t_B = jnp.full((len(x),), t, jnp.float64)
        r, m, s = _posterior(p, gmm, jnp.asarray(x), t_B)
        eps_star = np.asarray(processes.eps_fn_from_score(p, oracles.gmm_score(p, gmm))(
            jnp.asarray(x), t_B))
        assert oracles.gmm_components(p, gmm, jnp.asarray(x), t_B).eps_var_BxJxD is None
    r_ref, m_ref, s_ref = ref_posterior(x, t, name, weights, means, covs)
    np.testing.assert_allclose(r, r_ref, atol=1e-9)
    np.testing.assert_allclose(m, m_ref, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(s, s_ref, rtol=1e-6, atol=1e-9)
    # the posterior mean is the exact ε-prediction E[ε | x_t] = -σ s*
    np.testing.assert_allclose(np.einsum("bj,bjd->bd", r, m), eps_star, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mixture", fast_first(list(MIXTURES)))
def test_posterior_sd_is_accurate_when_alpha_is_small(mixture):
    # At t = 1 (VP) α² ≈ 4.5e-5: Var(ε_i | x, j) = α² diag(C⁻¹Σ) ≈ 4.5e-7 must not be
    # computed as 1 - σ² (C⁻¹)_ii, which cancels to 0 in float32.
    weights, means, covs = MIXTURES[mixture]()
    p = processes.get("vp")
    x = jnp.asarray(_points(means.shape[1], n=4, seed=5), jnp.float32)
    _, _, s = _posterior(p, oracles._as_gmm(weights, means, covs), x,
                         jnp.ones((x.shape[0],), jnp.float32))
    alpha, sigma = ref_alpha_sigma("vp", 1.0)
    c = alpha**2 * covs + sigma**2 * np.eye(means.shape[1])
    var = alpha**2 * np.diagonal(np.linalg.solve(c, covs), axis1=1, axis2=2)  # [J, D]
    assert np.all(var < 1e-4)  # float32 cancellation would be off by ~6e-8
    np.testing.assert_allclose(np.asarray(s, np.float64) ** 2, np.broadcast_to(var, s.shape),
                               rtol=1e-4)


@pytest.mark.parametrize("name", fast_first(["ve", "vp"]))
def test_x0_variance_matches_quadrature_over_the_posterior(name):
    # An independent computation: the posterior of x_0 on a fine 2-D grid, prior times the
    # likelihood N(x; αx_0, σ²I), normalised; its variance per coordinate, in float64.
    w = np.array([0.3, 0.7])
    mu = np.array([[-1.0, 0.5], [0.8, -0.2]])
    cov = np.array([[[0.2, 0.05], [0.05, 0.1]], [[0.05, 0.0], [0.0, 0.3]]])
    g = np.linspace(-4.0, 4.0, 801)
    grid = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    prior = sum(w[j] * stats.multivariate_normal(mu[j], cov[j]).pdf(grid) for j in range(2))
    process = processes.get(name)
    fn = oracles.gmm_x0_variance(process, w, mu, cov)
    for t in (0.05, 0.3, 0.8):
        a, s = float(process.alpha(t)), float(process.sigma(t))
        x = np.array([[0.3, -0.4], [0.8 * a + 0.1, 0.0], [-1.0 * a, 0.5 * a]])
        got = np.asarray(fn(jnp.asarray(x, jnp.float32), jnp.full((3,), t, jnp.float32)))
        for xi, got_i in zip(x, got):
            post = prior * np.exp(-0.5 * np.sum((xi - a * grid) ** 2, axis=1) / s**2)
            post /= post.sum()
            mean = post @ grid
            np.testing.assert_allclose(got_i, post @ (grid - mean) ** 2, rtol=1e-3, atol=1e-6)


def test_x0_variance_of_gmm8_is_one_components_near_t0_and_the_priors_at_1():
    gmm = oracles.gmm8()
    process = processes.get("vp")
    fn = oracles.gmm_x0_variance(process, gmm)
    x = jnp.asarray([[1.0, 0.0], [0.0, 0.0]])
    t = 0.01
    a2, s2 = float(process.alpha(t)) ** 2, float(process.sigma2(t))
    near_0 = np.asarray(fn(x * math.sqrt(a2), jnp.full((2,), t)))
    # on a component, one Gaussian posterior: σ²Σ/(α²Σ + σ²) with Σ = 0.1²
    np.testing.assert_allclose(near_0[0], s2 * 0.01 / (a2 * 0.01 + s2), rtol=1e-3)
    near_1 = np.asarray(fn(x, jnp.full((2,), 1.0)))  # x_t says nothing: the prior's variance
    np.testing.assert_allclose(near_1, 0.5 + 0.01, rtol=0.02)
