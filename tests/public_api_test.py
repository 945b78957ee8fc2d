"""docs/math.md §7: the public surface that other tools script against, called exactly as written there."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnd import increments, likelihood, losses, oracles, processes, walks


@pytest.mark.fast_first
@pytest.mark.parametrize("make_key", [jax.random.PRNGKey, jax.random.key], ids=["PRNGKey", "key"])
def test_spec_section_7_surface(make_key):
    law = increments.get("student_t", df=5.0)
    x = law.sample(make_key(0), (4, 2))
    assert x.shape == (4, 2) and x.dtype == jnp.float32
    assert np.all(np.isfinite(law.log_prob(x))) and float(law.kurtosis()) == pytest.approx(9.0)
    assert np.isfinite(float(law.entropy()))
    assert float(losses.shift_kl("uniform", "laplace", 0.3)) == pytest.approx(0.3656, abs=1e-4)
    assert float(losses.shift_kl(law, "gaussian", 0.0, method="quadrature")) >= 0.0

    process = processes.get("vp", beta_max=10.0)
    t = jnp.asarray([0.1, 0.9])
    for value in (process.alpha(t), process.sigma(t), process.f(t), process.g(t)):
        assert value.shape == (2,)
    assert process.t_eps == 1e-3
    prior = process.prior_sample(make_key(1), (4, 2))
    assert process.prior_logp(prior).shape == (4,)

    gmm = oracles.gmm8()
    score_fn = oracles.gmm_score(process, gmm.weights, gmm.means, gmm.covs)
    x1 = walks.forward(process, law, prior, make_key(2), 5)
    assert isinstance(x1, jax.Array) and x1.shape == (4, 2)
    samples = walks.reverse(process, law, score_fn, make_key(3), (4, 2), 5)
    assert isinstance(samples, jax.Array) and samples.shape == (4, 2)
    assert walks.reverse(process, law, score_fn, make_key(3), (4, 2), 5, denoise=False).shape == (4, 2)
    m, v = walks.moments(process, 5)
    assert m.shape == v.shape == ()
    lp = likelihood.log_prob(process, score_fn, samples, make_key(4), divergence="auto",
                             rtol=1e-3, atol=1e-3)
    assert lp.shape == (4,) and np.all(np.isfinite(lp))


@pytest.mark.parametrize("bad", [lambda: increments.get("cauchy"),
                                 lambda: increments.get("student_t", df=2.0),
                                 lambda: processes.get("edm"),
                                 lambda: processes.get("vp", sigma_max=3.0)])
def test_spec_section_7_bad_names_and_params_raise_value_error(bad):
    with pytest.raises(ValueError):
        bad()


@pytest.mark.slow  # fast-tier budget (walks_test checks the step itself in the fast tier)
def test_spec_section_7_per_point_variance():
    process, law = processes.get("vdm"), increments.get("logistic")
    gmm = oracles.gmm8()
    fn = oracles.gmm_x0_variance(process, gmm)
    x = jnp.zeros((4, 2))
    assert fn(x, jnp.full((4,), 0.5)).shape == (4, 2)
    samples = walks.reverse(process, law, oracles.gmm_score(process, gmm), jax.random.key(0),
                            (4, 2), 5, scheme="analytic", x0_variance_fn=fn)
    assert samples.shape == (4, 2) and np.all(np.isfinite(np.asarray(samples)))
