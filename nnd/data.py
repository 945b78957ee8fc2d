"""Training data. For now the 2-D toys, drawn fresh from a key for every step.

A toy batch is a pure function of (seed, step), so a resumed run sees exactly
the batches an uninterrupted run would have seen, with no iterator to save.

- ``gmm8``: 8 Gaussians on the unit circle, std 0.1 (SPEC §6; exact score known).
- ``checkerboard``: uniform on the black squares of a 4×4 board on [-2, 2]².
- ``moons``: two interleaved half circles with Gaussian noise 0.05 (scaled to ≈ unit).
- ``swissroll``: a 2-D swiss roll with noise 0.05 (scaled to ≈ unit).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from nnd import oracles

__all__ = ["toy_batch", "TOYS"]

# The root seed feeds several independent streams; data draws from this one.
_DATA_STREAM = 1


def _gmm8(key, n):
    return oracles.sample_gmm(key, oracles.gmm8(), n)


def _checkerboard(key, n):
    k_cell, k_pos = jax.random.split(key)
    # 8 black cells of a 4x4 board: (i + j) even.
    cells = jnp.array([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0],
                      jnp.float32)
    idx = jax.random.randint(k_cell, (n,), 0, cells.shape[0])
    u = jax.random.uniform(k_pos, (n, 2))
    return (cells[idx] + u) - 2.0


def _moons(key, n):
    k_side, k_angle, k_noise = jax.random.split(key, 3)
    side = jax.random.bernoulli(k_side, 0.5, (n,))
    angle = jax.random.uniform(k_angle, (n,), maxval=jnp.pi)
    upper = jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)
    lower = jnp.stack([1.0 - jnp.cos(angle), 0.5 - jnp.sin(angle)], axis=1)
    x = jnp.where(side[:, None], upper, lower)
    x = x + 0.05 * jax.random.normal(k_noise, (n, 2))
    return (x - jnp.array([0.5, 0.25])) / 0.9


def _swissroll(key, n):
    k_t, k_noise = jax.random.split(key)
    t = 1.5 * jnp.pi * (1.0 + 2.0 * jax.random.uniform(k_t, (n,)))
    x = jnp.stack([t * jnp.cos(t), t * jnp.sin(t)], axis=1) / 7.5
    return x + 0.05 * jax.random.normal(k_noise, (n, 2))


#: Name → sampler(key, n) -> [n, 2] float32.
TOYS = {"gmm8": _gmm8, "checkerboard": _checkerboard, "moons": _moons, "swissroll": _swissroll}


def toy_batch(name: str, seed: int, step: int, batch_size: int):
    """The batch of step ``step``: a pure function of (name, seed, step, batch_size)."""
    if name not in TOYS:
        raise ValueError(f"unknown toy dataset {name!r}; choose one of {sorted(TOYS)}")
    data_root = jax.random.fold_in(jax.random.key(seed), _DATA_STREAM)
    key = jax.random.fold_in(data_root, step)
    return TOYS[name](key, batch_size)
