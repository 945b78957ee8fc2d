"""Structured random walks: forward, reverse and their moments (eq. 8, Theorem 3.1).

The forward walk and the moments run on the grid of docs/math.md §3, ``t_k = t_eps + kΔt``,
``Δt = (1 - t_eps)/K``; the reverse walk on a sampling grid (uniform in t or in
log-SNR, :func:`nnd.processes.sampling_grid`) with one of :data:`SCHEMES`. All use
``lax.scan``: the step is traced and compiled once whatever K, and memory does not
grow with K unless the path is asked for. The increment law is always a parameter:
any object with ``sample(key, shape, dtype)`` will do.

Keys: the root key is split once into named keys (prior, steps); step k uses
``fold_in(steps_key, k)``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from nnd import increments
from nnd import processes as processes_lib

__all__ = ["SCHEMES", "DEFAULT_SCHEME", "ETA_RULE", "default_eta", "resolve_eta", "forward_step",
           "euler_step", "ancestral_step", "family_coefficients", "check_family", "uses_x0_variance",
           "sample_per_example", "scheme_step", "forward", "reverse", "moments", "tweedie_denoise"]

#: Reverse-step schemes (docs/math.md §3): ``euler`` (eq. 8), ``ancestral`` (the exact Gaussian
#: posterior of the forward process, law-z noise; with η and w the whole variance family of
#: :func:`ancestral_step`) and ``analytic`` (the moment-matched end, w = 1: ancestral with
#: the per-point variance of x_0 given x_t added, which the caller supplies).
SCHEMES = ("euler", "ancestral", "analytic")
#: The default reverse scheme, chosen by measurement (docs/studies.md "Reverse schemes and grids"):
#: with the exact gmm8 score it is the closest to the data at K = 10 and 30 on vp and vdm.
DEFAULT_SCHEME = "ancestral"
#: The default rule for the variance family's η (:func:`default_eta`), chosen by measurement
#: (docs/studies.md "The reverse-variance family"): (smallest K, η) in increasing K.
ETA_RULE = ((1, 1.0), (18, 0.9), (25, 0.8))


def forward_step(process: processes_lib.Process, x: jax.Array, z: jax.Array, t,
                 dt: float) -> jax.Array:
    r"""One forward step of the structured random walk, eq. (8), from t to t + Δt.

    .. math::  x_{k+1} = x_k + f(t_k)\, x_k \Delta t + g(t_k)\sqrt{\Delta t}\, z_k,

    with z_k a standardised increment of any law (Definition 1); ``t`` is a scalar.
    """
    f, g = process.f(t), process.g(t)
    return x + (f * dt).astype(x.dtype) * x + (g * math.sqrt(dt)).astype(x.dtype) * z


def euler_step(process: processes_lib.Process, x: jax.Array, score: jax.Array, z: jax.Array,
                 t, dt: float) -> jax.Array:
    r"""The Euler (Euler–Maruyama) reverse step, eq. (8), from t = t_{k+1} down to t - Δt (docs/math.md §3).

    .. math::  x_k = x_{k+1} - \big[f x_{k+1} - g^2 s(x_{k+1}, t_{k+1})\big]\Delta t
                     + g\sqrt{\Delta t}\, z_k,

    f, g and the score ``score`` = s(x, t) taken at t; z_k of any law. ``t`` is a scalar.
    """
    drift = processes_lib.reverse_drift(process, x, score, t)
    g = process.g(t)
    return x - (dt * drift).astype(x.dtype) + (g * jnp.sqrt(dt)).astype(x.dtype) * z


def ancestral_step(process: processes_lib.Process, x: jax.Array, eps: jax.Array, z: jax.Array,
                   t, s, x0_variance=0.0, *, eta=1.0, variance_weight=1.0) -> jax.Array:
    r"""One reverse step from t down to s < t of the variance family (docs/math.md §3.4).

    With λ = log(α²/σ²), r = -expm1(λ_t - λ_s) ∈ (0, 1), x̂_0 = (x_t - σ_t ε)/α_t, the forward
    posterior's variance a = σ_s² r and the true reverse kernel's m = a + (α_s r)² v, where
    v = Var[x_0 | x_t] per coordinate (``x0_variance``):

    .. math::  c^2 = \eta^2\, a^{1-w} m^{w}, \qquad \rho = \min(c^2 / a,\ 1), \qquad
               x_s = \alpha_s \hat x_0 + \sigma_s\sqrt{1 - \rho r}\;\varepsilon + c\, z,

    z standardised of any law. η = 1, w = 0 is the ancestral step (the mean
    (α_s/α_t)(1 - r) x_t + α_s r x̂_0 and variance a); η = 0 is DDIM's deterministic step;
    η ∈ (0, 1) is DDIM(η); w ∈ (0, 1] interpolates the log-variance from a to the
    moment-matched m (w = 1, the ``analytic`` scheme), with the ancestral mean; η > 1 inflates
    the ancestral variance by η². Below a the mean keeps the part σ_s√(1 - c²/σ_s²) ε of the
    noise that the step does not add back, so every member with c² ≤ a maps the noised
    marginal N(α_t x_0, σ_t²) of a fixed x_0 (ε exact) to N(α_s x_0, σ_s²).
    ``t`` and ``s`` are scalars; ``eta`` ≥ 0 and ``variance_weight`` ∈ [0, 1] are scalars (the
    defaults, η = 1 and w = 1, add all of a given v: with v = 0 it is the ancestral step).
    """
    r = -jnp.expm1(process.log_snr(t) - process.log_snr(s))
    alpha_t, alpha_s = process.alpha(t), process.alpha(s)
    x0_hat = (x - process.sigma(t).astype(x.dtype) * eps) / alpha_t.astype(x.dtype)
    mean = ((alpha_s / alpha_t) * (1.0 - r)).astype(x.dtype) * x + (alpha_s * r).astype(x.dtype) * x0_hat
    keep, std = family_coefficients(process, t, s, x0_variance, eta=eta,
                                    variance_weight=variance_weight)
    return mean + keep.astype(x.dtype) * eps + std.astype(x.dtype) * z


def family_coefficients(process: processes_lib.Process, t, s, x0_variance=0.0, *, eta=1.0,
                        variance_weight=1.0):
    r"""(κ, c) of :func:`ancestral_step`: x_s = (ancestral mean) + κ ε + c z.

    .. math::  \kappa = \sigma_s\big(\sqrt{1 - \rho r} - \sqrt{1 - r}\big), \qquad
               c = \sigma_s \sqrt{r}\; \eta \Big(\frac{m}{a}\Big)^{w/2}, \qquad
               \frac{m}{a} = 1 + r\, e^{\lambda_s}\, v,

    κ = 0 from the ancestral step up (ρ = 1). Shapes broadcast with ``x0_variance``.
    """
    lam_s = process.log_snr(s)
    r = -jnp.expm1(process.log_snr(t) - lam_s)
    sigma_s = process.sigma(s)
    # m / a = 1 + r e^{λ_s} v: the moment-matched variance in units of the ancestral one
    ratio = (1.0 + r * jnp.exp(lam_s) * x0_variance) ** variance_weight * jnp.square(eta)
    rho = jnp.minimum(ratio, 1.0)
    keep = sigma_s * (jnp.sqrt(1.0 - rho * r) - jnp.sqrt(1.0 - r))
    return keep, jnp.sqrt(process.sigma2(s) * r * ratio)  # as σ_s√r at ratio 1, to the bit


def scheme_step(process: processes_lib.Process, scheme: str, x: jax.Array, score: jax.Array,
                   z: jax.Array, t, s, x0_variance=None, *, eta=1.0,
                   variance_weight=None) -> jax.Array:
    """x at s < t from x at t with the given scheme (:data:`SCHEMES`), the score at t and z.

    ``ancestral`` and ``analytic`` are members of the variance family of
    :func:`ancestral_step` (``eta``, ``variance_weight``; ``analytic`` is w = 1 by default);
    ``x0_variance``: Var[x_0 | x_t] per point and coordinate, shaped like x, needed where
    w > 0. ``euler`` takes neither.
    """
    weight = check_family(scheme, eta, variance_weight, x0_variance is not None)
    if scheme == "euler":
        return euler_step(process, x, score, z, t, t - s)
    eps = -process.sigma(t).astype(x.dtype) * score
    v = 0.0 if x0_variance is None else x0_variance
    return ancestral_step(process, x, eps, z, t, s, v, eta=eta, variance_weight=weight)


def check_family(scheme: str, eta, variance_weight, has_variance: bool) -> float:
    """Checks a scheme's variance-family settings; returns the weight w it uses.

    ``variance_weight=None`` means the scheme's own: 0 for ``ancestral``, 1 for ``analytic``.
    Python numbers are checked here; traced values are taken as they are.

    Raises:
      ValueError: an unknown scheme; η or w given to ``euler``; η < 0; w outside [0, 1];
        w > 0 without a per-point Var[x_0 | x_t] (there is no batch estimate: it would make a
        sample depend on the batch it was drawn with).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown reverse scheme {scheme!r}; choose one of {SCHEMES}")
    if scheme == "euler":
        if variance_weight is not None or has_variance or not _is_number(eta, 1.0):
            raise ValueError("eta, variance_weight and a per-point Var[x_0 | x_t] are for the "
                             "'ancestral' and 'analytic' schemes, not 'euler'")
        return 0.0
    weight = (1.0 if scheme == "analytic" else 0.0) if variance_weight is None else variance_weight
    if isinstance(eta, (int, float)) and not eta >= 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if isinstance(weight, (int, float)):
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"variance_weight must be in [0, 1], got {weight}")
        if weight > 0 and not has_variance:
            raise ValueError(
                f"the {scheme!r} scheme with variance_weight={weight} needs a per-point "
                "Var[x_0 | x_t] (x0_variance_fn: the oracle's, or a network's learned variance)")
    elif not has_variance:
        raise ValueError("a traced variance_weight needs a per-point Var[x_0 | x_t]")
    return weight


def default_eta(num_steps: int) -> float:
    """The η of :data:`ETA_RULE` for K steps: 1 (ancestral) below 18, 0.9 to 24, 0.8 from 25.

    Measured on the exact gmm8 score (``python -m nnd.experiments.variance``, docs/studies.md
    "The reverse-variance family"): at K = 30 it keeps every law on vp and vdm within 3.1% of
    the data's blob width, where the ancestral step (η = 1) under-disperses by up to 12.7%.
    """
    num_steps = processes_lib.check_num_steps(num_steps)
    return [eta for first, eta in ETA_RULE if num_steps >= first][-1]


def resolve_eta(eta, scheme: str, variance_weight, num_steps: int):
    """η to use: ``eta`` if given; else :func:`default_eta` for the plain ``ancestral``
    family (w unset or 0), and 1 where a per-point variance sets the step's width (w > 0)."""
    if eta is not None:
        return eta
    if scheme == "ancestral" and variance_weight in (None, 0, 0.0):
        return default_eta(num_steps)
    return 1.0


def uses_x0_variance(scheme: str, variance_weight) -> bool:
    """Whether the member needs a per-point Var[x_0 | x_t]: ``analytic``, or any w > 0."""
    return scheme == "analytic" or bool(variance_weight)


def _is_number(value, expected: float) -> bool:
    return isinstance(value, (int, float)) and float(value) == expected


def sample_per_example(law: increments.Law, key: jax.Array, shape: tuple[int, ...],
                       dtype=jnp.float32) -> jax.Array:
    """Draws [B, ...] from ``law`` with example i's values from ``fold_in(key, i)``.

    Example i gets the same draw whatever the batch size B, so a sampler's first n outputs
    do not depend on how many were drawn beside them.
    """
    return _per_example(lambda key_i, shape_i: law.sample(key_i, shape_i, dtype), key, shape)


def _per_example(draw, key: jax.Array, shape) -> jax.Array:
    """[B, ...] with example i ``draw(fold_in(key, i), shape[1:])``."""
    return jax.vmap(lambda i: draw(jax.random.fold_in(key, i), tuple(shape[1:])))(
        jnp.arange(shape[0]))


def forward(process: processes_lib.Process, law: increments.Law, x0: jax.Array, key: jax.Array,
            num_steps: int, *, return_path: bool = False):
    """Runs the forward structured random walk of eq. (8) from x0 at t_eps to t = 1.

    .. math::  x_{k+1} = x_k + f(t_k)\\, x_k \\Delta t + g(t_k)\\sqrt{\\Delta t}\\, z_k,
               \\qquad z_k \\overset{iid}{\\sim} \\text{law}.

    Args:
      process: a forward process (nnd.processes).
      law: the increment law of z_k (nnd.increments), any object with ``sample``.
      x0: starting points, any shape.
      key: PRNG key; step k uses ``fold_in(key, k)``.
      num_steps: K ≥ 1.
      return_path: also return the stacked path [K + 1, *x0.shape] (memory ∝ K).

    Returns:
      x at t = 1 (same shape and dtype as x0), or (x, path) if return_path.
    """
    num_steps = processes_lib.check_num_steps(num_steps)
    x0 = jnp.asarray(x0)
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        x0 = x0.astype(jnp.float32)
    dtype = x0.dtype
    t_grid, dt = processes_lib.time_grid(process, num_steps)

    def step(x, inputs):
        k, t = inputs
        z = law.sample(jax.random.fold_in(key, k), x.shape, dtype)
        x = forward_step(process, x, z, t, dt)
        return x, (x if return_path else None)

    ks = jnp.arange(num_steps)
    x1, path = jax.lax.scan(step, x0, (ks, t_grid[:-1]))
    if return_path:
        return x1, jnp.concatenate([x0[None], path], axis=0)
    return x1


def tweedie_denoise(process: processes_lib.Process, score_fn: processes_lib.ScoreFn, x: jax.Array,
                    t: float) -> jax.Array:
    """The noise-free last step: Tweedie's E[x_0 | x_t] = (x + sigma² s(x, t)) / alpha."""
    t_B = jnp.full((x.shape[0],), t, jnp.float32)
    alpha, sigma2 = processes_lib.per_example(process.alpha(t_B), x), processes_lib.per_example(
        process.sigma2(t_B), x)
    return (x + sigma2 * score_fn(x, t_B)) / alpha


def reverse(process: processes_lib.Process, law: increments.Law, score_fn: processes_lib.ScoreFn,
            key: jax.Array, shape: tuple[int, ...], num_steps: int, denoise: bool = True,
            *, scheme: str = DEFAULT_SCHEME, grid: str = processes_lib.DEFAULT_GRID,
            dtype=jnp.float32, return_path: bool = False, x0_variance_fn=None,
            eta=None, variance_weight=None):
    """Runs the reverse structured random walk from the prior at t = 1 to t_eps.

    Reverse step from t_{k+1} to t_k with the score at t_{k+1} (docs/math.md §3); with
    ``scheme="euler"`` it is eq. (8),

    .. math::  x_k = x_{k+1} - \\big[f x_{k+1} - g^2 s(x_{k+1}, t_{k+1})\\big]\\Delta t
                     + g\\sqrt{\\Delta t}\\, z_k, \\qquad z_k \\sim \\text{law (any)},

    ``ancestral`` (the default) and ``analytic`` use :func:`ancestral_step` instead (all
    three tend to the same SDE as Δt → 0, Theorem 3.3); the default grid is uniform in
    log-SNR.

    Keys: the root key is split into a prior key and a steps key; example i of step k draws
    from ``fold_in(fold_in(steps_key, k), i)`` (and of the prior from
    ``fold_in(prior_key, i)``), so the first n samples are the same for any batch size ≥ n.

    Args:
      process: forward process; x_K is drawn from its prior.
      law: increment law of z_k (any object with ``sample``).
      score_fn: ``score_fn(x [B, ...], t [B]) -> [B, ...]``.
      key: root PRNG key, split into a prior key and a steps key.
      shape: sample shape [B, ...].
      num_steps: K ≥ 1.
      denoise: finish with the noise-free Tweedie step at t_eps.
      scheme: ``euler``, ``ancestral`` (default) or ``analytic`` (:data:`SCHEMES`).
      grid: ``t`` (uniform in time) or ``lambda`` (uniform in log-SNR, default), see
        :func:`nnd.processes.sampling_grid`.
      dtype: floating dtype of the samples.
      return_path: also return the path [K + 1, *shape], from t_K = 1 down to t_0.
      x0_variance_fn: ``fn(x [B, ...], t [B]) -> Var[x_0 | x_t]`` of x's shape, the
        per-point variance that ``analytic`` (and any w > 0) needs: the exact one for a
        mixture is :func:`nnd.oracles.gmm_x0_variance`, a network's is its learned variance.
      eta: the family's η (:func:`ancestral_step`): 0 deterministic (DDIM), 1 ancestral;
        None: the default rule (:func:`resolve_eta`; :func:`default_eta` of K for ``ancestral``).
      variance_weight: the family's w ∈ [0, 1]; None: 0 for ``ancestral``, 1 for ``analytic``.

    Returns:
      samples of the given shape (or (samples, path) if return_path).
    """
    num_steps = processes_lib.check_num_steps(num_steps)
    eta = resolve_eta(eta, scheme, variance_weight, num_steps)
    check_family(scheme, eta, variance_weight, x0_variance_fn is not None)
    shape = tuple(shape)
    t_grid = processes_lib.sampling_grid(process, num_steps, grid)
    key_prior, key_steps = jax.random.split(key)
    x_init = _per_example(lambda key_i, shape_i: process.prior_sample(key_i, shape_i, dtype),
                          key_prior, shape)

    def step(x, inputs):
        k, t, t_next_down = inputs
        t_B = jnp.full((shape[0],), t, jnp.float32)
        score = score_fn(x, t_B).astype(dtype)
        z = sample_per_example(law, jax.random.fold_in(key_steps, k), shape, dtype)
        v = None if x0_variance_fn is None else x0_variance_fn(x, t_B).astype(dtype)
        x = scheme_step(process, scheme, x, score, z, t, t_next_down, v, eta=eta,
                        variance_weight=variance_weight)
        return x, (x if return_path else None)

    ks = jnp.arange(num_steps)
    x, path = jax.lax.scan(step, x_init, (ks, t_grid[1:], t_grid[:-1]), reverse=True)
    if denoise:
        x = tweedie_denoise(process, score_fn, x, process.t_eps)
    if return_path:
        # scan(reverse=True) stacks outputs by k; path[k] is x_k. Put t = 1 first.
        full = jnp.concatenate([path, x_init[None]], axis=0)[::-1]
        return x, full
    return x


def moments(process: processes_lib.Process, num_steps: int) -> tuple[jax.Array, jax.Array]:
    """(m_K, v_K) of the forward walk from a fixed x at t_eps (Theorem 3.1).

    .. math::  m_K = \\prod_{k} (1 + f_k\\Delta t), \\qquad
               v_K = \\sum_j \\prod_{i>j} (1 + f_i\\Delta t)^2 g_j^2 \\Delta t,

    so x_K has mean m_K x and variance v_K per coordinate for ANY increment law.
    As K → ∞ they tend to alpha(1)/alpha(t_eps) and sigma(1)² - m² sigma(t_eps)²
    with error O(Δt). (The paper's statement has ᾱ_k/ᾱ_{i+1}; its own proof,
    eq. 43, gives ᾱ_k/ᾱ_i, which is what this computes; docs/math.md §8.)
    """
    num_steps = processes_lib.check_num_steps(num_steps)
    t_grid, dt = processes_lib.time_grid(process, num_steps)
    f_K, g_K = process.f(t_grid[:-1]), process.g(t_grid[:-1])

    def step(carry, inputs):
        m, v = carry
        f, g = inputs
        a = 1.0 + f * dt
        return (a * m, a * a * v + g * g * dt), None

    one = jnp.ones((), f_K.dtype)
    (m, v), _ = jax.lax.scan(step, (one, jnp.zeros_like(one)), (f_K, g_K))
    return m, v
