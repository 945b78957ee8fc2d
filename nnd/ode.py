"""ODE solvers for the probability-flow ODE: fixed-step Heun and adaptive Dormand–Prince.

Both integrate ``dy/dt = fn(y, t)`` for a pytree ``y`` whose leaves share a
leading batch axis, from ``t0`` to ``t1`` (either direction), entirely inside
JAX (``lax.scan`` / ``lax.while_loop``): a jitted caller never returns to the
host between function evaluations. Each returns ``(y1, Stats)`` where
``Stats.nfe`` counts evaluations of ``fn``.

The adaptive solver is the Dormand–Prince 5(4) pair (Dormand & Prince 1980)
with first-same-as-last, Hairer's starting step and the usual controller
``h ← h · clip(0.9 · err^{-1/5}, 0.2, 10)``. Its error norm is the RMS of
``err / (atol + rtol · max(|y0|, |y1|))`` over each example's coordinates, and
the step is accepted when the *worst example* has norm ≤ 1, so every example of
the batch meets the tolerance (a batch-averaged norm would let outliers drift).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["Stats", "heun", "dopri5"]


class Stats(NamedTuple):
    """Work done by a solve: function evaluations, accepted and rejected steps, success."""

    nfe: jax.Array
    accepted: jax.Array
    rejected: jax.Array
    finished: jax.Array  # False if max_steps ran out before t1


def _axpy(y, h, *terms):
    """y + h Σ c_i k_i over pytrees; terms are (c_i, k_i) pairs with c_i == 0 skipped."""
    def combine(y_leaf, *k_leaves):
        acc = y_leaf
        for (c, _), k in zip(terms, k_leaves):
            if c != 0.0:
                acc = acc + jnp.asarray(h * c, y_leaf.dtype) * k
        return acc

    return jax.tree.map(combine, y, *[k for _, k in terms])


def heun(fn, y0, t0: float, t1: float, num_steps: int, *, times=None):
    """Heun's method (explicit trapezoid, order 2) from t0 to t1; NFE = 2·steps.

    ``num_steps`` equal steps, or the steps between consecutive entries of ``times``
    (num_steps + 1 values from t0 to t1, e.g. a grid uniform in log-SNR).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if times is None:
        times = t0 + (t1 - t0) / num_steps * jnp.arange(num_steps + 1, dtype=jnp.float32)
    times = jnp.asarray(times, jnp.float32)
    if times.shape != (num_steps + 1,):
        raise ValueError(f"times must hold num_steps + 1 = {num_steps + 1} values, got {times.shape}")

    def step(y, t_pair):
        t, t_next = t_pair
        h = t_next - t
        k1 = fn(y, t)
        y_pred = _axpy(y, h, (1.0, k1))
        k2 = fn(y_pred, t_next)
        return _axpy(y, h, (0.5, k1), (0.5, k2)), None

    y1, _ = jax.lax.scan(step, y0, (times[:-1], times[1:]))
    n = jnp.asarray(num_steps, jnp.int32)
    return y1, Stats(nfe=2 * n, accepted=n, rejected=jnp.zeros((), jnp.int32),
                     finished=jnp.asarray(True))


# Dormand–Prince 5(4) tableau.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = _A[6] + (0.0,)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b5 - b4 for b5, b4 in zip(_B5, _B4))


def _norm_per_example(tree, scale_tree):
    """RMS of tree/scale over each example's coordinates: [B]."""
    sq = jax.tree.leaves(jax.tree.map(
        lambda v, s: jnp.sum(jnp.square(v / s).reshape(v.shape[0], -1), axis=1), tree, scale_tree))
    n = sum(int(v.size // v.shape[0]) for v in jax.tree.leaves(tree))
    return jnp.sqrt(sum(sq) / n)


def dopri5(fn, y0, t0: float, t1: float, *, rtol: float = 1e-5, atol: float = 1e-5,
           max_steps: int = 10_000, first_step: float | None = None):
    """Adaptive Dormand–Prince 5(4) from t0 to t1; returns (y1, Stats).

    Args:
      fn: ``fn(y, t) -> dy/dt`` with t a scalar.
      y0: pytree of arrays with a shared leading batch axis.
      rtol, atol: tolerances of the per-example RMS error norm.
      max_steps: bound on attempted steps; ``Stats.finished`` is False if reached.
      first_step: initial |h|; default Hairer's estimate (one extra evaluation).
    """
    if rtol <= 0 or atol <= 0:
        raise ValueError(f"rtol and atol must be positive, got {rtol}, {atol}")
    direction = 1.0 if t1 >= t0 else -1.0
    span = abs(t1 - t0)
    t0 = jnp.asarray(t0, jnp.float32)
    t1 = jnp.asarray(t1, jnp.float32)
    k1 = fn(y0, t0)
    nfe = 1

    def scale_of(y_a, y_b):
        return jax.tree.map(lambda a, b: atol + rtol * jnp.maximum(jnp.abs(a), jnp.abs(b)), y_a, y_b)

    if first_step is None:
        scale0 = scale_of(y0, y0)
        d0 = jnp.max(_norm_per_example(y0, scale0))
        d1 = jnp.max(_norm_per_example(k1, scale0))
        h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1)
        h0 = jnp.minimum(h0, span)
        y_probe = _axpy(y0, direction * h0, (1.0, k1))
        k_probe = fn(y_probe, t0 + direction * h0)
        nfe += 1
        diff = jax.tree.map(lambda a, b: a - b, k_probe, k1)
        d2 = jnp.max(_norm_per_example(diff, scale0)) / h0
        h1 = jnp.where(jnp.maximum(d1, d2) <= 1e-15, jnp.maximum(1e-6, h0 * 1e-3),
                       (0.01 / jnp.maximum(d1, d2)) ** 0.2)
        h = jnp.minimum(100.0 * h0, h1)
    else:
        h = jnp.asarray(first_step, jnp.float32)
    h = jnp.minimum(h, span).astype(jnp.float32)

    def cond(carry):
        t, _, _, _, _, accepted, rejected = carry
        return (direction * (t1 - t) > 0) & (accepted + rejected < max_steps)

    def body(carry):
        t, y, k_first, h_abs, nfe_, accepted, rejected = carry
        h_abs = jnp.minimum(h_abs, direction * (t1 - t))
        h_step = direction * h_abs
        ks = [k_first]
        for i in range(1, 7):
            y_i = _axpy(y, h_step, *zip(_A[i], ks))
            ks.append(fn(y_i, t + _C[i] * h_step))
        y_new = _axpy(y, h_step, *zip(_B5[:6], ks[:6]))
        err = _axpy(jax.tree.map(jnp.zeros_like, y), h_step, *zip(_E, ks))
        norm = jnp.max(_norm_per_example(err, scale_of(y, y_new)))
        norm = jnp.where(jnp.isfinite(norm), norm, jnp.inf)
        ok = norm <= 1.0
        factor = jnp.clip(0.9 * jnp.where(norm > 0, norm, 1e-10) ** -0.2, 0.2, 10.0)
        t = jnp.where(ok, t + h_step, t)
        # Land exactly on t1 (float rounding of t + h could stop a hair short).
        t = jnp.where(ok & (direction * (t1 - t) <= 1e-7 * span), t1, t)
        y = jax.tree.map(lambda a, b: jnp.where(ok, a, b), y_new, y)
        k_first = jax.tree.map(lambda a, b: jnp.where(ok, a, b), ks[6], k_first)
        # The step size stays float32 whatever the state's dtype (float64 under x64).
        h_abs = (h_abs * factor).astype(jnp.float32)
        return (t, y, k_first, h_abs, nfe_ + 6, accepted + ok.astype(jnp.int32),
                rejected + (~ok).astype(jnp.int32))

    zero = jnp.zeros((), jnp.int32)
    carry = (t0, y0, k1, h, jnp.asarray(nfe, jnp.int32), zero, zero)
    t, y, _, _, nfe_total, accepted, rejected = jax.lax.while_loop(cond, body, carry)
    return y, Stats(nfe=nfe_total, accepted=accepted, rejected=rejected,
                    finished=direction * (t1 - t) <= 0)
