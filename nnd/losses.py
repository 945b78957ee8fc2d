"""Per-step KL losses between increment laws (eq. 5, Table 1).

The model's reverse step p_θ(Δx_k | x_{k+1}) is law p with mean from the model
score and variance g²Δt; the true step q(Δx_k | x_{k+1}) is law q with mean from
the true score. In units of g√Δt their means differ by

.. math::  u = g\\sqrt{\\Delta t}\\,(s - s_\\theta)
             = \\frac{g\\sqrt{\\Delta t}}{\\sigma}(\\varepsilon_\\theta - \\varepsilon),

so the per-step KL of eq. (5) is ``L_k = Σ_i ℓ_{q,p}(u_i)`` with the shift KL

.. math::  \\ell_{q,p}(u) = \\mathrm{KL}(q(\\cdot - u)\\,\\|\\,p)
                        = -H(q) - \\mathbb{E}_{z\\sim q}[\\log p(z + u)].

:func:`shift_kl` evaluates ℓ in closed form where one exists (Table 1, corrected
as in docs/math.md §8) and otherwise by piecewise Gauss–Legendre quadrature whose
nodes move with u. :func:`step_loss` and :func:`objective` build the training
loss from it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from nnd import increments, processes, walks
from nnd.increments import Law

__all__ = [
    "check_pair",
    "has_closed_form",
    "shift_kl",
    "scale_shift_kl",
    "kl_gaussian_gaussian",
    "kl_laplace_laplace",
    "kl_uniform_gaussian",
    "kl_uniform_laplace",
    "kl_any_gaussian",
    "kl_symmetric_laplace",
    "penalty",
    "step_scale",
    "step_scale_on_grid",
    "scheme_scale",
    "training_draw",
    "step_loss",
    "learned_x0_variance",
    "variance_step_loss",
    "objective",
]

_LOG_2PI = math.log(2.0 * math.pi)

# Gauss–Legendre rule on [-1, 1] for every finite panel.
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(32)
# Tails [c, ∞) are mapped by z = c + (e^w - 1), w ∈ [0, 40], in these panels. A
# power-law integrand |z|^-a (student_t q) becomes e^{-(a-1)w}, smooth in w, and
# light tails (Gaussian, Laplace) are covered by the first panels.
_TAIL_PANELS = (0.0, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0)
# A node whose log q is below this is dropped (its term is below the float64
# resolution of any ℓ here even after the Jacobian and |log q - log p|).
_LOG_Q_FLOOR = -700.0


def check_pair(q: Law | str, p: Law | str) -> tuple[Law, Law]:
    """Returns (q, p) as laws if KL(q(· - u) ‖ p) is finite for every u, else raises.

    A pair is finite only if supp q ⊆ supp p and E_q[-log p(z + u)] < ∞.
    Refused: p = uniform (its support cannot hold a shifted q), rademacher as q or
    p (no density), and q = student_t(df) against a p whose -log p grows like
    |z|^r with r ≥ df, e.g. gennorm(beta ≥ df).
    """
    q, p = increments.parse(q), increments.parse(p)
    pair = f"(q={q}, p={p})"
    suggestion = "use a full-support model law p such as 'gaussian', 'laplace' or 'logistic'"
    if not q.has_density or not p.has_density:
        raise ValueError(
            f"KL is undefined for the pair {pair}: rademacher has no density, so it can "
            f"only be a sampling law; for the loss {suggestion}"
        )
    if p.support != (-math.inf, math.inf):
        raise ValueError(
            f"KL(q(. - u) || p) is infinite for the pair {pair}: p has bounded support "
            f"{p.support}, which a shifted q leaves; {suggestion}"
        )
    if p.log_tail_power >= q.moment_order:
        raise ValueError(
            f"KL(q(. - u) || p) is infinite for the pair {pair}: -log p grows like "
            f"|z|^{p.log_tail_power:g} but q has moments only of order < "
            f"{q.moment_order:g}; use a lighter-tailed q or a heavier-tailed p, e.g. "
            "'laplace', 'logistic' or 'gaussian' against student_t(df > 2)"
        )
    return q, p


def has_closed_form(q: Law | str, p: Law | str) -> bool:
    """Whether :func:`shift_kl` with method='auto' uses a closed form for (q, p)."""
    q, p = increments.parse(q), increments.parse(p)
    return isinstance(p, increments.Gaussian) or (
        isinstance(p, increments.Laplace) and q.symmetric
    )


# -- Table 1: one public function per closed-form row (docs/math.md §4) -------------------
# b = 1/√2 is the standardised Laplace scale, a = √3 the standardised uniform half-width.

_LAPLACE_B = 1.0 / math.sqrt(2.0)
_UNIFORM_A = math.sqrt(3.0)


def kl_gaussian_gaussian(u: jax.Array) -> jax.Array:
    r"""Table 1, G/G: :math:`\ell(u) = u^2/2`."""
    return 0.5 * jnp.square(u)


def kl_laplace_laplace(u: jax.Array) -> jax.Array:
    r"""Table 1, L/L: :math:`\ell(u) = |u|/b + e^{-|u|/b} - 1`, b = 1/√2.

    The paper prints "+1", which gives ℓ(0) = 2; "-1" gives ℓ(0) = 0 (docs/math.md §8).
    """
    r = jnp.abs(u) / _LAPLACE_B
    return r + jnp.expm1(-r)


def kl_uniform_gaussian(u: jax.Array) -> jax.Array:
    r"""Table 1, U/G: :math:`\ell(u) = u^2/2 + \tfrac12(1 + \log(\pi/6))`.

    The constant is 0.1765, not the paper's log√(π/6) (docs/math.md §8).
    """
    return 0.5 * jnp.square(u) + jnp.asarray(0.5 * (1.0 + math.log(math.pi / 6.0)), u.dtype)


def kl_uniform_laplace(u: jax.Array) -> jax.Array:
    r"""Table 1, U/L, with a = √3 and b = 1/√2:

    .. math::  \ell(u) = \log\frac ba + \begin{cases} (u^2 + a^2)/(2ab) & |u| \le a \\
                                                      |u|/b & |u| > a, \end{cases}

    so ℓ(0) = 0.329 and ℓ''(0) = 1/(ab); the paper drops log(b/a) (docs/math.md §8).
    """
    a, b, abs_u = _UNIFORM_A, _LAPLACE_B, jnp.abs(u)
    inside = (jnp.square(u) + a * a) / (2.0 * a * b)
    return math.log(b / a) + jnp.where(abs_u <= a, inside, abs_u / b)


def kl_any_gaussian(q: Law | str, u: jax.Array) -> jax.Array:
    r"""Any q against p = gaussian: :math:`\ell(u) = u^2/2 + \tfrac12\log 2\pi + \tfrac12 - H(q)`."""
    q = increments.parse(q)
    const = 0.5 * _LOG_2PI + 0.5 - q.entropy()
    return 0.5 * jnp.square(u) + const.astype(u.dtype)


def kl_symmetric_laplace(q: Law | str, u: jax.Array) -> jax.Array:
    r"""Any symmetric q against p = laplace: :math:`\ell(u) = \log 2b - H(q) + \mathbb E_q|z + u|/b`."""
    q = increments.parse(q)
    if not q.symmetric:
        raise ValueError(f"kl_symmetric_laplace needs a symmetric q, got {q}")
    b = _LAPLACE_B
    const = math.log(2.0 * b) - q.entropy()
    return const.astype(u.dtype) + q.mean_abs_shift(u) / b


def _closed_form(q: Law, p: Law, u):
    """ℓ_{q,p}(u) = KL(q(· - u) ‖ p) in closed form: the row of Table 1 for (q, p)."""
    if isinstance(p, increments.Gaussian):
        if isinstance(q, increments.Gaussian):
            return kl_gaussian_gaussian(u)
        if isinstance(q, increments.Uniform):
            return kl_uniform_gaussian(u)
        return kl_any_gaussian(q, u)
    if isinstance(p, increments.Laplace):
        if isinstance(q, increments.Laplace):
            return kl_laplace_laplace(u)
        if isinstance(q, increments.Uniform):
            return kl_uniform_laplace(u)
        return kl_symmetric_laplace(q, u)
    raise ValueError(f"no closed form for (q={q}, p={p}); use method='quadrature'")


def _panel_nodes(a, b, dtype):
    """Gauss–Legendre nodes and weights on [a, b] (a, b traced scalars)."""
    x = jnp.asarray(_GL_NODES, dtype)
    w = jnp.asarray(_GL_WEIGHTS, dtype)
    half = 0.5 * (b - a)
    return a + half * (x + 1.0), half * w


def _tail_nodes(c, direction, dtype):
    """Nodes, weights and log-Jacobians on [c, ∞) (direction +1) or (-∞, c] (-1)."""
    zs, ws, log_jacs = [], [], []
    for lo, hi in zip(_TAIL_PANELS[:-1], _TAIL_PANELS[1:]):
        v, w = _panel_nodes(jnp.asarray(lo, dtype), jnp.asarray(hi, dtype), dtype)
        zs.append(c + direction * jnp.expm1(v))
        ws.append(w)
        log_jacs.append(v)  # dz/dv = e^v
    return jnp.concatenate(zs), jnp.concatenate(ws), jnp.concatenate(log_jacs)


def _quadrature_nodes(q: Law, p: Law, u):
    """Nodes z, weights w and log-Jacobians of the quadrature of ℓ(u), for one scalar u.

    The integral is split at q's support ends, at q's kinks (0) and at the
    kinks of log p(z + u) (z = κ - u), so every panel has a smooth integrand and
    the nodes move with u; that keeps ∂ℓ/∂u right near u = 0. Infinite tails are
    mapped to finite panels (:func:`_tail_nodes`); ∫ f dz ≈ Σ w f(z) e^{log-Jacobian}.
    """
    dtype = u.dtype
    lo, hi = q.support
    finite_lo, finite_hi = math.isfinite(lo), math.isfinite(hi)
    points = [jnp.asarray(0.0, dtype)]
    points += [jnp.asarray(k, dtype) for k in q.kinks]
    points += [jnp.asarray(k, dtype) - u for k in p.kinks]
    if finite_lo:
        points.append(jnp.asarray(lo, dtype))
    if finite_hi:
        points.append(jnp.asarray(hi, dtype))
    pts = jnp.sort(jnp.stack(points))
    pts = jnp.clip(pts, lo, hi)  # points outside supp q collapse onto its ends

    zs, ws, log_jacs = [], [], []
    for i in range(pts.shape[0] - 1):
        z, w = _panel_nodes(pts[i], pts[i + 1], dtype)
        zs.append(z)
        ws.append(w)
        log_jacs.append(jnp.zeros_like(z))
    for present, start, direction in ((not finite_lo, pts[0], -1.0), (not finite_hi, pts[-1], 1.0)):
        if present:
            z, w, log_jac = _tail_nodes(start, direction, dtype)
            zs.append(z)
            ws.append(w)
            log_jacs.append(log_jac)
    return jnp.concatenate(zs), jnp.concatenate(ws), jnp.concatenate(log_jacs)


def _quadrature_scalar(q: Law, p: Law, u, rho=1.0):
    """ℓ(u) = ∫ q(z) [log q(z) - log p(ρz + u)] dz for one scalar u (:func:`_quadrature_nodes`).

    ρ ≠ 1 (:func:`scale_shift_kl`) moves p's kinks to z = (κ - u)/ρ, which the nodes of
    u/ρ place right for the kinks at 0 that every law here has.
    """
    z, w, log_jac = _quadrature_nodes(q, p, u / rho)

    # Each term is w · q · J · d, d = log q - log p, J the tail map's Jacobian. Nodes
    # where q has no mass or log p overflows are masked BEFORE any arithmetic (moved to
    # 0, a finite point of every law), so neither pass sees a non-finite value. Where
    # |d| > 1 the term is summed in log space, exp(log q + log J + log|d|), so far-tail
    # terms of a heavy-tailed q against a light-tailed p (q·J below the float range, d
    # huge) do not underflow; where |d| ≤ 1, as at d = 0 (q = p in the far tail, or
    # where the densities cross), d enters linearly and no log of it is taken.
    def log_terms(z_):
        log_q_ = q.log_prob(z_)
        return log_q_, log_q_ - p.log_prob(rho * z_ + u)

    log_q0, d0 = jax.lax.stop_gradient(log_terms(z))
    keep = jnp.isfinite(log_q0) & jnp.isfinite(d0) & (log_q0 > _LOG_Q_FLOOR)
    log_q, d = log_terms(jnp.where(keep, z, 0.0))
    log_mass = jnp.where(keep, log_q + log_jac, -jnp.inf)
    large = jnp.abs(d) > 1.0
    log_abs_d = jnp.log(jnp.where(large, jnp.abs(d), 1.0))
    small_d = jnp.where(large, 0.0, d)
    terms = jnp.where(large, jnp.sign(d) * jnp.exp(log_mass + log_abs_d),
                      small_d * jnp.exp(log_mass))
    return jnp.sum(jnp.where(keep, w * terms, 0.0))


def shift_kl(q: Law | str, p: Law | str, u: jax.Array, method: str = "auto") -> jax.Array:
    """ℓ_{q,p}(u) = KL(q(· - u) ‖ p), elementwise in u (eq. 5, Table 1).

    Args:
      q: law of the true reverse increment (a Law or its name).
      p: law of the model's reverse increment (a Law or its name).
      u: array of mean shifts in units of g√Δt.
      method: 'auto' (closed form where docs/math.md §4 has one, else quadrature),
        'closed' (closed form or ValueError) or 'quadrature' (forces the
        piecewise Gauss–Legendre fallback for any pair, for tests).

    Returns:
      Array of ℓ(u), same shape and dtype as u (float32 if u is an integer or
      Python scalar).

    Raises:
      ValueError: infinite pair (see :func:`check_pair`) or unknown method.
    """
    if method not in ("auto", "closed", "quadrature"):
        raise ValueError(f"method must be 'auto', 'closed' or 'quadrature', got {method!r}")
    q, p = check_pair(q, p)
    u = jnp.asarray(u)
    if not jnp.issubdtype(u.dtype, jnp.floating):
        u = u.astype(jnp.float32)
    if method == "closed" or (method == "auto" and has_closed_form(q, p)):
        return _closed_form(q, p, u)
    flat = u.reshape(-1)
    out = jax.vmap(lambda v: _quadrature_scalar(q, p, v))(flat)
    return out.reshape(u.shape)


def scale_shift_kl(p: Law | str, u: jax.Array, rho: jax.Array) -> jax.Array:
    r"""KL(law of ρz + u ‖ p), z ~ p, elementwise: the step KL of a learned scale (docs/math.md §5).

    A law-p step of the posterior's mean and scale σ̃ against the model's law-p step of mean
    μ_θ and scale b is this KL with u = (μ̃ - μ_θ)/b and ρ = σ̃/b:

    .. math::  \ell_p(u, \rho) = -\log\rho + \mathbb{E}_{z\sim p}
               \big[\log p(z) - \log p(\rho z + u)\big],

    ℓ_p(u, 1) = ℓ_{p,p}(u) (:func:`shift_kl`). Closed forms: Gaussian
    ½(ρ² + u² - 1) - log ρ; Laplace (scale b = 1/√2) |u|/b + ρ e^{-|u|/(ρb)} - 1 - log ρ;
    other laws by the quadrature of :func:`shift_kl`.

    Raises:
      ValueError: p of bounded support or without a density (uniform, rademacher).
    """
    p, _ = check_pair(p, p)
    u = jnp.asarray(u)
    if not jnp.issubdtype(u.dtype, jnp.floating):
        u = u.astype(jnp.float32)
    rho = jnp.broadcast_to(jnp.asarray(rho, u.dtype), u.shape)
    if isinstance(p, increments.Gaussian):
        return 0.5 * (jnp.square(rho) + jnp.square(u) - 1.0) - jnp.log(rho)
    if isinstance(p, increments.Laplace):
        b = _LAPLACE_B
        return jnp.abs(u) / b + rho * jnp.exp(-jnp.abs(u) / (rho * b)) - 1.0 - jnp.log(rho)
    out = jax.vmap(lambda v, r: _quadrature_scalar(p, p, v, r))(u.reshape(-1), rho.reshape(-1))
    return (out - jnp.log(rho.reshape(-1))).reshape(u.shape)


def penalty(q: Law | str, p: Law | str, dtype=jnp.float32) -> jax.Array:
    """ℓ_{q,p}(0): the KL paid at every step and coordinate even by a perfect score."""
    return shift_kl(q, p, jnp.zeros((), dtype))


def _euler_scale(process: processes.Process, t, sqrt_dt):
    return process.g(t) * sqrt_dt / process.sigma(t)


def step_scale(process: processes.Process, t_B: jax.Array, num_steps: int) -> jax.Array:
    """c(t) = g(t)√Δt / σ(t), Δt = (1 - t_eps)/K: the factor in u = c (ε_θ - ε) of eq. (5)."""
    _, dt = processes.time_grid(process, num_steps)
    return _euler_scale(process, t_B, math.sqrt(dt))


def scheme_scale(process: processes.Process, scheme: str, t, s) -> jax.Array:
    """c_k of a reverse step from t down to s (docs/math.md §5): u = c_k (ε_θ - ε).

    ``euler``: g(t)√(t - s)/σ(t) (as :func:`step_scale`); ``ancestral`` and ``analytic``:
    √expm1(λ_s - λ_t), λ = log(α²/σ²). Both tend to the same limit as the step shrinks.
    """
    if scheme == "euler":
        return _euler_scale(process, t, jnp.sqrt(t - s))
    return jnp.sqrt(jnp.expm1(process.log_snr(s) - process.log_snr(t)))


def step_scale_on_grid(process, scheme: str, t_grid, t_B):
    """c_k of the step that ends at t_B = t_{k+1} of ``t_grid`` (from t_B down to t_k).

    k + 1 is the grid point nearest t_B, so a time rounded on its way here still finds its step.
    """
    midpoints = 0.5 * (t_grid[1:] + t_grid[:-1])
    k_B = jnp.maximum(jnp.searchsorted(midpoints, t_B), 1)
    return scheme_scale(process, scheme, t_grid[k_B], t_grid[k_B - 1])


def step_loss(eps_BxD, eps_pred_BxD, t_B, *, process, q, p, num_steps: int,
              scheme: str = walks.DEFAULT_SCHEME, grid: str = processes.DEFAULT_GRID,
              subtract_penalty: bool = True):
    """The per-step KL L_k of eq. (5) for each example, in nats.

    .. math::  L_k = \\sum_i \\ell_{q,p}(u_i), \\quad u = c_k(\\varepsilon_\\theta - \\varepsilon),

    with c_k the scale of the sampler's step from t = t_{k+1} down to s = t_k of the
    K-step ``grid`` (:func:`scheme_scale`): √expm1(λ_s - λ_t) for ``ancestral`` and
    ``analytic``, g(t)√(t - s)/σ(t) for ``euler`` (eq. 5 as the paper writes it, on the
    ``t`` grid). For q = p = gaussian with the ``ancestral`` scheme, L_k is the exact
    KL of that step against the forward posterior, the term of
    :func:`nnd.likelihood.walk_bound`; for ``euler`` and ``analytic`` it is not (see
    :func:`objective`).

    Args:
      eps_BxD: the noise ε of x_t = alpha x_0 + sigma ε, any shape [B, ...].
      eps_pred_BxD: the model's ε_θ(x_t, t), same shape.
      t_B: time t_{k+1} of each example, a point of the grid (:func:`training_draw`).
      process, q, p, num_steps: the forward process, the laws and K.
      scheme, grid: the reverse step and the grid (:data:`nnd.walks.SCHEMES`,
        :data:`nnd.processes.GRIDS`) whose c_k weighs each step.
      subtract_penalty: if True return Σ_i (ℓ(u_i) - ℓ(0)), which is zero for a
        perfect model; if False the full KL Σ_i ℓ(u_i).

    Returns:
      [B] array.
    """
    num_steps = processes.check_num_steps(num_steps)
    _check_scheme(scheme)
    t_grid = processes.sampling_grid(process, num_steps, grid)
    c_B = processes.per_example(step_scale_on_grid(process, scheme, t_grid, t_B), eps_BxD)
    ell = shift_kl(q, p, c_B * (eps_pred_BxD - eps_BxD))
    if subtract_penalty:
        ell = ell - penalty(q, p, ell.dtype)
    return jnp.sum(ell.reshape(ell.shape[0], -1), axis=-1)


def _check_scheme(scheme: str) -> None:
    if scheme not in walks.SCHEMES:
        raise ValueError(f"unknown reverse scheme {scheme!r}; choose one of {walks.SCHEMES}")


def training_draw(key, process: processes.Process, x0_BxD: jax.Array, num_steps: int,
                  grid: str = processes.DEFAULT_GRID):
    """The draw of the eq. (5) objective: k ~ U{0..K-1}, t = t_{k+1} of ``grid``, ε ~ N(0, I), x_t = αx_0 + σε.

    Returns:
      (t_B, eps_BxD, x_BxD). x comes from the Gaussian marginal, which Theorem 3.3
      licenses for any q.
    """
    num_steps = processes.check_num_steps(num_steps)
    key_t, key_eps = jax.random.split(key)
    k_B = jax.random.randint(key_t, (x0_BxD.shape[0],), 0, num_steps)
    t_B = processes.sampling_grid(process, num_steps, grid)[k_B + 1]
    eps_BxD = jax.random.normal(key_eps, x0_BxD.shape, x0_BxD.dtype)
    return t_B, eps_BxD, process.marginal(x0_BxD, eps_BxD, t_B)


def learned_x0_variance(process: processes.Process, log_gamma, t_B) -> jax.Array:
    """Var[x_0 | x_t] = (σ_t²/α_t²) γ from the head's log γ (γ = Var[ε | x_t]), per coordinate."""
    ratio_B = jnp.exp(process.log_sigma2(t_B) - 2.0 * process.log_alpha(t_B))
    return processes.per_example(ratio_B, log_gamma) * jnp.exp(log_gamma)


def variance_step_loss(eps_BxD, eps_pred_BxD, log_gamma_BxD, t_B, *, process, p, num_steps: int,
                       grid: str = processes.DEFAULT_GRID):
    r"""The step KL that trains the learned variance, per example, in nats (docs/math.md §5).

    The model's step from t = t_{k+1} down to s = t_k is the moment-matched member of the
    family (``analytic``) with its own Var[x_0 | x_t] = (σ_t²/α_t²) γ: law p, the ancestral
    mean, scale b with b² = σ_s² r (1 + c_k² γ), c_k² = expm1(λ_s - λ_t). Against the
    law-p step of the forward posterior (mean μ̃, scale σ_s√r) its KL is
    :func:`scale_shift_kl` with

    .. math::  \rho = (1 + c_k^2\gamma)^{-1/2}, \qquad
               u = \rho\, c_k\,(\mathrm{sg}[\varepsilon_\theta] - \varepsilon),

    summed over coordinates; ε_θ is held fixed (sg), so only the head learns from it and the
    ε objective is unchanged. For p = gaussian it is the exact KL of that Gaussian step
    against the posterior, a term of the walk's bound
    (:func:`nnd.likelihood.gaussian_step_kl` with ``analytic``), minimised by
    γ = E[(ε - ε_θ)² | x_t]: Var[ε | x_t] when ε_θ is exact.
    """
    num_steps = processes.check_num_steps(num_steps)
    t_grid = processes.sampling_grid(process, num_steps, grid)
    c_B = processes.per_example(step_scale_on_grid(process, "ancestral", t_grid, t_B), eps_BxD)
    rho = jax.lax.rsqrt(1.0 + jnp.square(c_B) * jnp.exp(log_gamma_BxD))
    u = rho * c_B * (jax.lax.stop_gradient(eps_pred_BxD) - eps_BxD)
    ell = scale_shift_kl(p, u, rho)
    return jnp.sum(ell.reshape(ell.shape[0], -1), axis=-1)


def objective(eps_fn, x0_BxD, key, *, process, q, p, num_steps: int,
              scheme: str = walks.DEFAULT_SCHEME, grid: str = processes.DEFAULT_GRID,
              include_penalty: bool = False, learned_variance: bool = False):
    """Monte-Carlo estimate of the training objective of eq. (5) for each example.

    .. math::  \\mathbb{E}_{k\\sim U\\{0..K-1\\},\\,\\varepsilon\\sim N(0, I)}
               \\Big[K \\sum_i \\big(\\ell_{q,p}(u_i) - \\ell_{q,p}(0)\\big)\\Big],
               \\quad x = \\alpha x_0 + \\sigma\\varepsilon \\text{ at } t_{k+1}

    with the draw of :func:`training_draw` on ``grid`` and u = c_k(ε_θ - ε) weighted by
    the c_k of ``scheme`` (:func:`step_loss`); ``scheme="euler", grid="t"`` is eq. (5) as
    the paper writes it. Train with the scheme and grid the sampler runs.

    For G/G this objective is the step sum of that sampler's bound
    (:func:`nnd.likelihood.walk_bound`) for ``ancestral`` only (the default): there the
    model step and the forward posterior share their variance σ_s² r, and the step's KL
    is ½ expm1(λ_s - λ_t)‖ε_θ - ε‖² = ½ c_k²‖ε_θ - ε‖², which is L_k. For ``euler`` the
    model step's variance differs from the posterior's and its mean is not the posterior
    mean at ε_θ = ε, so the bound's step term is another function of ε_θ: the objective is
    then a c_k²-weighted ε-MSE, not that bound, and its gradient can point elsewhere (on vp
    at K = 10 with ε_θ within 0.05 of ε, cosines between the two gradients down to 0.16 on
    the t grid). For ``analytic`` the bound weighs coordinate i by σ_s² r / b_i², b_i² the
    step's per-point variance, and adds a term in b_i alone.

    Args:
      eps_fn: ``eps_fn(x_BxD, t_B) -> eps_pred_BxD`` (the model, params bound).
      x0_BxD: data batch.
      key: PRNG key; split here into the time and noise draws.
      scheme, grid: as in :func:`step_loss`.
      include_penalty: add back K·D·ℓ(0) so the value is K·L_k itself.
      learned_variance: ``eps_fn`` returns (ε_θ, log γ) and K times
        :func:`variance_step_loss` is added (not with ``euler``).

    Returns:
      (loss_B, t_B): per-example loss and the time each example was drawn at.
    """
    num_steps = processes.check_num_steps(num_steps)
    if learned_variance and scheme == "euler":
        raise ValueError("a learned variance is for the 'ancestral' and 'analytic' schemes, "
                         "not 'euler'")
    t_B, eps_BxD, x_BxD = training_draw(key, process, x0_BxD, num_steps, grid)
    out = eps_fn(x_BxD, t_B)
    eps_pred_BxD, log_gamma_BxD = out if learned_variance else (out, None)
    loss_B = num_steps * step_loss(
        eps_BxD, eps_pred_BxD, t_B, process=process, q=q, p=p,
        num_steps=num_steps, scheme=scheme, grid=grid, subtract_penalty=not include_penalty,
    )
    if learned_variance:
        loss_B = loss_B + num_steps * variance_step_loss(
            eps_BxD, eps_pred_BxD, log_gamma_BxD, t_B, process=process, p=p,
            num_steps=num_steps, grid=grid)
    return loss_B, t_B
