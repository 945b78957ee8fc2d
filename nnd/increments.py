"""Standardised increment laws z_k of a structured random walk (Definition 1).

Definition 1 of the paper asks the increments z_k of the walk
``x_{k+1} = x_k + f x_k Δt + g √Δt z_k`` to be i.i.d. with

.. math::  \\mathbb{E}\\, z = 0, \\qquad \\operatorname{Var} z = 1,

and Theorem 3.3 (invariance principle) shows the walk converges to the same SDE
whatever their law, provided E z⁴ < ∞ (Assumption 3). Every law here is
standardised that way and acts coordinate-wise. Each law is a small frozen
dataclass (hashable, so it can be a static argument of ``jax.jit``) with

- ``sample(key, shape, dtype=float32)``: i.i.d. draws,
- ``log_prob(x)``: elementwise log-density (Rademacher has none and raises),
- ``entropy()``: differential entropy H = -E log q(z) of one coordinate,
- ``kurtosis()``: E z⁴ (3 for the Gaussian; ``inf`` where it does not exist),

plus what the loss module needs for closed forms and quadrature:
``cdf``, ``mean_abs_shift(u) = E|z + u|``, the support and the points where
``log_prob`` is not smooth.

logistic draws invert its cdf at a uniform on the open interval (0, 1), made from one random
word (:func:`_logistic_from_words`), so both tails are truncated alike, at probability 2^-24
(float32; 2^-53 in float64).
student_t and gennorm sample exactly with a ziggurat (Marsaglia & Tsang 2000) built for
their parameter: one random word per draw on the fast path, no per-element loop; see
:class:`_Ziggurat`.

Use :func:`get` to build a law by name; see ``LAWS`` for the names.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import special

__all__ = [
    "Law",
    "Gaussian",
    "Laplace",
    "Uniform",
    "Logistic",
    "StudentT",
    "GenNorm",
    "Rademacher",
    "LAWS",
    "get",
    "parse",
]

_LOG_2PI = math.log(2.0 * math.pi)
_SQRT2 = math.sqrt(2.0)
_SQRT3 = math.sqrt(3.0)


class Law:
    """Interface shared by the standardised laws (mean 0, variance 1)."""

    name: str = "law"
    #: (lo, hi) of the support; (-inf, inf) for full support.
    support: tuple[float, float] = (-math.inf, math.inf)
    #: Points where log_prob is not twice differentiable (quadrature split points).
    kinks: tuple[float, ...] = ()
    #: -log p(z) grows like |z|**log_tail_power (0 means logarithmically).
    log_tail_power: float = 2.0
    #: Largest r with E|z|^r < inf is anything below this (inf: all moments exist).
    moment_order: float = math.inf
    #: Whether the law has a density (Rademacher does not).
    has_density: bool = True
    #: Whether z and -z have the same law (all laws here are).
    symmetric: bool = True

    def sample(self, key, shape, dtype=jnp.float32):
        raise NotImplementedError

    def log_prob(self, x):
        raise NotImplementedError

    def entropy(self):
        raise NotImplementedError

    def kurtosis(self) -> float:
        raise NotImplementedError

    def cdf(self, x):
        raise NotImplementedError

    def mean_abs_shift(self, u):
        """E|z + u| for z from this law, elementwise in u (closed form)."""
        raise NotImplementedError

    def params(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v:g}" for k, v in self.params().items())
        return f"{self.name}({args})" if args else self.name


def _draw_dtype(dtype):
    """Dtype to draw in: float32 for 16-bit floats, whose jax.random uniforms keep
    only 8 bits (bfloat16 logistic draws then hit ±48 with probability 1/128 and
    bfloat16 uniform/Gaussian draws are biased); the result is cast back once."""
    return jnp.float32 if jnp.finfo(dtype).bits < 32 else dtype


def _symmetric_mean_abs_shift(cdf: Callable, tail_moment: Callable, u):
    """E|z + u| = |u|(2F(|u|) - 1) + 2 ∫_{|u|}^∞ z q(z) dz for symmetric q.

    Its derivative is d/du E|z + u| = E[sign(z + u)] = 2F(u) - 1, given as the JVP:
    differentiating the formula instead multiplies |u| = 0 by the derivative of F
    through betainc or gammainc, which is infinite at u = 0 (student_t, gennorm).
    """

    @jax.custom_jvp
    def mean_abs(v):
        a = jnp.abs(v)
        return a * (2.0 * cdf(a) - 1.0) + 2.0 * tail_moment(a)

    @mean_abs.defjvp
    def _(primals, tangents):
        (v,), (dv,) = primals, tangents
        return mean_abs(v), (2.0 * cdf(v) - 1.0) * dv

    return mean_abs(u)


@dataclasses.dataclass(frozen=True)
class Gaussian(Law):
    """N(0, 1). Kurtosis 3."""

    name = "gaussian"
    log_tail_power = 2.0

    def sample(self, key, shape, dtype=jnp.float32):
        return jax.random.normal(key, shape, _draw_dtype(dtype)).astype(dtype)

    def log_prob(self, x):
        x = jnp.asarray(x)
        return -0.5 * jnp.square(x) - 0.5 * _LOG_2PI

    def entropy(self):
        return jnp.asarray(0.5 * (_LOG_2PI + 1.0))

    def kurtosis(self) -> float:
        return 3.0

    def cdf(self, x):
        return special.ndtr(x)

    def mean_abs_shift(self, u):
        a = jnp.abs(u)
        # |u|(2Φ(|u|) - 1) + 2φ(u)
        return a * (2.0 * special.ndtr(a) - 1.0) + 2.0 * jnp.exp(self.log_prob(a))


@dataclasses.dataclass(frozen=True)
class Laplace(Law):
    """Laplace(0, b) with b = 1/√2 (variance 2b² = 1). Kurtosis 6."""

    name = "laplace"
    kinks = (0.0,)
    log_tail_power = 1.0

    @property
    def scale(self) -> float:
        return 1.0 / _SQRT2

    def sample(self, key, shape, dtype=jnp.float32):
        z = jax.random.laplace(key, shape, _draw_dtype(dtype)) * self.scale
        return z.astype(dtype)

    def log_prob(self, x):
        b = self.scale
        return -jnp.abs(x) / b - math.log(2.0 * b)

    def entropy(self):
        return jnp.asarray(1.0 + math.log(2.0 * self.scale))

    def kurtosis(self) -> float:
        return 6.0

    def cdf(self, x):
        b = self.scale
        e = 0.5 * jnp.exp(-jnp.abs(x) / b)
        return jnp.where(x < 0, e, 1.0 - e)

    def mean_abs_shift(self, u):
        b = self.scale
        a = jnp.abs(u)
        return a + b * jnp.exp(-a / b)


@dataclasses.dataclass(frozen=True)
class Uniform(Law):
    """U[-√3, √3]. Kurtosis 9/5."""

    name = "uniform"
    support = (-_SQRT3, _SQRT3)
    kinks = (-_SQRT3, _SQRT3)
    log_tail_power = math.inf  # log p = -inf outside the support

    @property
    def half_width(self) -> float:
        return _SQRT3

    def sample(self, key, shape, dtype=jnp.float32):
        a = self.half_width
        z = jax.random.uniform(key, shape, _draw_dtype(dtype), minval=-a, maxval=a)
        return z.astype(dtype)

    def log_prob(self, x):
        a = self.half_width
        x = jnp.asarray(x)
        dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
        inside = jnp.abs(x) <= a
        return jnp.where(inside, jnp.asarray(-math.log(2.0 * a), dtype),
                         jnp.asarray(-jnp.inf, dtype))

    def entropy(self):
        return jnp.asarray(math.log(2.0 * self.half_width))

    def kurtosis(self) -> float:
        return 1.8

    def cdf(self, x):
        a = self.half_width
        return jnp.clip((x + a) / (2.0 * a), 0.0, 1.0)

    def mean_abs_shift(self, u):
        a = self.half_width
        m = jnp.abs(u)
        return jnp.where(m <= a, (jnp.square(u) + a * a) / (2.0 * a), m)


@dataclasses.dataclass(frozen=True)
class Logistic(Law):
    """Logistic(0, s) with s = √3/π (variance s²π²/3 = 1). Kurtosis 4.2."""

    name = "logistic"
    log_tail_power = 1.0

    @property
    def scale(self) -> float:
        return _SQRT3 / math.pi

    def sample(self, key, shape, dtype=jnp.float32):
        # Inversion on the open interval from one random word per draw (_logistic_from_words),
        # not jax.random.logistic: that maps u = 0 to finfo.tiny, an atom at z = -48.15 of
        # probability 2^-23 in float32 (kurtosis 4.84 instead of 4.2).
        work = jax.dtypes.canonicalize_dtype(_draw_dtype(dtype))  # float32 unless x64 is on
        uint = jnp.uint64 if jnp.finfo(work).bits == 64 else jnp.uint32
        z = _logistic_from_words(jax.random.bits(key, tuple(shape), uint), work)
        return (z * jnp.asarray(self.scale, work)).astype(dtype)

    def log_prob(self, x):
        s = self.scale
        y = jnp.abs(jnp.asarray(x)) / s
        return -y - 2.0 * jax.nn.softplus(-y) - math.log(s)

    def entropy(self):
        return jnp.asarray(math.log(self.scale) + 2.0)

    def kurtosis(self) -> float:
        return 4.2

    def cdf(self, x):
        return jax.nn.sigmoid(x / self.scale)

    def mean_abs_shift(self, u):
        s = self.scale
        a = jnp.abs(u)
        # 2s·softplus(u/s) - u, written in |u| so it never overflows.
        return a + 2.0 * s * jax.nn.softplus(-a / s)


def _logistic_from_words(words, dtype):
    """Standard logistic draws (scale 1) from random words, by inversion on the open interval.

    With n = nmant of ``dtype`` (23 for float32, 52 for float64), the top n bits m of a word
    give v = (m + ½)·2^-(n+1) ∈ (0, ½), exact in ``dtype``, and its lowest bit a sign:

    .. math::  z = \\pm \\log\\frac{1 - v}{v} = \\pm \\operatorname{log1p}\\Big(\\frac{1 - 2v}{v}\\Big),

    i.e. z = log(u/(1 - u)) for u = v or 1 - v, where 1 - 2v is exact and log1p keeps the
    digits near z = 0. u is the midpoint of one of 2^(n+1) equal cells of (0, 1), each drawn
    with its own probability 2^-(n+1); it never reaches 0 or 1, so the two tails are
    truncated alike, exactly mirrored, at |z| = log(2^(n+2) - 1) (17.33 in float32, 37.43
    in float64), and no draw has more mass than the true law gives its cell.
    """
    n = min(jnp.finfo(dtype).nmant, jnp.iinfo(words.dtype).bits - 1)
    v = 0.5 * _bits_uniform(words, n, dtype)
    z = jnp.log1p((1.0 - 2.0 * v) / v)
    return jnp.where((words & 1).astype(jnp.bool_), -z, z)


def _check_real(name: str, param: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: {param} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: {param} must be finite, got {value!r}")
    return value


# -- exact ziggurat sampler (gennorm, student_t) ------------------------------------------

#: The ziggurat has 2^12 layers: a draw takes one random word, 12 bits for the layer,
#: 1 for the sign and the rest (19 of 32, 51 of 64) for the position in the layer.
_ZIGGURAT_LAYER_BITS = 12
#: Buffer for the draws that leave the fast path: their expected number plus this many
#: standard deviations (plus 8); a larger count (probability < 1e-6 per call) is served
#: by further passes of the buffer.
_ZIGGURAT_MARGIN = 5.0
# States of a buffer slot.
_DONE, _FIRST, _RESTART, _TAIL = 0, 1, 2, 3
# Random words per slot and step (see _Ziggurat._step); the first two steps' words come
# with the fast path's, later steps (rarely needed) draw their own.
_STEP_WORDS, _PREDRAWN_STEPS = 5, 2


def _gamma_q(a: float, y: float) -> float:
    """Regularised upper incomplete gamma Q(a, y) in float64 (series or Lentz's continued
    fraction, Numerical Recipes §6.2); the ziggurat's tables need it without scipy."""
    if y <= 0.0:
        return 1.0
    log_front = -y + a * math.log(y) - math.lgamma(a)
    if y < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1.0
            term *= y / ap
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return 1.0 - total * math.exp(log_front)
    tiny = 1e-300
    b = y + 1.0 - a
    c, d = 1.0 / tiny, 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        h *= d * c
        if abs(d * c - 1.0) < 1e-16:
            break
    return math.exp(log_front) * h


def _beta_i(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) in float64 (Lentz's continued fraction,
    Numerical Recipes §6.4)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _beta_i(b, a, 1.0 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (tiny if abs(d) < tiny else d)
    h = d
    for m in range(1, 10_000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (tiny if abs(d) < tiny else d)
            c = 1.0 + num / c
            c = tiny if abs(c) < tiny else c
            h *= d * c
        if abs(d * c - 1.0) < 1e-16:
            break
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    return math.exp(log_front) * h / a


@dataclasses.dataclass(frozen=True)
class _GenNormCurve:
    """f(x) = exp(-x^β) on x ≥ 0: |z|/α of the generalised normal (units of its α)."""

    beta: float

    def inverse(self, c: float) -> float:  # x with 1 - f(x) = c
        return (-math.log1p(-c)) ** (1.0 / self.beta)

    def inverse_height(self, y: float) -> float:  # x with f(x) = y
        return (-math.log(y)) ** (1.0 / self.beta)

    def density(self, x: float) -> float:
        return math.exp(-x ** self.beta)

    def tail_area(self, r: float) -> float:  # ∫_r^∞ f = Γ(1/β) Q(1/β, r^β) / β
        a = 1.0 / self.beta
        return math.exp(math.lgamma(a)) * _gamma_q(a, r ** self.beta) / self.beta

    def density_device(self, x):
        return jnp.exp(-x ** self.beta)

    def tail(self, u1, u2, r: float):
        """One proposal beyond r, exact after acceptance: y = x^β has density
        ∝ y^(a-1) e^(-y) on y > y_r (a = 1/β); propose y_r + Exp(λ) with
        λ = 1 - max(a - 1, 0)/y_r and accept with probability
        (y/y_r)^(a-1) exp(-(1 - λ)(y - y_r)) ≤ 1."""
        a, y_r = 1.0 / self.beta, r ** self.beta
        lam = 1.0 - max(a - 1.0, 0.0) / y_r
        if lam <= 0.0:
            raise ValueError(f"gennorm tail: r = {r:g} is not past the mode of x^β")
        d = -jnp.log(u1) / lam
        log_accept = (a - 1.0) * jnp.log1p(d / y_r) - (1.0 - lam) * d
        return (y_r + d) ** a, jnp.log(u2) < log_accept


@dataclasses.dataclass(frozen=True)
class _StudentTCurve:
    """f(x) = (1 + x²/ν)^(-(ν+1)/2) on x ≥ 0: |t_ν| (units of t_ν, before the rescaling)."""

    df: float

    def inverse(self, c: float) -> float:
        return math.sqrt(self.df * math.expm1(-2.0 / (self.df + 1.0) * math.log1p(-c)))

    def inverse_height(self, y: float) -> float:
        return math.sqrt(self.df * math.expm1(-2.0 / (self.df + 1.0) * math.log(y)))

    def density(self, x: float) -> float:
        return math.exp(-0.5 * (self.df + 1.0) * math.log1p(x * x / self.df))

    def tail_area(self, r: float) -> float:  # √ν B(ν/2, ½) I_{ν/(ν+r²)}(ν/2, ½) / 2
        nu = self.df
        log_b = math.lgamma(0.5 * nu) + math.lgamma(0.5) - math.lgamma(0.5 * nu + 0.5)
        return 0.5 * math.sqrt(nu) * math.exp(log_b) * _beta_i(0.5 * nu, 0.5, nu / (nu + r * r))

    def density_device(self, x):
        return jnp.exp(-0.5 * (self.df + 1.0) * jnp.log1p(jnp.square(x) / self.df))

    def tail(self, u1, u2, r: float):
        """One proposal beyond r, exact after acceptance: s = x² has density
        ∝ s^(-1/2) (ν + s)^(-(ν+1)/2) on s > r²; propose from the Lomax law
        ∝ (ν + s)^(-(ν+1)/2) by inversion, (ν + s)/(ν + r²) = U^(-2/(ν-1)), and accept
        with probability √(r²/s) (on average about ½ as ν → 2, near 1 for large ν)."""
        nu, s_r = self.df, r * r
        s = s_r + (nu + s_r) * jnp.expm1(-2.0 / (nu - 1.0) * jnp.log(u1))
        return jnp.sqrt(s), jnp.square(u2) * s < s_r


@dataclasses.dataclass(frozen=True, eq=False)
class _ZigguratTables:
    """Layers of a ziggurat (Marsaglia & Tsang 2000) under a decreasing f with f(0) = 1.

    n = 2^layer_bits layers of equal area v. Layer 0 is the base strip
    [0, r] × [0, f(r)] with the tail beyond r; layer i ≥ 1 is [0, x_i] × [f(x_i), f(x_{i+1})]
    with x_1 = r > x_2 > … > x_n = 0, so its part x < x_{i+1} lies under f.
    ``x[0] = v/f(r)`` is the base strip's width as if it were a rectangle.
    """

    x: np.ndarray  # [n + 1] float64
    f: np.ndarray  # [n + 1] float64: f(x_i) for i ≥ 1, f[0] = f(r) (unused), f[n] = 1
    alias_threshold: np.ndarray  # [n]: alias table of the layers weighted by 1 - x_{i+1}/x_i
    alias_index: np.ndarray  # [n] int32
    r: float
    fail: float  # probability that a draw leaves the fast path, mean_i (1 - x_{i+1}/x_i)


@functools.lru_cache(maxsize=64)
def _ziggurat_tables(curve, layer_bits: int = _ZIGGURAT_LAYER_BITS) -> _ZigguratTables:
    """The 2^layer_bits layers under ``curve`` (bisection on r until the top layer closes
    at f(0) = 1)."""
    n = 1 << layer_bits

    def climb(r):
        # Heights y = f(x) go up by v/x per layer. Below ½ they are kept as y, above as the
        # co-height c = 1 - y, so that neither loses digits (f(r) may be 1e-17, f → 1 at
        # the top).
        y = curve.density(r)
        v = r * y + curve.tail_area(r)
        if v <= 0.0:
            return 1.0, [r], v  # f and its tail underflow: r is far too large
        xs, c = [r], None
        for _ in range(n - 2):
            if c is None:
                y += v / xs[-1]
                if y >= 0.5:
                    c = 1.0 - y
            else:
                c -= v / xs[-1]
            if c is not None and c <= 0.0:
                return -1.0, xs, v  # reached the top too early: r is too small
            xs.append(curve.inverse(c) if c is not None else curve.inverse_height(y))
        top = (1.0 - y) if c is None else c
        return top - v / xs[-1], xs, v  # 0 when the top layer closes

    lo, hi = 1e-3, 1e3
    while climb(hi)[0] < 0.0:
        lo, hi = hi, hi * 1e3
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if climb(mid)[0] < 0.0:
            lo = mid
        else:
            hi = mid
        if hi / lo - 1.0 < 1e-14:
            break
    _, xs, v = climb(hi)
    r = hi
    x = np.array([v / curve.density(r)] + xs + [0.0])
    f = np.array([curve.density(r)] + [curve.density(t) for t in xs] + [1.0])
    weight = 1.0 - x[1:] / x[:-1]
    threshold, index = _alias(weight)
    return _ZigguratTables(x, f, threshold, index, r, float(weight.mean()))


def _alias(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker's alias table: pick j uniformly, keep it with probability threshold[j],
    else take index[j]; j comes out with probability ∝ weight[j]."""
    n = len(weight)
    q = weight * n / weight.sum()
    threshold, index = np.ones(n), np.arange(n, dtype=np.int32)
    small = [j for j in range(n) if q[j] < 1.0]
    large = [j for j in range(n) if q[j] >= 1.0]
    while small and large:
        s, l = small.pop(), large.pop()
        threshold[s], index[s] = q[s], l
        q[l] -= 1.0 - q[s]
        (small if q[l] < 1.0 else large).append(l)
    return threshold, index


def _bits_uniform(bits, num_bits: int, dtype):
    """(m + ½)·2^-k from the top k bits m of each word: uniform on (0, 1), never 0 or 1."""
    total = jnp.iinfo(bits.dtype).bits
    return ((bits >> (total - num_bits)).astype(dtype) + 0.5) * (2.0 ** -num_bits)


class _Ziggurat:
    """Exact draws of ±x, x ≥ 0 with density ∝ ``curve`` f, from its ziggurat, inside jit.

    Fast path, one random word per draw: layer i and u ∈ (0, 1) from the word, x = u·x_i,
    kept when u < x_{i+1}/x_i, i.e. when x lies in the part of the layer under f (all but
    ``tables.fail`` of the draws: 0.05–0.3 % for the laws here). The other draws are
    finished from a buffer of independent draws of the law they then follow, the law of a
    ziggurat draw whose first attempt left the fast path: a layer i with probability
    ∝ 1 - x_{i+1}/x_i and x uniform on [x_{i+1}, x_i] (the attempt given that it left the
    fast path), then the wedge test, the tail beyond r, and fresh attempts after a
    rejection. The k-th draw (row-major) that left the fast path takes slot k. Which
    draws leave depends only on their own words and the slots only on theirs, so the
    output is i.i.d. from the law; the buffer is a vectorised loop over its slots that
    usually ends after two rounds, and more draws than slots are served by further
    rounds of the same loop (probability < 1e-6 per call).
    """

    def __init__(self, curve, layer_bits: int = _ZIGGURAT_LAYER_BITS):
        self.curve = curve
        self.layer_bits = layer_bits
        self.tables = _ziggurat_tables(curve, layer_bits)

    def _attempt(self, words, dtype):
        """An attempt from each word: (layer, x, whether x lies under f with no test, sign)."""
        t = self.tables
        layer = (words & ((1 << self.layer_bits) - 1)).astype(jnp.int32)
        sign = ((words >> self.layer_bits) & 1).astype(jnp.bool_)
        position_bits = min(jnp.iinfo(words.dtype).bits - self.layer_bits - 1,
                            jnp.finfo(dtype).nmant)
        u = _bits_uniform(words, position_bits, dtype)
        x = u * jnp.asarray(t.x, dtype)[layer]
        return layer, x, u < jnp.asarray(t.x[1:] / t.x[:-1], dtype)[layer], sign

    def _step(self, words, value, state, dtype):
        """One attempt for each unfinished slot; ``words`` [5, m].

        _FIRST: the first attempt given that it left the fast path (words 0, 1), then the
        wedge test (word 2) or a tail proposal (words 3, 4). _RESTART: a fresh attempt
        (word 0), kept on the fast path or finished the same way. _TAIL: another tail
        proposal. The tail proposal is its own rejection sampler, so a rejected one is
        retried as a tail proposal, a rejected wedge point as a fresh attempt.
        """
        t = self.tables
        x_tab = jnp.asarray(t.x, dtype)
        f_tab = jnp.asarray(t.f, dtype)
        mantissa = jnp.finfo(dtype).nmant
        nbits = jnp.iinfo(words.dtype).bits
        j = (words[0] & ((1 << self.layer_bits) - 1)).astype(jnp.int32)
        keep = _bits_uniform(words[0], min(nbits - self.layer_bits, mantissa), dtype)
        outer = jnp.where(keep < jnp.asarray(t.alias_threshold, dtype)[j], j,
                          jnp.asarray(t.alias_index)[j])
        u = _bits_uniform(words[1], mantissa, dtype)
        outer_x = x_tab[outer + 1] + u * (x_tab[outer] - x_tab[outer + 1])
        fresh, fresh_x, fast, _ = self._attempt(words[0], dtype)
        first = state == _FIRST
        layer = jnp.where(first, outer, fresh)
        x = jnp.where(first, outer_x, fresh_x)
        w = _bits_uniform(words[2], mantissa, dtype)
        under = f_tab[layer] + w * (f_tab[layer + 1] - f_tab[layer]) < self.curve.density_device(x)
        tail_x, tail_ok = self.curve.tail(_bits_uniform(words[3], mantissa, dtype),
                                          _bits_uniform(words[4], mantissa, dtype), t.r)
        kept = (state == _RESTART) & fast
        to_tail = (state == _TAIL) | (~kept & (layer == 0))
        new_value = jnp.where(to_tail & ~kept, tail_x, x)
        new_state = jnp.where(kept, _DONE, jnp.where(to_tail, jnp.where(tail_ok, _DONE, _TAIL),
                                                     jnp.where(under, _DONE, _RESTART)))
        done = state == _DONE
        return jnp.where(done, value, new_value), jnp.where(done, _DONE, new_state)

    def sample(self, key, shape, dtype, *, margin: float = _ZIGGURAT_MARGIN,
               predrawn_steps: int = _PREDRAWN_STEPS):
        """Draws of ±x of ``shape`` in float32 or float64 (units of the curve).

        ``margin`` sets the buffer's size (standard deviations of the number of draws off
        the fast path) and ``predrawn_steps`` how many of its steps take their words from
        the fast path's draw; tests lower both to force the rare branches.
        """
        size = math.prod(shape)
        if size == 0:
            return jnp.zeros(shape, dtype)
        if self.tables.x[0] >= jnp.finfo(dtype).max:
            raise ValueError(f"{self.curve} reaches {self.tables.x[0]:.3g} in its ziggurat, past "
                             f"the range of {jnp.dtype(dtype).name}; draw it in float64")
        uint = jnp.uint64 if jnp.finfo(dtype).bits == 64 else jnp.uint32
        rows = -(-size // 32)
        n = 32 * rows
        expected = self.tables.fail * n
        m = max(1, min(n, math.ceil(expected + margin * math.sqrt(expected) + 8)))
        pre = predrawn_steps * _STEP_WORDS * m
        key_words = _key_words(key)
        words = jax.random.bits(key, (n + pre + key_words,), uint)
        layer, x, fast, sign = self._attempt(words[:n].reshape(rows, 32), dtype)
        predrawn = words[n:n + pre].reshape(predrawn_steps, _STEP_WORDS, m)
        key_loop = _key_from_words(key, words[n + pre:])  # words nothing else uses

        # Draws that left the fast path, 32 to a word; the one ranked k (row-major) takes
        # slot k - chunk·m of the buffer's pass number ``chunk``.
        lanes = jnp.arange(32, dtype=jnp.uint32)
        off = jnp.sum((~fast).astype(jnp.uint32) << lanes, axis=1, dtype=jnp.uint32)  # [rows]
        count = jax.lax.population_count(off).astype(jnp.int32)
        ends = jnp.cumsum(count)
        total = ends[-1]
        slot = jnp.arange(m)
        up_to = jnp.asarray((np.uint64(2) << np.arange(32, dtype=np.uint64)) - 1, jnp.uint32)

        def fill(out, value, chunk):  # writes the slots' draws where they belong
            k = chunk * m + slot
            row = jnp.minimum(jnp.searchsorted(ends, k, side="right"), rows - 1)
            j = k - (ends[row] - count[row])  # k is the j-th draw off the fast path in its row
            bits_up_to = jax.lax.population_count(off[row][:, None] & up_to)  # [m, 32]
            lane = jnp.sum(bits_up_to <= j[:, None], axis=1)
            lane = jnp.minimum(lane, 31)
            value = jnp.where(sign[row, lane], -value, value)
            return out.at[jnp.where(k < total, row, rows), lane].set(value, mode="drop")

        def draw(key_now):  # a step's words and the next step's key, from one draw
            more = jax.random.bits(key_now, (_STEP_WORDS * m + key_words,), uint)
            step_words = more[:_STEP_WORDS * m].reshape(_STEP_WORDS, m)
            return step_words, _key_from_words(key, more[-key_words:])

        def body(carry):
            i, key_now, chunk, value, state, out = carry
            if predrawn_steps:
                step_words, key_now = jax.lax.cond(
                    i < predrawn_steps,
                    lambda k: (jax.lax.dynamic_index_in_dim(
                        predrawn, jnp.minimum(i, predrawn_steps - 1), keepdims=False), k),
                    draw, key_now)
            else:
                step_words, key_now = draw(key_now)
            value, state = self._step(step_words, value, state, dtype)

            def next_chunk(args):  # all slots done: place them, start the next pass if any
                chunk, state, out = args
                out = fill(out, value, chunk)
                return chunk + 1, jnp.where((chunk + 1) * m + slot < total, _FIRST, _DONE), out

            chunk, state, out = jax.lax.cond(jnp.all(state == _DONE), next_chunk, lambda a: a,
                                             (chunk, state, out))
            return i + 1, key_now, chunk, value, state, out

        init = (jnp.int32(0), key_loop, jnp.int32(0), jnp.zeros((m,), dtype),
                jnp.where(slot < total, _FIRST, _DONE), jnp.where(sign, -x, x))
        out = jax.lax.while_loop(lambda c: jnp.any(c[4] != _DONE), body, init)[-1]
        return out.reshape(-1)[:size].reshape(shape)


@functools.lru_cache(maxsize=64)
def _ziggurat(curve, layer_bits: int = _ZIGGURAT_LAYER_BITS) -> _Ziggurat:
    return _Ziggurat(curve, layer_bits)


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _ziggurat_sample(curve, key, shape, dtype):
    """Jitted, so that eager calls run as one program (inlined under an outer jit)."""
    return _ziggurat(curve).sample(key, shape, dtype)


def _key_words(key) -> int:
    """How many 32-bit words make a key of this kind (2 for threefry)."""
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return int(np.prod(data.shape)) * jnp.iinfo(data.dtype).bits // 32


def _key_from_words(key, words):
    """A key of the same kind as ``key`` whose data are ``words`` (random bits)."""
    if words.dtype != jnp.uint32:
        words = jax.lax.bitcast_convert_type(words, jnp.uint32).reshape(-1)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        data = jax.random.key_data(key)
        return jax.random.wrap_key_data(words[:data.size].reshape(data.shape).astype(data.dtype),
                                        impl=jax.random.key_impl(key))
    return words[:key.size].reshape(key.shape).astype(key.dtype)


@dataclasses.dataclass(frozen=True)
class StudentT(Law):
    """Student's t with df degrees of freedom, rescaled by √((df-2)/df) to unit variance.

    df > 2 is required (finite variance). For df ≤ 4 the fourth moment is
    infinite, Assumption 3 of the paper fails and a warning is issued.
    Kurtosis 3 + 6/(df - 4) for df > 4.
    """

    df: float = 5.0
    name = "student_t"
    log_tail_power = 0.0

    def __post_init__(self):
        df = _check_real("student_t", "df", self.df)
        if df <= 2.0:
            raise ValueError(
                f"student_t: df must be > 2 (unit variance needs a finite second "
                f"moment), got df={df:g}"
            )
        if df <= 4.0:
            warnings.warn(
                f"student_t(df={df:g}): E z^4 is infinite for df <= 4, so "
                "Assumption 3 of the invariance principle (Theorem 3.3) fails.",
                stacklevel=3,
            )
        object.__setattr__(self, "df", df)

    @property
    def moment_order(self) -> float:  # type: ignore[override]
        return self.df

    @property
    def scale(self) -> float:
        return math.sqrt((self.df - 2.0) / self.df)

    def sample(self, key, shape, dtype=jnp.float32):
        # Exact ziggurat draws of t_ν (see _Ziggurat), then the rescaling to unit variance.
        work = _draw_dtype(dtype)
        t = _ziggurat_sample(_StudentTCurve(self.df), key, tuple(shape), work)
        return (t * jnp.asarray(self.scale, work)).astype(dtype)

    def _log_norm(self) -> float:
        nu = self.df
        return (
            math.lgamma(0.5 * (nu + 1.0))
            - math.lgamma(0.5 * nu)
            - 0.5 * math.log(nu * math.pi)
        )

    def log_prob(self, x):
        nu, c = self.df, self.scale
        y = jnp.asarray(x) / c
        return self._log_norm() - 0.5 * (nu + 1.0) * jnp.log1p(jnp.square(y) / nu) - math.log(c)

    def entropy(self):
        nu = self.df
        h_t = 0.5 * (nu + 1.0) * (
            special.digamma(0.5 * (nu + 1.0)) - special.digamma(0.5 * nu)
        ) + (0.5 * math.log(nu) + special.betaln(0.5 * nu, 0.5))
        return h_t + math.log(self.scale)

    def kurtosis(self) -> float:
        return 3.0 + 6.0 / (self.df - 4.0) if self.df > 4.0 else math.inf

    def cdf(self, x):
        nu = self.df
        y = jnp.asarray(x) / self.scale
        tail = 0.5 * special.betainc(0.5 * nu, 0.5, nu / (nu + jnp.square(y)))
        return jnp.where(y < 0, tail, 1.0 - tail)

    def mean_abs_shift(self, u):
        nu, c = self.df, self.scale

        def tail_moment(a):
            # ∫_a^∞ z q(z) dz = c (ν + w²)/(ν - 1) f_t(w), w = a/c.
            w = a / c
            log_ft = self._log_norm() - 0.5 * (nu + 1.0) * jnp.log1p(jnp.square(w) / nu)
            return c * (nu + jnp.square(w)) / (nu - 1.0) * jnp.exp(log_ft)

        return _symmetric_mean_abs_shift(self.cdf, tail_moment, u)


@dataclasses.dataclass(frozen=True)
class GenNorm(Law):
    """Generalised normal with shape beta > 0, standardised to unit variance.

    Density β/(2αΓ(1/β)) exp(-(|x|/α)^β) with α = √(Γ(1/β)/Γ(3/β)).
    beta = 1 is the Laplace law, 2 the Gaussian, beta → ∞ the uniform.
    Kurtosis Γ(5/β)Γ(1/β)/Γ(3/β)².
    """

    beta: float = 2.0
    name = "gennorm"
    kinks = (0.0,)

    def __post_init__(self):
        beta = _check_real("gennorm", "beta", self.beta)
        if beta <= 0.0:
            raise ValueError(f"gennorm: beta must be > 0, got beta={beta:g}")
        object.__setattr__(self, "beta", beta)

    @property
    def log_tail_power(self) -> float:  # type: ignore[override]
        return self.beta

    @property
    def scale(self) -> float:
        b = self.beta
        return math.exp(0.5 * (math.lgamma(1.0 / b) - math.lgamma(3.0 / b)))

    def _log_norm(self) -> float:
        b = self.beta
        return math.log(b) - math.log(2.0 * self.scale) - math.lgamma(1.0 / b)

    def sample(self, key, shape, dtype=jnp.float32):
        # Exact ziggurat draws of |z|/α with density ∝ exp(-x^β), a random sign, times α.
        work = _draw_dtype(dtype)
        x = _ziggurat_sample(_GenNormCurve(self.beta), key, tuple(shape), work)
        return (x * jnp.asarray(self.scale, work)).astype(dtype)

    def log_prob(self, x):
        # |y|^β is masked at y = 0 before the power: for β < 1 its derivative there is
        # infinite, and the loss's quadrature can put a node exactly on the cusp. The
        # gradient at the cusp is then 0, the symmetric subgradient.
        y = jnp.abs(jnp.asarray(x)) / self.scale
        positive = y > 0.0
        return self._log_norm() - jnp.where(positive, jnp.where(positive, y, 1.0) ** self.beta, 0.0)

    def entropy(self):
        return jnp.asarray(1.0 / self.beta - self._log_norm())

    def kurtosis(self) -> float:
        b = self.beta
        return math.exp(math.lgamma(5.0 / b) + math.lgamma(1.0 / b) - 2.0 * math.lgamma(3.0 / b))

    def cdf(self, x):
        b = self.beta
        x = jnp.asarray(x)
        half = 0.5 * special.gammainc(1.0 / b, (jnp.abs(x) / self.scale) ** b)
        return 0.5 + jnp.sign(x) * half

    def mean_abs_shift(self, u):
        b, alpha = self.beta, self.scale

        def tail_moment(a):
            # ∫_a^∞ z q(z) dz = α Γ(2/β) Q(2/β, (a/α)^β) / (2 Γ(1/β)).
            coeff = alpha * math.exp(math.lgamma(2.0 / b) - math.lgamma(1.0 / b)) / 2.0
            return coeff * special.gammaincc(2.0 / b, (a / alpha) ** b)

        return _symmetric_mean_abs_shift(self.cdf, tail_moment, u)


@dataclasses.dataclass(frozen=True)
class Rademacher(Law):
    """±1 with probability ½ each: Donsker's simple random walk. Kurtosis 1.

    A sampler only: it has no density, so ``log_prob`` and ``entropy`` raise.
    """

    name = "rademacher"
    support = (-1.0, 1.0)
    has_density = False

    def sample(self, key, shape, dtype=jnp.float32):
        return jnp.where(jax.random.bernoulli(key, 0.5, shape), 1.0, -1.0).astype(dtype)

    def _no_density(self, what: str):
        raise ValueError(
            f"rademacher has no density, so {what} is undefined; it can drive a walk "
            "(sample) but cannot be a loss law q or p"
        )

    def log_prob(self, x):
        self._no_density("log_prob")

    def entropy(self):
        self._no_density("entropy")

    def kurtosis(self) -> float:
        return 1.0

    def cdf(self, x):
        x = jnp.asarray(x)
        return jnp.where(x < -1.0, 0.0, jnp.where(x < 1.0, 0.5, 1.0))

    def mean_abs_shift(self, u):
        a = jnp.abs(u)
        return jnp.maximum(a, 1.0)


#: Name → law class. Explicit, no registration side effects.
LAWS: dict[str, type[Law]] = {
    "gaussian": Gaussian,
    "laplace": Laplace,
    "uniform": Uniform,
    "logistic": Logistic,
    "student_t": StudentT,
    "gennorm": GenNorm,
    "rademacher": Rademacher,
}

_PARAMS: dict[str, tuple[str, ...]] = {
    "gaussian": (),
    "laplace": (),
    "uniform": (),
    "logistic": (),
    "student_t": ("df",),
    "gennorm": ("beta",),
    "rademacher": (),
}


def get(name: str, **params) -> Law:
    """Returns the standardised increment law called ``name``.

    Args:
      name: one of ``LAWS``: gaussian, laplace, uniform, logistic, student_t,
        gennorm, rademacher.
      **params: ``df`` for student_t (> 2; default 5), ``beta`` for gennorm
        (> 0; default 2). Any other parameter is an error.

    Raises:
      ValueError: unknown name, unknown parameter or a parameter out of range.
    """
    if not isinstance(name, str) or name not in LAWS:
        raise ValueError(f"unknown increment law {name!r}; choose one of {sorted(LAWS)}")
    allowed = _PARAMS[name]
    extra = sorted(set(params) - set(allowed))
    if extra:
        hint = f"it takes {', '.join(allowed)}" if allowed else "it takes no parameters"
        raise ValueError(f"increment law {name!r} got unexpected parameter(s) {extra}; {hint}")
    return LAWS[name](**params)


def parse(spec) -> Law:
    """The one law-spec parser: a :class:`Law`, ``'name'`` or ``'name:param'`` → a law.

    The single parameter goes to the law's only parameter: ``student_t:5`` is
    ``get('student_t', df=5.0)`` and ``gennorm:1.5`` is ``get('gennorm', beta=1.5)``.
    Configs (``loss.q``, ``loss.p``, ``sampling.law``), the experiments' command
    lines and :func:`nnd.losses.shift_kl` all read laws through it.

    Raises:
      ValueError: unknown law, a parameter for a law without one, a parameter that
        is not a number, or a value :func:`get` refuses.
    """
    if isinstance(spec, Law):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"expected an increment law or a spec such as 'student_t:5', got {spec!r}")
    name, sep, value = spec.strip().partition(":")
    name = name.strip()
    if name not in LAWS:
        raise ValueError(f"unknown increment law {name!r} in {spec!r}; choose one of {sorted(LAWS)}")
    if not sep:
        return get(name)
    fields = _PARAMS[name]
    if not fields:
        raise ValueError(f"increment law {name!r} takes no parameter, got {spec!r}")
    try:
        param = float(value)
    except ValueError:
        raise ValueError(
            f"parameter of {name!r} ({fields[0]}) must be a number, got {value!r} in {spec!r}"
        ) from None
    return get(name, **{fields[0]: param})
