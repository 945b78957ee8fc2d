"""Candidate exact samplers for the gamma-based increment laws (a study, not the library).

``nnd.increments`` draws student_t through ``jax.random.t`` and gennorm through
``jax.random.gamma``; both run Marsaglia–Tsang rejection per element inside a
vmapped ``while_loop`` with a per-element key split, which makes a reverse walk
~2.5× slower than the Gaussian one (``python -m nnd.bench.walks``). This module
times exact alternatives on the walk's noise alone (K draws of shape [B, D] in a
``lax.scan``) and checks each against scipy with a Kolmogorov–Smirnov test:

- ``t_chi2_int``: z / √(χ²_ν/ν) with χ²_ν built from ⌊ν/2⌋ exponentials
  (-2 log Π U_i) plus one N² when ν is odd. Exact for integer ν only.
- ``t_bailey``: Bailey's (1994) polar method, exact for any real ν > 0: U, V ~ U(-1, 1),
  W = U² + V², accept W ≤ 1, T = U √(ν (W^{-2/ν} - 1) / W); acceptance π/4. Rejection
  is done on the whole array with one key per round (rounds ≈ log N / log(1/0.215)).
- ``gamma_mt_array``: Marsaglia–Tsang on the whole array (one key per round, boost
  U^{1/a} for a < 1), used for gennorm (|z|/α = Gamma(1/β)^{1/β}) and for the
  χ² of ``t_mt_array``.
- ``*_compact``: the same Marsaglia–Tsang, but after one full-array round only the
  still-pending entries (≈1–5 %) are redrawn, in a buffer of N/16.

Run ``python -m nnd.bench.samplers [SUBSTRING]`` (SUBSTRING keeps matching candidates).

"""

from __future__ import annotations

import functools
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from nnd import increments

__all__ = [
    "t_chi2_int", "t_bailey", "gamma_mt_array", "t_mt_array", "gennorm_mt_array",
    "gamma_mt_compact", "t_mt_compact", "gennorm_mt_compact", "main",
]


def t_chi2_int(key, df: int, shape, dtype=jnp.float32):
    """Standard (unscaled) t_df for integer df: z / sqrt(chi2_df / df)."""
    k_z, k_u, k_n = jax.random.split(key, 3)
    z = jax.random.normal(k_z, shape, dtype)
    half = df // 2
    chi2 = jnp.zeros(shape, dtype)
    if half:
        u = jax.random.uniform(k_u, (half,) + tuple(shape), dtype, minval=jnp.finfo(dtype).tiny)
        chi2 = -2.0 * jnp.sum(jnp.log(u), axis=0)
    if df % 2:
        chi2 = chi2 + jnp.square(jax.random.normal(k_n, shape, dtype))
    return z * jnp.sqrt(df / chi2)


def _reject_whole_array(key, shape, dtype, propose):
    """Exact rejection on the whole array: ``propose(key) -> (value, accepted)`` per round."""
    value, ok = propose(jax.random.fold_in(key, 0))

    def cond(carry):
        return ~jnp.all(carry[1])

    def body(carry):
        value, ok, i = carry
        new, new_ok = propose(jax.random.fold_in(key, i))
        take = ~ok & new_ok
        return jnp.where(take, new, value), ok | new_ok, i + 1

    value, _, _ = jax.lax.while_loop(cond, body, (value, ok, jnp.int32(1)))
    return value


def _reject_compact(key, shape, dtype, propose, *, buffer_frac: float = 1 / 16):
    """Exact rejection: one full-array round, then rounds on a compacted buffer.

    ``propose(key, shape) -> (value, accepted)``. After the first round only the
    still-pending entries (found with ``jnp.nonzero(size=C)``, C = N·buffer_frac)
    get fresh proposals, so later rounds cost ~C draws instead of N. Which entries
    are redrawn never depends on proposal values, so the result stays exact; if more
    than C are pending the loop simply takes more rounds.
    """
    n = math.prod(shape)
    size = max(1, int(n * buffer_frac))
    value, ok = propose(jax.random.fold_in(key, 0), (n,))

    def cond(carry):
        return ~jnp.all(carry[1])

    def body(carry):
        value, ok, i = carry
        idx = jnp.nonzero(~ok, size=size, fill_value=n)[0]
        new, new_ok = propose(jax.random.fold_in(key, i), (size,))
        old = value[jnp.minimum(idx, n - 1)]
        value = value.at[idx].set(jnp.where(new_ok, new, old), mode="drop")
        ok = ok.at[idx].set(new_ok, mode="drop")
        return value, ok, i + 1

    value, _, _ = jax.lax.while_loop(cond, body, (value, ok, jnp.int32(1)))
    return value.reshape(shape)


def gamma_mt_compact(key, a: float, shape, dtype=jnp.float32):
    """Gamma(a) by Marsaglia–Tsang with compacted re-proposals (boost U^{1/a} for a < 1)."""
    k_boost, k_mt = jax.random.split(key)
    a_mt = a if a >= 1.0 else a + 1.0
    d = a_mt - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)

    def propose(k, shp):
        k_x, k_u = jax.random.split(k)
        x = jax.random.normal(k_x, shp, dtype)
        u = jax.random.uniform(k_u, shp, dtype)
        v = (1.0 + c * x) ** 3
        v_safe = jnp.where(v > 0, v, 1.0)
        ok = (v > 0) & (jnp.log(u) < 0.5 * x * x + d - d * v_safe + d * jnp.log(v_safe))
        return d * v_safe, ok

    g = _reject_compact(k_mt, shape, dtype, propose)
    if a < 1.0:
        u = jax.random.uniform(k_boost, shape, dtype, minval=jnp.finfo(dtype).tiny)
        g = g * jnp.exp(jnp.log(u) / a)
    return g


def t_mt_compact(key, df: float, shape, dtype=jnp.float32):
    """Standard t_df = z sqrt((df/2) / Gamma(df/2)), gamma with compacted rejection."""
    k_z, k_g = jax.random.split(key)
    z = jax.random.normal(k_z, shape, dtype)
    return z * jnp.sqrt(0.5 * df / gamma_mt_compact(k_g, 0.5 * df, shape, dtype))


def gennorm_mt_compact(key, beta: float, shape, dtype=jnp.float32):
    """Standard gennorm(beta) from a compacted-rejection gamma."""
    k_g, k_s = jax.random.split(key)
    g = gamma_mt_compact(k_g, 1.0 / beta, shape, dtype)
    sign = jnp.where(jax.random.bernoulli(k_s, 0.5, shape), 1.0, -1.0).astype(dtype)
    return sign * g ** (1.0 / beta)


def t_bailey(key, df: float, shape, dtype=jnp.float32):
    """Standard t_df by Bailey's polar method (exact, any df > 0)."""

    def propose(k):
        uv = jax.random.uniform(k, (2,) + tuple(shape), dtype, minval=-1.0, maxval=1.0)
        w = uv[0] ** 2 + uv[1] ** 2
        ok = (w <= 1.0) & (w > 0.0)
        w_safe = jnp.where(ok, w, 0.5)
        t = uv[0] * jnp.sqrt(df * jnp.expm1(-(2.0 / df) * jnp.log(w_safe)) / w_safe)
        return t, ok

    return _reject_whole_array(key, shape, dtype, propose)


def gamma_mt_array(key, a: float, shape, dtype=jnp.float32):
    """Gamma(a) by Marsaglia–Tsang on the whole array (boost U^{1/a} for a < 1)."""
    k_boost, k_mt = jax.random.split(key)
    a_mt = a if a >= 1.0 else a + 1.0
    d = a_mt - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)

    def propose(k):
        k_x, k_u = jax.random.split(k)
        x = jax.random.normal(k_x, shape, dtype)
        u = jax.random.uniform(k_u, shape, dtype)
        v = (1.0 + c * x) ** 3
        v_safe = jnp.where(v > 0, v, 1.0)
        ok = (v > 0) & (jnp.log(u) < 0.5 * x * x + d - d * v_safe + d * jnp.log(v_safe))
        return d * v_safe, ok

    g = _reject_whole_array(k_mt, shape, dtype, propose)
    if a < 1.0:
        u = jax.random.uniform(k_boost, shape, dtype, minval=jnp.finfo(dtype).tiny)
        g = g * jnp.exp(jnp.log(u) / a)
    return g


def t_mt_array(key, df: float, shape, dtype=jnp.float32):
    """Standard t_df = z sqrt((df/2) / Gamma(df/2)), gamma by whole-array Marsaglia–Tsang."""
    k_z, k_g = jax.random.split(key)
    z = jax.random.normal(k_z, shape, dtype)
    return z * jnp.sqrt(0.5 * df / gamma_mt_array(k_g, 0.5 * df, shape, dtype))


def gennorm_mt_array(key, beta: float, shape, dtype=jnp.float32):
    """Standard gennorm(beta) (density ∝ exp(-|x|^beta)) from a whole-array gamma."""
    k_g, k_s = jax.random.split(key)
    g = gamma_mt_array(k_g, 1.0 / beta, shape, dtype)
    sign = jnp.where(jax.random.bernoulli(k_s, 0.5, shape), 1.0, -1.0).astype(dtype)
    return sign * g ** (1.0 / beta)


def _scan_cost(sample, shape, num_steps: int, repeats: int) -> float:
    """Median seconds of K draws of ``sample(key, shape)`` summed in a lax.scan."""

    def draw(key):
        def step(acc, k):
            return acc + sample(jax.random.fold_in(key, k), shape), None

        return jax.lax.scan(step, jnp.zeros(shape, jnp.float32), jnp.arange(num_steps))[0]

    compiled = jax.jit(draw).lower(jax.random.key(0)).compile()
    jax.block_until_ready(compiled(jax.random.key(0)))
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(jax.random.key(r + 1)))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _ks(sample, dist, n: int = 200_000) -> float:
    x = np.asarray(jax.jit(functools.partial(sample, shape=(n,)))(jax.random.key(123)))
    return float(stats.kstest(x, dist.cdf).pvalue)


def main(num_steps: int = 1000, num_points: int = 10_000, repeats: int = 3,
         only: str = "") -> list[dict]:
    """Times and KS-checks each candidate; ``only`` keeps names containing it (and the reference)."""
    shape = (num_points, 2)
    df, beta = 5.0, 1.5
    gennorm_law = increments.get("gennorm", beta=beta)
    candidates = [
        ("gaussian (reference)", lambda k, shape: jax.random.normal(k, shape), stats.norm),
        ("uniform (cheapest draw)", lambda k, shape: jax.random.uniform(k, shape), stats.uniform),
        ("t5: jax.random.t (current)", lambda k, shape: jax.random.t(k, df, shape), stats.t(df)),
        ("t5: chi2 from uniforms (int df)", lambda k, shape: t_chi2_int(k, 5, shape), stats.t(df)),
        ("t5: Bailey polar, array rejection", lambda k, shape: t_bailey(k, df, shape),
         stats.t(df)),
        ("t5: array Marsaglia-Tsang chi2", lambda k, shape: t_mt_array(k, df, shape),
         stats.t(df)),
        ("t5: compact Marsaglia-Tsang chi2", lambda k, shape: t_mt_compact(k, df, shape),
         stats.t(df)),
        ("gennorm1.5: jax.random.gamma (current)",
         lambda k, shape: gennorm_law.sample(k, shape) / gennorm_law.scale,
         stats.gennorm(beta)),
        ("gennorm1.5: array Marsaglia-Tsang", lambda k, shape: gennorm_mt_array(k, beta, shape),
         stats.gennorm(beta)),
        ("gennorm1.5: compact Marsaglia-Tsang",
         lambda k, shape: gennorm_mt_compact(k, beta, shape), stats.gennorm(beta)),
    ]
    if only:
        candidates = [c for c in candidates if c[0].startswith("gaussian") or only in c[0]]
    rows = []
    ref = None
    for name, sample, dist in candidates:
        seconds = _scan_cost(sample, shape, num_steps, repeats)
        ref = ref or seconds
        p = _ks(sample, dist)
        rows.append({"sampler": name, "seconds": seconds, "ratio": seconds / ref, "ks_p": p})
        print(f"{name:>42s}  {seconds:7.3f}s  ×{seconds / ref:5.2f}  KS p = {p:.3f}", flush=True)
    return rows


if __name__ == "__main__":
    import sys

    main(only=sys.argv[1] if len(sys.argv) > 1 else "")
