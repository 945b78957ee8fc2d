"""Likelihoods: the PF-ODE log-density, bits/dim, and the eq. (5) walk sum (SPEC §5).

- :func:`log_prob`: instantaneous change of variables along the probability-flow
  ODE of eq. (6), ``h(x, t) = f(t) x - ½ g(t)² s(x, t)``:

  .. math::  \\log p_{t_\\varepsilon}(x) = \\log p_1(x(1))
             + \\int_{t_\\varepsilon}^{1} \\nabla\\cdot h(x(t), t)\\, dt,

  integrated jointly with x from t_eps to 1 inside one jitted solve (no host
  round trip per evaluation). The divergence is exact (D Jacobian-vector
  products) or Hutchinson's ``v·(∂h/∂x) v`` with one probe v per solve.
- :func:`bits_per_dim`: for data with L levels dequantised as z = 2(n + U)/L - 1
  (a bin of width 2/L per level), ``bpd = -log₂ p(z)/D + log₂ L - 1``.
- :func:`dataset_bpd`: every example of a split, once per repeat, in fixed-size
  jitted batches (the last one padded and masked), with standard errors.
- :func:`walk_bound`: the discrete sum of eq. (5) for (q, p, K) with Gaussian
  marginals: prior KL + Σ_k L_k + reconstruction, with and without the mismatch
  penalty K·D·ℓ(0), on the sampler's scheme and grid. For q = p = gaussian each L_k
  is the exact KL of the sampler's step against the true posterior, so the sum is a
  true upper bound on -log p of that sampler; for other pairs it is an estimate, never
  a likelihood (the true reverse kernel of a non-Gaussian walk is q tilted, not shifted).

Precision: both run with float32 'highest' matmul and convolution precision
(:func:`_highest_precision`), whatever the training dtype: TPU multiplies float32 by
default in one bfloat16 pass, and bpd differences of 0.01 matter. Callers should pass a
float32 network (``model.clone(dtype="float32")``).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from nnd import batching, data, increments, losses, ode, samplers, walks
from nnd import processes as processes_lib

__all__ = ["DIVERGENCES", "divergence_fn", "log_prob", "log_prob_with_stats", "bits_per_dim",
           "dataset_bpd", "gaussian_step_kl", "is_bound", "walk_bound"]

#: Divergence estimators of :func:`log_prob`.
DIVERGENCES = ("auto", "exact", "rademacher", "gaussian")
#: ``auto`` uses the exact divergence up to this many dimensions per example.
EXACT_MAX_DIM = 64


def _resolve_divergence(method: str, dim: int) -> str:
    if method not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {method!r}")
    if method == "auto":
        return "exact" if dim <= EXACT_MAX_DIM else "rademacher"
    return method


def _sum_per_example(v):
    return jnp.sum(v.reshape(v.shape[0], -1), axis=1)


def divergence_fn(fn, method: str, probe=None, *, chunk: int = 16):
    """``div(x, t) -> (fn(x, t), ∇·fn [B])`` for an ``fn`` acting on each example separately.

    ``exact``: Σ_i e_iᵀ J e_i by D Jacobian-vector products, ``chunk`` at a time.
    ``rademacher`` / ``gaussian``: Hutchinson's vᵀ J v with the given ``probe`` (shape of x).
    """
    if method == "exact":

        def div(x, t):
            value = fn(x, t)
            dim = math.prod(x.shape[1:])
            basis = jnp.eye(dim, dtype=x.dtype).reshape((dim,) + x.shape[1:])

            def diagonal_term(e):
                v = jnp.broadcast_to(e, x.shape)
                _, jv = jax.jvp(lambda y: fn(y, t), (x,), (v,))
                return _sum_per_example(jv * v)

            terms = jax.lax.map(diagonal_term, basis, batch_size=min(chunk, dim))
            return value, jnp.sum(terms, axis=0)

        return div
    if method in ("rademacher", "gaussian"):
        if probe is None:
            raise ValueError(f"divergence {method!r} needs a probe")

        def div(x, t):
            value, jv = jax.jvp(lambda y: fn(y, t), (x,), (probe.astype(x.dtype),))
            return value, _sum_per_example(jv * probe.astype(x.dtype))

        return div
    raise ValueError(f"unknown divergence {method!r}")


def _probe(key, method, shape, dtype):
    if method == "rademacher":
        return jax.random.rademacher(key, shape, dtype)
    if method == "gaussian":
        return jax.random.normal(key, shape, dtype)
    return None


def _highest_precision(fn):
    """``fn`` traced under ``jax.default_matmul_precision('highest')``: every matmul and
    convolution it traces (the network's included) carries HIGHEST precision in the HLO."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.default_matmul_precision("highest"):
            return fn(*args, **kwargs)

    return wrapped


@_highest_precision
def log_prob_with_stats(process: processes_lib.Process, score_fn: processes_lib.ScoreFn,
                        x: jax.Array, key: jax.Array, divergence: str = "auto", rtol: float = 1e-5,
                        atol: float = 1e-5, *, solver: str = "ode", num_steps: int = 100,
                        max_steps: int = 10_000):
    """(log p(x) in nats [B], :class:`nnd.ode.Stats`) through the PF-ODE; see :func:`log_prob`."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    dim = math.prod(x.shape[1:])
    method = _resolve_divergence(divergence, dim)
    probe = _probe(key, method, x.shape, x.dtype)
    div = divergence_fn(samplers.pf_ode_field(process, score_fn), method, probe)

    def augmented(state, t):
        y, _ = state
        dy, d_div = div(y, t)
        return dy, d_div

    state0 = (x, jnp.zeros((x.shape[0],), x.dtype))
    if solver == "ode":
        (x1, delta), stats = ode.dopri5(augmented, state0, process.t_eps, 1.0, rtol=rtol, atol=atol,
                                        max_steps=max_steps)
    elif solver == "heun":
        (x1, delta), stats = ode.heun(augmented, state0, process.t_eps, 1.0, num_steps)
    else:
        raise ValueError(f"solver must be 'ode' or 'heun', got {solver!r}")
    return process.prior_logp(x1) + delta, stats


def log_prob(process: processes_lib.Process, score_fn: processes_lib.ScoreFn, x: jax.Array,
             key: jax.Array, divergence: str = "auto", rtol: float = 1e-5, atol: float = 1e-5,
             **kwargs) -> jax.Array:
    """Log-density (nats) of continuous x [B, ...] under the model, through the PF-ODE (eq. 6).

    The density is that of the model's marginal at t_eps (where the ODE starts);
    no dequantisation here (see :func:`bits_per_dim`).

    Args:
      process: the forward process (gives f, g, t_eps and the prior).
      score_fn: ``score_fn(x [B, ...], t [B])``.
      x: points [B, ...].
      key: draws the Hutchinson probe (one per solve); unused if exact.
      divergence: ``auto`` (exact for D ≤ 64, Rademacher above), ``exact``,
        ``rademacher`` or ``gaussian``.
      rtol, atol: tolerances of the adaptive Dormand–Prince solver.
      **kwargs: ``solver`` ('ode' adaptive, 'heun' fixed-step), ``num_steps`` (heun),
        ``max_steps`` (adaptive).
    """
    return log_prob_with_stats(process, score_fn, x, key, divergence, rtol, atol, **kwargs)[0]


def bits_per_dim(log_prob_nats, dim: int, num_levels: int | None = None):
    """bpd = -log₂ p(z)/D + log₂ L - 1 for z = 2(n + U)/L - 1; nats/dim·1/ln 2 if L is None.

    The continuous density p(z) on [-1, 1]^D times the bin volume (2/L)^D is the
    probability of the integer levels n, hence the offset D(log₂ L - 1).
    """
    bits = -np.asarray(log_prob_nats, np.float64) / (dim * math.log(2.0))
    if num_levels is None:
        return bits
    if num_levels < 2:
        raise ValueError(f"num_levels must be >= 2, got {num_levels}")
    return bits + math.log2(num_levels) - 1.0


def dataset_bpd(log_prob_fn, images, num_levels: int, *, batch_size: int, key,
                num_repeats: int = 1, progress=None):
    """Bits/dim of every example of ``images`` (integer levels), dequantised afresh per repeat.

    Args:
      log_prob_fn: ``log_prob_fn(z [batch_size, ...], key) -> [batch_size]`` nats
        (called with a fixed batch size, so it compiles once).
      images: integer array [N, ...] of levels in {0..L-1}.
      num_levels: L.
      batch_size: examples per call; the last batch is padded and the padding dropped.
      key: root key; repeat r, batch i use ``fold_in(fold_in(key, r), i)``.
      num_repeats: independent dequantisations of the whole split.
      progress: optional ``progress(done, total)`` callback.

    Returns:
      dict with ``bpd`` (mean over repeats and examples), ``se_repeats`` (standard
      error of the per-repeat means, None if one repeat), ``se_examples``
      (per-example standard error), ``num_examples``, ``num_repeats`` and
      ``per_repeat``.
    """
    images = np.asarray(images)
    if images.size == 0:
        raise ValueError("no examples to evaluate")
    if images.min() < 0 or images.max() >= num_levels:
        raise ValueError(f"levels must lie in [0, {num_levels - 1}], got [{images.min()}, {images.max()}]")
    if num_repeats < 1:
        raise ValueError(f"num_repeats must be >= 1, got {num_repeats}")
    n = len(images)
    dim = int(np.prod(images.shape[1:]))
    num_batches = -(-n // batch_size)
    per_example = np.zeros((num_repeats, n), np.float64)
    for r in range(num_repeats):
        key_r = jax.random.fold_in(key, r)

        def batch_bpd(levels, i, r=r, key_r=key_r):
            key_u, key_fn = jax.random.split(jax.random.fold_in(key_r, i))
            u = np.asarray(jax.random.uniform(key_u, levels.shape))
            z = data.dequantize(levels, u, num_levels)
            lp = np.asarray(log_prob_fn(jnp.asarray(z, jnp.float32), key_fn))
            if progress is not None:
                progress(r * num_batches + i + 1, num_repeats * num_batches)
            return bits_per_dim(lp, dim, num_levels)

        per_example[r] = batching.map_batches(batch_bpd, images, batch_size)
    if not np.all(np.isfinite(per_example)):
        raise FloatingPointError(f"{int(np.sum(~np.isfinite(per_example)))} non-finite log-densities")
    means = per_example.mean(axis=1)
    return {
        "bpd": float(means.mean()),
        "se_repeats": float(means.std(ddof=1) / math.sqrt(num_repeats)) if num_repeats > 1 else None,
        "se_examples": float(per_example.mean(axis=0).std(ddof=1) / math.sqrt(n)) if n > 1 else None,
        "num_examples": n,
        "num_repeats": num_repeats,
        "per_repeat": means.tolist(),
    }


def is_bound(q: increments.Law | str, p: increments.Law | str) -> bool:
    """Whether :func:`walk_bound` for (q, p) is a true bound (q = p = gaussian), not an estimate."""
    return all(isinstance(increments.parse(law), increments.Gaussian) for law in (q, p))


def gaussian_step_kl(process: processes_lib.Process, scheme: str, x0: jax.Array, x: jax.Array,
                     eps: jax.Array, eps_pred: jax.Array, t, s) -> jax.Array:
    r"""KL(q(x_s | x_t, x_0) ‖ p_θ(x_s | x_t)) per example, for a Gaussian model step (SPEC §5).

    q is the forward process's Gaussian posterior, N(μ̃, σ_s² r) with r = -expm1(λ_t - λ_s);
    p_θ is the reverse step of ``scheme`` with Gaussian noise (:func:`nnd.walks.reverse_update`).
    For ``ancestral`` the two share their variance and

    .. math::  \mathrm{KL} = \tfrac12\, \mathrm{expm1}(\lambda_s - \lambda_t)\,
               \|\varepsilon_\theta - \varepsilon\|^2;

    for ``euler`` (mean x_t - [f x_t - g² s_θ]Δt, variance g²Δt) and ``analytic`` the
    variances differ and the KL is ½ Σ_i [(μ̃ - μ_θ)²/v_θ + ρ - 1 - log ρ], ρ = σ_s² r / v_θ.
    ``t`` > ``s`` are scalars; x = α_t x_0 + σ_t ε.
    """
    lam_t, lam_s = process.log_snr(t), process.log_snr(s)
    if scheme == "ancestral":
        return 0.5 * jnp.expm1(lam_s - lam_t) * _sum_per_example(jnp.square(eps_pred - eps))
    r = -jnp.expm1(lam_t - lam_s)
    alpha_t, alpha_s = process.alpha(t), process.alpha(s)
    var_q = process.sigma2(s) * r
    mean_q = (alpha_s / alpha_t) * (1.0 - r) * x + alpha_s * r * x0
    zero = jnp.zeros_like(x)
    if scheme == "euler":
        score = -eps_pred / process.sigma(t)
        mean_p = walks.reverse_step(process, x, score, zero, t, t - s)
        var_p = process.g2(t) * (t - s)
    elif scheme == "analytic":
        mean_p = walks.ancestral_step(process, x, eps_pred, zero, t, s)
        var_p = var_q + jnp.square(alpha_s * r) * walks.posterior_x0_variance(process, eps_pred, t)
    else:
        raise ValueError(f"unknown reverse scheme {scheme!r}; choose one of {walks.SCHEMES}")
    rho_minus_1 = (var_q - var_p) / var_p
    variance_term = rho_minus_1 - jnp.log1p(rho_minus_1)  # ρ - 1 - log ρ ≥ 0, exact near ρ = 1
    dim = math.prod(x.shape[1:])
    return 0.5 * (_sum_per_example(jnp.square(mean_q - mean_p)) / var_p + dim * variance_term)


@_highest_precision
def walk_bound(process: processes_lib.Process, eps_fn: processes_lib.EpsFn, x0: jax.Array,
               key: jax.Array, *, q: increments.Law, p: increments.Law, num_steps: int,
               scheme: str = walks.DEFAULT_SCHEME,
               grid: str = processes_lib.DEFAULT_GRID) -> dict:
    """The eq. (5) sum for (q, p, K) per example, in nats, on the sampler's scheme and grid.

    .. math::  \\mathrm{KL}(N(\\alpha_1 x_0, \\sigma_1^2) \\,\\|\\, \\text{prior})
               + \\sum_{k=0}^{K-1} L_k + \\Big[\\tfrac{D}{2}\\log\\tfrac{2\\pi\\sigma_0^2}{\\alpha_0^2}
               + \\tfrac12\\|\\varepsilon - \\varepsilon_\\theta\\|^2\\Big],

    one ε per step and example, x_t = α_t x_0 + σ_t ε, steps from t = t_{k+1} to
    s = t_k of ``grid`` (:func:`nnd.processes.sampling_grid`); the reconstruction is
    -log N(x_0; x̂, σ_0²/α_0²) with the Tweedie mean x̂ at t_0 = t_eps.

    - q = p = gaussian: L_k is the exact KL of the sampler's Gaussian step of
      ``scheme`` against the true posterior q(x_s | x_t, x_0) (:func:`gaussian_step_kl`),
      so the sum is a true upper bound on -log p of that K-step sampler.
    - any other pair: an estimate, not a bound, L_k = Σ_i ℓ_{q,p}(c_k(ε_θ - ε)) with
      the scheme's own scale c_k (:func:`nnd.losses.scheme_scale`): the true reverse
      kernel of a non-Gaussian walk given x_0 is q tilted, not shifted.

    Returns:
      dict of [B] arrays: ``prior_kl``, ``steps`` (Σ_k L_k; for the estimate without
      the K·D·ℓ(0) penalty), ``reconstruction``, ``total`` and ``total_with_penalty``
      (adds K·D·ℓ(0)), plus the scalar ``penalty``.
    """
    num_steps = processes_lib.check_num_steps(num_steps)
    if scheme not in walks.SCHEMES:
        raise ValueError(f"unknown reverse scheme {scheme!r}; choose one of {walks.SCHEMES}")
    exact = is_bound(q, p)
    x0 = jnp.asarray(x0, jnp.float32)
    batch, dim = x0.shape[0], math.prod(x0.shape[1:])
    t_grid = processes_lib.sampling_grid(process, num_steps, grid)
    shape = (-1,) + (1,) * (x0.ndim - 1)

    def noised(t, k):
        eps = jax.random.normal(jax.random.fold_in(key, k), x0.shape, x0.dtype)
        t_B = jnp.full((batch,), t, jnp.float32)
        return eps, process.marginal(x0, eps, t_B), t_B

    def step(total, k):
        t, s = t_grid[k + 1], t_grid[k]
        eps, x, t_B = noised(t, k)
        eps_pred = eps_fn(x, t_B)
        if exact:
            return total + gaussian_step_kl(process, scheme, x0, x, eps, eps_pred, t, s), None
        c = losses.scheme_scale(process, scheme, t, s)
        ell = losses.shift_kl(q, p, c * (eps_pred - eps)) - losses.penalty(q, p)
        return total + _sum_per_example(ell), None

    steps, _ = jax.lax.scan(step, jnp.zeros((batch,), jnp.float32), jnp.arange(num_steps))

    t0 = t_grid[0]
    eps, x, t_B = noised(t0, num_steps)
    log_ratio = process.log_sigma2(t0) - 2.0 * process.log_alpha(t0)
    reconstruction = (0.5 * dim * (math.log(2.0 * math.pi) + log_ratio)
                      + 0.5 * _sum_per_example(jnp.square(eps - eps_fn(x, t_B))))

    one = jnp.ones((batch,), jnp.float32)
    alpha1, sigma2_1 = process.alpha(one).reshape(shape), process.sigma2(one).reshape(shape)
    s2 = process.prior_std() ** 2
    prior_kl = 0.5 * _sum_per_example(
        (jnp.square(alpha1 * x0) + sigma2_1) / s2 - 1.0 - jnp.log(sigma2_1 / s2))
    penalty = num_steps * dim * losses.penalty(q, p)
    total = prior_kl + steps + reconstruction
    return {"prior_kl": prior_kl, "steps": steps, "reconstruction": reconstruction,
            "total": total, "total_with_penalty": total + penalty, "penalty": penalty}
