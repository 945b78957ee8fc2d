"""Samplers: reverse walk, predictor–corrector and the probability-flow ODE (SPEC §5).

Every sampler takes the increment law as a parameter where it injects noise and
returns ``(samples, nfe)``: NFE is the number of score evaluations per sample
(the batch is evaluated together, so it is also the number of network calls).

- ``walk``: the reverse structured random walk of eq. (8) (:func:`nnd.walks.reverse`),
  K score evaluations, plus one for the final denoising step.
- ``pc``: predictor–corrector: before each reverse-walk step, ``corrector_steps``
  Langevin steps at the same t whose noise is the chosen law,
  ``x ← x + ε s(x, t) + √(2ε) z``, z ~ law, with the signal-to-noise step size
  ``ε = 2 (snr ‖z‖ / ‖s‖)²`` per example (Song et al. 2021, Alg. 4–5).
- ``ode``: the probability-flow ODE of eq. (6), ``dx/dt = f(t) x - ½ g(t)² s(x, t)``,
  from t = 1 to t_eps with adaptive Dormand–Prince (:func:`nnd.ode.dopri5`).
- ``heun``: the same ODE with ``num_steps`` fixed Heun steps (2 NFE each).

All finish with the noise-free Tweedie step at t_eps when ``denoise`` (one NFE).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from nnd import ode, walks
from nnd import processes as processes_lib

__all__ = ["SAMPLERS", "pf_ode_drift", "reverse_walk", "predictor_corrector", "pf_ode", "sample"]

#: Sampler names a config may use (``sampling.sampler``).
SAMPLERS = ("walk", "pc", "ode", "heun")


def _batch_time(x, t):
    return jnp.full((x.shape[0],), t, jnp.float32)


def pf_ode_drift(process, score_fn):
    """h(x, t) = f(t) x - ½ g(t)² s(x, t), the probability-flow ODE of eq. (6)."""

    def drift(x, t):
        s = score_fn(x, _batch_time(x, t)).astype(x.dtype)
        f, g = process.f(t), process.g(t)
        return f.astype(x.dtype) * x - (0.5 * g * g).astype(x.dtype) * s

    return drift


def reverse_walk(process, law, score_fn, key, shape, *, num_steps: int, denoise: bool = True,
                 dtype=jnp.float32):
    """The reverse walk of eq. (8) with increments from ``law``; returns (x, nfe)."""
    x = walks.reverse(process, law, score_fn, key, shape, num_steps, denoise=denoise, dtype=dtype)
    return x, jnp.asarray(num_steps + int(denoise), jnp.int32)


def _per_example_norm(v):
    return jnp.sqrt(jnp.sum(jnp.square(v.reshape(v.shape[0], -1)), axis=1))


def predictor_corrector(process, law, score_fn, key, shape, *, num_steps: int, snr: float = 0.16,
                        corrector_steps: int = 1, denoise: bool = True, dtype=jnp.float32):
    """Reverse-walk predictor with a Langevin corrector whose noise is ``law``; returns (x, nfe).

    At t_{k+1}, ``corrector_steps`` times: ``x ← x + ε s + √(2ε) z`` with
    ``ε = 2 (snr ‖z‖/‖s‖)²`` per example; then the eq. (8) step to t_k with
    increments from ``law``.
    """
    num_steps = processes_lib.check_num_steps(num_steps)
    if snr <= 0:
        raise ValueError(f"snr must be positive, got {snr}")
    if corrector_steps < 0:
        raise ValueError(f"corrector_steps must be >= 0, got {corrector_steps}")
    shape = tuple(shape)
    t_grid, dt = processes_lib.time_grid(process, num_steps)
    t_K = t_grid[1:]
    sqrt_dt = math.sqrt(dt)
    key_prior, key_pred, key_corr = jax.random.split(key, 3)
    x_init = process.prior_sample(key_prior, shape, dtype)

    def step(x, inputs):
        k, t = inputs
        t_B = jnp.full((shape[0],), t, jnp.float32)
        for j in range(corrector_steps):
            s = score_fn(x, t_B).astype(dtype)
            z = law.sample(jax.random.fold_in(jax.random.fold_in(key_corr, k), j), shape, dtype)
            ratio = jnp.mean(_per_example_norm(z)) / jnp.maximum(jnp.mean(_per_example_norm(s)), 1e-12)
            eps = (2.0 * jnp.square(snr * ratio)).astype(dtype)
            x = x + eps * s + jnp.sqrt(2.0 * eps) * z
        s = score_fn(x, t_B).astype(dtype)
        f, g = process.f(t), process.g(t)
        z = law.sample(jax.random.fold_in(key_pred, k), shape, dtype)
        x = x - ((f * dt).astype(dtype) * x - (g * g * dt).astype(dtype) * s) + (g * sqrt_dt).astype(dtype) * z
        return x, None

    x, _ = jax.lax.scan(step, x_init, (jnp.arange(num_steps), t_K), reverse=True)
    if denoise:
        x = walks.tweedie_denoise(process, score_fn, x, process.t_eps)
    nfe = num_steps * (1 + corrector_steps) + int(denoise)
    return x, jnp.asarray(nfe, jnp.int32)


def pf_ode(process, score_fn, key, shape, *, solver: str = "ode", num_steps: int = 100,
           rtol: float = 1e-5, atol: float = 1e-5, denoise: bool = True, dtype=jnp.float32):
    """Integrates eq. (6) from a prior draw at t = 1 down to t_eps; returns (x, nfe).

    ``solver`` is ``ode`` (adaptive Dormand–Prince, ``rtol``/``atol``) or
    ``heun`` (``num_steps`` fixed steps). The only randomness is the prior draw.
    """
    x1 = process.prior_sample(key, tuple(shape), dtype)
    drift = pf_ode_drift(process, score_fn)
    if solver == "ode":
        x, stats = ode.dopri5(drift, x1, 1.0, process.t_eps, rtol=rtol, atol=atol)
    elif solver == "heun":
        x, stats = ode.heun(drift, x1, 1.0, process.t_eps, num_steps)
    else:
        raise ValueError(f"ODE solver must be 'ode' or 'heun', got {solver!r}")
    if denoise:
        x = walks.tweedie_denoise(process, score_fn, x, process.t_eps)
    return x, stats.nfe + int(denoise)


def sample(sampler: str, process, law, score_fn, key, shape, *, num_steps: int,
           denoise: bool = True, snr: float = 0.16, corrector_steps: int = 1,
           rtol: float = 1e-3, atol: float = 1e-3, dtype=jnp.float32):
    """Dispatches on ``sampler`` (one of :data:`SAMPLERS`); returns (samples, nfe).

    ``law`` is the increment law of the walk and corrector noise (unused by the
    ODE samplers, which are deterministic given the prior draw).
    """
    if sampler == "walk":
        return reverse_walk(process, law, score_fn, key, shape, num_steps=num_steps,
                            denoise=denoise, dtype=dtype)
    if sampler == "pc":
        return predictor_corrector(process, law, score_fn, key, shape, num_steps=num_steps,
                                   snr=snr, corrector_steps=corrector_steps, denoise=denoise,
                                   dtype=dtype)
    if sampler in ("ode", "heun"):
        return pf_ode(process, score_fn, key, shape, solver=sampler, num_steps=num_steps,
                      rtol=rtol, atol=atol, denoise=denoise, dtype=dtype)
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
