"""Tests for nnd.models: shapes, zero-initialised outputs, conditioning, dropout, jit.

References are independent of the code: the sinusoidal embedding against its DDPM
closed form written out in numpy; the networks against properties any ε-network must
have (output shape = input shape, exactly zero at init from the zero last layer, per-
example outputs that do not leak across the batch, dependence on both x and t once the
weights are moved off their initial values).
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnd import models

TINY = {
    "mlp": (lambda: models.MLP(hidden=16, depth=2, embed_dim=8), (3, 2)),
    "vdm_digits": (lambda: models.VDMNet(channels=8, num_blocks=1, embed_dim=8, dropout=0.0),
                   (2, 8, 8, 1)),
    "vdm_cifar": (lambda: models.VDMNet(channels=8, num_blocks=1, embed_dim=8, dropout=0.0),
                  (2, 32, 32, 3)),
    # levels at 8 and 4: attention at 4 (and in the middle)
    "unet_digits": (lambda: models.UNet(channels=8, channel_mult=(1, 2), num_res_blocks=1,
                                        attn_resolutions=(4,), embed_dim=8, dropout=0.0),
                    (2, 8, 8, 1)),
    # levels at 32 and 16: attention at 16
    "unet_cifar": (lambda: models.UNet(channels=8, channel_mult=(1, 2), num_res_blocks=1,
                                       attn_resolutions=(16,), embed_dim=8, dropout=0.0),
                   (2, 32, 32, 3)),
}
# Not in the shape/zero tests: widths where GroupNorm groups hold 2 channels (t survives),
# and the width of configs/images.py digits() (32 channels: groups of 1).
WIDE = {
    "vdm_wide": (lambda: models.VDMNet(channels=64, num_blocks=1, embed_dim=8, dropout=0.0),
                 (2, 8, 8, 1)),
    "unet_wide": (lambda: models.UNet(channels=64, channel_mult=(1, 2), num_res_blocks=1,
                                      attn_resolutions=(4,), embed_dim=8, dropout=0.0),
                  (2, 8, 8, 1)),
    "vdm_digits_config": (lambda: models.VDMNet(channels=32, num_blocks=1, embed_dim=32,
                                                dropout=0.0), (2, 8, 8, 1)),
}


# 32×32 inputs and the wider nets each cost several seconds of compilation on a CPU.
_SLOW = {"vdm_cifar", "unet_cifar", "vdm_wide", "unet_wide", "vdm_digits_config", "unet_digits"}


def _cases(*names):
    marks = lambda n: [pytest.mark.slow] if n in _SLOW else []  # noqa: E731
    return [pytest.param(n, id=n, marks=marks(n)) for n in names]


def _perturb(params, delta=0.01):
    """Move every parameter off its initial value (the last layers start at exactly zero)."""
    return jax.tree.map(lambda p: p + delta, params)


@functools.lru_cache(maxsize=None)
def _setup(name):
    """(model, params, x, t, jitted apply); jitted so a test compiles once (eager is op by op)."""
    make, shape = {**TINY, **WIDE}[name]
    model = make()
    x = jax.random.normal(jax.random.key(1), shape)
    t = jnp.linspace(0.1, 0.9, shape[0])
    # rbg keys: same initializers, a third less compile time than threefry on a CPU
    params = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x, t)
    return model, params, x, t, jax.jit(model.apply)


# ---------------------------------------------------------------------------------------
# sinusoidal_embedding


def test_sinusoidal_embedding_closed_form():
    t = np.array([0.0, 1e-3, 0.25, 0.5, 1.0], np.float32)
    dim = 16
    emb = np.asarray(models.sinusoidal_embedding(jnp.asarray(t), dim))
    assert emb.shape == (5, dim) and emb.dtype == np.float32
    # DDPM: args_k = 1000 t · 10000^(-k/half), features [sin(args), cos(args)]
    half = dim // 2
    args = 1000.0 * t.astype(np.float64)[:, None] * 10000.0 ** (-np.arange(half) / half)
    np.testing.assert_allclose(emb, np.concatenate([np.sin(args), np.cos(args)], 1), atol=2e-4)
    np.testing.assert_array_equal(emb[0], np.r_[np.zeros(half), np.ones(half)])
    assert np.all(np.abs(emb) <= 1.0)
    # sin² + cos² = 1 per frequency
    np.testing.assert_allclose(emb[:, :half] ** 2 + emb[:, half:] ** 2, 1.0, atol=1e-5)


def test_sinusoidal_embedding_rows_are_distinct_and_odd_dim_is_refused():
    t = jnp.linspace(0.0, 1.0, 101)
    emb = np.asarray(models.sinusoidal_embedding(t, 32))
    assert emb.shape == (101, 32) and np.all(np.abs(emb) <= 1.0)
    d = np.abs(emb[:, None, :] - emb[None, :, :]).max(-1)
    assert np.all(d[~np.eye(101, dtype=bool)] > 1e-3)
    with pytest.raises(ValueError, match="even"):
        models.sinusoidal_embedding(t, 7)


# ---------------------------------------------------------------------------------------
# networks


@pytest.mark.fast_first
@pytest.mark.parametrize("name", _cases(*TINY))
def test_output_has_input_shape_and_is_zero_at_init(name):
    _, params, x, t, apply = _setup(name)
    out = apply(params, x, t)
    assert out.shape == x.shape and out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), 0.0)


@pytest.mark.fast_first
@pytest.mark.parametrize("name", _cases(*TINY))
def test_output_depends_on_x_and_is_per_example_once_trained(name):
    _, params, x, t, apply = _setup(name)
    params = _perturb(params)
    out = np.asarray(apply(params, x, t))
    scale = np.abs(out).max()
    assert np.all(np.isfinite(out)) and scale > 1e-4
    # another x, same t
    assert np.abs(np.asarray(apply(params, 0.5 * x + 0.3, t)) - out).max() > 1e-3 * scale
    # each example only sees its own (x, t): no leakage across the batch
    alone = np.concatenate([np.asarray(apply(params, x[i:i + 1], t[i:i + 1]))
                            for i in range(x.shape[0])])
    np.testing.assert_allclose(alone, out, rtol=1e-4, atol=1e-5 * scale)
    perm = np.arange(x.shape[0])[::-1]
    np.testing.assert_allclose(np.asarray(apply(params, x[perm], t[perm])), out[perm],
                               rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("name", _cases(*TINY, *WIDE))
def test_output_depends_on_t_once_trained(name):
    # Narrow conv nets once normalised each channel on its own, which removed the time
    # embedding ResBlock adds as a per-channel constant: the nets ignored t.
    _, params, x, t, apply = _setup(name)
    params = _perturb(params)
    out = np.asarray(apply(params, x, t))
    out_t = np.asarray(apply(params, x, 1.0 - t))
    assert np.abs(out_t - out).max() > 1e-3 * np.abs(out).max()


@pytest.mark.slow  # fast-tier budget: CI's slow tier runs it
def test_unet_has_attention_where_asked():
    _, params, _, _, _ = _setup("unet_digits")
    names = list(params["params"])
    # attn_resolutions=(4,) on levels 8 and 4: none at 8; at 4 one after each down block,
    # one after each up block, plus the middle one
    n_attn = sum(n.startswith("AttnBlock") for n in names)
    # down at 4: num_res_blocks = 1; middle: 1; up at 4: num_res_blocks + 1 = 2
    assert n_attn == 4, names
    _, params8, _, _, _ = _setup("vdm_digits")
    assert sum(n.startswith("AttnBlock") for n in params8["params"]) == 1


@pytest.mark.fast_first
@pytest.mark.parametrize("name", _cases(*TINY))
def test_jit_matches_eager(name):
    model, params, x, t, _ = _setup(name)
    params = _perturb(params)
    eager = np.asarray(model.apply(params, x, t))
    jitted = np.asarray(jax.jit(model.apply)(params, x, t))
    np.testing.assert_allclose(jitted, eager, rtol=1e-4, atol=1e-5 * np.abs(eager).max())


@pytest.mark.slow  # fast-tier budget: CI's slow tier runs it
def test_vdmnet_dropout_in_training_only():
    # the same architecture as "vdm_digits" (dropout has no parameters), with p = 0.5
    _, params, x, t, no_dropout_apply = _setup("vdm_digits")
    params = _perturb(params)
    model = models.VDMNet(channels=8, num_blocks=1, embed_dim=8, dropout=0.5)
    apply = jax.jit(model.apply, static_argnames="train")

    def train_apply(key):
        return np.asarray(apply(params, x, t, train=True, rngs={"dropout": key}))

    a, b = train_apply(jax.random.key(2)), train_apply(jax.random.key(3))
    assert np.abs(a).max() > 1e-4
    assert np.abs(a - b).max() > 1e-3 * np.abs(a).max()
    np.testing.assert_array_equal(train_apply(jax.random.key(2)), a)
    # evaluation is deterministic, ignores any dropout rng, and is the dropout-free network
    e1 = np.asarray(apply(params, x, t, train=False))
    e2 = np.asarray(apply(params, x, t, train=False, rngs={"dropout": jax.random.key(9)}))
    np.testing.assert_array_equal(e1, e2)
    ref = np.asarray(no_dropout_apply(params, x, t))
    np.testing.assert_allclose(e1, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    assert np.abs(a - e1).max() > 1e-3 * np.abs(e1).max()
    # dropout needs its rng when training
    with pytest.raises(Exception, match="dropout"):
        model.apply(params, x, t, train=True)


def test_mlp_ignores_train_flag():
    model, params, x, t, _ = _setup("mlp")
    params = _perturb(params)
    np.testing.assert_array_equal(np.asarray(model.apply(params, x, t, train=True)),
                                  np.asarray(model.apply(params, x, t, train=False)))


def test_embedding_scale_matches_ddpm():
    # t is scaled by 1000: the highest frequency turns by 1000 rad over t ∈ [0, 1]
    emb = np.asarray(models.sinusoidal_embedding(jnp.array([1.0]), 2))
    np.testing.assert_allclose(emb[0], [math.sin(1000.0), math.cos(1000.0)], atol=1e-4)


# ---------------------------------------------------------------------------------------
# VDMNet's scanned blocks, remat and the compute dtype


def _unrolled_vdmnet(model, params, x, t):
    """VDMNet written out block by block from the scanned model's parameters: block i of
    ``down`` / ``up`` uses the i-th slice of the stacked weights."""
    p = params["params"]
    apply = lambda module, name, *args: module.apply({"params": p[name]}, *args)  # noqa: E731
    emb = models.sinusoidal_embedding(t, model.embed_dim)
    dense = nn.Dense(4 * model.embed_dim)
    # linen names a module when it is built: the outer Dense (built first) is Dense_0
    emb = apply(dense, "Dense_0", nn.silu(apply(dense, "Dense_1", emb)))
    h = apply(nn.Conv(model.channels, (3, 3)), "Conv_0", x)
    block = models.ResBlock(model.channels, model.dropout)
    skips = [h]
    for i in range(model.num_blocks):
        h = block.apply({"params": jax.tree.map(lambda a: a[i], p["down"]["block"])}, h, emb)
        skips.append(h)
    h = apply(block, "ResBlock_0", h, emb)
    h = apply(models.AttnBlock(), "AttnBlock_0", h)
    h = apply(block, "ResBlock_1", h, emb)
    for i in range(model.num_blocks + 1):
        h = block.apply({"params": jax.tree.map(lambda a: a[i], p["up"]["block"])},
                        jnp.concatenate([h, skips.pop()], -1), emb)
    h = nn.silu(apply(nn.GroupNorm(num_groups=2), "GroupNorm_0", h))
    return apply(nn.Conv(x.shape[-1], (3, 3)), "Conv_1", h)


@pytest.mark.slow  # fast-tier budget: CI's slow tier runs it
def test_vdmnet_scan_equals_the_unrolled_network():
    model = models.VDMNet(channels=8, num_blocks=3, embed_dim=8, dropout=0.0, scan=True)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    t = jnp.array([0.2, 0.7])
    params = _perturb(jax.jit(model.init)(jax.random.key(0), x, t))
    # one set of weights per block, stacked: 3 down, 4 up
    assert params["params"]["down"]["block"]["Conv_0"]["kernel"].shape == (3, 3, 3, 8, 8)
    assert params["params"]["up"]["block"]["Conv_0"]["kernel"].shape == (4, 3, 3, 16, 8)
    # distinct weights per block (fresh init keys per step of the scan)
    k = np.asarray(params["params"]["down"]["block"]["Conv_0"]["kernel"])
    assert np.abs(k[0] - k[1]).max() > 1e-3
    scanned = np.asarray(jax.jit(model.apply)(params, x, t))
    unrolled = np.asarray(jax.jit(functools.partial(_unrolled_vdmnet, model))(params, x, t))
    np.testing.assert_allclose(scanned, unrolled, rtol=1e-5, atol=1e-6 * np.abs(unrolled).max())
    # the default (unrolled) network with the same weights, block by block
    p = dict(params["params"])
    down, up = p.pop("down")["block"], p.pop("up")["block"]
    middle = [p.pop("ResBlock_0"), p.pop("ResBlock_1")]
    blocks = ([jax.tree.map(lambda a: a[i], down) for i in range(3)] + middle
              + [jax.tree.map(lambda a: a[i], up) for i in range(4)])
    p.update({f"ResBlock_{i}": b for i, b in enumerate(blocks)})
    default = models.VDMNet(channels=8, num_blocks=3, embed_dim=8, dropout=0.0)
    assert (jax.tree.structure({"params": p})
            == jax.tree.structure(jax.eval_shape(default.init, jax.random.key(0), x, t)))
    np.testing.assert_allclose(np.asarray(jax.jit(default.apply)({"params": p}, x, t)), unrolled,
                               rtol=1e-5, atol=1e-6 * np.abs(unrolled).max())


def test_vdmnet_default_keeps_the_checkpoint_layout_of_unrolled_blocks():
    # Checkpoints written before the scan option restore: ResBlock_0 .. ResBlock_{2N+2}
    model = models.VDMNet(channels=8, num_blocks=2, embed_dim=8, dropout=0.0)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros(1))
    assert sorted(shapes["params"]) == sorted(
        ["AttnBlock_0", "Conv_0", "Conv_1", "Dense_0", "Dense_1", "GroupNorm_0"]
        + [f"ResBlock_{i}" for i in range(7)])
    assert shapes["params"]["ResBlock_4"]["Conv_0"]["kernel"].shape == (3, 3, 16, 8)  # first up block


@pytest.mark.slow  # end-to-end or many compiles; the fast tier stays under 5 minutes
def test_remat_changes_neither_parameters_nor_outputs_nor_gradients():
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    t = jnp.array([0.2, 0.7])
    for make in (lambda **k: models.VDMNet(channels=8, num_blocks=2, embed_dim=8, dropout=0.5, **k),
                 lambda **k: models.VDMNet(channels=8, num_blocks=2, embed_dim=8, dropout=0.5,
                                           scan=True, **k),
                 lambda **k: models.UNet(channels=8, channel_mult=(1, 2), num_res_blocks=1,
                                         attn_resolutions=(4,), embed_dim=8, dropout=0.5, **k)):
        plain, remat = make(), make(remat=True)
        params = _perturb(jax.jit(plain.init)(jax.random.key(0), x, t))
        assert (jax.tree.structure(params)
                == jax.tree.structure(jax.eval_shape(remat.init, jax.random.key(0), x, t)))

        def loss(model, params):
            out = model.apply(params, x, t, train=True, rngs={"dropout": jax.random.key(3)})
            return jnp.sum(out ** 2)

        a, ga = jax.jit(jax.value_and_grad(functools.partial(loss, plain)))(params)
        b, gb = jax.jit(jax.value_and_grad(functools.partial(loss, remat)))(params)
        np.testing.assert_allclose(float(b), float(a), rtol=1e-5)
        scale = max(float(np.abs(u).max()) for u in jax.tree.leaves(ga))
        for u, v in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
            np.testing.assert_allclose(np.asarray(v), np.asarray(u), rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.slow  # fast-tier budget: CI's slow tier runs it
def test_bfloat16_compute_keeps_float32_parameters_and_output():
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    t = jnp.array([0.2, 0.7])
    f32 = models.VDMNet(channels=8, num_blocks=2, embed_dim=8, dropout=0.0)
    bf16 = models.VDMNet(channels=8, num_blocks=2, embed_dim=8, dropout=0.0, dtype="bfloat16")
    params = _perturb(jax.jit(f32.init)(jax.random.key(0), x, t))
    assert {a.dtype for a in jax.tree.leaves(jax.eval_shape(bf16.init, jax.random.key(0), x, t))} \
        == {jnp.dtype(jnp.float32)}
    ref = np.asarray(jax.jit(f32.apply)(params, x, t))
    out = jax.jit(bf16.apply)(params, x, t)
    assert out.dtype == jnp.float32
    err = np.abs(np.asarray(out) - ref).max() / np.abs(ref).max()
    assert 1e-6 < err < 5e-2  # bfloat16 rounding: visible, small
    with pytest.raises(ValueError, match="dtype"):
        models.make("vdm", dtype="float16").init(jax.random.key(0), x, t)


@pytest.mark.slow
def test_bfloat16_toy_trains_to_the_float32_acceptance(tmp_path):
    # tests/train_test.py's acceptance for the toys (energy distance <= 0.005 to gmm8, every
    # centre 8%-17% of the samples), with the MLP computing in bfloat16
    import importlib

    from nnd import evaluate, metrics, oracles, train

    config = importlib.import_module("configs.toy_gaussian").get_config()
    config.model.dtype = "bfloat16"
    config.train.sample_every = 0
    train.train(config, str(tmp_path))
    samples = evaluate.sample(config, str(tmp_path))
    gmm = oracles.gmm8()
    data = np.asarray(oracles.sample_gmm(jax.random.key(12345), gmm, 2000))
    assert metrics.energy_distance(samples, data) <= 0.005
    _, nearest = metrics.nearest_centre(samples, gmm.means)
    share = np.bincount(nearest, minlength=8) / len(samples)
    assert np.all((share >= 0.08) & (share <= 0.17)), share


# The hardware-shaped formulations (Pointwise, attention) against flax's own
# modules with the same parameters: same parameter trees (checkpoints restore), same
# initial values, same outputs and gradients.

class _FlaxAttnBlock(nn.Module):
    """AttnBlock as it was written with flax's GroupNorm and MultiHeadDotProductAttention."""

    groups: int

    @nn.compact
    def __call__(self, h):
        b, hh, ww, c = h.shape
        x = nn.GroupNorm(num_groups=self.groups)(h).reshape(b, hh * ww, c)
        x = nn.MultiHeadDotProductAttention(num_heads=1, qkv_features=c,
                                            out_kernel_init=nn.initializers.zeros)(x)
        return h + x.reshape(b, hh, ww, c)


def _same_function(ours, theirs, x, *, rtol=1e-5):
    """Both modules from one key: equal parameter trees and values, outputs and gradients
    (parameters moved off their initial values first)."""
    p_ours = ours.init(jax.random.key(0), x)
    p_theirs = theirs.init(jax.random.key(0), x)
    assert jax.tree.structure(p_ours) == jax.tree.structure(p_theirs)
    jax.tree.map(np.testing.assert_array_equal, p_ours, p_theirs)
    params = _perturb(p_ours)

    def value_and_grads(module):
        f = lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))  # noqa: E731
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(params, x)

    (v1, g1), (v2, g2) = value_and_grads(ours), value_and_grads(theirs)
    np.testing.assert_allclose(v1, v2, rtol=rtol)
    # absolute tolerance on the scale of all gradients: some are zero in exact arithmetic
    # (a bias on the keys does not change the softmax) and both sides hold rounding there
    scale = max(float(np.abs(b).max()) for b in jax.tree.leaves(g2))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale),
                 g1, g2)
    np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), rtol=rtol,
                               atol=rtol * float(np.abs(theirs.apply(params, x)).max()))


def test_pointwise_is_a_one_by_one_convolution():
    x = jax.random.normal(jax.random.key(1), (2, 4, 4, 16))
    _same_function(models.Pointwise(8), nn.Conv(8, (1, 1)), x)


@pytest.mark.slow  # fast-tier budget: CI's slow tier runs it
@pytest.mark.fast_first
@pytest.mark.parametrize("chunk", [16, 0, 12, 1000])  # 12 does not divide N = 64: 8 is used
def test_attention_block_is_flax_attention_in_every_chunking(chunk):
    h = jax.random.normal(jax.random.key(1), (2, 8, 8, 8))
    _same_function(models.AttnBlock(query_chunk=chunk), _FlaxAttnBlock(groups=2), h)


def test_chunked_attention_keeps_one_chunk_of_weights_at_a_time():
    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 64, 8))
    whole = jax.make_jaxpr(functools.partial(models.attention, query_chunk=-1))(q, k, v)
    chunked = jax.make_jaxpr(functools.partial(models.attention, query_chunk=16))(q, k, v)
    shapes = lambda jaxpr: {tuple(v.aval.shape) for e in jaxpr.eqns for v in e.outvars}  # noqa: E731
    assert (2, 64, 64) in shapes(whole.jaxpr)
    assert (2, 64, 64) not in shapes(chunked.jaxpr)
    assert any(e.primitive.name == "scan" for e in chunked.jaxpr.eqns)


def test_query_chunk_zero_chooses_by_shape_and_platform():
    assert models.auto_query_chunk(1024, "cpu") == models.CPU_QUERY_CHUNK == 128
    assert models.auto_query_chunk(256, "cpu") == -1  # small weights: all at once
    assert models.auto_query_chunk(1024, "tpu") == models.auto_query_chunk(1024, "gpu") == -1

    def loops(n):
        q = jnp.zeros((1, n, 4))
        jaxpr = jax.make_jaxpr(functools.partial(models.attention, query_chunk=0))(q, q, q)
        return any(e.primitive.name == "scan" for e in jaxpr.jaxpr.eqns)

    assert jax.default_backend() == "cpu"
    assert loops(1024) and not loops(256)
    with models.target_platform("tpu"):  # what nnd.aot traces for a TPU slice
        assert not loops(1024)
    assert loops(1024)


@pytest.mark.fast_first
@pytest.mark.parametrize("kernel", [3, 1, 2])  # 2: the asymmetric 'SAME' padding
def test_tapwise_conv_has_the_values_and_gradients_of_the_convolution(kernel):
    x = jax.random.normal(jax.random.key(0), (2, 6, 5, 4))
    w = jax.random.normal(jax.random.key(1), (kernel, kernel, 4, 3))
    g = jax.random.normal(jax.random.key(2), (2, 6, 5, 3))

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    y, vjp = jax.vjp(conv, x, w)
    y_tap, vjp_tap = jax.vjp(models.tapwise_conv, x, w)
    np.testing.assert_allclose(y_tap, y, rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(vjp_tap(g), vjp(g)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


def test_tapwise_conv_module_is_flax_conv():
    x = jax.random.normal(jax.random.key(1), (2, 6, 6, 4))
    _same_function(models.TapwiseConv(5, (3, 3)), nn.Conv(5, (3, 3)), x)


@pytest.mark.slow  # fast-tier budget: CI's slow tier runs it
def test_scanned_network_needs_no_native_kernel_gradient_in_its_loop():
    # XLA:CPU's kernel-gradient convolution is 40x slower inside a loop: the scanned
    # network's backward pass has only forward-shaped convolutions (input gradients)
    model = models.VDMNet(channels=8, num_blocks=2, embed_dim=8, dropout=0.0, scan=True)
    x, t = jnp.zeros((2, 8, 8, 1)), jnp.zeros(2)
    params = model.init(jax.random.key(0), x, t)
    grad = jax.grad(lambda p: jnp.sum(model.apply(p, x, t)))
    hlo = jax.jit(grad).lower(params).as_text()
    kernel_shapes = {(3, 3, 8, 8), (3, 3, 16, 8), (3, 3, 1, 8), (3, 3, 8, 1)}
    convs = [line for line in hlo.splitlines() if "stablehlo.convolution" in line]
    assert convs
    for line in convs:  # every convolution returns activations, none a [3, 3, C, D] kernel
        out = line.rsplit("->", 1)[-1]
        assert not any("x".join(map(str, s)) + "xf32" in out for s in kernel_shapes), line
