"""Tests for nnd.likelihood: PF-ODE log-densities against exact oracles, bits/dim, eq. (5) sum.

References: closed-form Gaussian densities and flows, the exact mixture density of
nnd.oracles, known discrete densities on the cube, and closed-form expectations of
the eq. (5) terms for Gaussian data with the exact score.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnd import increments, likelihood, losses, oracles, processes, walks

VP = processes.get("vp")


def gaussian_case(dim, seed=0):
    rng = np.random.default_rng(seed)
    var = rng.uniform(0.3, 2.0, dim)
    mu = rng.normal(size=dim) * 0.5
    return mu, var


def exact_model_log_prob(process, mu, var, x):
    """log density at t_eps of the exact PF-ODE flow pushed back from the N(0, I) prior.

    For Gaussian data the flow is affine per coordinate:
    x_t = alpha_t mu + sqrt(s_t / s_1) (x_1 - alpha_1 mu), s_t = alpha_t² var + sigma_t².
    """
    te = process.t_eps
    a_e, s_e = float(process.alpha(te)), float(process.alpha(te)) ** 2 * var + float(process.sigma2(te))
    a_1, s_1 = float(process.alpha(1.0)), float(process.alpha(1.0)) ** 2 * var + float(process.sigma2(1.0))
    x1 = a_1 * mu + np.sqrt(s_1 / s_e) * (np.asarray(x, np.float64) - a_e * mu)
    prior = -0.5 * np.sum(x1**2, axis=1) - 0.5 * x1.shape[1] * math.log(2 * math.pi)
    return prior + 0.5 * np.sum(np.log(s_1 / s_e))


def solve(process, score, x, divergence="exact", key=1, **kwargs):
    fn = jax.jit(lambda x_, k: likelihood.log_prob_with_stats(process, score, x_, k,
                                                              divergence=divergence, **kwargs))
    lp, stats = fn(jnp.asarray(x, jnp.float32), jax.random.key(key))
    return np.asarray(lp, np.float64), stats


@pytest.mark.fast_first
@pytest.mark.parametrize("dim", [2, 16])
def test_gaussian_data_log_prob(dim):
    """Acceptance: within 1e-2 nats/dim of the exact log-density (diagonal covariance)."""
    mu, var = gaussian_case(dim)
    gmm = oracles._as_gmm(np.ones(1), mu[None], np.diag(var)[None])
    x = np.asarray(oracles.sample_gmm(jax.random.key(0), gmm, 500))
    lp, stats = solve(VP, oracles.gmm_score(VP, gmm), x)
    assert bool(stats.finished)
    # The solve itself: every example within 1e-3 nats/dim of the exact flow's density.
    np.testing.assert_allclose(lp, exact_model_log_prob(VP, mu, var, x), atol=1e-3 * dim)
    # The data density (exact at t = 0); the gap is the prior mismatch N(0, I) vs p_1
    # plus the t_eps blur, both far below 1e-2 per dim on average.
    exact_data = -0.5 * np.sum((x - mu) ** 2 / var + np.log(2 * np.pi * var), axis=1)
    assert abs(np.mean(lp - exact_data)) / dim < 1e-2
    assert np.max(np.abs(lp - exact_data)) / dim < 2e-2


@pytest.mark.slow  # fast-tier budget: CI's slow tier runs it
def test_mixture_log_prob():
    """Acceptance: the 2-D gmm8 mixture within 2e-2 nats/dim of its exact density at t_eps."""
    gmm = oracles.gmm8()
    x = np.asarray(oracles.sample_gmm(jax.random.key(3), gmm, 300))
    lp, stats = solve(VP, oracles.gmm_score(VP, gmm), x)
    exact = np.asarray(oracles.gmm_log_prob(VP, gmm)(jnp.asarray(x), jnp.full((300,), VP.t_eps)))
    assert np.max(np.abs(lp - exact)) / 2 < 2e-2
    assert bool(stats.finished)


def test_a_wrong_score_gives_a_wrong_density():
    """The checks above have power: a score with the wrong variance is off by far more."""
    mu, var = gaussian_case(2)
    gmm = oracles._as_gmm(np.ones(1), mu[None], np.diag(var)[None])
    wrong = oracles._as_gmm(np.ones(1), mu[None], np.diag(1.5 * var)[None])
    x = np.asarray(oracles.sample_gmm(jax.random.key(0), gmm, 200))
    lp, _ = solve(VP, oracles.gmm_score(VP, wrong), x)
    assert np.max(np.abs(lp - exact_model_log_prob(VP, mu, var, x))) / 2 > 1e-2


@pytest.mark.slow  # end-to-end or many compiles; the fast tier stays under 5 minutes
def test_fixed_step_heun_agrees_with_adaptive():
    gmm = oracles.gmm8()
    x = np.asarray(oracles.sample_gmm(jax.random.key(3), gmm, 100))
    score = oracles.gmm_score(VP, gmm)
    adaptive, _ = solve(VP, score, x)
    fixed, stats = solve(VP, score, x, solver="heun", num_steps=400)
    assert int(stats.nfe) == 800
    assert np.max(np.abs(fixed - adaptive)) / 2 < 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(probe):
    """Mean over probe draws equals the exact divergence's answer within 4 standard errors."""
    gmm = oracles.gmm8()
    x = np.asarray(oracles.sample_gmm(jax.random.key(5), gmm, 64))
    score = oracles.gmm_score(VP, gmm)
    exact, _ = solve(VP, score, x)
    draws = np.stack([solve(VP, score, x, divergence=probe, key=k)[0] for k in range(16)])
    mean, se = draws.mean(0), draws.std(0, ddof=1) / math.sqrt(len(draws))
    assert np.all(draws.std(0) > 0)  # the estimator is really stochastic here
    z = (mean - exact) / np.maximum(se, 1e-6)
    assert np.mean(np.abs(z) < 4) > 0.95


@pytest.mark.slow  # fast-tier budget: CI's slow tier runs it
def test_rademacher_is_exact_for_a_diagonal_jacobian():
    mu, var = gaussian_case(3)
    gmm = oracles._as_gmm(np.ones(1), mu[None], np.diag(var)[None])
    x = np.asarray(oracles.sample_gmm(jax.random.key(0), gmm, 50))
    score = oracles.gmm_score(VP, gmm)
    np.testing.assert_allclose(solve(VP, score, x, "rademacher")[0], solve(VP, score, x)[0],
                               atol=1e-4)


def test_auto_divergence_is_exact_up_to_64_dims():
    assert likelihood.resolve_divergence("auto", 64) == "exact"
    assert likelihood.resolve_divergence("auto", 65) == "rademacher"
    with pytest.raises(ValueError, match="divergence"):
        likelihood.resolve_divergence("hutch", 2)


def test_divergence_fn_matches_jacobian_trace():
    w = jax.random.normal(jax.random.key(0), (5, 5))
    fn = lambda x, t: jnp.tanh(x @ w) * t  # noqa: E731
    x = jax.random.normal(jax.random.key(1), (3, 5))
    _, div = likelihood.divergence_fn(fn, "exact", chunk=2)(x, 0.7)
    jac = jax.vmap(jax.jacfwd(lambda v: fn(v[None], 0.7)[0]))(x)
    np.testing.assert_allclose(np.asarray(div), np.trace(np.asarray(jac), axis1=1, axis2=2),
                               rtol=1e-5)


@pytest.mark.slow  # fast-tier budget: CI's slow tier runs it
def test_log_prob_works_on_image_shaped_inputs():
    """x [B, H, W, C]: the divergence runs over all H·W·C coordinates of each example."""
    mu, var = np.zeros(8), np.ones(8)
    gmm = oracles._as_gmm(np.ones(1), mu[None], np.diag(var)[None])
    flat_score = oracles.gmm_score(VP, gmm)
    score = lambda x, t: flat_score(x.reshape(x.shape[0], -1), t).reshape(x.shape)  # noqa: E731
    x = np.asarray(oracles.sample_gmm(jax.random.key(0), gmm, 4))
    lp_img = np.asarray(likelihood.log_prob(VP, score, jnp.asarray(x.reshape(4, 2, 2, 2)),
                                            jax.random.key(0)))
    np.testing.assert_allclose(lp_img, exact_model_log_prob(VP, mu, var, x), atol=1e-3 * 8)


# -- bits per dimension -------------------------------------------------------------------------

@pytest.mark.parametrize("levels", [256, 17])
def test_bpd_of_the_uniform_density_on_the_cube(levels):
    """p(z) = 2^-D on [-1, 1]^D puts mass L^-D on every level: exactly log₂ L bits/dim."""
    dim = 12
    bpd = likelihood.bits_per_dim(np.full(3, -dim * math.log(2.0)), dim, levels)
    np.testing.assert_allclose(bpd, math.log2(levels), rtol=1e-12)


def level_density(levels):
    """A non-uniform law over levels, w_n ∝ n + 1, as a density on [-1, 1] per coordinate."""
    w = np.arange(1, levels + 1, dtype=np.float64)
    w /= w.sum()

    def log_prob_fn(z, key):  # piecewise constant: w_n / (2/L) on bin n
        n = np.clip(np.floor((np.asarray(z, np.float64) + 1.0) * levels / 2.0), 0, levels - 1)
        return jnp.asarray(np.sum(np.log(w[n.astype(int)] * levels / 2.0).reshape(len(z), -1), 1))

    return w, log_prob_fn


@pytest.mark.parametrize("levels", [256, 17])
def test_dataset_bpd_counts_every_example_once(levels):
    """10 examples, batches of 4: the padding of the last batch must not count."""
    w, log_prob_fn = level_density(levels)
    rng = np.random.default_rng(0)
    images = rng.integers(0, levels, size=(10, 2, 3, 1))
    calls = []
    result = likelihood.dataset_bpd(lambda z, k: calls.append(z.shape) or log_prob_fn(z, k),
                                    images, levels, batch_size=4, key=jax.random.key(0),
                                    num_repeats=2)
    exact = np.mean(-np.log2(w[images]).reshape(10, -1).mean(1))
    assert result["num_examples"] == 10 and result["num_repeats"] == 2
    assert calls == [(4, 2, 3, 1)] * 6  # 3 fixed-size batches per repeat
    np.testing.assert_allclose(result["bpd"], exact, rtol=1e-6)  # float32 log-densities
    assert result["se_repeats"] == pytest.approx(0.0, abs=1e-12)  # level-only density
    assert result["se_examples"] > 0


def test_dataset_bpd_rejects_out_of_range_levels():
    with pytest.raises(ValueError, match="levels"):
        likelihood.dataset_bpd(lambda z, k: jnp.zeros(len(z)), np.array([[17]]), 17,
                               batch_size=1, key=jax.random.key(0))


# -- the eq. (5) walk sum ---------------------------------------------------------------------

def expected_walk_bound(process, mu, var, num_steps):
    """E over x_0 ~ N(mu, var) and ε of each eq. (5) term for G/G, ancestral steps, exact ε.

    Per coordinate, E(ε - E[ε|x_t])² = α²v / (α²v + σ²), and an ancestral step from t to s
    costs ½ expm1(λ_s - λ_t) times it.
    """
    t = process.t_eps + (1.0 - process.t_eps) / num_steps * np.arange(num_steps + 1)
    t32 = jnp.asarray(t, jnp.float32)
    a2 = np.asarray(process.alpha(t32), np.float64) ** 2
    s2 = np.asarray(process.sigma2(t32), np.float64)
    lam = np.log(a2 / s2)
    mse = a2[:, None] * var / (a2[:, None] * var + s2[:, None])  # [K+1, D]
    steps = np.sum(0.5 * np.expm1(lam[:-1] - lam[1:])[:, None] * mse[1:])
    recon = 0.5 * len(var) * math.log(2 * math.pi * s2[0] / a2[0]) + 0.5 * np.sum(mse[0])
    prior = 0.5 * np.sum(a2[-1] * (var + mu**2) + s2[-1] - 1.0 - math.log(s2[-1]))
    return prior, steps, recon


def test_walk_bound_terms_match_their_expectations():
    mu, var = np.array([0.3, -0.5]), np.array([0.5, 1.5])
    gmm = oracles._as_gmm(np.ones(1), mu[None], np.diag(var)[None])
    score = oracles.gmm_score(VP, gmm)
    eps_fn = lambda x, t: -VP.sigma(t)[:, None] * score(x, t)  # noqa: E731
    n, num_steps = 4000, 50
    x0 = oracles.sample_gmm(jax.random.key(0), gmm, n)
    out = jax.jit(lambda x, k: likelihood.walk_bound(
        VP, eps_fn, x, k, q=increments.get("gaussian"), p=increments.get("gaussian"),
        num_steps=num_steps, scheme="ancestral", grid="t"))(x0, jax.random.key(1))
    expected = dict(zip(("prior_kl", "steps", "reconstruction"),
                        expected_walk_bound(VP, mu, var, num_steps)))
    for name, value in expected.items():
        v = np.asarray(out[name], np.float64)
        assert abs(v.mean() - value) < 4 * v.std() / math.sqrt(n) + 1e-4, name
    np.testing.assert_allclose(np.asarray(out["total"]),
                               np.asarray(out["prior_kl"] + out["steps"] + out["reconstruction"]),
                               rtol=1e-6)


def _gaussian_data_bound(process, num_steps, scheme, *, n=4000, mu=0.3, var=0.25, riemann=False):
    """(bound - exact NLL, its standard error) in nats/dim, exact ε, data N(mu, var I₂).

    ``riemann``: the right-endpoint Riemann weight g²Δt/σ² of an earlier version instead
    of the exact step KL (not a bound).
    """
    def eps_fn(x, t):
        a, s2 = process.alpha(t)[:, None], process.sigma2(t)[:, None]
        return jnp.sqrt(s2) * (x - a * mu) / (a * a * var + s2)

    def x0_variance_fn(x, t):  # exact and the same everywhere for Gaussian data
        a2, s2 = jnp.square(process.alpha(t))[:, None], process.sigma2(t)[:, None]
        return jnp.broadcast_to(var * s2 / (a2 * var + s2), x.shape)

    x0 = mu + math.sqrt(var) * jax.random.normal(jax.random.key(0), (n, 2))
    g = increments.get("gaussian")
    fn = x0_variance_fn if scheme == "analytic" else None
    out = jax.jit(lambda x, k: likelihood.walk_bound(process, eps_fn, x, k, q=g, p=g,
                                                     num_steps=num_steps, scheme=scheme,
                                                     grid="t", x0_variance_fn=fn))(
        x0, jax.random.key(1))
    total = np.asarray(out["total"], np.float64)
    if riemann:
        t_grid, _ = processes.time_grid(process, num_steps)

        def riemann_steps(x, k):
            def step(acc, i):
                eps = jax.random.normal(jax.random.fold_in(k, i), x.shape)
                t_B = jnp.full((n,), t_grid[i + 1])
                x_t = process.marginal(x, eps, t_B)
                return acc + losses.step_loss(eps, eps_fn(x_t, t_B), t_B, process=process, q=g, p=g,
                                              num_steps=num_steps), None
            return jax.lax.scan(step, jnp.zeros((n,)), jnp.arange(num_steps))[0]

        total = total - np.asarray(out["steps"]) + np.asarray(
            jax.jit(riemann_steps)(x0, jax.random.key(1)), np.float64)
    nll = 0.5 * math.log(2 * math.pi * var) + 0.5  # per dim: the data's own entropy
    per_dim = total / 2
    return per_dim.mean() - nll, per_dim.std() / math.sqrt(n)


@pytest.mark.fast_first
@pytest.mark.parametrize("name", ["vp", "vdm", "subvp", "ve"])
@pytest.mark.parametrize("num_steps", [100, 10, 1000])
@pytest.mark.parametrize("scheme", ["euler", "ancestral", "analytic"])
def test_gaussian_walk_bound_is_above_the_exact_nll(name, num_steps, scheme):
    # Exact scores, Gaussian data: -log p of any sampler is ≥ the data's entropy, so a true
    # bound is too (within 3 standard errors of the Monte-Carlo estimate).
    gap, se = _gaussian_data_bound(processes.get(name), num_steps, scheme)
    assert gap > -3 * se, (gap, se)


def test_the_right_endpoint_riemann_sum_is_not_a_bound():
    # What the bound test above guards against: the earlier weight g²Δt/σ² at the right end
    # of each step lies about 1.1 nats/dim below the exact NLL on vp at K = 100.
    gap, se = _gaussian_data_bound(processes.get("vp"), 100, "euler", riemann=True)
    assert gap < -20 * se, (gap, se)
    exact_gap, exact_se = _gaussian_data_bound(processes.get("vp"), 100, "euler")
    assert exact_gap > -3 * exact_se


@pytest.mark.slow
@pytest.mark.parametrize("name, scheme, goal", [("vdm", "analytic", 0.02), ("vp", "analytic", 0.05)])
def test_the_bound_approaches_the_nll_at_k1000(name, scheme, goal):
    gap, se = _gaussian_data_bound(processes.get(name), 1000, scheme)
    assert gap < goal + 3 * se, (gap, se)


def test_walk_estimate_penalty_is_k_d_l0():
    q, p = increments.get("uniform"), increments.get("laplace")
    x0 = jnp.zeros((3, 4))
    eps_fn = lambda x, t: jnp.zeros_like(x)  # noqa: E731
    out = likelihood.walk_estimate(VP, eps_fn, x0, jax.random.key(0), q=q, p=p, num_steps=7)
    l0 = float(losses.penalty(q, p))
    assert float(out["penalty"]) == pytest.approx(7 * 4 * l0, rel=1e-6)
    np.testing.assert_allclose(np.asarray(out["total_with_penalty"] - out["total"]),
                               7 * 4 * l0, rtol=1e-5)


# -- the bound of the law-p walk --------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["euler", "ancestral", "analytic"])
def test_reverse_kernel_is_the_step_the_sampler_runs(scheme):
    # x_s = μ_θ + b z: the mean at z = 0 and the scale from z = 1, against walks.scheme_step.
    x = jax.random.normal(jax.random.key(0), (5, 3))
    eps_pred = 0.7 * x + 0.1
    t, s = jnp.float32(0.6), jnp.float32(0.45)
    score = -eps_pred / VP.sigma(t)
    v = 0.2 + 0.1 * jnp.square(x) if scheme == "analytic" else None  # a per-point Var[x_0 | x_t]
    step = lambda z: walks.scheme_step(VP, scheme, x, score, z, t, s, v)  # noqa: E731
    mean, scale = likelihood.reverse_kernel(VP, scheme, x, eps_pred, t, s, v)
    np.testing.assert_allclose(mean, step(jnp.zeros_like(x)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(step(jnp.ones_like(x)) - mean,
                               np.broadcast_to(np.asarray(scale), x.shape), rtol=1e-4)


@pytest.mark.parametrize("eta, weight", [(0.5, 0.0), (1.0, 0.5), (1.3, 0.0)])
def test_reverse_kernel_follows_every_member_of_the_variance_family(eta, weight):
    # The family's mean and scale (DDIM(η) below the ancestral step, an interpolated variance
    # above it) are the step the sampler runs, and the gap is posterior mean minus model mean.
    x = jax.random.normal(jax.random.key(0), (5, 3))
    x0 = jax.random.normal(jax.random.key(1), (5, 3))
    eps_pred = 0.7 * x + 0.1
    t, s = jnp.float32(0.6), jnp.float32(0.45)
    v = 0.2 + 0.1 * jnp.square(x)
    family = dict(eta=eta, variance_weight=weight)
    step = lambda z: walks.scheme_step(VP, "ancestral", x, -eps_pred / VP.sigma(t), z, t, s, v,  # noqa: E731
                                       **family)
    mean, scale = likelihood.reverse_kernel(VP, "ancestral", x, eps_pred, t, s, v, **family)
    np.testing.assert_allclose(mean, step(jnp.zeros_like(x)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(step(jnp.ones_like(x)) - mean,
                               np.broadcast_to(np.asarray(scale), x.shape), rtol=1e-4)
    gap = likelihood.kernel_gap(VP, "ancestral", x0, x, eps_pred, t, s, v, **family)
    mean_q, _ = likelihood.posterior_kernel(VP, x0, x, t, s)
    np.testing.assert_allclose(gap, mean_q - mean, rtol=1e-4, atol=1e-5)


def test_analytic_without_a_per_point_variance_is_refused_in_one_line():
    # The batch estimate made a sample depend on its batch; there is none now.
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="needs a per-point") as info:
        likelihood.walk_bound(VP, lambda x, t: x, x, jax.random.key(0), q="gaussian",
                              p="laplace", num_steps=3, scheme="analytic")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="no density"):
        likelihood.walk_bound(VP, lambda x, t: x, x, jax.random.key(0), q="gaussian",
                              p="laplace", num_steps=3, eta=0.0)


@pytest.mark.parametrize("p", ["uniform", "rademacher"])
def test_bounded_support_has_no_bound_and_says_so_in_one_line(p):
    x0 = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="bounded support") as info:
        likelihood.walk_bound(VP, lambda x, t: x, x0, jax.random.key(0), q="gaussian", p=p,
                              num_steps=3)
    assert "\n" not in str(info.value)
    assert not likelihood.is_bound("gaussian", p)


def test_is_bound_for_every_full_support_p_whatever_q():
    for q in ("gaussian", "uniform", "laplace", "rademacher", "student_t:5"):
        for p in ("gaussian", "laplace", "logistic", "student_t:5", "gennorm:1.5"):
            assert likelihood.is_bound(q, p), (q, p)


def test_walk_bound_in_float64_mode():
    # With jax_enable_x64 the process's coefficients are float64; the scan carry follows x0's
    # dtype (the euler step once raised a TypeError here).
    with jax.enable_x64(True):
        x0 = jnp.ones((3, 2), jnp.float32)
        eps_fn = lambda x, t: 0.1 * x  # noqa: E731
        out = likelihood.walk_bound(VP, eps_fn, x0, jax.random.key(0), q="gaussian",
                                    p="gaussian", num_steps=2, scheme="euler")
        assert out["total"].dtype == jnp.float32 and np.all(np.isfinite(out["total"]))


def _marginal_gaussian_sum(process, eps_fn, x0, key, num_steps, scheme, grid,
                           x0_variance_fn=None):
    """The Gaussian-marginal sum of earlier versions: x_t = α x_0 + σ ε drawn afresh per step,
    each step the exact KL of the Gaussian step against the posterior."""
    t_grid = processes.sampling_grid(process, num_steps, grid)
    n = x0.shape[0]
    total = np.zeros(n)
    for k in range(num_steps + 1):
        eps = jax.random.normal(jax.random.fold_in(key, k), x0.shape)
        t = t_grid[k + 1] if k < num_steps else t_grid[0]
        x = process.marginal(x0, eps, jnp.full((n,), t))
        eps_pred = eps_fn(x, jnp.full((n,), t))
        if k < num_steps:
            v = None if x0_variance_fn is None else x0_variance_fn(x, jnp.full((n,), t))
            term = likelihood.gaussian_step_kl(process, scheme, x0, x, eps, eps_pred, t, t_grid[k],
                                               v)
        else:
            term = likelihood._decoder_nll(process, eps_fn, x0, x, t)
        total += np.asarray(term, np.float64)
    return total + np.asarray(likelihood._prior_kl(process, x0), np.float64)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["euler", "ancestral", "analytic"])
def test_gaussian_bound_agrees_with_the_gaussian_marginal_sum(scheme):
    # p = gaussian: the chain r is the forward process itself, so the bound's mean equals the
    # mean of the earlier Gaussian-marginal sum (within 4 standard errors of the difference).
    mix = oracles._as_gmm(np.array([0.4, 0.6]), np.array([[-0.7, 0.2], [0.5, -0.3]]),
                          np.tile(0.3**2 * np.eye(2), (2, 1, 1)))
    score = oracles.gmm_score(VP, mix)
    eps_fn = lambda x, t: -VP.sigma(t)[:, None] * score(x, t)  # noqa: E731
    n, num_steps = 4000, 6
    x0 = oracles.sample_gmm(jax.random.key(0), mix, n)
    fn = oracles.gmm_x0_variance(VP, mix) if scheme == "analytic" else None
    bound = np.asarray(jax.jit(lambda x, k: likelihood.walk_bound(
        VP, eps_fn, x, k, q="gaussian", p="gaussian", num_steps=num_steps, scheme=scheme,
        grid="t", x0_variance_fn=fn))(x0, jax.random.key(1))["total"], np.float64)
    marginal = _marginal_gaussian_sum(VP, eps_fn, x0, jax.random.key(2), num_steps, scheme, "t",
                                      fn)
    se = math.sqrt(bound.var() / n + marginal.var() / n)
    assert abs(bound.mean() - marginal.mean()) < 4 * se, (bound.mean(), marginal.mean(), se)
