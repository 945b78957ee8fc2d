"""Tests for nnd.ziggurat: the exact sampler of gennorm and student_t (docs/math.md §2).

KS tests and binomial tail counts against scipy at the parameters the sampler must cover,
its tables against their defining equal-area equations, and its rare branches forced (few
layers, few buffer slots).
"""

import math
import warnings

import jax
import jax.extend.random
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from nnd import increments, ziggurat


N_DRAWS = 10**6


def scipy_law(name, params):
    """The standardised student_t or gennorm (docs/math.md §2) as a frozen scipy.stats law."""
    if name == "student_t":
        df = params["df"]
        return stats.t(df, scale=math.sqrt((df - 2.0) / df))
    beta = params["beta"]
    return stats.gennorm(beta, scale=math.sqrt(math.gamma(1.0 / beta) / math.gamma(3.0 / beta)))


def _law_id(law):
    name, params = law
    return name + "".join(f"-{k}{v:g}" for k, v in params.items())


# The parameters asked of the sampler: gennorm's shape from cusp to near-uniform, student_t
# from an infinite fourth moment to near-Gaussian.
ZIGGURAT_LAWS = ([("gennorm", {"beta": b}) for b in (0.5, 1.0, 1.5, 3.0, 8.0)]
                 + [("student_t", {"df": d}) for d in (2.5, 3.0, 5.0, 30.0)])
# Every check below has false-alarm probability ALPHA for a correct sampler (fixed seeds
# make each outcome deterministic; ALPHA bounds how unlucky a seed could have been).
ALPHA = 1e-4


def _quiet_law(name, params):
    with warnings.catch_warnings():  # df <= 4 warns about Assumption 3; not the point here
        warnings.simplefilter("ignore", UserWarning)
        return increments.get(name, **params)


def _curve(name, params):
    """The law's ziggurat curve (in its own units) and the matching scipy law."""
    if name == "gennorm":
        return ziggurat.GenNormCurve(params["beta"]), stats.gennorm(params["beta"])
    return ziggurat.StudentTCurve(params["df"]), stats.t(params["df"])


def _binomial_ok(count, n, p):
    """Whether ``count`` of n draws past a point of tail probability p is inside the central
    1 - ALPHA interval of Binomial(n, p)."""
    lo, hi = stats.binom.interval(1.0 - ALPHA, n, p)
    return lo <= count <= hi


def test_incomplete_gamma_and_beta_match_scipy():
    # The tables are built without scipy; their two special functions against scipy's.
    from scipy import special

    for a in (0.125, 0.5, 1.0, 2.0 / 3.0, 2.0, 10.0):
        for y in (1e-3, 0.5, 1.0, 3.0, 12.0, 40.0, 300.0):
            expected = special.gammaincc(a, y)
            assert ziggurat.gamma_q(a, y) == pytest.approx(expected, rel=1e-12, abs=1e-300)
    for a, b in ((1.25, 0.5), (1.5, 0.5), (2.5, 0.5), (15.0, 0.5), (0.5, 3.0)):
        for x in (1e-6, 0.01, 0.3, 0.6, 0.99, 0.999999):
            expected = special.betainc(a, b, x)
            assert ziggurat.beta_i(a, b, x) == pytest.approx(expected, rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("law", ZIGGURAT_LAWS, ids=_law_id)
def test_ziggurat_layers_have_equal_areas(law):
    # Marsaglia & Tsang's construction: every layer has area v, the base strip counting
    # the tail beyond r, and the top layer closes at f(0) = 1.
    name, params = law
    curve, ref = _curve(name, params)
    t = ziggurat.tables(curve)
    x, f, r = t.x, t.f, t.r
    n = len(x) - 1
    norm = ref.pdf(0.0)  # curve = pdf / pdf(0)
    tail = ref.sf(r) / norm
    assert curve.tail_area(r) == pytest.approx(tail, rel=1e-10)
    v = r * f[1] + tail
    areas = x[1:n] * (f[2:] - f[1:n])  # layers 1 … n - 1
    np.testing.assert_allclose(areas[:-1], v, rtol=1e-9)
    # The top layer closes to the precision of the bisection on r (relative 1e-14 in r,
    # amplified by the 4095 steps up): 1.6e-9 for beta = 8, a probability error ~1e-12.
    assert areas[-1] == pytest.approx(v, rel=1e-7)
    assert x[0] * f[1] == pytest.approx(v, rel=1e-12)
    np.testing.assert_allclose(f[1:n], ref.pdf(x[1:n]) / norm, rtol=1e-12)
    assert x[n] == 0.0 and f[n] == 1.0 and np.all(np.diff(x[1:]) < 0)
    # The fast path takes all but t.fail of the draws; the buffer is sized from it.
    assert t.fail == pytest.approx(np.mean(1.0 - x[1:] / x[:-1])) and t.fail < 0.003


@pytest.mark.fast_first
@pytest.mark.parametrize("law", ZIGGURAT_LAWS, ids=_law_id)
def test_ziggurat_tail_proposals_follow_the_truncated_law(law):
    # The proposals beyond r, kept when accepted, must follow the law conditioned on
    # x > r: at the table's r and at an r with tail mass 0.05, 2·10^6 proposals (float64).
    name, params = law
    curve, ref = _curve(name, params)
    u = np.random.default_rng(7).uniform(size=(2, 2_000_000))
    for r in (ziggurat.tables(curve).r, ref.isf(0.05)):
        if name == "gennorm" and r ** params["beta"] <= 1.0 / params["beta"] - 1.0:
            continue  # the gamma-tail envelope needs r beyond the mode of y = x^β
        with jax.enable_x64(True):
            x, ok = curve.tail(jnp.asarray(u[0]), jnp.asarray(u[1]), float(r))
            x = np.asarray(x)[np.asarray(ok)]
        assert len(x) > 500_000
        truncated_cdf = lambda z, r=r: 1.0 - ref.sf(z) / ref.sf(r)  # noqa: E731
        assert x.min() > r
        assert stats.kstest(x, truncated_cdf).pvalue > ALPHA


@pytest.mark.fast_first
@pytest.mark.parametrize("law", ZIGGURAT_LAWS, ids=_law_id)
def test_ziggurat_sample_kolmogorov_smirnov(law):
    # 10^6 draws (jit, float32) against scipy's standardised law; detects a cdf error of
    # ~2·10^-3 (sup distance) at this level.
    name, params = law
    law_obj = _quiet_law(name, params)
    z = jax.jit(lambda k: law_obj.sample(k, (N_DRAWS,)))(jax.random.key(11))
    assert stats.kstest(np.asarray(z, np.float64), scipy_law(name, params).cdf).pvalue > ALPHA


@pytest.mark.fast_first
@pytest.mark.parametrize("law", ZIGGURAT_LAWS, ids=_law_id)
def test_ziggurat_sample_tails_match_scipy(law):
    # P(|z| > q) for q at tail probabilities 1e-2 … 1e-5 and at the ziggurat's own tail
    # start r (drawn by the tail proposals) and 10x further out, from 10^7 draws; each
    # count must lie in its binomial 1 - ALPHA interval (a ±4σ band).
    name, params = law
    n = 10 ** 7
    law_obj = _quiet_law(name, params)
    ref = scipy_law(name, params)
    curve, _ = _curve(name, params)
    z = np.abs(np.asarray(jax.jit(lambda k: law_obj.sample(k, (n,)))(jax.random.key(12))))
    start = law_obj.scale * ziggurat.tables(curve).r
    probabilities = [1e-2, 1e-3, 1e-4, 1e-5, 2.0 * ref.sf(start), 0.2 * ref.sf(start)]
    for p in probabilities:
        q = ref.isf(p / 2.0)
        count = int(np.count_nonzero(z > q))
        assert _binomial_ok(count, n, p), (p, q, count, n * p)


@pytest.mark.fast_first
@pytest.mark.parametrize("options", [{}, {"margin": -3.0}, {"predrawn_steps": 0},
                                     {"margin": -1e9, "predrawn_steps": 0}],
                         ids=["default", "more-draws-than-slots", "no-predrawn-words",
                              "one-slot"])
@pytest.mark.parametrize("law", [("gennorm", {"beta": 1.5}), ("gennorm", {"beta": 0.5}),
                                 ("student_t", {"df": 3.0})], ids=_law_id)
def test_ziggurat_rare_branches_keep_the_law(law, options):
    # With 16 layers about 1 draw in 5 leaves the fast path (1 in 700 with 4096), so the
    # buffer, its extra rounds, the tail and the passes for more draws than slots are all
    # exercised and a wrong law in any would show in a KS test and in the tail counts.
    name, params = law
    curve, ref = _curve(name, params)
    zig = ziggurat._ziggurat(curve, 4)
    assert zig.tables.fail > 0.15
    n = 10 ** 6
    x = np.asarray(jax.jit(lambda k: zig.sample(k, (n,), jnp.float32, **options))(
        jax.random.key(13)), np.float64)
    assert stats.kstest(x, ref.cdf).pvalue > ALPHA
    for q in (zig.tables.r, 2.0 * zig.tables.r):
        assert _binomial_ok(int(np.count_nonzero(np.abs(x) > q)), n, 2.0 * ref.sf(q)), q


@pytest.mark.slow
def test_ziggurat_sample_in_float64_kolmogorov_smirnov():
    # 64-bit words: 51 bits of position; the rare branches with 16 layers as well.
    curve, ref = _curve("gennorm", {"beta": 0.5})
    with jax.enable_x64(True):
        for layer_bits in (12, 4):
            zig = ziggurat._ziggurat(curve, layer_bits)
            x = zig.sample(jax.random.key(14), (N_DRAWS,), jnp.float64)
            assert x.dtype == jnp.float64
            assert stats.kstest(np.asarray(x), ref.cdf).pvalue > ALPHA


@pytest.mark.fast_first
@pytest.mark.parametrize("shape", [(3, 5, 7), (), (0,), (1,), (33,), (2, 0, 3)], ids=str)
def test_ziggurat_sample_shapes(shape):
    for law in (increments.get("gennorm", beta=1.5), increments.get("student_t", df=5.0)):
        z = law.sample(jax.random.key(2), shape)
        assert z.shape == shape and z.dtype == jnp.float32 and np.isfinite(np.asarray(z)).all()


def test_ziggurat_eager_and_jit_draws_agree():
    # The same program either way (sample is jitted inside), so the draws are bitwise equal.
    law = increments.get("student_t", df=5.0)
    eager = law.sample(jax.random.key(3), (1000,))
    jitted = jax.jit(lambda k: law.sample(k, (1000,)))(jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(eager), np.asarray(jitted))


@pytest.mark.slow
def test_ziggurat_takes_raw_keys_and_other_key_implementations():
    # The buffer's rare rounds seed a key made of spare words, shaped like the caller's.
    law = increments.get("gennorm", beta=1.5)
    for key in (jax.random.PRNGKey(3), jax.random.key(3, impl="rbg")):
        zig = ziggurat._ziggurat(ziggurat.GenNormCurve(1.5), 4)  # rare rounds do run
        z = np.asarray(jax.jit(lambda k: zig.sample(k, (10_000,), jnp.float32,
                                                    predrawn_steps=0))(key))
        assert np.isfinite(z).all() and z.shape == (10_000,)
        assert law.sample(key, (1000,)).shape == (1000,)


@pytest.mark.fast_first
@pytest.mark.parametrize("law", [("gennorm", {"beta": 0.2}), ("gennorm", {"beta": 0.05}),
                                 ("gennorm", {"beta": 50.0}),
                                 ("student_t", {"df": 2.05}), ("student_t", {"df": 1e4})],
                         ids=_law_id)
def test_ziggurat_extreme_parameters(law):
    # Tables build and the draws follow the law far outside the usual range.
    name, params = law
    law_obj = _quiet_law(name, params)
    z = np.asarray(law_obj.sample(jax.random.key(4), (200_000,)), np.float64)
    assert np.isfinite(z).all()
    assert stats.kstest(z, scipy_law(name, params).cdf).pvalue > ALPHA



@pytest.mark.slow
def test_ziggurat_refuses_float32_past_its_range():
    # gennorm(0.03) reaches |z|/α ≈ 1e59 in its tail layers: not a float32 law, a float64 one.
    law = increments.get("gennorm", beta=0.03)
    with pytest.raises(ValueError, match="float64"):
        law.sample(jax.random.key(0), (10,))
    with jax.enable_x64(True):
        z = np.asarray(law.sample(jax.random.key(0), (200_000,), jnp.float64))
    assert stats.kstest(z, scipy_law("gennorm", {"beta": 0.03}).cdf).pvalue > ALPHA
