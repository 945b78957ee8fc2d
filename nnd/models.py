"""ε-prediction networks in Flax linen.

Every network maps (x_t, t) to ε_θ(x_t, t) with the shape of x_t, conditioned on
t ∈ [0, 1] through a sinusoidal embedding (t is scaled by 1000, as in DDPM).

linen rather than nnx: the train step is a pure function of a parameter pytree
(``(state, batch, key) -> (state, metrics)``), which is what linen's
``init``/``apply`` give directly, with no graph state to split or merge under
``jax.jit`` and sharding annotations.

Compile time: ``VDMNet(scan=True)`` runs its identical residual blocks under one
``flax.linen.scan`` each way (weights stacked on a leading axis), so XLA compiles one
block instead of 2·num_blocks + 1, and computes every 3×3 kernel gradient tap by tap
(:func:`tapwise_conv`). The cifar train step then compiles 4.3× faster on the CPU
(34 s → 8 s) and 2.9× faster for a v4 slice (479 s → 167 s), and the CPU step is
1.17× slower (width 32, 4 blocks, batch 32). It is off by default: its parameter tree
differs from the unrolled one that earlier checkpoints hold, and its step time on TPU
is not measured (WORKSPACE.md, decisions). ``remat=True`` recomputes each block's
activations in the backward pass, for large batches.

Compute dtype: ``dtype="bfloat16"`` runs convolutions, matmuls and norms in bfloat16
while the parameters stay float32 (``param_dtype``) and the output is float32.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["sinusoidal_embedding", "MLP", "Pointwise", "tapwise_conv", "TapwiseConv", "attention",
           "auto_query_chunk", "target_platform", "CPU_QUERY_CHUNK", "CPU_CHUNK_MIN_POSITIONS",
           "ResBlock", "AttnBlock", "VDMNet", "UNet", "MODELS", "make", "init_params", "DTYPES"]

#: Compute dtypes a model takes (``config.model.dtype``); parameters are float32 either way.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _dtype(name: str):
    if name not in DTYPES:
        raise ValueError(f"unknown compute dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


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
      dtype: compute dtype (a key of :data:`DTYPES`); parameters stay float32.
      learned_variance: add the learned-variance head (:func:`_outputs`).
    """

    hidden: int = 256
    depth: int = 3
    embed_dim: int = 64
    dtype: str = "float32"
    learned_variance: bool = False

    @nn.compact
    def __call__(self, x_BxD, t_B, train: bool = False, with_variance: bool = False):
        del train  # no dropout in the MLP
        dense = functools.partial(nn.Dense, dtype=_dtype(self.dtype))
        emb = sinusoidal_embedding(t_B, self.embed_dim)
        emb = dense(self.hidden)(nn.silu(dense(self.hidden)(emb)))
        h = dense(self.hidden)(x_BxD)
        for _ in range(self.depth):
            r = nn.LayerNorm(dtype=_dtype(self.dtype))(h)
            r = dense(self.hidden)(nn.silu(r + emb))
            r = dense(self.hidden)(nn.silu(r))
            h = h + r
        h = nn.silu(h)
        out = dense(x_BxD.shape[-1], kernel_init=nn.initializers.zeros)(h)
        head = functools.partial(dense, x_BxD.shape[-1])
        return _outputs(self, out, head, h, with_variance)


def _group_norm(channels: int, dtype=jnp.float32) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups of at least 4 channels each.

    Groups of one channel would subtract a per-channel constant, and ResBlock adds
    the time embedding as exactly that before its second norm: the network would
    not see t. With ≥ 4 channels per group the embedding survives the norm.
    """
    limit = max(1, min(32, channels // 4))
    groups = max(g for g in range(1, limit + 1) if channels % g == 0)
    return nn.GroupNorm(num_groups=groups, dtype=dtype)


class Pointwise(nn.Module):
    """A 1×1 convolution written as a matrix product over the channel axis.

    The kernel keeps ``nn.Conv``'s [1, 1, C_in, C_out] shape, initialiser and name, so
    parameter trees and checkpoints are unchanged. XLA:CPU runs the product 1.85×
    faster forward+backward than the convolution alone, and the benchmark's network
    (VDM, width 32, batch 32) 1.06× faster (docs/bench_studies.md).
    """

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC):
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (1, 1, x_BxHxWxC.shape[-1], self.features))
        bias_D = self.param("bias", nn.initializers.zeros, (self.features,))
        y = jnp.dot(x_BxHxWxC.astype(self.dtype), kernel[0, 0].astype(self.dtype))
        return y + bias_D.astype(self.dtype)


_NHWC = ("NHWC", "HWIO", "NHWC")


def _same_conv(x_BxHxWxC, kernel_KxKxCxD):
    return jax.lax.conv_general_dilated(x_BxHxWxC, kernel_KxKxCxD, (1, 1), "SAME",
                                        dimension_numbers=_NHWC)


@jax.custom_vjp
def tapwise_conv(x_BxHxWxC, kernel_KxKxCxD):
    """A stride-1 'SAME' convolution whose kernel gradient is a sum of matrix products,
    one per kernel tap: ∂L/∂W[i, j] = Σ_{b,h,w} x_pad[b, h+i, w+j]ᵀ g[b, h, w].

    Same values and gradients as ``lax.conv_general_dilated`` (forward and input gradient
    are that convolution). Why: XLA's own kernel-gradient convolution is the costly
    op for two compilers. Inside a loop (``VDMNet(scan=True)``) XLA:CPU runs it 40×
    slower than outside (a [32, 32, 32, 32] 3×3 convolution: 3.6 s vs 0.09 s for four
    blocks forward+backward), and XLA:TPU spends about 10 s compiling each distinct one
    (a 3×3, 128-channel convolution's gradient compiles in 11.5 s for v4, in 1.1 s in
    this form). The per-tap products read the input K² times, so outside loops on CPU
    the native convolution is 1.4× faster: used only where it pays.
    """
    return _same_conv(x_BxHxWxC, kernel_KxKxCxD)


def _tapwise_conv_fwd(x_BxHxWxC, kernel_KxKxCxD):
    return _same_conv(x_BxHxWxC, kernel_KxKxCxD), (x_BxHxWxC, kernel_KxKxCxD)


def _tapwise_conv_bwd(residuals, g_BxHxWxD):
    x_BxHxWxC, kernel_KxKxCxD = residuals
    kh, kw = kernel_KxKxCxD.shape[:2]
    h, w = x_BxHxWxC.shape[1:3]
    # 'SAME' pads (k-1)//2 before and k//2 after; the input gradient is the convolution
    # with the kernel flipped, its channels swapped and that padding mirrored
    dx = jax.lax.conv_general_dilated(
        g_BxHxWxD, jnp.swapaxes(kernel_KxKxCxD[::-1, ::-1], 2, 3), (1, 1),
        ((kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2)), dimension_numbers=_NHWC)
    pad = ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0))
    x_pad = jnp.pad(x_BxHxWxC, pad)
    dk = jnp.stack([jnp.stack([
        jnp.einsum("bhwc,bhwd->cd", x_pad[:, i:i + h, j:j + w], g_BxHxWxD)
        for j in range(kw)]) for i in range(kh)])
    return dx.astype(x_BxHxWxC.dtype), dk.astype(kernel_KxKxCxD.dtype)


tapwise_conv.defvjp(_tapwise_conv_fwd, _tapwise_conv_bwd)


class TapwiseConv(nn.Module):
    """``nn.Conv(features, (k, k))`` (same parameters, initialisers and outputs) computed
    by :func:`tapwise_conv`."""

    features: int
    kernel_size: tuple[int, int]
    kernel_init: object = nn.initializers.lecun_normal()
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC):
        kernel = self.param("kernel", self.kernel_init,
                            (*self.kernel_size, x_BxHxWxC.shape[-1], self.features))
        bias_D = self.param("bias", nn.initializers.zeros, (self.features,))
        y = tapwise_conv(x_BxHxWxC.astype(self.dtype), kernel.astype(self.dtype))
        return y + bias_D.astype(self.dtype)


#: ``query_chunk = 0`` (auto) on the CPU: chunks of this many queries once N reaches
#: :data:`CPU_CHUNK_MIN_POSITIONS`. Measured at N = 1024 (VDM's CIFAR net at width 32,
#: batch 32, 2 cores): forward+backward 1.15× faster than all queries at once
#: (docs/bench_studies.md); below 512 positions the [B, N, N] weights stay small.
CPU_QUERY_CHUNK = 128
CPU_CHUNK_MIN_POSITIONS = 512

_TARGET_PLATFORM = contextvars.ContextVar("nnd_models_target_platform", default=None)


@contextlib.contextmanager
def target_platform(platform: str):
    """Networks traced inside choose their automatic settings for ``platform`` ("cpu",
    "tpu", "gpu") rather than JAX's default backend: for programs compiled here to run
    elsewhere (:mod:`nnd.aot` compiles for TPU on a CPU host)."""
    token = _TARGET_PLATFORM.set(platform)
    try:
        yield
    finally:
        _TARGET_PLATFORM.reset(token)


def auto_query_chunk(num_positions: int, platform: str | None = None) -> int:
    """What ``query_chunk = 0`` means: :data:`CPU_QUERY_CHUNK` on the CPU once N reaches
    :data:`CPU_CHUNK_MIN_POSITIONS`, else -1 (all queries at once: TPU and GPU run the
    [B, N, N] product well, and chunks would run in sequence). ``platform`` defaults to
    :func:`target_platform`'s, else JAX's default backend."""
    platform = platform or _TARGET_PLATFORM.get() or jax.default_backend()
    if platform == "cpu" and num_positions >= CPU_CHUNK_MIN_POSITIONS:
        return CPU_QUERY_CHUNK
    return -1


def attention(q_BxNxC, k_BxNxC, v_BxNxC, *, query_chunk: int = 0):
    r"""Single-head dot-product attention, :math:`\mathrm{softmax}(q k^\top/\sqrt{C})\,v`
    over the N positions.

    ``query_chunk < 0`` forms the [B, N, N] weights at once. ``query_chunk > 0`` runs
    the queries in chunks of that many (the largest divisor of N not above it) under
    ``lax.map``, each chunk recomputed in the backward pass (``jax.checkpoint``), so a
    [B, chunk, N] block of weights stays in cache instead of [B, N, N] arrays going
    through memory several times. Same result to float32 rounding. ``query_chunk = 0``
    (the default) chooses from the shape and the platform (:func:`auto_query_chunk`):
    chunks of 128 on the CPU for N ≥ 512, where the benchmark's network (VDM, width 32,
    batch 32, N = 1024) runs forward+backward 1.15× faster (docs/bench_studies.md); all
    at once on TPU and GPU, where chunks would run in sequence.
    """
    b, n, c = q_BxNxC.shape
    q_BxNxC = q_BxNxC / jnp.sqrt(jnp.asarray(c, q_BxNxC.dtype))

    def weighted_sum(q_BxQxC):
        w_BxQxN = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", q_BxQxC, k_BxNxC), axis=-1)
        return jnp.einsum("bqk,bkc->bqc", w_BxQxN, v_BxNxC)

    if query_chunk == 0:
        query_chunk = auto_query_chunk(n)
    if query_chunk < 0 or query_chunk >= n:
        return weighted_sum(q_BxNxC)
    chunk = max(d for d in range(1, query_chunk + 1) if n % d == 0)
    q_MxBxQxC = jnp.moveaxis(q_BxNxC.reshape(b, n // chunk, chunk, c), 1, 0)
    y_MxBxQxC = jax.lax.map(jax.checkpoint(weighted_sum), q_MxBxQxC)
    return jnp.moveaxis(y_MxBxQxC, 0, 1).reshape(b, n, c)


def _conv_net_time_embedding(t_B, embed_dim: int, dtype=jnp.float32):
    """Sinusoidal features through a 2-layer MLP of width 4·embed_dim (called inside a
    compact module, so its Dense layers belong to the caller)."""
    emb = sinusoidal_embedding(t_B, embed_dim)
    dense = functools.partial(nn.Dense, 4 * embed_dim, dtype=dtype)
    return dense()(nn.silu(dense()(emb)))


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, plus the time embedding, twice; residual (1×1 if widths differ).

    ``tapwise``: the 3×3 convolutions as :class:`TapwiseConv` (same parameters and
    values; for loops and for the TPU compiler, see :func:`tapwise_conv`).
    """

    channels: int
    dropout: float = 0.0
    dtype: str = "float32"
    tapwise: bool = False

    @nn.compact
    def __call__(self, h_BxHxWxC, emb_BxE, train: bool = False):
        dtype = _dtype(self.dtype)
        conv = functools.partial(TapwiseConv if self.tapwise else nn.Conv, self.channels,
                                 dtype=dtype)
        r = conv((3, 3), name="Conv_0")(
            nn.silu(_group_norm(h_BxHxWxC.shape[-1], dtype)(h_BxHxWxC)))
        r = r + nn.Dense(self.channels, dtype=dtype)(nn.silu(emb_BxE))[:, None, None, :]
        r = nn.silu(_group_norm(self.channels, dtype)(r))
        r = nn.Dropout(self.dropout, deterministic=not train)(r)
        r = conv((3, 3), kernel_init=nn.initializers.zeros, name="Conv_1")(r)
        if h_BxHxWxC.shape[-1] != self.channels:
            h_BxHxWxC = Pointwise(self.channels, dtype, name="Conv_2")(h_BxHxWxC)
        return (h_BxHxWxC + r).astype(dtype)


class _SelfAttention(nn.Module):
    """q, k, v and output projections around :func:`attention` (one head of width C),
    with the parameters of ``flax.linen.MultiHeadDotProductAttention(num_heads=1)``."""

    dtype: jnp.dtype
    query_chunk: int

    @nn.compact
    def __call__(self, x_BxNxC):
        c = x_BxNxC.shape[-1]
        project = functools.partial(nn.DenseGeneral, features=(1, c), dtype=self.dtype)
        q, k, v = (project(name=name)(x_BxNxC)[:, :, 0] for name in ("query", "key", "value"))
        y_BxNxC = attention(q, k, v, query_chunk=self.query_chunk)
        return nn.DenseGeneral(c, axis=(-2, -1), kernel_init=nn.initializers.zeros,
                               dtype=self.dtype, name="out")(y_BxNxC[:, :, None])


class AttnBlock(nn.Module):
    """Single-head self-attention over the spatial positions, residual.

    ``query_chunk``: see :func:`attention` (0: chosen from the shape and the platform,
    -1: all queries at once). The parameters are those of flax's
    ``MultiHeadDotProductAttention`` (and keep its name), so checkpoints written with it
    restore.
    """

    dtype: str = "float32"
    query_chunk: int = 0

    @nn.compact
    def __call__(self, h_BxHxWxC):
        b, hh, ww, c = h_BxHxWxC.shape
        dtype = _dtype(self.dtype)
        x = _group_norm(c, dtype)(h_BxHxWxC).reshape(b, hh * ww, c)
        x = _SelfAttention(dtype, self.query_chunk, name="MultiHeadDotProductAttention_0")(x)
        return (h_BxHxWxC + x.reshape(b, hh, ww, c)).astype(dtype)


class _ScanStep(nn.Module):
    """One ResBlock as a ``flax.linen.scan`` body: carry h; per step an optional skip
    (concatenated to h first); returns (h, h) going down, (h, None) going up."""

    channels: int
    dropout: float
    train: bool
    dtype: str
    keep: bool  # stack the outputs (the down path's skips)

    @nn.compact
    def __call__(self, h_BxHxWxC, skip_BxHxWxC, emb_BxE):
        if skip_BxHxWxC is not None:
            h_BxHxWxC = jnp.concatenate([h_BxHxWxC, skip_BxHxWxC], -1)
        h_BxHxWxC = ResBlock(self.channels, self.dropout, self.dtype, tapwise=True, name="block")(
            h_BxHxWxC, emb_BxE, self.train)
        return h_BxHxWxC, (h_BxHxWxC if self.keep else None)


def _block_scan(length: int, remat: bool):
    """``length`` copies of :class:`_ScanStep` as one ``flax.linen.scan`` (weights on axis 0,
    a fresh dropout key per block).

    What a block keeps for the backward pass is chosen, not left to the loop: by default
    the outputs of its convolutions and matmuls (``dots_saveable``; norms and activations
    are recomputed), since a scan otherwise stacks every intermediate, GroupNorm's
    [..., groups, 4] reshapes included, which TPU pads to 128 lanes (33 GB of
    temporaries per v4 chip for the CIFAR step instead of a few GB); with ``remat`` only
    the block's input (``nothing_saveable``).
    """
    policy = (jax.checkpoint_policies.nothing_saveable if remat
              else jax.checkpoint_policies.dots_saveable)
    body = nn.remat(_ScanStep, prevent_cse=False, policy=policy)
    return nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                   in_axes=(0, nn.broadcast), length=length)


class VDMNet(nn.Module):
    """VDM's CIFAR-10 score network shape: a U-Net without downsampling.

    ``num_blocks`` residual blocks at full resolution whose outputs are kept,
    an attention block in the middle, then ``num_blocks + 1`` blocks that each
    take one kept activation as a skip (Kingma et al. 2021 used 32 blocks of
    width 128 on CIFAR-10).

    With ``scan`` the down blocks (width ``channels`` in and out) and the up blocks
    (2·channels in, the skip concatenated) each run as one ``flax.linen.scan``
    (parameters ``down/block`` and ``up/block`` stacked on a leading axis of length
    ``num_blocks`` and ``num_blocks + 1``); without it (the default) they are unrolled as
    ``ResBlock_0`` ... ``ResBlock_{2·num_blocks + 2}``, the parameter tree of checkpoints
    written before the option existed. With ``scan`` every 3×3 convolution is a
    :class:`TapwiseConv` (same parameters): XLA:CPU runs its own kernel gradient 40×
    slower inside a loop, and XLA:TPU compiles the tap-wise one about 10× faster.
    ``remat`` recomputes each block's activations in the backward pass instead of
    keeping them. ``query_chunk``: see :func:`attention`. ``learned_variance`` adds the
    learned-variance head (:func:`_outputs`).
    """

    channels: int = 128
    num_blocks: int = 32
    embed_dim: int = 128
    dropout: float = 0.1
    remat: bool = False
    dtype: str = "float32"
    scan: bool = False
    query_chunk: int = 0
    learned_variance: bool = False

    @nn.compact
    def __call__(self, x_BxHxWxC, t_B, train: bool = False, with_variance: bool = False):
        dtype = _dtype(self.dtype)
        conv = functools.partial(TapwiseConv if self.scan else nn.Conv, dtype=dtype)
        emb = _conv_net_time_embedding(t_B, self.embed_dim, dtype)
        h = conv(self.channels, (3, 3), name="Conv_0")(x_BxHxWxC)
        if self.scan:
            h = self._scanned_blocks(h, emb, train)
        else:
            h = self._unrolled_blocks(h, emb, train)
        h = nn.silu(_group_norm(self.channels, dtype)(h))
        out = conv(x_BxHxWxC.shape[-1], (3, 3), kernel_init=nn.initializers.zeros,
                   name="Conv_1")(h)
        return _outputs(self, out, functools.partial(conv, x_BxHxWxC.shape[-1], (3, 3)), h,
                        with_variance)

    def _unrolled_blocks(self, h, emb, train):
        # named ResBlock_<i> as linen would, so remat leaves the parameter tree unchanged
        block = nn.remat(ResBlock, static_argnums=(3,)) if self.remat else ResBlock
        names = iter(f"ResBlock_{i}" for i in range(2 * self.num_blocks + 3))
        skips = [h]
        for _ in range(self.num_blocks):
            h = block(self.channels, self.dropout, self.dtype, name=next(names))(h, emb, train)
            skips.append(h)
        h = block(self.channels, self.dropout, self.dtype, name=next(names))(h, emb, train)
        h = AttnBlock(self.dtype, self.query_chunk)(h)
        h = block(self.channels, self.dropout, self.dtype, name=next(names))(h, emb, train)
        for _ in range(self.num_blocks + 1):
            h = block(self.channels, self.dropout, self.dtype, name=next(names))(
                jnp.concatenate([h, skips.pop()], -1), emb, train)
        return h

    def _scanned_blocks(self, h, emb, train):
        step = dict(channels=self.channels, dropout=self.dropout, train=train, dtype=self.dtype)
        stem = h
        h, skips_NxBxHxWxC = _block_scan(self.num_blocks, self.remat)(
            keep=True, name="down", **step)(h, None, emb)
        h = ResBlock(self.channels, self.dropout, self.dtype, tapwise=True)(h, emb, train)
        h = AttnBlock(self.dtype, self.query_chunk)(h)
        h = ResBlock(self.channels, self.dropout, self.dtype, tapwise=True)(h, emb, train)
        # the up path takes the kept activations last first: block N, ..., block 1, the stem
        skips = jnp.concatenate([stem[None], skips_NxBxHxWxC], 0)[::-1]
        h, _ = _block_scan(self.num_blocks + 1, self.remat)(keep=False, name="up", **step)(
            h, skips, emb)
        return h


class UNet(nn.Module):
    """A DDPM++-style U-Net: residual blocks at each resolution, attention at chosen ones.

    Attributes:
      channels: base width; level i has ``channels * channel_mult[i]``.
      channel_mult: width multipliers, one level per entry (each but the last halves H, W).
      num_res_blocks: residual blocks per level.
      attn_resolutions: spatial sizes (H) that get a self-attention block.
      remat: recompute each residual block's activations in the backward pass.
      dtype: compute dtype (a key of :data:`DTYPES`); parameters stay float32.
      query_chunk: queries per chunk in the attention blocks (:func:`attention`; 0: auto, -1: all).
      learned_variance: add the learned-variance head (:func:`_outputs`).

    The blocks are not scanned: at each level the first block changes width and the
    up path's skips differ in width, so runs of identical blocks are one or two long.
    """

    channels: int = 128
    channel_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    embed_dim: int = 128
    dropout: float = 0.1
    remat: bool = False
    dtype: str = "float32"
    query_chunk: int = 0
    learned_variance: bool = False

    @nn.compact
    def __call__(self, x_BxHxWxC, t_B, train: bool = False, with_variance: bool = False):
        dtype = _dtype(self.dtype)
        conv = functools.partial(nn.Conv, dtype=dtype)
        # named ResBlock_<i> as linen would, so remat leaves the parameter tree unchanged
        block_cls = nn.remat(ResBlock, static_argnums=(3,)) if self.remat else ResBlock
        count = iter(range(1 << 30))

        def block(channels, h_BxHxWxC):
            return block_cls(channels, self.dropout, self.dtype, name=f"ResBlock_{next(count)}")(
                h_BxHxWxC, emb, train)

        emb = _conv_net_time_embedding(t_B, self.embed_dim, dtype)
        h = conv(self.channels, (3, 3))(x_BxHxWxC)
        skips = [h]
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                h = block(self.channels * mult, h)
                if h.shape[1] in self.attn_resolutions:
                    h = AttnBlock(self.dtype, self.query_chunk)(h)
                skips.append(h)
            if level != len(self.channel_mult) - 1:
                h = conv(h.shape[-1], (3, 3), strides=(2, 2))(h)
                skips.append(h)
        h = block(h.shape[-1], h)
        h = AttnBlock(self.dtype, self.query_chunk)(h)
        h = block(h.shape[-1], h)
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = block(self.channels * mult, jnp.concatenate([h, skips.pop()], -1))
                if h.shape[1] in self.attn_resolutions:
                    h = AttnBlock(self.dtype, self.query_chunk)(h)
            if level != 0:
                b, hh, ww, c = h.shape
                h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), "nearest")
                h = conv(c, (3, 3))(h)
        h = nn.silu(_group_norm(self.channels, dtype)(h))
        out = conv(x_BxHxWxC.shape[-1], (3, 3), kernel_init=nn.initializers.zeros)(h)
        return _outputs(self, out, functools.partial(conv, x_BxHxWxC.shape[-1], (3, 3)), h,
                        with_variance)


def _outputs(module: nn.Module, eps, make_head, h, with_variance: bool):
    """ε, or (ε, log γ) with ``with_variance``: the learned-variance head (docs/math.md §5).

    With ``learned_variance`` the network has one more output layer, ``variance_head``, fed
    by the same features as ε's and zero at initialisation; it predicts log γ, γ(x_t, t) =
    Var[ε | x_t] per coordinate, so Var[x_0 | x_t] = (σ_t²/α_t²) γ
    (:func:`nnd.losses.learned_x0_variance`). Without it the parameters are those of
    checkpoints written before the head existed.
    """
    eps = eps.astype(jnp.float32)
    if not module.learned_variance:
        if with_variance:
            raise ValueError("this network has no learned variance "
                             "(model.learned_variance = False)")
        return eps
    log_gamma = make_head(kernel_init=nn.initializers.zeros, name="variance_head")(h)
    return (eps, log_gamma.astype(jnp.float32)) if with_variance else eps


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
