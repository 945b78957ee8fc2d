"""Likelihoods: the PF-ODE log-density, bits/dim, the walk bound and the eq. (5) estimate.

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
- :func:`walk_bound`: a true upper bound on -log p_θ(x_0) of the K-step reverse walk whose
  kernels have law p (any p of full support), followed by a Gaussian decoder
  N(x̂, (σ_0/α_0)²) around Tweedie's mean at t_eps: prior KL + Σ_k E_r[ℓ_{p,p}(u_k)] +
  reconstruction, with the latents drawn along a chain r that steps down by the forward
  posterior's mean (label ``bound``). :func:`is_bound` says for which laws it exists.
- :func:`walk_estimate`: the paper's eq. (5) sum for (q, p, K) with Gaussian marginals, with
  and without the mismatch penalty K·D·ℓ(0); for q ≠ p it bounds nothing (label ``estimate``).

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

from nnd import batching, increments, losses, ode, samplers, walks
from nnd import processes as processes_lib

__all__ = ["DIVERGENCES", "resolve_divergence", "divergence_fn", "log_prob", "log_prob_with_stats", "bits_per_dim",
           "dataset_bpd", "gaussian_step_kl", "is_bound", "kernel_gap", "posterior_kernel",
           "reverse_kernel", "walk_bound", "walk_estimate"]

#: Divergence estimators of :func:`log_prob`.
DIVERGENCES = ("auto", "exact", "rademacher", "gaussian")
#: ``auto`` uses the exact divergence up to this many dimensions per example.
EXACT_MAX_DIM = 64


def resolve_divergence(method: str, dim: int) -> str:
    """The estimator ``method`` names for D = ``dim``: ``auto`` is exact up to EXACT_MAX_DIM."""
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
    method = resolve_divergence(divergence, dim)
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


def _dequantize(n, u, num_levels: int) -> np.ndarray:
    """z = 2(n + u)/L - 1, the dequantisation :func:`bits_per_dim` assumes (the training
    pipeline's ``nnd.data.dequantize``, written here so that likelihood does not import data)."""
    return (2.0 * (np.asarray(n, np.float32) + u) / num_levels - 1.0).astype(np.float32)


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
            z = _dequantize(levels, u, num_levels)
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
    """Whether :func:`walk_bound` for (q, p) returns a true bound: p has a density of full support.

    The bound is that of the walk whose reverse kernels have law p, whatever law q trained
    the network; for p of bounded support (uniform) or without a density (rademacher)
    there is no bound of this kind and :func:`walk_bound` raises.
    """
    increments.parse(q)
    p = increments.parse(p)
    return bool(p.has_density and tuple(p.support) == (-math.inf, math.inf))


def _bound_law(p: increments.Law | str) -> increments.Law:
    p = increments.parse(p)
    if not is_bound(p, p):
        raise ValueError(f"no walk bound for p={p}: a law of bounded support makes the KL between "
                         "shifted kernels infinite; use a full-support p such as gaussian, laplace, "
                         "logistic or student_t")
    return p


def posterior_kernel(process: processes_lib.Process, x0: jax.Array, x: jax.Array, t, s):
    r"""Mean and standard deviation of the forward posterior q(x_s | x_t, x_0), s < t scalars.

    .. math::  \tilde\mu = \frac{\alpha_s}{\alpha_t}(1 - r)\, x_t + \alpha_s r\, x_0, \qquad
               \tilde\sigma = \sigma_s\sqrt{r}, \qquad r = -\mathrm{expm1}(\lambda_t - \lambda_s).
    """
    r = -jnp.expm1(process.log_snr(t) - process.log_snr(s))
    alpha_t, alpha_s = process.alpha(t), process.alpha(s)
    mean = ((alpha_s / alpha_t) * (1.0 - r)).astype(x.dtype) * x + (alpha_s * r).astype(x.dtype) * x0
    return mean, process.sigma(s) * jnp.sqrt(r)


def reverse_kernel(process: processes_lib.Process, scheme: str, x: jax.Array,
                   eps_pred: jax.Array, t, s, x0_variance=None, *, eta=1.0, variance_weight=None):
    r"""Mean μ_θ and scale b of the model's reverse step from t down to s < t (scalars).

    The step of :func:`nnd.walks.scheme_step` is x_s = μ_θ + b z, z standardised of any law:

    - ``euler``: :math:`\mu_\theta = x_t - [f x_t - g^2 s_\theta](t - s)`,
      :math:`b = g(t)\sqrt{t - s}`, with :math:`s_\theta = -\varepsilon_\theta/\sigma_t`;
    - ``ancestral``: :math:`\mu_\theta = \frac{\alpha_s}{\alpha_t}(1 - r) x_t + \alpha_s r \hat x_0`,
      :math:`\hat x_0 = (x_t - \sigma_t\varepsilon_\theta)/\alpha_t`, :math:`b = \sigma_s\sqrt r`;
      with η and w the family member's mean (plus κ ε_θ) and scale c
      (:func:`nnd.walks.family_coefficients`);
    - ``analytic``: the same mean, :math:`b^2 = \sigma_s^2 r + (\alpha_s r)^2 v` with v the
      per-point Var[x_0 | x_t] ``x0_variance`` (required).

    Returns:
      (μ_θ shaped like x, b: a scalar, or shaped like x where v is per point).
    """
    weight = walks.check_family(scheme, eta, variance_weight, x0_variance is not None)
    zero = jnp.zeros_like(x)
    if scheme == "euler":
        mean = walks.euler_step(process, x, -eps_pred / process.sigma(t).astype(x.dtype), zero,
                                  t, t - s)
        return mean, process.g(t) * jnp.sqrt(t - s)
    v = 0.0 if x0_variance is None else x0_variance
    mean = walks.ancestral_step(process, x, eps_pred, zero, t, s, v, eta=eta,
                                variance_weight=weight)
    _, scale = walks.family_coefficients(process, t, s, v, eta=eta, variance_weight=weight)
    return mean, scale


def kernel_gap(process: processes_lib.Process, scheme: str, x0: jax.Array, x: jax.Array,
               eps_pred: jax.Array, t, s, x0_variance=None, *, eta=1.0,
               variance_weight=None) -> jax.Array:
    r"""μ̃ − μ_θ: the posterior mean minus the model's step mean (:func:`posterior_kernel`,
    :func:`reverse_kernel`).

    For ``ancestral`` and ``analytic`` it is written without cancellation,

    .. math::  \tilde\mu - \mu_\theta = \frac{\alpha_s r \sigma_t}{\alpha_t}
               (\varepsilon_\theta - \hat\varepsilon) - \kappa\, \varepsilon_\theta, \qquad
               \hat\varepsilon = \frac{x_t - \alpha_t x_0}{\sigma_t},

    κ the family's extra share of ε (0 from the ancestral step up,
    :func:`nnd.walks.family_coefficients`); for ``euler`` it is the difference of the two means.
    """
    weight = walks.check_family(scheme, eta, variance_weight, x0_variance is not None)
    if scheme == "euler":
        return posterior_kernel(process, x0, x, t, s)[0] - reverse_kernel(
            process, scheme, x, eps_pred, t, s)[0]
    alpha_t, sigma_t = process.alpha(t), process.sigma(t)
    r = -jnp.expm1(process.log_snr(t) - process.log_snr(s))
    eps_hat = (x - alpha_t.astype(x.dtype) * x0) / sigma_t.astype(x.dtype)
    v = 0.0 if x0_variance is None else x0_variance
    keep, _ = walks.family_coefficients(process, t, s, v, eta=eta, variance_weight=weight)
    return ((process.alpha(s) * r * sigma_t / alpha_t).astype(x.dtype) * (eps_pred - eps_hat)
            - jnp.asarray(keep).astype(x.dtype) * eps_pred)


def _is_plain_ancestral(scheme: str, eta, variance_weight) -> bool:
    return (scheme == "ancestral" and isinstance(eta, (int, float)) and float(eta) == 1.0
            and variance_weight in (None, 0, 0.0))


def gaussian_step_kl(process: processes_lib.Process, scheme: str, x0: jax.Array, x: jax.Array,
                     eps: jax.Array, eps_pred: jax.Array, t, s, x0_variance=None, *, eta=1.0,
                     variance_weight=None) -> jax.Array:
    r"""KL(q(x_s | x_t, x_0) ‖ p_θ(x_s | x_t)) per example, for a Gaussian model step.

    q is the forward process's Gaussian posterior N(μ̃, σ_s² r) with r = -expm1(λ_t - λ_s)
    (:func:`posterior_kernel`); p_θ is the reverse step of ``scheme`` with Gaussian noise,
    N(μ_θ, b²) (:func:`reverse_kernel`). For ``ancestral`` the two share their variance and

    .. math::  \mathrm{KL} = \tfrac12\, \mathrm{expm1}(\lambda_s - \lambda_t)\,
               \|\varepsilon_\theta - \varepsilon\|^2,

    with ε = (x_t - α_t x_0)/σ_t; for ``euler``, ``analytic`` and other members of the family
    the variances differ and the KL is ½ Σ_i [(μ̃ - μ_θ)²/b² + ρ - 1 - log ρ], ρ = σ_s² r / b².
    ``t`` > ``s`` are scalars.
    """
    if _is_plain_ancestral(scheme, eta, variance_weight) and x0_variance is None:
        lam_t, lam_s = process.log_snr(t), process.log_snr(s)
        return 0.5 * jnp.expm1(lam_s - lam_t) * _sum_per_example(jnp.square(eps_pred - eps))
    family = dict(eta=eta, variance_weight=variance_weight)
    _, std_q = posterior_kernel(process, x0, x, t, s)
    _, std_p = reverse_kernel(process, scheme, x, eps_pred, t, s, x0_variance, **family)
    var_q, var_p = jnp.square(std_q), jnp.square(std_p)
    rho_minus_1 = (var_q - var_p) / var_p
    variance_term = rho_minus_1 - jnp.log1p(rho_minus_1)  # ρ - 1 - log ρ ≥ 0, exact near ρ = 1
    gap = kernel_gap(process, scheme, x0, x, eps_pred, t, s, x0_variance, **family)
    variance_term = jnp.broadcast_to(variance_term, x.shape).astype(x.dtype)
    return 0.5 * _sum_per_example(jnp.square(gap) / var_p.astype(x.dtype) + variance_term)


def _as_float(x0) -> jax.Array:
    x0 = jnp.asarray(x0)
    return x0 if jnp.issubdtype(x0.dtype, jnp.floating) else x0.astype(jnp.float32)


def _prior_kl(process: processes_lib.Process, x0: jax.Array) -> jax.Array:
    """KL(N(α_1 x_0, σ_1² I) ‖ N(0, s² I)) per example, s the prior's standard deviation."""
    one = jnp.ones((x0.shape[0],), jnp.float32)
    alpha1, sigma2_1 = processes_lib.per_example(process.alpha(one), x0), processes_lib.per_example(
        process.sigma2(one), x0)
    s2 = process.prior_std() ** 2
    return 0.5 * _sum_per_example(
        (jnp.square(alpha1 * x0) + sigma2_1) / s2 - 1.0 - jnp.log(sigma2_1 / s2))


def _decoder_nll(process: processes_lib.Process, eps_fn, x0: jax.Array, x: jax.Array, t0) -> jax.Array:
    r"""-log N(x_0; x̂, (σ_0/α_0)² I) per example, x̂ = (x - σ_0 ε_θ(x, t_0))/α_0 (Tweedie's mean).

    .. math::  \tfrac{D}{2}\log\frac{2\pi\sigma_0^2}{\alpha_0^2}
               + \tfrac12\|\varepsilon_\theta(x, t_0) - \hat\varepsilon\|^2, \qquad
               \hat\varepsilon = \frac{x - \alpha_0 x_0}{\sigma_0}.
    """
    dim = math.prod(x0.shape[1:])
    t_B = jnp.full((x0.shape[0],), t0, jnp.float32)
    eps_hat = (x - process.alpha(t0).astype(x.dtype) * x0) / process.sigma(t0).astype(x.dtype)
    log_ratio = process.log_sigma2(t0) - 2.0 * process.log_alpha(t0)
    return (0.5 * dim * (math.log(2.0 * math.pi) + log_ratio)
            + 0.5 * _sum_per_example(jnp.square(eps_fn(x, t_B).astype(x.dtype) - eps_hat)))


def _check_scheme(num_steps, scheme: str) -> int:
    if scheme not in walks.SCHEMES:
        raise ValueError(f"unknown reverse scheme {scheme!r}; choose one of {walks.SCHEMES}")
    return processes_lib.check_num_steps(num_steps)


@_highest_precision
def walk_bound(process: processes_lib.Process, eps_fn: processes_lib.EpsFn, x0: jax.Array,
               key: jax.Array, *, q: increments.Law | str, p: increments.Law | str, num_steps: int,
               scheme: str = walks.DEFAULT_SCHEME,
               grid: str = processes_lib.DEFAULT_GRID, x0_variance_fn=None, eta=1.0,
               variance_weight=None) -> dict:
    r"""A true upper bound on -log p_θ(x_0), in nats per example, for every p of full support.

    **What is bounded.** The model is the K-step reverse walk with law-p kernels on ``grid``
    followed by a Gaussian decoder:

    .. math::  x_{t_K} \sim \text{prior}, \qquad
               p_\theta(x_{t_k} \mid x_{t_{k+1}}) = \prod_i \tfrac1{b_k}\,
               f_p\Big(\frac{x_{t_k,i} - \mu_\theta(x_{t_{k+1}})_i}{b_k}\Big), \qquad
               p_\theta(x_0 \mid x_{t_0}) = N\big(x_0;\ \hat x(x_{t_0}),\ (\sigma_0/\alpha_0)^2 I\big),

    μ_θ and b_k the mean and scale of ``scheme``'s step (:func:`reverse_kernel`), x̂ Tweedie's
    mean at t_0 = t_eps. Its samples are the output of
    ``walks.reverse(..., law=p, scheme, grid, denoise=True)`` (which ends with the
    noise-free Tweedie step x̂) plus N(0, (σ_0/α_0)² I) noise; p_θ(x_0) is their density.
    The law q that trained the network plays no part: the bound describes the law-p walk.

    **The bound.** For any chain r(x_{t_0:t_K} | x_0),
    log p_θ(x_0) ≥ E_r[log p_θ(x_0, x_{t_0:t_K}) - log r], and with
    r(x_{t_K} | x_0) = N(α_1 x_0, σ_1² I) and law-p steps of the forward posterior's mean μ̃
    (:func:`posterior_kernel`) and scale b_k it reads

    .. math::  -\log p_\theta(x_0) \le \mathrm{KL}(N(\alpha_1 x_0, \sigma_1^2) \,\|\, \text{prior})
               + \sum_{k=0}^{K-1} \mathbb{E}_r\Big[\sum_i \ell_{p,p}\Big(
                 \frac{\tilde\mu_i - \mu_{\theta,i}}{b_k}\Big)\Big]
               + \mathbb{E}_r\big[-\log p_\theta(x_0 \mid x_{t_0})\big],

    ℓ_{p,p}(u) = KL(p(· - u) ‖ p) (:func:`nnd.losses.shift_kl`). x_{t_k} is drawn along r
    (one network call per step and example, as in sampling), not from Gaussian marginals.

    For p = gaussian the chain's steps take the posterior's own variance σ_s² r instead
    (r is then the forward process itself, x_{t_k} ~ N(α x_0, σ²) exactly), so each term is
    the exact Gaussian KL of :func:`gaussian_step_kl` and the sum equals, in expectation, the
    Gaussian-marginal sum of earlier versions. For ``ancestral`` both choices coincide
    (b_k = σ_s√r); for ``euler``, ``analytic`` and the rest of the variance family this r keeps
    x_t on the data's noised marginals, where the network was trained. ``x0_variance_fn``,
    ``eta`` and ``variance_weight`` choose the member as in :func:`nnd.walks.reverse`
    (``analytic`` needs the per-point variance; η = 0 has no density and no bound). The
    default is η = 1, the member a bound prefers, not the sampler's default rule
    (:func:`nnd.walks.default_eta`): the rule's η = 0.8 narrows each step below the
    posterior's variance, and on toy_gaussian at K = 100 its bound is 8.72 nats/dim against
    0.52 for η = 1 (docs/math.md §3.4); ``eta=None`` takes the rule.

    Raises:
      ValueError: p of bounded support (uniform) or without a density (rademacher): there is
        no bound of this kind (:func:`is_bound`); an unknown scheme or a bad K; η = 0 or a
        family member that needs a per-point variance without ``x0_variance_fn``.

    Returns:
      dict of [B] arrays: ``prior_kl``, ``steps`` (the sum over k), ``reconstruction`` (the
      decoder's expected -log density) and ``total`` (their sum, the bound).
    """
    num_steps = _check_scheme(num_steps, scheme)
    eta = walks.resolve_eta(eta, scheme, variance_weight, num_steps)
    walks.check_family(scheme, eta, variance_weight, x0_variance_fn is not None)
    if isinstance(eta, (int, float)) and eta == 0:
        raise ValueError("eta = 0 is a deterministic step: it has no density, so no bound")
    family = dict(eta=eta, variance_weight=variance_weight)
    p = _bound_law(p)
    gaussian = isinstance(p, increments.Gaussian)
    x0 = _as_float(x0)
    dtype, batch = x0.dtype, x0.shape[0]
    t_grid = processes_lib.sampling_grid(process, num_steps, grid)
    key_prior, key_steps = jax.random.split(key)
    x_start = process.marginal(x0, jax.random.normal(key_prior, x0.shape, dtype),
                               jnp.ones((batch,), jnp.float32)).astype(dtype)

    def step(carry, inputs):
        x, total = carry
        k, t, s = inputs
        t_B = jnp.full((batch,), t, jnp.float32)
        eps_pred = eps_fn(x, t_B).astype(dtype)
        v = None if x0_variance_fn is None else x0_variance_fn(x, t_B).astype(dtype)
        mean_q, std_q = posterior_kernel(process, x0, x, t, s)
        key_k = jax.random.fold_in(key_steps, k)
        if gaussian:
            eps_hat = (x - process.alpha(t).astype(dtype) * x0) / process.sigma(t).astype(dtype)
            kl = gaussian_step_kl(process, scheme, x0, x, eps_hat, eps_pred, t, s, v, **family)
            x_next = mean_q + std_q.astype(dtype) * jax.random.normal(key_k, x.shape, dtype)
        else:
            _, scale = reverse_kernel(process, scheme, x, eps_pred, t, s, v, **family)
            scale = jnp.asarray(scale).astype(dtype)
            u = kernel_gap(process, scheme, x0, x, eps_pred, t, s, v, **family) / scale
            kl = _sum_per_example(losses.shift_kl(p, p, u))
            x_next = mean_q + scale * p.sample(key_k, x.shape, dtype)
        return (x_next.astype(dtype), total + kl.astype(dtype)), None

    inputs = (jnp.arange(num_steps), t_grid[1:], t_grid[:-1])
    (x_first, steps), _ = jax.lax.scan(step, (x_start, jnp.zeros((batch,), dtype)), inputs,
                                       reverse=True)
    reconstruction = _decoder_nll(process, eps_fn, x0, x_first, t_grid[0]).astype(dtype)
    prior_kl = _prior_kl(process, x0).astype(dtype)
    return {"prior_kl": prior_kl, "steps": steps, "reconstruction": reconstruction,
            "total": prior_kl + steps + reconstruction}


@_highest_precision
def walk_estimate(process: processes_lib.Process, eps_fn: processes_lib.EpsFn, x0: jax.Array,
                  key: jax.Array, *, q: increments.Law | str, p: increments.Law | str,
                  num_steps: int, scheme: str = walks.DEFAULT_SCHEME,
                  grid: str = processes_lib.DEFAULT_GRID) -> dict:
    r"""The paper's eq. (5) sum for (q, p, K) per example, in nats: an estimate, not a bound.

    .. math::  \mathrm{KL}(N(\alpha_1 x_0, \sigma_1^2) \,\|\, \text{prior})
               + \sum_{k=0}^{K-1} \sum_i \ell_{q,p}\big(c_k(\varepsilon_\theta - \varepsilon)_i\big)
               + \Big[\tfrac{D}{2}\log\tfrac{2\pi\sigma_0^2}{\alpha_0^2}
               + \tfrac12\|\varepsilon - \varepsilon_\theta\|^2\Big],

    one ε per step and example, x_t = α_t x_0 + σ_t ε from the Gaussian marginal, steps from
    t = t_{k+1} to s = t_k of ``grid``, c_k the scheme's scale (:func:`nnd.losses.scheme_scale`).
    For q ≠ p it bounds nothing (the true reverse kernel of a non-Gaussian walk given x_0 is
    q tilted, not shifted); it is what the training objective sums. For a true bound of the
    law-p walk use :func:`walk_bound`.

    Returns:
      dict of [B] arrays: ``prior_kl``, ``steps`` (Σ_k L_k without the K·D·ℓ_{q,p}(0)
      penalty), ``reconstruction``, ``total`` and ``total_with_penalty`` (adds K·D·ℓ(0)),
      plus the scalar ``penalty``.
    """
    num_steps = _check_scheme(num_steps, scheme)
    x0 = _as_float(x0)
    dtype, batch, dim = x0.dtype, x0.shape[0], math.prod(x0.shape[1:])
    t_grid = processes_lib.sampling_grid(process, num_steps, grid)
    ell_0 = losses.penalty(q, p, dtype)

    def noised(t, k):
        eps = jax.random.normal(jax.random.fold_in(key, k), x0.shape, dtype)
        return eps, process.marginal(x0, eps, jnp.full((batch,), t, jnp.float32))

    def step(total, inputs):
        k, t, s = inputs
        eps, x = noised(t, k)
        eps_pred = eps_fn(x, jnp.full((batch,), t, jnp.float32)).astype(dtype)
        c = losses.scheme_scale(process, scheme, t, s).astype(dtype)
        ell = losses.shift_kl(q, p, c * (eps_pred - eps)) - ell_0
        return total + _sum_per_example(ell).astype(dtype), None

    inputs = (jnp.arange(num_steps), t_grid[1:], t_grid[:-1])
    steps, _ = jax.lax.scan(step, jnp.zeros((batch,), dtype), inputs)
    _, x = noised(t_grid[0], num_steps)
    reconstruction = _decoder_nll(process, eps_fn, x0, x, t_grid[0]).astype(dtype)
    prior_kl = _prior_kl(process, x0).astype(dtype)
    penalty = num_steps * dim * ell_0
    total = prior_kl + steps + reconstruction
    return {"prior_kl": prior_kl, "steps": steps, "reconstruction": reconstruction,
            "total": total, "total_with_penalty": total + penalty, "penalty": penalty}
