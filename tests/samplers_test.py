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


@pytest.mark.fast_first
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
    """The blob-width check above has power: a corrector with a far too large step fails it.

    At snr = 2 the dynamics are chaotic: over keys 1-6 the blob width came out between
    0.031 and 0.104 (0.02 is right), so the check's band of 5 standard errors (±0.0022)
    rejects every one of them; the energy distance does not (0.0008 for some keys), so
    the blob width is the statistic that carries the check.
    """
    x, _ = draw(setup, "pc", "gaussian", num_steps=50, snr=2.0)
    width, _ = metrics.nearest_centre(x, oracles.gmm8().means)
    assert abs(width - 0.02) >= 5 * 0.02 / np.sqrt(N)  # the check of the test above fails


def test_the_law_drives_walk_and_corrector_noise(setup):
    for sampler in ("walk", "pc"):
        a, _ = draw(setup, sampler, "gaussian", num_steps=10)
        b, _ = draw(setup, sampler, "uniform", num_steps=10)
        assert not np.allclose(a, b)


@pytest.mark.slow  # fast-tier budget: CI's slow tier runs it
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


def test_pf_ode_field_matches_eq6(setup):
    process, score, _ = setup
    x = jnp.asarray(setup[2][:5])
    t = 0.3
    drift = samplers.pf_ode_field(process, score)(x, jnp.float32(t))
    s = score(x, jnp.full((5,), t))
    expected = process.f(t) * x - 0.5 * process.g(t) ** 2 * s
    np.testing.assert_allclose(np.asarray(drift), np.asarray(expected), rtol=1e-6)


def test_predictor_corrector_without_corrector_is_the_reverse_walk(setup):
    # The predictor is the one reverse step of eq. (8) (walks.euler_step), the same as the walk's.
    from nnd import walks  # noqa: PLC0415

    process, score, _ = setup
    law = increments.get("uniform")
    key = jax.random.key(3)
    x, nfe = samplers.predictor_corrector(process, law, score, key, (N, 2), num_steps=15,
                                          corrector_steps=0, scheme="euler", grid="t")
    key_prior, key_pred, _ = jax.random.split(key, 3)
    x_init = process.prior_sample(key_prior, (N, 2))
    t_grid, dt = processes.time_grid(process, 15)
    y = x_init
    for k in reversed(range(15)):
        t = t_grid[k + 1]
        s = score(y, jnp.full((N,), t))
        z = law.sample(jax.random.fold_in(key_pred, k), (N, 2))
        y = walks.euler_step(process, y, s, z, t, dt)
    y = walks.tweedie_denoise(process, score, y, process.t_eps)
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-4)
    assert int(nfe) == 16


def test_draw_compiles_once_per_shape_and_reuses_it_for_new_parameters():
    from nnd import models  # noqa: PLC0415

    model = models.MLP(hidden=8, depth=1, embed_dim=8)
    process, law = processes.get("vp"), increments.get("gaussian")
    settings = samplers.Settings(num_steps=3, batch_size=16)
    params = model.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
    samplers.compiled.cache_clear()
    a, nfe = samplers.draw(model, params, process, law, settings, (2,), 40, jax.random.key(1))
    shifted = jax.tree.map(lambda p: p + 0.1, params)
    b, _ = samplers.draw(model, shifted, process, law, settings, (2,), 40, jax.random.key(1))
    assert a.shape == b.shape == (40, 2) and nfe == 4
    assert not np.allclose(a, b)  # the new parameters are used, not captured ones
    info = samplers.compiled.cache_info()
    assert info.misses == 1 and info.hits == 1
    assert samplers.compiled(model, process, law, (16, 2), settings)._cache_size() == 1


def test_corrector_step_size_carries_the_signal_kept_by_one_step(setup):
    # ε = 2 a_k (snr mean‖z‖/mean‖s‖)² with a_k = (α(t_{k+1})/α(t_k))² (score_sde's α_i for vp).
    from nnd import walks  # noqa: PLC0415

    process, score, _ = setup
    law, key, snr, K = increments.get("laplace"), jax.random.key(5), 0.3, 4
    x, _ = samplers.predictor_corrector(process, law, score, key, (N, 2), num_steps=K, snr=snr,
                                        corrector_steps=1, denoise=False, scheme="euler",
                                        grid="t")
    key_prior, key_pred, key_corr = jax.random.split(key, 3)
    y = process.prior_sample(key_prior, (N, 2))
    t_grid, dt = processes.time_grid(process, K)
    norm = lambda v: np.mean(np.linalg.norm(np.asarray(v), axis=1))  # noqa: E731
    for k in reversed(range(K)):
        t = float(t_grid[k + 1])
        t_B = jnp.full((N,), t, jnp.float32)
        a_k = float(process.alpha(t) / process.alpha(t - dt)) ** 2
        assert a_k < 1.0
        s = score(y, t_B)
        z = law.sample(jax.random.fold_in(jax.random.fold_in(key_corr, k), 0), (N, 2))
        eps = 2.0 * a_k * (snr * norm(z) / norm(s)) ** 2
        y = y + eps * s + np.sqrt(2.0 * eps) * z
        z = law.sample(jax.random.fold_in(key_pred, k), (N, 2))
        y = walks.euler_step(process, y, score(y, t_B), z, t_grid[k + 1], dt)
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # fast-tier budget: CI's slow tier runs it
def test_a_learned_variance_samples_with_one_network_call_per_step(monkeypatch):
    # network_fns: ε and Var[x_0 | x_t] of one step come from one call of the network, and the
    # analytic walk of the compiled sampler takes its variance from the head.
    from nnd import losses, models, walks
    process = processes.get("vp")
    model = models.make("mlp", hidden=16, depth=1, embed_dim=8, learned_variance=True)
    params = models.init_params(model, jax.random.key(0), jnp.zeros((2, 2)))
    params = jax.tree.map(lambda a: a + 0.05, params)  # a head that is not zero
    calls = []
    apply = models.MLP.apply
    monkeypatch.setattr(models.MLP, "apply", lambda self, *a, **k: calls.append(1) or apply(self, *a, **k))
    eps_fn, x0_variance_fn = samplers.network_fns(model, params, process)
    x, t_B = jnp.ones((3, 2)), jnp.full((3,), 0.4)
    eps, v = eps_fn(x, t_B), x0_variance_fn(x, t_B)
    assert len(calls) == 1
    _, log_gamma = apply(model, {"params": params}, x, t_B, with_variance=True)
    np.testing.assert_allclose(v, losses.learned_x0_variance(process, log_gamma, t_B), rtol=1e-6)
    calls.clear()
    settings = samplers.Settings(scheme="analytic", num_steps=4, batch_size=8)
    x_s, nfe = samplers.compiled(model, process, increments.get("laplace"), (8, 2), settings)(
        params, jax.random.key(1))
    assert len(calls) == 2 and int(nfe) == 5  # one trace of the step, one of the Tweedie step
    want = walks.reverse(process, increments.get("laplace"), processes.score_fn_from_eps(
        process, lambda x_, t_: apply(model, {"params": params}, x_, t_)), jax.random.key(1),
        (8, 2), 4, scheme="analytic", x0_variance_fn=x0_variance_fn)
    np.testing.assert_allclose(x_s, want, rtol=1e-5, atol=1e-6)
    plain = samplers.network_fns(models.make("mlp", hidden=16, depth=1, embed_dim=8),
                                 params, process)
    assert plain[1] is None
