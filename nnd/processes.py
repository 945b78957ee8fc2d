"""Forward processes: linear SDEs given by their Gaussian marginals (eq. 1).

Every process is the linear SDE of eq. (1),

.. math::  dx = f(t)\\, x\\, dt + g(t)\\, dw,

identified by its marginal ``x_t | x_0 ~ N(alpha(t) x_0, sigma(t)^2 I)``, which
by Theorem 3.3 is the Δt → 0 limit of the structured random walk for ANY
increment law. A process only defines ``log alpha(t)`` and ``log sigma(t)^2``;
drift and diffusion follow once, here, for all of them:

.. math::  f = \\frac{d \\log \\alpha}{dt}, \\qquad
           g^2 = \\frac{d\\sigma^2}{dt} - 2 f \\sigma^2
               = \\sigma^2 \\frac{d}{dt}\\log\\frac{\\sigma^2}{\\alpha^2}.

The derivatives are taken with ``jax.jvp`` so no schedule has a hand-copied f
or g. ``1 - alpha^2`` is always ``-expm1(2 log alpha)``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Process", "VP", "SubVP", "VE", "VDM", "PROCESSES", "get", "param_names", "time_grid",
    "GRIDS", "DEFAULT_GRID", "sampling_grid",
    "check_num_steps", "per_example", "reverse_drift", "pf_ode_drift", "score_fn_from_eps",
    "eps_fn_from_score", "ScoreFn", "EpsFn",
]

#: ``score_fn(x [B, ...], t [B]) -> s(x, t) [B, ...]``: a score, exact or from a network.
ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]
#: ``eps_fn(x [B, ...], t [B]) -> ε(x, t) [B, ...]``: an ε-prediction (docs/math.md §4).
EpsFn = Callable[[jax.Array, jax.Array], jax.Array]

_LOG_2PI = math.log(2.0 * math.pi)


def _one_minus_alpha2(log_alpha):
    """1 - alpha² = -expm1(2 log alpha), exact for small t."""
    return -jnp.expm1(2.0 * log_alpha)


class Process:
    """A linear SDE given by log alpha(t) and log sigma(t)²; see the module docstring."""

    name: str = "process"
    t_eps: float = 0.0

    # -- what a process defines -------------------------------------------------
    def log_alpha(self, t):
        raise NotImplementedError

    def log_sigma2(self, t):
        raise NotImplementedError

    def prior_std(self) -> float:
        """Standard deviation of the N(0, std² I) prior at t = 1."""
        return 1.0

    # -- derived, shared by every process ---------------------------------------
    def alpha(self, t):
        return jnp.exp(self.log_alpha(t))

    def sigma(self, t):
        return jnp.exp(0.5 * self.log_sigma2(t))

    def sigma2(self, t):
        return jnp.exp(self.log_sigma2(t))

    def log_snr(self, t):
        """λ(t) = log(alpha² / sigma²), decreasing in t (the ancestral step and the λ grid)."""
        return 2.0 * self.log_alpha(t) - self.log_sigma2(t)

    def _derivatives(self, t):
        t = jnp.asarray(t, dtype=jnp.result_type(float))
        ones = jnp.ones_like(t)
        _, dlog_alpha = jax.jvp(self.log_alpha, (t,), (ones,))
        _, dlog_sigma2 = jax.jvp(self.log_sigma2, (t,), (ones,))
        return dlog_alpha, dlog_sigma2

    def f(self, t):
        """Drift coefficient f(t) = d log alpha / dt."""
        return self._derivatives(t)[0]

    def g2(self, t):
        """Squared diffusion g(t)² = sigma² d/dt log(sigma²/alpha²) = dσ²/dt - 2fσ²."""
        dlog_alpha, dlog_sigma2 = self._derivatives(t)
        return self.sigma2(t) * (dlog_sigma2 - 2.0 * dlog_alpha)

    def g(self, t):
        """Diffusion coefficient g(t)."""
        return jnp.sqrt(self.g2(t))

    def prior_sample(self, key, shape, dtype=jnp.float32):
        """Draws x_1 from the N(0, prior_std² I) prior."""
        return jax.random.normal(key, shape, dtype) * jnp.asarray(self.prior_std(), dtype)

    def prior_logp(self, x):
        """Log-density of the prior, summed over all but the leading (batch) axis."""
        x = jnp.asarray(x)
        s = self.prior_std()
        d = math.prod(x.shape[1:])
        sq = jnp.sum(jnp.square(x).reshape(x.shape[0], -1), axis=-1)
        return -0.5 * sq / s**2 - 0.5 * d * (_LOG_2PI + 2.0 * math.log(s))

    def marginal(self, x0: jax.Array, eps: jax.Array, t_B: jax.Array) -> jax.Array:
        """x_t = alpha(t) x_0 + sigma(t) ε, the Gaussian marginal of eq. (1), per example.

        Args:
          x0: data [B, ...]; eps: noise of the same shape; t_B: time of each example [B].
        """
        alpha = per_example(self.alpha(t_B), x0)
        sigma = per_example(self.sigma(t_B), x0)
        return alpha * x0 + sigma * eps


def _check_finite(name: str, **values) -> dict:
    out = {}
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"{name}: {k} must be a finite real number, got {v!r}")
        out[k] = float(v)
    return out


def _check_t_eps(name: str, t_eps) -> float:
    t_eps = _check_finite(name, t_eps=t_eps)["t_eps"]
    if not 0.0 <= t_eps < 1.0:
        raise ValueError(f"{name}: t_eps must be in [0, 1), got {t_eps:g}")
    return t_eps


def _validate(process: Process, low: str, high: str, *, positive: bool, strict: bool) -> None:
    """Checks and stores as floats the range parameters (low, high) and t_eps of ``process``.

    Needs low < high (``strict``) or low ≤ high, and 0 < low if ``positive``.
    """
    v = _check_finite(process.name, **{low: getattr(process, low), high: getattr(process, high)})
    ordered = v[low] < v[high] if strict else v[low] <= v[high]
    if not ordered or (positive and not v[low] > 0.0):
        need = ("0 < " if positive else "") + f"{low} {'<' if strict else '<='} {high}"
        raise ValueError(f"{process.name}: need {need}, got {low}={v[low]:g}, {high}={v[high]:g}")
    for field, value in v.items():
        object.__setattr__(process, field, value)
    object.__setattr__(process, "t_eps", _check_t_eps(process.name, process.t_eps))


@dataclasses.dataclass(frozen=True)
class VP(Process):
    """Variance preserving (score_sde VP-SDE): log α = -t²(βmax-βmin)/4 - tβmin/2, σ² = 1 - α²."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_eps: float = 1e-3
    name = "vp"

    def __post_init__(self):
        _validate(self, "beta_min", "beta_max", positive=True, strict=False)

    def log_alpha(self, t):
        t = jnp.asarray(t)
        return -0.25 * jnp.square(t) * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def log_sigma2(self, t):
        return jnp.log(_one_minus_alpha2(self.log_alpha(t)))


@dataclasses.dataclass(frozen=True)
class SubVP(VP):
    """Sub-VP: alpha as VP, σ = 1 - α²."""

    name = "subvp"

    def log_sigma2(self, t):
        return 2.0 * jnp.log(_one_minus_alpha2(self.log_alpha(t)))


@dataclasses.dataclass(frozen=True)
class VE(Process):
    """Variance exploding: α = 1, σ = σmin (σmax/σmin)^t. Prior N(0, σ(1)² I)."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    t_eps: float = 1e-5
    name = "ve"

    def __post_init__(self):
        _validate(self, "sigma_min", "sigma_max", positive=True, strict=True)

    def log_alpha(self, t):
        return jnp.zeros_like(jnp.asarray(t, dtype=jnp.result_type(float)))

    def log_sigma2(self, t):
        t = jnp.asarray(t)
        return 2.0 * (math.log(self.sigma_min) + t * math.log(self.sigma_max / self.sigma_min))

    def prior_std(self) -> float:
        return self.sigma_max


@dataclasses.dataclass(frozen=True)
class VDM(Process):
    """Variational Diffusion Models: α² = sigmoid(-γ), σ² = sigmoid(γ), γ linear in t.

    γ(t) = γmin + t(γmax - γmin) is the negative log-SNR; here g²/σ² = γ'(t).
    """

    gamma_min: float = -13.3
    gamma_max: float = 5.0
    t_eps: float = 0.0
    name = "vdm"

    def __post_init__(self):
        _validate(self, "gamma_min", "gamma_max", positive=False, strict=True)

    def gamma(self, t):
        return self.gamma_min + jnp.asarray(t) * (self.gamma_max - self.gamma_min)

    def log_alpha(self, t):
        return -0.5 * jax.nn.softplus(self.gamma(t))

    def log_sigma2(self, t):
        return -jax.nn.softplus(-self.gamma(t))


#: Name → process class. Explicit, no registration side effects.
PROCESSES: dict[str, type[Process]] = {"vp": VP, "subvp": SubVP, "ve": VE, "vdm": VDM}


def get(name: str, **params) -> Process:
    """Returns the forward process called ``name`` (vp, subvp, ve, vdm).

    Parameters: ``beta_min``, ``beta_max`` (vp, subvp); ``sigma_min``,
    ``sigma_max`` (ve); ``gamma_min``, ``gamma_max`` (vdm); ``t_eps`` (all).

    Raises:
      ValueError: unknown name, unknown parameter or a value out of range.
    """
    if not isinstance(name, str) or name not in PROCESSES:
        raise ValueError(f"unknown process {name!r}; choose one of {sorted(PROCESSES)}")
    cls = PROCESSES[name]
    allowed = {f.name for f in dataclasses.fields(cls)}
    extra = sorted(set(params) - allowed)
    if extra:
        raise ValueError(
            f"process {name!r} got unexpected parameter(s) {extra}; it takes {sorted(allowed)}"
        )
    return cls(**params)


def param_names() -> tuple[str, ...]:
    """Every parameter some process takes (the fields a config may set), sorted."""
    names = {f.name for cls in PROCESSES.values() for f in dataclasses.fields(cls)}
    return tuple(sorted(names))


def check_num_steps(num_steps) -> int:
    """Returns num_steps as an int, or raises ValueError unless it is an integer ≥ 1."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral):
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return int(num_steps)


def time_grid(process: Process, num_steps: int):
    """The grid shared by walks, training and samplers (docs/math.md §3).

    .. math::  t_k = t_\\varepsilon + k\\Delta t, \\quad \\Delta t = (1 - t_\\varepsilon)/K,
               \\quad k = 0, \\dots, K.

    Returns:
      (t_k as a float32 array of K + 1 times, Δt as a Python float).
    """
    num_steps = check_num_steps(num_steps)
    dt = (1.0 - process.t_eps) / num_steps
    t = process.t_eps + dt * np.arange(num_steps + 1, dtype=np.float64)
    return jnp.asarray(t, jnp.float32), dt


#: Sampling grids: ``t`` uniform in time (the paper's, docs/math.md §3), ``lambda`` uniform in log-SNR.
GRIDS = ("t", "lambda")
#: The default sampling grid, chosen by measurement together with walks.DEFAULT_SCHEME.
DEFAULT_GRID = "lambda"


def sampling_grid(process: Process, num_steps: int, kind: str = "t") -> jax.Array:
    """The K + 1 times t_0 = t_eps < ... < t_K = 1 a sampler steps through (docs/math.md §3).

    ``t``: the training grid of :func:`time_grid`. ``lambda``: equal steps in
    λ(t) = log(alpha²/sigma²) between λ(t_eps) and λ(1), found by bisection on the
    host (λ is monotone); for ``ve`` λ is linear in t and both grids agree.
    """
    num_steps = check_num_steps(num_steps)
    if kind == "t":
        return time_grid(process, num_steps)[0]
    if kind != "lambda":
        raise ValueError(f"unknown grid {kind!r}; choose one of {GRIDS}")
    def lam(t):  # evaluated eagerly even inside jit: the grid is a constant of the program
        with jax.ensure_compile_time_eval():
            return np.asarray(process.log_snr(jnp.asarray(t, jnp.float32)), np.float64)

    lo_t, hi_t = process.t_eps, 1.0
    targets = np.linspace(lam(lo_t), lam(hi_t), num_steps + 1)
    lo, hi = np.full_like(targets, lo_t), np.full_like(targets, hi_t)
    for _ in range(60):  # λ decreases in t: move lo up where λ(mid) is still above the target
        mid = 0.5 * (lo + hi)
        above = lam(mid) > targets
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    t = 0.5 * (lo + hi)
    t[0], t[-1] = lo_t, hi_t
    return jnp.asarray(t, jnp.float32)


def per_example(v_B: jax.Array, x: jax.Array) -> jax.Array:
    """Reshapes a per-example value [B] to broadcast against x [B, ...], in x's dtype."""
    v_B = jnp.asarray(v_B)
    return v_B.reshape((-1,) + (1,) * (jnp.ndim(x) - 1)).astype(jnp.asarray(x).dtype)


def _drift(process: Process, x, score, t, score_weight: float):
    f, g2 = jnp.asarray(process.f(t)), jnp.asarray(process.g2(t))
    if f.ndim:
        f, g2 = per_example(f, x), per_example(g2, x)
    return f.astype(x.dtype) * x - (score_weight * g2).astype(x.dtype) * score


def reverse_drift(process: Process, x: jax.Array, score: jax.Array, t) -> jax.Array:
    """Drift of the reverse-time SDE, f(t) x - g(t)² s(x, t) (the bracket of eq. 8).

    ``t`` is a scalar or per-example [B]; a reverse step moves by minus this times Δt.
    """
    return _drift(process, x, score, t, 1.0)


def pf_ode_drift(process: Process, x: jax.Array, score: jax.Array, t) -> jax.Array:
    """The probability-flow ODE of eq. (6): dx/dt = f(t) x - ½ g(t)² s(x, t)."""
    return _drift(process, x, score, t, 0.5)


def score_fn_from_eps(process: Process, eps_fn: EpsFn) -> ScoreFn:
    """s(x, t) = -ε(x, t) / σ(t) (docs/math.md §4): the score of an ε-prediction."""

    def score_fn(x, t_B):
        eps = eps_fn(x, t_B)
        return -eps / per_example(process.sigma(t_B), eps)

    return score_fn


def eps_fn_from_score(process: Process, score_fn: ScoreFn) -> EpsFn:
    """ε(x, t) = -σ(t) s(x, t) (docs/math.md §4): the ε-prediction of a score, e.g. E[ε | x_t] of an oracle."""

    def eps_fn(x, t_B):
        score = score_fn(x, t_B)
        return -per_example(process.sigma(t_B), score) * score

    return eps_fn
