"""Tests for nnd.increments: the standardised increment laws of Definition 1 (docs/math.md §2).

Every law is checked against an independent reference:

- densities, cdfs and kurtoses against the matching ``scipy.stats`` law, rescaled to
  unit variance as docs/math.md §2 prescribes (``SCIPY`` below);
- normalisation, entropy and E|z + u| against ``scipy.integrate.quad``;
- samples by Monte Carlo moments, with tolerances set from their standard errors;
- the exact ziggurat sampler of gennorm and student_t in ``ziggurat_test.py``.

Float64 checks run under ``jax.enable_x64(True)`` so that the closed forms, not float32
rounding, are what is measured.
"""

import functools
import math
import warnings

import jax
import jax.extend.random
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from nnd import increments

SQRT2, SQRT3 = math.sqrt(2.0), math.sqrt(3.0)

# (name, params): every law, with two df and two beta values.
ALL_LAWS = [
    ("gaussian", {}),
    ("laplace", {}),
    ("uniform", {}),
    ("logistic", {}),
    ("student_t", {"df": 5.0}),
    ("student_t", {"df": 10.0}),
    ("gennorm", {"beta": 1.5}),
    ("gennorm", {"beta": 4.0}),
    ("rademacher", {}),
]
CONTINUOUS_LAWS = [law for law in ALL_LAWS if law[0] != "rademacher"]
# The dtype and jit paths do not depend on df or beta: one parameter value per law.
ONE_PER_LAW = [law for law in ALL_LAWS if law[1] not in ({"df": 10.0}, {"beta": 4.0})]


def _law_id(law):
    name, params = law
    return name + "".join(f"-{k}{v:g}" for k, v in params.items())


def _gennorm_scale(beta):
    return math.sqrt(math.gamma(1.0 / beta) / math.gamma(3.0 / beta))


def scipy_law(name, params):
    """The standardised law of docs/math.md §2 as a frozen scipy.stats distribution."""
    if name == "gaussian":
        return stats.norm()
    if name == "laplace":
        return stats.laplace(scale=1.0 / SQRT2)
    if name == "uniform":
        return stats.uniform(loc=-SQRT3, scale=2.0 * SQRT3)
    if name == "logistic":
        return stats.logistic(scale=SQRT3 / math.pi)
    if name == "student_t":
        df = params["df"]
        return stats.t(df, scale=math.sqrt((df - 2.0) / df))
    if name == "gennorm":
        beta = params["beta"]
        return stats.gennorm(beta, scale=_gennorm_scale(beta))
    if name == "rademacher":
        return stats.rv_discrete(values=([-1, 1], [0.5, 0.5]))
    raise AssertionError(name)


def _quad_pieces(f, breaks, lo=-np.inf, hi=np.inf):
    """∫_lo^hi f, split at the sorted `breaks` (quad cannot take points= on an infinite range)."""
    edges = [lo] + sorted(b for b in breaks if lo < b < hi) + [hi]
    return sum(
        integrate.quad(f, a, b, epsabs=1e-13, epsrel=1e-12, limit=200)[0]
        for a, b in zip(edges[:-1], edges[1:])
    )


def _support(name):
    return (-SQRT3, SQRT3) if name == "uniform" else (-np.inf, np.inf)


GRID = np.array([-6.0, -3.0, -1.9, -1.0, -0.5, -0.1, 0.0, 0.1, 0.5, 1.0, 1.7, 2.0, 3.0, 6.0])


# -- sampling ----------------------------------------------------------------------------

# n = 10^6 draws (≥ 2·10^5 asked for). Standard errors at this n, from the exact moments
# (E z⁴ and E z⁸ by scipy): mean 1/√n = 0.001, so the 0.01 tolerance is 10 SE; variance
# √((E z⁴ - 1)/n) ≤ 0.0028 (student_t df=5, E z⁴ = 9), so 0.02 is ≥ 7 SE; E z⁴ relative
# √(E z⁸ - (E z⁴)²)/(√n E z⁴) ≤ 0.0083 (laplace and student_t df=10), so 5% is ≥ 6 SE.
N_DRAWS = 10**6


@functools.lru_cache(maxsize=None)
def _draws(name, params_items, dtype=jnp.float32):
    """N_DRAWS draws as float64 numpy, cached across tests. Eager: jit and float64 have
    their own tests below."""
    law = increments.get(name, **dict(params_items))
    z = law.sample(jax.random.PRNGKey(0), (N_DRAWS,), dtype)
    assert z.shape == (N_DRAWS,) and z.dtype == dtype
    return np.asarray(z.astype(jnp.float32), np.float64)


@pytest.mark.fast_first
@pytest.mark.parametrize("law", ALL_LAWS, ids=_law_id)
def test_sample_has_zero_mean_and_unit_variance(law):
    name, params = law
    z = _draws(name, tuple(params.items()))
    assert abs(z.mean()) < 0.01
    assert abs(z.var() - 1.0) < 0.02


@pytest.mark.fast_first
@pytest.mark.parametrize("law", CONTINUOUS_LAWS, ids=_law_id)
def test_sample_follows_the_law_kolmogorov_smirnov(law):
    # A sampler with the right moments can still have the wrong shape; the KS test
    # against scipy's standardised law has power against that at n = 10^6
    # (it would detect a sup-distance in the cdf of ~2e-3 at level 1e-3).
    name, params = law
    z = _draws(name, tuple(params.items()))
    assert stats.kstest(z, scipy_law(name, params).cdf).pvalue > 1e-3


# Kurtosis is estimable only where E z⁸ < ∞: student_t needs df > 8, so df = 5 is left out.
KURTOSIS_LAWS = [law for law in ALL_LAWS if law != ("student_t", {"df": 5.0})]


@pytest.mark.parametrize("law", KURTOSIS_LAWS, ids=_law_id)
def test_sample_fourth_moment_matches_kurtosis(law):
    name, params = law
    z = _draws(name, tuple(params.items()))
    expected = increments.get(name, **params).kurtosis()
    assert np.mean(z**4) == pytest.approx(expected, rel=0.05)


@pytest.mark.fast_first
@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("law", ONE_PER_LAW, ids=_law_id)
def test_sample_in_half_precision_keeps_dtype_and_moments(law, dtype):
    # Same n and tolerances as in float32: rounding to 8 or 11 significant bits moves the
    # variance by ~2^-18, far below its standard error. (Drawing natively in bfloat16,
    # whose uniforms have 8 bits, gave logistic variance 18.8 and Gaussian/uniform means
    # off by 0.011/0.014.)
    name, params = law
    z = _draws(name, tuple(params.items()), dtype)
    assert np.isfinite(z).all()
    assert abs(z.mean()) < 0.01
    assert abs(z.var() - 1.0) < 0.02


@pytest.mark.fast_first
@pytest.mark.parametrize("law", ONE_PER_LAW, ids=_law_id)
def test_sample_in_float64(law):
    name, params = law
    with jax.enable_x64(True):
        law = increments.get(name, **params)
        z = law.sample(jax.random.PRNGKey(1), (N_DRAWS,), jnp.float64)
        assert z.dtype == jnp.float64
        z = np.asarray(z)
    assert abs(z.mean()) < 0.01
    assert abs(z.var() - 1.0) < 0.02


@pytest.mark.fast_first
@pytest.mark.parametrize("law", ONE_PER_LAW, ids=_law_id)
def test_sample_under_jit_with_typed_key(law):
    # Moments here; bitwise equality with the eager draw is checked for the ziggurat
    # laws below (test_ziggurat_eager_and_jit_draws_agree).
    name, params = law
    sample = jax.jit(lambda key: increments.get(name, **params).sample(key, (N_DRAWS,)))
    z = sample(jax.random.key(0))
    assert z.shape == (N_DRAWS,) and z.dtype == jnp.float32
    z = np.asarray(z, np.float64)
    assert abs(z.mean()) < 0.01
    assert abs(z.var() - 1.0) < 0.02


# -- the extreme random words ------------------------------------------------------------

def _constant_words_key(word):
    """A key of a PRNG whose every random word is ``word`` (all-zero: 0, all-one: -1), so
    that a sampler's transform is seen at its extreme inputs without 2^32 draws."""
    def random_bits(key_data, bit_width, shape):
        dtype = {32: jnp.uint32, 64: jnp.uint64}[bit_width]
        return jnp.full(shape, np.array(word).astype(dtype), dtype)

    impl = jax.extend.random.define_prng_impl(
        key_shape=(1,), seed=lambda seed: jnp.zeros((1,), jnp.uint32),
        split=lambda key_data, shape: jnp.zeros((*shape, 1), jnp.uint32),
        random_bits=random_bits, fold_in=lambda key_data, data: key_data,
        name=f"constant_{word}")
    return jax.random.wrap_key_data(jnp.zeros((1,), jnp.uint32), impl=impl)


# The full-support laws drawn by inverting a uniform (the ziggurat laws draw theirs with
# _bits_uniform; uniform draws are an affine map of one, bounded by ±√3).
INVERSION_LAWS = [("logistic", {}), ("gaussian", {}), ("laplace", {})]


@pytest.mark.fast_first
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("law", INVERSION_LAWS, ids=_law_id)
def test_sample_extreme_words_give_no_far_atom(law, dtype):
    # A sampler with n = nmant bits of resolution draws each value with probability about
    # 2^-n, and a value of the true law's tail probability P(|z| ≥ |x|) far below that is an
    # atom that law does not have. jax.random.logistic maps the all-zero word to u = tiny,
    # z = -48.15 (float32), whose true tail probability is 1e-38: kurtosis 4.84, not 4.2.
    # Passing: 2 P(z ≤ -|x|) ≥ 2^-(n+3) for the all-zero and all-one words.
    name, params = law
    with jax.enable_x64(dtype == jnp.float64):
        for word in (0, -1):
            z = increments.get(name, **params).sample(_constant_words_key(word), (4,), dtype)
            assert z.dtype == dtype
            z = np.asarray(z, np.float64)
            assert np.isfinite(z).all()
            tail = 2.0 * scipy_law(name, params).cdf(-np.abs(z))
            assert (tail >= 2.0 ** -(jnp.finfo(dtype).nmant + 3)).all(), (word, z, tail)


@pytest.mark.fast_first
@pytest.mark.parametrize("dtype, x64", [(jnp.float32, False), (jnp.bfloat16, False),
                                        (jnp.float64, True), (jnp.float64, False)],
                         ids=["float32", "bfloat16", "float64", "float64-without-x64"])
def test_logistic_sample_tails_are_truncated_alike(dtype, x64):
    # |z| ≤ s·log(2^(n+2) - 1), s = √3/π, n = nmant of the draw dtype (float32 for bfloat16,
    # and for float64 without x64, where jax makes it float32): 9.5538 in float32, 20.636 in
    # float64, the same bound on both sides, never -48.15.
    s = SQRT3 / math.pi
    law = increments.get("logistic")
    with jax.enable_x64(x64), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # float64 requested without x64
        n = jnp.finfo(jax.dtypes.canonicalize_dtype(increments._draw_dtype(dtype))).nmant
        out_n = jnp.finfo(jax.dtypes.canonicalize_dtype(dtype)).nmant
        bound = s * math.log(2.0 ** (n + 2) - 1.0)
        z = np.concatenate([np.asarray(law.sample(_constant_words_key(w), (2,), dtype),
                                       np.float64) for w in (0, 1, -1, -2)])
    # Four roundings in the draw dtype (s, the quotient, log1p, the product), one to dtype.
    rel = 4.0 * 2.0 ** -(n + 1) + 2.0 ** -(out_n + 1)
    assert np.all(np.abs(z) <= bound * (1.0 + rel))
    assert np.abs(z).max() == pytest.approx(bound, rel=rel)  # reached: open, not clipped
    assert z.min() == -z.max()


@pytest.mark.slow
def test_logistic_sample_over_every_word_has_kurtosis_4_2():
    # Every pattern of the top 23 bits of a word once (2^23 draws, float32): the sampler's
    # own law, with no sampling noise. Inversion at the midpoints of 2^24 equal cells of
    # (0, 1) truncates the tails at |z| = 9.55 and moves E z² and E z⁴ by < 1e-4 (measured
    # 4.19990); jax.random.logistic's atom at -48.15 makes it 4.837.
    def random_bits(key_data, bit_width, shape):
        return (jnp.arange(math.prod(shape), dtype=jnp.uint32) << 9).reshape(shape)

    impl = jax.extend.random.define_prng_impl(
        key_shape=(1,), seed=lambda seed: jnp.zeros((1,), jnp.uint32),
        split=lambda key_data, shape: jnp.zeros((*shape, 1), jnp.uint32),
        random_bits=random_bits, fold_in=lambda key_data, data: key_data, name="counter")
    key = jax.random.wrap_key_data(jnp.zeros((1,), jnp.uint32), impl=impl)
    z = np.asarray(increments.get("logistic").sample(key, (1 << 23,)), np.float64)
    assert np.mean(z**2) == pytest.approx(1.0, abs=1e-4)
    assert np.mean(z**4) / np.mean(z**2) ** 2 == pytest.approx(4.2, abs=1e-3)


# -- densities ---------------------------------------------------------------------------

@pytest.mark.parametrize("law", CONTINUOUS_LAWS, ids=_law_id)
def test_log_prob_integrates_to_one(law):
    name, params = law
    with jax.enable_x64(True):
        log_prob = jax.jit(increments.get(name, **params).log_prob)
        density = lambda z: math.exp(float(log_prob(jnp.float64(z))))
        lo, hi = _support(name)
        total = _quad_pieces(density, [0.0], lo, hi)
    assert total == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("law", CONTINUOUS_LAWS, ids=_law_id)
def test_log_prob_matches_scipy_in_float64(law):
    name, params = law
    expected = scipy_law(name, params).logpdf(GRID)  # -inf outside the uniform's support
    with jax.enable_x64(True):
        got = increments.get(name, **params).log_prob(jnp.asarray(GRID))
        assert got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("law", CONTINUOUS_LAWS, ids=_law_id)
def test_log_prob_keeps_float32(law):
    # float32 eps is 1.2e-7; a handful of roundings of terms of size |log q| gives < 1e-5.
    name, params = law
    got = increments.get(name, **params).log_prob(jnp.asarray(GRID, jnp.float32))
    assert got.dtype == jnp.float32
    expected = scipy_law(name, params).logpdf(GRID)
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.fast_first
@pytest.mark.parametrize("law", CONTINUOUS_LAWS, ids=_law_id)
def test_entropy_matches_integral(law):
    name, params = law
    ref = scipy_law(name, params)

    def integrand(z):
        log_q = ref.logpdf(z)
        return 0.0 if log_q < -700.0 else -math.exp(log_q) * log_q

    lo, hi = _support(name)
    expected = _quad_pieces(integrand, [0.0], lo, hi)
    assert float(increments.get(name, **params).entropy()) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("law", ALL_LAWS, ids=_law_id)
def test_kurtosis_matches_scipy(law):
    name, params = law
    expected = float(scipy_law(name, params).stats(moments="k")) + 3.0
    assert increments.get(name, **params).kurtosis() == pytest.approx(expected, rel=1e-9)


def test_kurtosis_is_infinite_for_heavy_student_t():
    with pytest.warns(UserWarning):
        law = increments.get("student_t", df=3.5)
    assert law.kurtosis() == math.inf


@pytest.mark.fast_first
@pytest.mark.parametrize("law", ALL_LAWS, ids=_law_id)
def test_cdf_matches_scipy(law):
    name, params = law
    grid = np.concatenate([GRID, [-SQRT3, SQRT3]])  # uniform support ends, Rademacher atoms
    expected = scipy_law(name, params).cdf(grid)
    with jax.enable_x64(True):
        got = increments.get(name, **params).cdf(jnp.asarray(grid))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-9, atol=1e-12)


SHIFTS = [0.0, 0.01, 0.3, -1.0, 1.5, 2.5, -4.0]  # 2.5 and -4 are past the uniform's √3


@pytest.mark.fast_first
@pytest.mark.parametrize("law", CONTINUOUS_LAWS, ids=_law_id)
def test_mean_abs_shift_matches_quad(law):
    name, params = law
    ref = scipy_law(name, params)
    lo, hi = _support(name)
    expected = [
        _quad_pieces(lambda z, u=u: abs(z + u) * ref.pdf(z), [0.0, -u], lo, hi) for u in SHIFTS
    ]
    with jax.enable_x64(True):
        got = increments.get(name, **params).mean_abs_shift(jnp.asarray(SHIFTS))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-9, atol=1e-9)


def test_rademacher_mean_abs_shift():
    u = np.asarray(SHIFTS)
    expected = 0.5 * (np.abs(u + 1.0) + np.abs(u - 1.0))
    got = increments.get("rademacher").mean_abs_shift(jnp.asarray(u))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6)


def test_rademacher_has_no_density():
    law = increments.get("rademacher")
    with pytest.raises(ValueError, match="rademacher"):
        law.log_prob(jnp.zeros(3))
    with pytest.raises(ValueError, match="rademacher"):
        law.entropy()


# -- get() -------------------------------------------------------------------------------

def test_get_unknown_name_lists_allowed_names():
    with pytest.raises(ValueError) as info:
        increments.get("cauchy")
    message = str(info.value)
    assert "cauchy" in message
    for name in ("gaussian", "laplace", "uniform", "logistic", "student_t", "gennorm",
                 "rademacher"):
        assert name in message


@pytest.mark.parametrize(
    "name, params",
    [
        ("student_t", {"df": 2.0}),
        ("student_t", {"df": 1.0}),
        ("student_t", {"df": float("nan")}),
        ("student_t", {"df": float("inf")}),
        ("student_t", {"df": True}),
        ("student_t", {"df": "5"}),
        ("gennorm", {"beta": 0.0}),
        ("gennorm", {"beta": -1.0}),
        ("gennorm", {"beta": float("nan")}),
        ("gennorm", {"beta": True}),
        ("gaussian", {"df": 3}),
        ("laplace", {"beta": 1.0}),
        ("student_t", {"beta": 1.0}),
        ("gennorm", {"df": 5.0}),
    ],
    ids=lambda v: repr(v) if not isinstance(v, str) else v,
)
def test_get_rejects_bad_params(name, params):
    with pytest.raises(ValueError, match=name):
        increments.get(name, **params)


@pytest.mark.parametrize("df", [2.5, 3.0, 4.0])
def test_student_t_with_infinite_fourth_moment_warns(df):
    with pytest.warns(UserWarning, match="Assumption 3"):
        increments.get("student_t", df=df)


@pytest.mark.parametrize("df", [4.5, 5.0, 30.0])
def test_student_t_with_finite_fourth_moment_is_silent(df):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        increments.get("student_t", df=df)


@pytest.mark.parametrize("spec, expected", [
    ("gaussian", increments.get("gaussian")),
    (" laplace ", increments.get("laplace")),
    ("student_t:5", increments.get("student_t", df=5.0)),
    ("gennorm:1.5", increments.get("gennorm", beta=1.5)),
])
def test_parse_reads_law_specs(spec, expected):
    assert increments.parse(spec) == expected
    assert increments.parse(expected) is expected  # a law passes through


@pytest.mark.parametrize("spec, message", [
    ("cauchy", "unknown increment law"),
    ("laplace:2", "takes no parameter"),
    ("student_t:five", "must be a number"),
    ("student_t:2", "df must be > 2"),
    ("", "expected an increment law"),
    ({"name": "gaussian"}, "expected an increment law"),
])
def test_parse_refuses_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        increments.parse(spec)
