"""ε-prediction networks in Flax linen.

Every network maps (x_t, t) to ε_θ(x_t, t) with the shape of x_t, conditioned on
t ∈ [0, 1] through a sinusoidal embedding (t is scaled by 1000, as in DDPM).

linen rather than nnx: the train step is a pure function of a parameter pytree
(``(state, batch, key) -> (state, metrics)``), which is what linen's
``init``/``apply`` give directly, with no graph state to split or merge under
``jax.jit`` and sharding annotations.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

__all__ = ["sinusoidal_embedding", "MLP"]


def sinusoidal_embedding(t_B, dim: int, max_period: float = 1e4):
    """Sinusoidal features [B, dim] of times t_B ∈ [0, 1] (scaled by 1000)."""
    if dim % 2:
        raise ValueError(f"embedding dim must be even, got {dim}")
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = 1000.0 * t_B.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class MLP(nn.Module):
    """Residual MLP for low-dimensional data (the 2-D toys).

    Attributes:
      hidden: width of the hidden layers.
      depth: number of residual blocks.
      embed_dim: size of the condition embedding.
    """

    hidden: int = 256
    depth: int = 3
    embed_dim: int = 64

    @nn.compact
    def __call__(self, x_BxD, t_B):
        emb = sinusoidal_embedding(t_B, self.embed_dim)
        emb = nn.Dense(self.hidden)(nn.silu(nn.Dense(self.hidden)(emb)))
        h = nn.Dense(self.hidden)(x_BxD)
        for _ in range(self.depth):
            r = nn.LayerNorm()(h)
            r = nn.Dense(self.hidden)(nn.silu(r + emb))
            r = nn.Dense(self.hidden)(nn.silu(r))
            h = h + r
        out = nn.Dense(x_BxD.shape[-1], kernel_init=nn.initializers.zeros)(nn.silu(h))
        return out
