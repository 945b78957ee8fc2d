"""ε-prediction networks in Flax linen.

Every network maps (x_t, t) to ε_θ(x_t, t) with the shape of x_t, conditioned on
t ∈ [0, 1] through a sinusoidal embedding (t is scaled by 1000, as in DDPM).

linen rather than nnx: the train step is a pure function of a parameter pytree
(``(state, batch, key) -> (state, metrics)``), which is what linen's
``init``/``apply`` give directly, with no graph state to split or merge under
``jax.jit`` and sharding annotations.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["sinusoidal_embedding", "MLP", "ResBlock", "AttnBlock", "VDMNet", "UNet", "MODELS", "make",
           "init_params"]


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
    def __call__(self, x_BxD, t_B, train: bool = False):
        del train  # no dropout in the MLP
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


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups of at least 4 channels each.

    Groups of one channel would subtract a per-channel constant, and ResBlock adds
    the time embedding as exactly that before its second norm: the network would
    not see t. With ≥ 4 channels per group the embedding survives the norm.
    """
    limit = max(1, min(32, channels // 4))
    groups = max(g for g in range(1, limit + 1) if channels % g == 0)
    return nn.GroupNorm(num_groups=groups)


def _conv_net_time_embedding(t_B, embed_dim: int):
    """Sinusoidal features through a 2-layer MLP of width 4·embed_dim (called inside a
    compact module, so its Dense layers belong to the caller)."""
    emb = sinusoidal_embedding(t_B, embed_dim)
    return nn.Dense(4 * embed_dim)(nn.silu(nn.Dense(4 * embed_dim)(emb)))


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, plus the time embedding, twice; residual (1×1 if widths differ)."""

    channels: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, h_BxHxWxC, emb_BxE, train: bool = False):
        r = nn.Conv(self.channels, (3, 3))(nn.silu(_group_norm(h_BxHxWxC.shape[-1])(h_BxHxWxC)))
        r = r + nn.Dense(self.channels)(nn.silu(emb_BxE))[:, None, None, :]
        r = nn.silu(_group_norm(self.channels)(r))
        r = nn.Dropout(self.dropout, deterministic=not train)(r)
        r = nn.Conv(self.channels, (3, 3), kernel_init=nn.initializers.zeros)(r)
        if h_BxHxWxC.shape[-1] != self.channels:
            h_BxHxWxC = nn.Conv(self.channels, (1, 1))(h_BxHxWxC)
        return h_BxHxWxC + r


class AttnBlock(nn.Module):
    """Single-head self-attention over the spatial positions, residual."""

    @nn.compact
    def __call__(self, h_BxHxWxC):
        b, hh, ww, c = h_BxHxWxC.shape
        x = _group_norm(c)(h_BxHxWxC).reshape(b, hh * ww, c)
        x = nn.MultiHeadDotProductAttention(
            num_heads=1, qkv_features=c, out_kernel_init=nn.initializers.zeros)(x)
        return h_BxHxWxC + x.reshape(b, hh, ww, c)


class VDMNet(nn.Module):
    """VDM's CIFAR-10 score network shape: a U-Net without downsampling.

    ``num_blocks`` residual blocks at full resolution whose outputs are kept,
    an attention block in the middle, then ``num_blocks + 1`` blocks that each
    take one kept activation as a skip (Kingma et al. 2021 used 32 blocks of
    width 128 on CIFAR-10).
    """

    channels: int = 128
    num_blocks: int = 32
    embed_dim: int = 128
    dropout: float = 0.1

    @nn.compact
    def __call__(self, x_BxHxWxC, t_B, train: bool = False):
        emb = _conv_net_time_embedding(t_B, self.embed_dim)
        h = nn.Conv(self.channels, (3, 3))(x_BxHxWxC)
        skips = [h]
        for _ in range(self.num_blocks):
            h = ResBlock(self.channels, self.dropout)(h, emb, train)
            skips.append(h)
        h = ResBlock(self.channels, self.dropout)(h, emb, train)
        h = AttnBlock()(h)
        h = ResBlock(self.channels, self.dropout)(h, emb, train)
        for _ in range(self.num_blocks + 1):
            h = ResBlock(self.channels, self.dropout)(jnp.concatenate([h, skips.pop()], -1), emb, train)
        h = nn.silu(_group_norm(self.channels)(h))
        return nn.Conv(x_BxHxWxC.shape[-1], (3, 3), kernel_init=nn.initializers.zeros)(h)


class UNet(nn.Module):
    """A DDPM++-style U-Net: residual blocks at each resolution, attention at chosen ones.

    Attributes:
      channels: base width; level i has ``channels * channel_mult[i]``.
      channel_mult: width multipliers, one level per entry (each but the last halves H, W).
      num_res_blocks: residual blocks per level.
      attn_resolutions: spatial sizes (H) that get a self-attention block.
    """

    channels: int = 128
    channel_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    embed_dim: int = 128
    dropout: float = 0.1

    @nn.compact
    def __call__(self, x_BxHxWxC, t_B, train: bool = False):
        emb = _conv_net_time_embedding(t_B, self.embed_dim)
        h = nn.Conv(self.channels, (3, 3))(x_BxHxWxC)
        skips = [h]
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                h = ResBlock(self.channels * mult, self.dropout)(h, emb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = AttnBlock()(h)
                skips.append(h)
            if level != len(self.channel_mult) - 1:
                h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2))(h)
                skips.append(h)
        h = ResBlock(h.shape[-1], self.dropout)(h, emb, train)
        h = AttnBlock()(h)
        h = ResBlock(h.shape[-1], self.dropout)(h, emb, train)
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = ResBlock(self.channels * mult, self.dropout)(
                    jnp.concatenate([h, skips.pop()], -1), emb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = AttnBlock()(h)
            if level != 0:
                b, hh, ww, c = h.shape
                h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), "nearest")
                h = nn.Conv(c, (3, 3))(h)
        h = nn.silu(_group_norm(self.channels)(h))
        return nn.Conv(x_BxHxWxC.shape[-1], (3, 3), kernel_init=nn.initializers.zeros)(h)


#: Name → ε-network class; ``config.model`` holds the name and exactly the class's fields.
MODELS: dict[str, type[nn.Module]] = {"mlp": MLP, "vdm": VDMNet, "unet": UNet}


def make(name: str, **fields) -> nn.Module:
    """``MODELS[name](**fields)``; an unknown name or field raises ValueError naming it."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    cls = MODELS[name]
    allowed = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise ValueError(f"model {name!r} takes no {unknown}; it takes {sorted(allowed)}")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    return cls(**fields)


def init_params(model: nn.Module, key: jax.Array, example_x: jax.Array) -> dict:
    """The parameters of ``model`` for inputs shaped like ``example_x`` [B, ...] (t = 0)."""
    t_B = jnp.zeros((example_x.shape[0],), jnp.float32)
    return model.init(key, example_x, t_B)["params"]
