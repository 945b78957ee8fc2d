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
:mod:`nnd.ziggurat`.

Use :func:`get` to build a law by name; see ``LAWS`` for the names.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
from jax.scipy import special

from nnd import ziggurat

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
    v = 0.5 * ziggurat.bits_uniform(words, n, dtype)
    z = jnp.log1p((1.0 - 2.0 * v) / v)
    return jnp.where((words & 1).astype(jnp.bool_), -z, z)


def _check_real(name: str, param: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: {param} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: {param} must be finite, got {value!r}")
    return value


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
        t = ziggurat.sample(ziggurat.StudentTCurve(self.df), key, tuple(shape), work)
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
        x = ziggurat.sample(ziggurat.GenNormCurve(self.beta), key, tuple(shape), work)
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
