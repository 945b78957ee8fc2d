"""Tests for nnd.losses: the shift KL ℓ_{q,p}(u) of Table 1 and the loss of eq. (5) (docs/math.md §4).

The reference for ℓ(u) = KL(q(· - u) ‖ p) = ∫ q(z) [log q(z) - log p(z + u)] dz is
``scipy.integrate.quad`` over scipy.stats densities in float64, split at q's support ends
and at the kinks of the integrand (z = 0 and z = -u), accurate to ~1e-10. Closed forms are
checked in float64 (under ``jax.enable_x64(True)``) and float32; the quadrature fallback
in float32, the dtype users get. The corrected constants of docs/math.md §8 are checked against
their exact expressions, and ``step_loss``/``objective`` against hand computations in numpy.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from nnd import increments, losses, processes

SQRT2, SQRT3 = math.sqrt(2.0), math.sqrt(3.0)
B = 1.0 / SQRT2  # Laplace scale
A = SQRT3  # uniform half-width

def _gennorm_scale(beta):
    return math.sqrt(math.gamma(1.0 / beta) / math.gamma(3.0 / beta))


def law_pair(spec):
    """(nnd law, frozen scipy.stats law) for 'gaussian', 'student_t:5', 'gennorm:1.5', ..."""
    name, _, param = spec.partition(":")
    if name == "gaussian":
        return increments.get(name), stats.norm()
    if name == "laplace":
        return increments.get(name), stats.laplace(scale=B)
    if name == "uniform":
        return increments.get(name), stats.uniform(loc=-A, scale=2.0 * A)
    if name == "logistic":
        return increments.get(name), stats.logistic(scale=SQRT3 / math.pi)
    if name == "student_t":
        df = float(param)
        return increments.get(name, df=df), stats.t(df, scale=math.sqrt((df - 2.0) / df))
    if name == "gennorm":
        beta = float(param)
        return increments.get(name, beta=beta), stats.gennorm(beta, scale=_gennorm_scale(beta))
    raise AssertionError(spec)


def scipy_shift_kl(q_spec, p_spec, u):
    """ℓ(u) = ∫ q(z) [log q(z) - log p(z + u)] dz by quad in float64, split at the kinks."""
    _, q = law_pair(q_spec)
    _, p = law_pair(p_spec)
    # Against a Laplace p the range is cut at ±500: scipy 1.17's laplace.logpdf is
    # log(pdf), -inf past |z| ≈ 527, while q's mass beyond 500 adds < 1e-10 to ℓ (the
    # heaviest q, student_t df=5, has q ~ 13|z|^-6 and the integrand ~ |z|^-5 there).
    cut = 500.0 if p_spec == "laplace" else np.inf
    lo, hi = (-A, A) if q_spec == "uniform" else (-cut, cut)

    def integrand(z):
        log_q = q.logpdf(z)
        if log_q < -700.0:  # q(z) underflows: no mass (avoids 0 · inf)
            return 0.0
        return math.exp(log_q) * (log_q - p.logpdf(z + u))

    edges = [lo] + sorted(x for x in {0.0, -u} if lo < x < hi) + [hi]
    return sum(
        integrate.quad(integrand, a, b, epsabs=1e-13, epsrel=1e-12, limit=200)[0]
        for a, b in zip(edges[:-1], edges[1:])
    )


# ≥ 8 shifts, both signs, tiny and large; |u| > √3 = 1.73 leaves the uniform's support.
SHIFTS = np.array([-3.0, -1.9, -0.7, -0.01, 0.0, 0.01, 0.3, 1.0, 1.8, 2.5])


@functools.lru_cache(maxsize=None)
def reference(q_spec, p_spec):
    """scipy_shift_kl at every one of SHIFTS (cached: several tests share it)."""
    return np.array([scipy_shift_kl(q_spec, p_spec, u) for u in SHIFTS])

CLOSED_PAIRS = [
    ("gaussian", "gaussian"),
    ("laplace", "laplace"),
    ("uniform", "gaussian"),
    ("uniform", "laplace"),
    ("logistic", "gaussian"),
    ("student_t:5", "gaussian"),
    ("gaussian", "laplace"),
    ("logistic", "laplace"),
    ("student_t:5", "laplace"),
    ("gennorm:1.5", "laplace"),
]
QUADRATURE_PAIRS = [
    ("logistic", "laplace"),
    ("student_t:5", "gaussian"),
    ("laplace", "logistic"),
    ("gennorm:1.5", "laplace"),
    # no closed form at all:
    ("gaussian", "logistic"),
    ("uniform", "logistic"),
    ("student_t:10", "gennorm:1.5"),
]


def _pair_id(pair):
    return "/".join(pair)


def _laws(pair):
    return law_pair(pair[0])[0], law_pair(pair[1])[0]


def jitted_shift_kl(q, p, u, method="auto"):
    """shift_kl under jax.jit: one compile instead of op-by-op dispatch keeps tests fast
    (eager and jitted results are compared in test_shift_kl_under_jit_and_vmap)."""
    return jax.jit(lambda v: losses.shift_kl(q, p, v, method=method))(u)


# -- shift_kl against numerical integration ----------------------------------------------

@pytest.mark.fast_first
@pytest.mark.parametrize("pair", CLOSED_PAIRS, ids=_pair_id)
def test_closed_form_matches_quad_in_float64(pair):
    q, p = _laws(pair)
    expected = reference(*pair)
    with jax.enable_x64(True):
        got = jitted_shift_kl(q, p, jnp.asarray(SHIFTS), method="closed")
        assert got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), expected, rtol=0.0, atol=1e-5)


@pytest.mark.fast_first
@pytest.mark.parametrize("pair", CLOSED_PAIRS, ids=_pair_id)
def test_closed_form_matches_quad_in_float32(pair):
    # ℓ is a sum of O(1) terms (|u|/b, H(q), E|z+u|/b ≤ 5): a few float32 roundings of
    # terms of size ≤ 5 cost ≲ 10 · 5 · 1.2e-7 ≈ 6e-6, inside 1e-5 absolute + 1e-5 relative.
    q, p = _laws(pair)
    expected = reference(*pair)
    got = jitted_shift_kl(q, p, jnp.asarray(SHIFTS, jnp.float32), method="closed")
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.fast_first
@pytest.mark.parametrize("pair", QUADRATURE_PAIRS, ids=_pair_id)
def test_quadrature_matches_quad_in_float32(pair):
    q, p = _laws(pair)
    expected = reference(*pair)
    got = jitted_shift_kl(q, p, jnp.asarray(SHIFTS, jnp.float32), method="quadrature")
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=0.0, atol=1e-4)


@pytest.mark.fast_first
@pytest.mark.parametrize("pair", QUADRATURE_PAIRS, ids=_pair_id)
def test_quadrature_gradient_matches_finite_difference(pair):
    # Central difference of the float64 quad reference: with h = 1e-4 the truncation
    # error h² ℓ⁽³⁾/6 ~ 1e-9 and the quad error 1e-12/h ~ 1e-8 are both far below 2% of
    # ℓ'(u) ≥ ~0.01 (ℓ'(u) ≈ ℓ''(0) u).
    u, h = np.array([0.01, 0.3]), 1e-4
    expected = [
        (scipy_shift_kl(*pair, v + h) - scipy_shift_kl(*pair, v - h)) / (2.0 * h) for v in u
    ]
    q, p = _laws(pair)
    # ℓ acts elementwise, so the gradient of the sum is the vector of ℓ'(u_i).
    grad = jax.jit(jax.grad(lambda v: losses.shift_kl(q, p, v, method="quadrature").sum()))(
        jnp.asarray(u, jnp.float32))
    np.testing.assert_allclose(np.asarray(grad, np.float64), expected, rtol=0.02)


# -- the corrected constants of docs/math.md §8 --------------------------------------------------

def test_uniform_gaussian_penalty_is_corrected_value():
    expected = 0.5 * (1.0 + math.log(math.pi / 6.0))  # not the paper's 0.34
    assert expected == pytest.approx(0.1765, abs=5e-5)
    got = losses.shift_kl("uniform", "gaussian", 0.0)
    assert float(got) == pytest.approx(expected, abs=1e-6)


def test_uniform_laplace_penalty_is_corrected_value():
    expected = math.log(B / A) + A / (2.0 * B)  # not the paper's 1/2
    assert expected == pytest.approx(0.329, abs=5e-4)
    got = losses.shift_kl("uniform", "laplace", 0.0)
    assert float(got) == pytest.approx(expected, abs=1e-6)


def test_laplace_laplace_penalty_is_zero():
    # Table 1's "+1" would give 2.
    assert float(losses.shift_kl("laplace", "laplace", 0.0)) == pytest.approx(0.0, abs=1e-7)


def _second_difference(q, p, h, one_sided=False):
    with jax.enable_x64(True):
        u = jnp.asarray([0.0, h, 2.0 * h] if one_sided else [-h, 0.0, h])
        ell = np.asarray(jitted_shift_kl(q, p, u))
    return (ell[0] - 2.0 * ell[1] + ell[2]) / h**2


# Curvatures ℓ''(0) of docs/math.md §4, by a float64 second difference with h = 1e-3: the
# truncation error is h² ℓ''''/12 ≲ 1e-6 (one-sided: h ℓ''' ≲ 1e-3 for L/L, where
# ℓ''' = -1/b³ = -2.8 next to the kink) and roundoff 1e-16/h² = 1e-10.
@pytest.mark.parametrize(
    "q, p, expected, one_sided",
    [
        ("uniform", "laplace", 1.0 / (A * B), False),  # 0.816, not the paper's 1
        ("laplace", "laplace", 1.0 / B**2, True),  # ℓ = |u|/b + e^{-|u|/b} - 1: kink at 0
        ("gaussian", "laplace", 2.0 * stats.norm.pdf(0.0) / B, False),  # 1.128
        ("gaussian", "gaussian", 1.0, False),
        ("uniform", "gaussian", 1.0, False),
        ("laplace", "gaussian", 1.0, False),
        ("logistic", "gaussian", 1.0, False),
        ("student_t:5", "gaussian", 1.0, False),
        ("gennorm:1.5", "gaussian", 1.0, False),
    ],
)
def test_curvature_at_zero(q, p, expected, one_sided):
    got = _second_difference(law_pair(q)[0], law_pair(p)[0], 1e-3, one_sided)
    assert got == pytest.approx(expected, rel=5e-3)


# -- which pairs are allowed -------------------------------------------------------------

def _student_t3():
    with pytest.warns(UserWarning, match="Assumption 3"):
        return increments.get("student_t", df=3.0)


@pytest.mark.parametrize(
    "q, p, names",
    [
        ("gaussian", "uniform", ("gaussian", "uniform")),
        ("uniform", "uniform", ("uniform",)),
        ("rademacher", "gaussian", ("rademacher", "gaussian")),
        ("laplace", "rademacher", ("laplace", "rademacher")),
        (_student_t3, increments.get("gennorm", beta=3.0), ("student_t(df=3)", "gennorm(beta=3)")),
        (increments.get("student_t", df=5.0), increments.get("gennorm", beta=6.0),
         ("student_t(df=5)", "gennorm(beta=6)")),
    ],
    ids=["gaussian/uniform", "uniform/uniform", "rademacher/gaussian", "laplace/rademacher",
         "student_t3/gennorm3", "student_t5/gennorm6"],
)
def test_infinite_pair_is_refused_naming_the_pair(q, p, names):
    q = q() if callable(q) else q
    with pytest.raises(ValueError) as info:
        losses.shift_kl(q, p, jnp.zeros(3))
    for name in names:
        assert name in str(info.value)


def test_student_t_against_lighter_gennorm_is_accepted_and_finite():
    # E_q |z|^4.5 < ∞ for df = 5 > beta = 4.5, so ℓ is finite, but its integrand decays
    # only like |z|^-1.5. The exponential tail map makes that e^{-w/2}, so float64 is
    # exact to 1e-6; in float32, (z/α)^4.5 overflows beyond |z| ≈ 3.6e8 and the tail
    # past it (≈ 2·(3.6e8)^-0.5 · O(1) ≈ 2e-4) is lost, so float32 is checked to 5e-4.
    pair = ("student_t:5", "gennorm:4.5")
    q, p = _laws(pair)
    u = np.array([0.0, 0.5, 2.0])
    expected = [scipy_shift_kl(*pair, v) for v in u]
    got32 = np.asarray(jitted_shift_kl(q, p, jnp.asarray(u, jnp.float32)), np.float64)
    np.testing.assert_allclose(got32, expected, rtol=0, atol=5e-4)
    with jax.enable_x64(True):
        got64 = np.asarray(losses.shift_kl(q, p, jnp.asarray(u, jnp.float64)))
    np.testing.assert_allclose(got64, expected, rtol=0, atol=1e-6)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="method"):
        losses.shift_kl("gaussian", "gaussian", 0.0, method="exact")


# -- shift_kl as a JAX function ----------------------------------------------------------

@pytest.mark.fast_first
@pytest.mark.parametrize("pair", [("uniform", "laplace"), ("gaussian", "logistic")],
                         ids=_pair_id)
def test_shift_kl_under_jit_and_vmap(pair):
    q, p = _laws(pair)
    u = jnp.asarray(SHIFTS.reshape(2, 5), jnp.float32)
    eager = losses.shift_kl(q, p, u)
    jitted = jax.jit(lambda v: losses.shift_kl(q, p, v))(u)
    mapped = jax.vmap(lambda v: losses.shift_kl(q, p, v))(u)
    expected = reference(*pair).reshape(2, 5)
    for got in (eager, jitted, mapped):
        assert got.shape == (2, 5) and got.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got, np.float64), expected, atol=1e-4)


def test_shift_kl_of_python_scalar_is_float32():
    assert losses.shift_kl("logistic", "laplace", 1).dtype == jnp.float32


@pytest.mark.parametrize(
    "q, p, pair",
    [
        ("logistic", "laplace", ("logistic", "laplace")),
        (increments.get("logistic"), increments.get("laplace"), ("logistic", "laplace")),
        ("student_t:5", "gaussian", ("student_t:5", "gaussian")),
    ],
    ids=["names", "laws", "spec"],
)
def test_shift_kl_accepts_laws_names_and_specs(q, p, pair):
    # Same float32 tolerance as the closed forms above.
    got = jitted_shift_kl(q, p, jnp.asarray(SHIFTS, jnp.float32))
    np.testing.assert_allclose(np.asarray(got, np.float64), reference(*pair),
                               rtol=1e-5, atol=1e-5)


# -- gradients of the loss: finite at every shift, and right ------------------------------
#
# Training differentiates ℓ_{q,p}(u) at every coordinate of every example, so one
# non-finite ∂ℓ/∂u stops a run. The laws below are the seven of Definition 1 but
# rademacher (no density; it can only drive a walk) with the parameters the README uses;
# every finite (q, p) pair among them is checked, closed form or quadrature.

TRAINED_LAWS = ["gaussian", "laplace", "uniform", "logistic", "student_t:5", "gennorm:1.5"]


def _finite_pairs(quadrature: bool):
    pairs = []
    for q in TRAINED_LAWS:
        for p in TRAINED_LAWS:
            try:
                losses.check_pair(q, p)
            except ValueError:
                continue
            if losses.has_closed_form(q, p) != quadrature:
                pairs.append((q, p))
    return pairs


FINITE_QUADRATURE_PAIRS = _finite_pairs(quadrature=True)
FINITE_CLOSED_PAIRS = _finite_pairs(quadrature=False)


def test_the_trained_pairs_are_every_finite_pair():
    # 6 q's × 5 full-support p's; p = uniform is refused. Quadrature: p ∈ {logistic,
    # student_t, gennorm} (18 pairs); closed forms: p ∈ {gaussian, laplace} (12 pairs).
    assert len(FINITE_QUADRATURE_PAIRS) == 18 and len(FINITE_CLOSED_PAIRS) == 12


def training_shifts(n: int, seed: int = 0) -> np.ndarray:
    """n float32 shifts spanning what training feeds ℓ: u = c_k (ε_θ - ε).

    c_k = √expm1(Δλ) is 2.4 on vp at K = 10 (λ grid) and smaller at larger K, and
    |ε_θ - ε| rarely exceeds 10, so |u| ≤ 30 covers training; a third of the draws is
    uniform on [-30, 30], a third N(0, 1) (the bulk of a trained model's u) and a third
    log-uniform in magnitude from 1e-8 to 30 with random sign (u → 0). Plus the shifts
    where panels meet (0, ±√3, tiny values).
    """
    rng = np.random.default_rng(seed)
    third = n // 3
    magnitude = 10.0 ** rng.uniform(-8.0, math.log10(30.0), n - 2 * third)
    special = np.array([0.0, -0.0, 1e-30, -1e-30, 1e-7, -1e-7, A, -A, 30.0, -30.0,
                        -4.4989213943481445])  # the last: the NaN for gaussian/logistic
    return np.concatenate([
        special,
        rng.uniform(-30.0, 30.0, third),
        rng.standard_normal(third),
        magnitude * rng.choice([-1.0, 1.0], magnitude.size),
    ]).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _grad_fn(q, p):
    return jax.jit(jax.vmap(jax.grad(lambda v: losses.shift_kl(q, p, v))))


def _assert_finite_gradients(pair, u, chunk=1 << 15):
    # Fixed-size chunks (the last padded with zeros, a shift the set already holds): one
    # compile per pair, and memory bounded by the chunk (10^6 shifts at once took 14 GB
    # of the quadrature's nodes and killed CI).
    grad_fn, chunk = _grad_fn(*pair), min(chunk, u.size)
    padded = np.concatenate([u, np.zeros(-u.size % chunk, u.dtype)])
    grad = np.concatenate([np.asarray(grad_fn(jnp.asarray(part)))
                           for part in np.split(padded, padded.size // chunk)])[:u.size]
    bad = ~np.isfinite(grad)
    assert not bad.any(), f"{_pair_id(pair)}: ∂ℓ/∂u not finite at u = {u[bad][:8]} ({bad.sum()} of {u.size})"


@pytest.mark.fast_first
@pytest.mark.parametrize("pair", FINITE_QUADRATURE_PAIRS, ids=_pair_id)
def test_gradient_is_finite_at_training_shifts(pair):
    # 10^4 shifts per pair (the slow tier below takes 10^6); the fast tier keeps the first
    # pair, gaussian/logistic, the issue's, and CI runs every pair.
    _assert_finite_gradients(pair, training_shifts(10_000))


# student_t:5/laplace first: its closed form had a NaN gradient at u = 0 (0 · the infinite
# derivative of betainc), as gennorm/laplace had through gammainc.
CLOSED_PAIRS_HARDEST_FIRST = sorted(FINITE_CLOSED_PAIRS, key=lambda pair: pair != ("student_t:5", "laplace"))


@pytest.mark.fast_first
@pytest.mark.parametrize("pair", CLOSED_PAIRS_HARDEST_FIRST, ids=_pair_id)
def test_closed_form_gradient_is_finite_at_training_shifts(pair):
    _assert_finite_gradients(pair, training_shifts(10_000))


@pytest.mark.slow
@pytest.mark.parametrize("pair", FINITE_QUADRATURE_PAIRS + FINITE_CLOSED_PAIRS, ids=_pair_id)
def test_gradient_is_finite_at_a_million_training_shifts(pair):
    _assert_finite_gradients(pair, training_shifts(1_000_000, seed=1))


def _node_log_ratio(q, p):
    """u -> d = log q(z) - log p(z + u) at every quadrature node z of ℓ(u) (jitted, vmapped)."""

    def d(u):
        z, _, _ = losses._quadrature_nodes(q, p, u)
        return q.log_prob(z) - p.log_prob(z + u)

    return jax.jit(jax.vmap(d))


def shifts_with_a_node_at_d_zero(q, p, *, num_roots=48, ulps=24):
    """float32 shifts at which some quadrature node has d = log q - log p exactly 0.

    d at a node is a smooth function of u (nodes move with u), so its sign changes on a
    float64 grid of u bracket roots; bisection finds each root, and the float32 shifts
    within ``ulps`` steps of it are where float32 rounding can make d exactly 0 (the
    term the old quadrature took the log of). Returns (shifts, number of exact zeros).
    """
    with jax.enable_x64(True):
        d64 = _node_log_ratio(q, p)
        grid = np.linspace(-6.0, 6.0, 1201)
        values = np.asarray(d64(jnp.asarray(grid)))
        ok = np.isfinite(values[:-1]) & np.isfinite(values[1:])
        j, i = np.nonzero(ok & (values[:-1] * values[1:] < 0.0))
        pick = np.linspace(0, j.size - 1, min(num_roots, j.size)).astype(int)
        j, i = j[pick], i[pick]
        lo, hi = grid[j], grid[j + 1]
        sign_lo = np.sign(values[j, i])
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            at_mid = np.asarray(d64(jnp.asarray(mid)))[np.arange(mid.size), i]
            same = np.sign(at_mid) == sign_lo
            lo, hi = np.where(same, mid, lo), np.where(same, hi, mid)
    roots = lo.astype(np.float32)
    shifts = [roots]
    up, down = roots.copy(), roots.copy()
    for _ in range(ulps):
        up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf))
        shifts += [up, down]
    shifts = np.concatenate(shifts + [np.zeros(1, np.float32)])
    d32 = np.asarray(_node_log_ratio(q, p)(jnp.asarray(shifts)))
    return shifts, int(np.sum(d32 == 0.0))


@pytest.mark.fast_first
@pytest.mark.parametrize("pair", FINITE_QUADRATURE_PAIRS, ids=_pair_id)
def test_gradient_is_finite_where_a_node_has_d_exactly_zero(pair):
    # The old quadrature summed exp(log q + log|d| + log J) and masked d = 0 only after
    # the log: the forward pass was right, the backward pass multiplied by 1/|d| = inf.
    # jax.grad(shift_kl("gaussian", "logistic", ·))(-4.4989213943481445) was nan.
    q, p = _laws(pair)
    shifts, exact_zeros = shifts_with_a_node_at_d_zero(q, p)
    assert exact_zeros > 0, "no shift found that puts a node at d = 0"
    _assert_finite_gradients(pair, shifts)


# The shifts where the FD is taken avoid the panel joints (0 and ±√3: ℓ is smooth there,
# but its quadrature switches panels) and include the NaN shift.
FD_SHIFTS = np.array([-4.4989213943481445, -2.0, -0.3, 0.01, 0.7, 3.0, 9.0])


@pytest.mark.fast_first
@pytest.mark.parametrize("pair", FINITE_QUADRATURE_PAIRS, ids=_pair_id)
def test_float32_gradient_matches_float64_finite_difference(pair):
    # The float64 central difference with h = 1e-4 is exact to h²ℓ'''/6 + 1e-16/h ≈ 1e-9
    # (float64 autodiff agrees with it to 1.3e-9 at these shifts). The float32 gradient
    # sums ~600 node terms whose magnitudes are ≲ 10 (ℓ'(u) ≤ |u|·ℓ''(0) + O(1)): its
    # rounding is ≲ √600 · 6e-8 · 10 ≈ 1.5e-5; measured ≤ 2e-6 on every pair.
    q, p = _laws(pair)
    h = 1e-4
    with jax.enable_x64(True):
        value = jax.jit(lambda v: losses.shift_kl(q, p, v))
        fd = (np.asarray(value(jnp.asarray(FD_SHIFTS + h)))
              - np.asarray(value(jnp.asarray(FD_SHIFTS - h)))) / (2.0 * h)
    grad = np.asarray(_grad_fn(q, p)(jnp.asarray(FD_SHIFTS, jnp.float32)), np.float64)
    np.testing.assert_allclose(grad, fd, rtol=0.0, atol=1.5e-5)


# -- step_loss and objective (eq. 5) ------------------------------------------------------

K = 10
PROCESS = processes.get("vp")


def _ell_numpy(q, p, u):
    """Table 1 written out in numpy for the pairs used below (independent of nnd)."""
    u = np.asarray(u, np.float64)
    if (q, p) == ("laplace", "laplace"):
        return np.abs(u) / B + np.exp(-np.abs(u) / B) - 1.0
    if (q, p) == ("uniform", "laplace"):
        inside = math.log(B / A) + (u**2 + A**2) / (2.0 * A * B)
        return np.where(np.abs(u) <= A, inside, math.log(B / A) + np.abs(u) / B)
    if (q, p) == ("gaussian", "gaussian"):
        return 0.5 * u**2
    raise AssertionError((q, p))


def _random_eps(seed, shape):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(
        np.float32)


def _t_grid():
    """t_0 .. t_K of the paper's grid, written out (independent of nnd)."""
    return PROCESS.t_eps + (1.0 - PROCESS.t_eps) / K * np.arange(K + 1)


def _log_snr(t):
    t = np.asarray(t, np.float32)
    return 2.0 * (np.log(np.asarray(PROCESS.alpha(t), np.float64))
                  - np.log(np.asarray(PROCESS.sigma(t), np.float64)))


def _lambda_grid():
    """t_0 .. t_K equally spaced in λ = log(α²/σ²), by numpy bisection (independent of nnd's)."""
    lam = np.linspace(_log_snr(PROCESS.t_eps), _log_snr(1.0), K + 1)
    lo, hi = np.full(K + 1, PROCESS.t_eps), np.ones(K + 1)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        above = _log_snr(mid) > lam
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    return 0.5 * (lo + hi)


@pytest.mark.parametrize("q, p", [("laplace", "laplace"), ("uniform", "laplace")])
@pytest.mark.parametrize("scheme, grid", [("euler", "t"), ("ancestral", "lambda")])
def test_step_loss_matches_hand_computation(q, p, scheme, grid):
    # euler on the t grid: c = g(t)√Δt/σ(t) (eq. 5 as the paper writes it); ancestral on
    # the λ grid: c = √expm1(λ_s - λ_t) with λ_s - λ_t = (λ(t_eps) - λ(1))/K at every step.
    eps, eps_pred = _random_eps(0, (3, 4))
    k = np.array([1, 4, 9])
    if scheme == "euler":
        t = _t_grid()[k].astype(np.float32)
        dt = (1.0 - PROCESS.t_eps) / K
        scale = np.asarray(PROCESS.g(t), np.float64) * math.sqrt(dt) / np.asarray(
            PROCESS.sigma(t), np.float64)
    else:
        t = _lambda_grid()[k].astype(np.float32)
        scale = np.full(3, math.sqrt(math.expm1((_log_snr(PROCESS.t_eps) - _log_snr(1.0)) / K)))
    u = scale[:, None] * (eps_pred.astype(np.float64) - eps)
    full = _ell_numpy(q, p, u).sum(axis=1)
    penalty = _ell_numpy(q, p, 0.0)
    kwargs = dict(process=PROCESS, q=q, p=p, num_steps=K, scheme=scheme, grid=grid)
    got_full = losses.step_loss(eps, eps_pred, t, subtract_penalty=False, **kwargs)
    got = losses.step_loss(eps, eps_pred, t, **kwargs)
    assert got.shape == (3,)
    np.testing.assert_allclose(np.asarray(got_full), full, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got), full - 4 * penalty, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["vp", "vdm"])
def test_gaussian_step_loss_is_the_bound_term_of_the_sampler(name):
    # With G/G, the default scheme and grid, the training step loss is the exact KL of the
    # sampler's step against the forward posterior, the term of likelihood.walk_bound: the
    # model minimises the bound of the sampler it runs.
    from nnd import likelihood, walks
    process = processes.get(name)
    t_grid = processes.sampling_grid(process, K, processes.DEFAULT_GRID)
    rng = np.random.default_rng(5)
    x0 = jnp.asarray(rng.standard_normal((4, 3)), jnp.float32)
    eps, eps_pred = (jnp.asarray(a) for a in _random_eps(6, (4, 3)))
    for k in (0, 3, K - 1):
        t, s = t_grid[k + 1], t_grid[k]
        x = process.marginal(x0, eps, jnp.full((4,), t))
        want = likelihood.gaussian_step_kl(process, walks.DEFAULT_SCHEME, x0, x, eps, eps_pred, t, s)
        got = losses.step_loss(eps, eps_pred, jnp.full((4,), t), process=process, q="gaussian",
                               p="gaussian", num_steps=K)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _step_gradients(scheme, grid, x0, eps, eps_pred, t, s):
    """∂/∂ε_θ of the G/G step loss and of the sampler's exact step KL, one step t → s (vp, K)."""
    from nnd import likelihood
    process = processes.get("vp")
    t_B = jnp.full((x0.shape[0],), t)
    x = process.marginal(x0, eps, t_B)
    loss = lambda e: losses.step_loss(eps, e, t_B, process=process, q="gaussian", p="gaussian",
                                      num_steps=K, scheme=scheme, grid=grid).sum()
    bound = lambda e: likelihood.gaussian_step_kl(process, scheme, x0, x, eps, e, t, s).sum()
    return jax.grad(loss)(eps_pred), jax.grad(bound)(eps_pred)


def _gradient_cosine_with_the_bound(scheme, grid, seed=11):
    """Cosine between the two gradients of :func:`_step_gradients` at three steps."""
    t_grid = processes.sampling_grid(processes.get("vp"), K, grid)
    rng = np.random.default_rng(seed)
    x0 = jnp.asarray(rng.standard_normal((64, 2)), jnp.float32)
    # A good model: ε_θ within 0.05 of ε, where the euler step's own mean error (not the
    # ε error) dominates its bound term.
    eps = jnp.asarray(rng.standard_normal((64, 2)), jnp.float32)
    eps_pred = eps + 0.05 * jnp.asarray(rng.standard_normal((64, 2)), jnp.float32)
    cosines = []
    for k in (0, K // 2, K - 1):  # the first, a middle and the last step
        a, b = (np.asarray(g, np.float64).ravel() for g in _step_gradients(
            scheme, grid, x0, eps, eps_pred, t_grid[k + 1], t_grid[k]))
        cosines.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return np.array(cosines)


def test_objective_is_the_gaussian_bound_for_ancestral_only_and_says_so():
    # The audit: objective's docstring said the G/G objective is the sampler's bound "for
    # any scheme"; it is for ancestral only (its gradient is the bound's at every step),
    # while an euler step's bound term pulls ε_θ elsewhere.
    np.testing.assert_allclose(_gradient_cosine_with_the_bound("ancestral", "lambda"), 1.0, atol=1e-5)
    # Measured minimum: euler/t 0.16.
    assert _gradient_cosine_with_the_bound("euler", "t").min() < 0.5
    doc = " ".join(losses.objective.__doc__.split())
    assert "for ``ancestral`` only" in doc and "not that bound" in doc


@pytest.mark.fast_first
@pytest.mark.parametrize("q, p", [("uniform", "laplace"), ("uniform", "gaussian"),
                                  ("laplace", "laplace"), ("logistic", "gaussian")])
def test_step_loss_of_perfect_model_is_the_penalty(q, p):
    eps, _ = _random_eps(1, (2, 3, 5))  # D = 15, any trailing shape
    t = np.array([0.2, 0.7], np.float32)
    kwargs = dict(process=PROCESS, q=q, p=p, num_steps=K)
    subtracted = losses.step_loss(eps, eps, t, **kwargs)
    full = losses.step_loss(eps, eps, t, subtract_penalty=False, **kwargs)
    ell0 = reference(q, p)[SHIFTS.tolist().index(0.0)]
    # ℓ(0) is evaluated twice (per coordinate and as the penalty) and may round
    # differently: D = 15 coordinates times ~1 float32 ulp of O(1) terms ≈ 2e-6.
    np.testing.assert_allclose(np.asarray(subtracted), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(full), 15 * ell0, rtol=1e-5)


def test_gaussian_euler_step_loss_is_weighted_mse():
    # For G/G ℓ(u) = u²/2 exactly, so with euler on the t grid
    # K L_k = ½ (g²/σ²) ‖ε - ε_θ‖² (1 - t_eps).
    eps, eps_pred = _random_eps(2, (4, 6))
    t = _t_grid()[[1, 2, 5, 10]].astype(np.float32)
    got = K * losses.step_loss(eps, eps_pred, t, process=PROCESS, q="gaussian", p="gaussian",
                               num_steps=K, scheme="euler", grid="t")
    g2 = np.asarray(PROCESS.g(t), np.float64) ** 2
    sigma2 = np.asarray(PROCESS.sigma(t), np.float64) ** 2
    mse = np.sum((eps_pred.astype(np.float64) - eps) ** 2, axis=1)
    np.testing.assert_allclose(np.asarray(got), 0.5 * g2 / sigma2 * mse * (1 - PROCESS.t_eps),
                               rtol=1e-5)


def _toy_objective(w, x0, key, q="uniform", p="laplace", include_penalty=False, **grid):
    loss, t = losses.objective(lambda x, t: w * x, x0, key, process=PROCESS, q=q, p=p,
                               num_steps=K, include_penalty=include_penalty, **grid)
    return loss.mean(), t


def test_objective_jits_and_has_finite_gradients():
    x0 = jnp.asarray(np.random.default_rng(3).standard_normal((64, 2)), jnp.float32)
    key = jax.random.key(0)
    value_and_grad = jax.jit(jax.value_and_grad(
        lambda w: _toy_objective(w, x0, key)[0]))
    value, grad = value_and_grad(jnp.float32(0.5))
    assert np.isfinite(value) and value > 0.0
    assert np.isfinite(grad) and grad != 0.0


@pytest.mark.parametrize("grid", ["t", "lambda"])
def test_objective_times_lie_on_the_grid(grid):
    # t = t_{k+1} with k ~ U{0..K-1}: never t_0, every t_1..t_K of the grid
    # (with B = 512 the chance of missing one is K (1 - 1/K)^B ≈ 1e-22).
    x0 = jnp.zeros((512, 1))
    _, t = jax.jit(lambda key: _toy_objective(0.0, x0, key, grid=grid))(jax.random.PRNGKey(1))
    t = np.asarray(t, np.float64)
    points = _t_grid() if grid == "t" else _lambda_grid()
    index = np.abs(t[:, None] - points[None, :]).argmin(axis=1)
    np.testing.assert_allclose(t, points[index], rtol=1e-5, atol=1e-6)  # float32 times
    assert set(index.tolist()) == set(range(1, K + 1))


def test_objective_of_perfect_model_is_zero_or_full_penalty():
    # A single data point x0 makes ε recoverable: ε_θ(x, t) = (x - α(t) x0)/σ(t) is exact up
    # to float32 rounding (relative 1e-7 of x/σ, u ≲ 1e-5, ℓ(u) - ℓ(0) ≲ 1e-10 for U/G).
    x0_value = np.array([0.3, -1.2, 0.7], np.float32)
    x0 = jnp.tile(jnp.asarray(x0_value), (32, 1))

    def perfect(x, t):
        return (x - PROCESS.alpha(t)[:, None] * x0_value) / PROCESS.sigma(t)[:, None]

    kwargs = dict(process=PROCESS, q="uniform", p="gaussian", num_steps=K)
    key = jax.random.PRNGKey(2)
    loss, _ = jax.jit(lambda k: losses.objective(perfect, x0, k, **kwargs))(key)
    full, _ = jax.jit(lambda k: losses.objective(perfect, x0, k, include_penalty=True,
                                                 **kwargs))(key)
    np.testing.assert_allclose(np.asarray(loss), 0.0, atol=1e-4)
    ell0 = 0.5 * (1.0 + math.log(math.pi / 6.0))
    np.testing.assert_allclose(np.asarray(full), K * 3 * ell0, rtol=1e-4)


@pytest.mark.fast_first
@pytest.mark.parametrize("law", ["logistic", "gaussian", "laplace", "student_t", "gennorm"])
def test_scale_shift_kl_against_numerical_integration(law):
    # ℓ_p(u, ρ) = KL(law of ρz + u ‖ p), z ~ p: scipy's integral of the two densities.
    from scipy import integrate
    p = increments.get(law, **({"beta": 1.5} if law == "gennorm" else {}))
    pdf = lambda x: float(np.exp(p.log_prob(jnp.asarray(x, jnp.float64))))  # noqa: E731
    with jax.enable_x64(True):
        for u, rho in [(0.0, 1.0), (0.4, 0.7), (-1.3, 0.45), (0.2, 1.0)]:
            def integrand(y):
                q_y = pdf((y - u) / rho) / rho
                return q_y * (math.log(q_y) - math.log(pdf(y))) if q_y > 0 else 0.0
            want = integrate.quad(integrand, -60, 60, points=[u, 0.0], limit=400)[0]
            got = float(losses.scale_shift_kl(p, jnp.asarray([u], jnp.float64),
                                              jnp.asarray([rho], jnp.float64))[0])
            assert got == pytest.approx(want, abs=2e-6), (u, rho, got, want)
            if rho == 1.0:
                assert got == pytest.approx(float(losses.shift_kl(p, p, jnp.asarray(u))), abs=1e-6)


def test_scale_shift_kl_refuses_bounded_support():
    with pytest.raises(ValueError):
        losses.scale_shift_kl("uniform", jnp.zeros(2), jnp.ones(2))


# -- the learned variance (docs/math.md §5) ---------------------------------------------------

def test_gaussian_variance_loss_is_the_exact_kl_of_the_analytic_step():
    # p = gaussian: the head's term is KL(posterior ‖ the analytic step with v = (σ²/α²)γ),
    # the term of the walk's bound, for any γ and ε_θ.
    from nnd import likelihood
    process, num_steps = processes.get("vp"), 10
    t_grid = processes.sampling_grid(process, num_steps, processes.DEFAULT_GRID)
    rng = np.random.default_rng(3)
    x0 = jnp.asarray(rng.standard_normal((6, 3)), jnp.float32)
    eps = jnp.asarray(rng.standard_normal((6, 3)), jnp.float32)
    eps_pred = eps + 0.3 * jnp.asarray(rng.standard_normal((6, 3)), jnp.float32)
    log_gamma = jnp.asarray(rng.normal(-0.5, 0.8, (6, 3)), jnp.float32)
    for k in (0, 4, num_steps - 1):
        t, s = t_grid[k + 1], t_grid[k]
        t_B = jnp.full((6,), t)
        x = process.marginal(x0, eps, t_B)
        v = losses.learned_x0_variance(process, log_gamma, t_B)
        want = likelihood.gaussian_step_kl(process, "analytic", x0, x, eps, eps_pred, t, s, v)
        got = losses.variance_step_loss(eps, eps_pred, log_gamma, t_B, process=process,
                                        p="gaussian", num_steps=num_steps)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=1e-5)


def test_variance_loss_trains_the_head_only():
    process = processes.get("vdm")
    eps, eps_pred = (jnp.asarray(a) for a in _random_eps(2, (4, 3)))
    t_B = processes.sampling_grid(process, 5, processes.DEFAULT_GRID)[jnp.array([1, 2, 3, 5])]
    grad_eps, grad_head = jax.grad(lambda e, h: losses.variance_step_loss(
        eps, e, h, t_B, process=process, p="laplace", num_steps=5).sum(), argnums=(0, 1))(
        eps_pred, jnp.zeros((4, 3)))
    assert np.all(np.asarray(grad_eps) == 0) and np.any(np.asarray(grad_head) != 0)


@pytest.mark.slow  # trains a small network for a few thousand steps
def test_learned_variance_head_finds_var_eps_on_gaussian_data():
    # Data N(0.3, 0.25 I₂): Var[ε | x_t] = α²v/(α²v + σ²) exactly. The Gaussian step KL is
    # minimised by γ = E[(ε - ε_θ)² | x_t] = Var[ε | x_t] + (ε* - ε_θ)², ε* = E[ε | x_t]
    # (closed form here): a small MLP with the head learns it within 10% wherever the step's
    # c_k²γ is not negligible (where it is, γ barely moves the KL).
    import optax
    from nnd import models
    process, num_steps, mu, var = processes.get("vp"), 10, 0.3, 0.25
    model = models.make("mlp", hidden=64, depth=2, embed_dim=32, learned_variance=True)
    params = models.init_params(model, jax.random.key(0), jnp.zeros((2, 2)))
    tx = optax.adam(optax.cosine_decay_schedule(2e-3, 3000, alpha=0.02))  # settles the noisy γ
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, key):
        key_x, key_loss = jax.random.split(key)
        x0 = mu + math.sqrt(var) * jax.random.normal(key_x, (512, 2))

        def loss(p):
            fn = lambda x, t: model.apply({"params": p}, x, t, with_variance=True)  # noqa: E731
            return losses.objective(fn, x0, key_loss, process=process, q="gaussian",
                                    p="gaussian", num_steps=num_steps, learned_variance=True)[0].mean()

        grads = jax.grad(loss)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt

    for i in range(3000):
        params, opt = step(params, opt, jax.random.fold_in(jax.random.key(1), i))
    t_grid = processes.sampling_grid(process, num_steps, processes.DEFAULT_GRID)
    x_t = jax.random.normal(jax.random.key(2), (256, 2))
    for k in (2, 4, 5, 6):
        t = float(t_grid[k])
        a2, s2 = float(process.alpha(t)) ** 2, float(process.sigma2(t))
        x = math.sqrt(a2 * var + s2) * x_t + math.sqrt(a2) * mu
        eps_pred, log_gamma = model.apply({"params": params}, x, jnp.full((256,), t),
                                          with_variance=True)
        eps_star = math.sqrt(s2) * (x - math.sqrt(a2) * mu) / (a2 * var + s2)
        want = a2 * var / (a2 * var + s2) + float(np.mean(np.square(eps_star - eps_pred)))
        got = float(np.exp(np.asarray(log_gamma)).mean())
        assert got == pytest.approx(want, rel=0.1), (k, got, want)
