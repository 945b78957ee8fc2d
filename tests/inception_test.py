"""Tests for nnd.inception: the FID InceptionV3, its preprocessing, features and weights.

References: the published InceptionV3 size (Keras' include_top=False summary: 21,768,352
trainable = conv kernels + BN offsets, 34,432 running statistics; PyTorch adds the 17,216
BN scales); a numpy transcription of PyTorch's bilinear resize (align_corners=False);
pytorch-fid's state dict names and layouts, built back from flax variables.
Weights are random (numpy, fast) rather than flax's init, which takes ~25 s on a CPU.
"""

import logging
import math
import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from nnd import inception


def random_weights(seed=0):
    """Variables of every expected shape: He-scaled kernels, BN statistics off (0, 1)."""
    rng = np.random.default_rng(seed)
    flat = {}
    for key, shape in inception._expected_shapes().items():
        leaf = key.rsplit("/", 1)[-1]
        if leaf == "kernel":
            value = rng.normal(size=shape) * math.sqrt(2.0 / np.prod(shape[:-1]))
        elif leaf in ("scale", "var"):
            value = rng.uniform(0.5, 1.5, size=shape)
        else:  # bias, mean
            value = rng.normal(scale=0.1, size=shape)
        flat[key] = value.astype(np.float32)
    return traverse_util.unflatten_dict(flat, sep="/")


@pytest.fixture(scope="module")
def variables():
    return random_weights()


@pytest.fixture(scope="module")
def apply_75():
    """The network alone, jitted once for [2, 75, 75, 3] inputs."""
    return jax.jit(inception.InceptionV3().apply)


@pytest.fixture(scope="module")
def images_75():
    return np.random.default_rng(1).uniform(-1, 1, size=(2, 75, 75, 3)).astype(np.float32)


# --------------------------------------------------------------------------- network


def test_inception_variables_have_the_published_sizes():
    shapes = inception._expected_shapes()
    sizes = {c: sum(math.prod(s) for k, s in shapes.items() if k.startswith(c + "/"))
             for c in ("params", "batch_stats")}
    assert sizes == {"params": 21_785_568, "batch_stats": 34_432}
    assert len(shapes) == 94 * 5  # 94 BasicConv2d: kernel, scale, bias, mean, var
    assert shapes["params/Conv2d_1a_3x3/conv/kernel"] == (3, 3, 3, 32)
    assert shapes["params/Mixed_5b/branch1x1/conv/kernel"] == (1, 1, 192, 64)
    assert shapes["params/Mixed_5b/branch_pool/conv/kernel"] == (1, 1, 192, 32)
    assert shapes["params/Mixed_6e/branch7x7_2/conv/kernel"] == (1, 7, 192, 192)
    assert shapes["params/Mixed_7c/branch_pool/conv/kernel"] == (1, 1, 2048, 192)
    assert shapes["batch_stats/Mixed_7c/branch3x3dbl_3b/bn/var"] == (384,)


def test_inception_output_shape_and_independent_examples(variables, apply_75, images_75):
    out = np.asarray(apply_75(variables, images_75))
    assert out.shape == (2, inception.NUM_FEATURES) and out.dtype == np.float32
    assert np.all(np.isfinite(out)) and np.all(out >= 0) and out.std() > 0  # means of ReLUs
    swapped = np.asarray(apply_75(variables, images_75[::-1]))
    np.testing.assert_allclose(swapped[::-1], out, rtol=1e-5, atol=1e-6 * out.max())
    with pytest.raises(ValueError, match="75"):
        inception.InceptionV3().apply(variables, images_75[:, :74])


def torch_bilinear(x_HxW, out_h, out_w):
    """PyTorch's interpolate(mode='bilinear', align_corners=False), separably in numpy."""

    def along_axis0(x, out):
        src = np.maximum((np.arange(out) + 0.5) * len(x) / out - 0.5, 0.0)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, len(x) - 1)
        w = (src - lo)[:, None]
        return (1 - w) * x[lo] + w * x[hi]

    return along_axis0(along_axis0(x_HxW, out_h).T, out_w).T


@pytest.mark.parametrize("size", [32, 320])  # up- and downsampling
def test_preprocess_is_pytorch_bilinear_resize(size):
    rng = np.random.default_rng(5)
    gray = rng.uniform(-1, 1, size=(1, size, size + 3, 1)).astype(np.float32)
    x = np.asarray(inception.preprocess(gray))
    assert x.shape == (1, 299, 299, 3)
    np.testing.assert_array_equal(x[..., 0], x[..., 2])  # 1 channel tiled to 3
    # both compute sample coordinates (≤ 320) in float32: a weight error of a few
    # 320·2⁻²⁴ times neighbour differences ≤ 2
    np.testing.assert_allclose(x[0, :, :, 1], torch_bilinear(gray[0, :, :, 0], 299, 299),
                               atol=8 * max(size, 299) * 2.0**-24)


def test_preprocess_clips_and_checks_channels():
    x = np.asarray(inception.preprocess(np.full((1, 299, 299, 3), 3.0)))
    np.testing.assert_array_equal(x, 1.0)
    with pytest.raises(ValueError, match="C in"):
        inception.preprocess(np.zeros((1, 32, 32, 2)))
    with pytest.raises(ValueError, match="C in"):
        inception.preprocess(np.zeros((32, 32, 3)))


def test_features_shape_from_any_image_size(variables):
    """Traced only (no compile): 1-channel 32×32 images → [N, 2048] float32 via 299×299."""
    images = jax.ShapeDtypeStruct((5, 32, 32, 1), jnp.float32)
    out = jax.eval_shape(inception.features, variables, images)
    assert out.shape == (5, inception.NUM_FEATURES) and out.dtype == jnp.float32


def test_make_feature_fn_batches_compile_once_and_log(monkeypatch, caplog):
    """The batching around the network, with a cheap stand-in for ``features``."""
    traces = []

    def fake_features(variables, images):
        traces.append(images.shape)
        return variables["scale"] * jnp.sum(images, axis=(1, 2))  # [N, C]

    monkeypatch.setattr(inception, "features", fake_features)
    feature_fn = inception.make_feature_fn({"scale": np.float32(2.0)}, batch_size=3)
    x = np.random.default_rng(7).normal(size=(7, 2, 2, 1)).astype(np.float32)
    expected = 2.0 * x.sum(axis=(1, 2))
    with caplog.at_level(logging.INFO):
        out = feature_fn(x)  # batches [0..2], [3..5], [6, padding]
    assert isinstance(out, np.ndarray) and out.shape == (7, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert "FID features: batch 3/3" in caplog.text
    np.testing.assert_allclose(feature_fn(jnp.asarray(x[:3])), expected[:3], rtol=1e-6)
    np.testing.assert_allclose(feature_fn(x[:1]), expected[:1], rtol=1e-6)
    assert traces == [(3, 2, 2, 1)]
    with pytest.raises(ValueError, match="no examples"):
        feature_fn(x[:0])


@pytest.mark.slow
def test_make_feature_fn_at_299(variables):
    images = np.random.default_rng(6).uniform(-1, 1, size=(3, 32, 32, 1)).astype(np.float32)
    feature_fn = inception.make_feature_fn(variables, batch_size=2)
    out = feature_fn(images)  # batches [0, 1] and [2, padding]
    assert out.shape == (3, 2048) and out.dtype == np.float32 and np.all(np.isfinite(out))
    np.testing.assert_allclose(feature_fn(images[1:]), out[1:], rtol=1e-5,
                               atol=1e-6 * out.max())


# --------------------------------------------------------------------------- weights


def test_save_and_load_weights_round_trip(tmp_path, variables, apply_75, images_75):
    path = str(tmp_path / "sub" / "inception.npz")
    inception.save_weights(path, variables)
    assert os.listdir(tmp_path / "sub") == ["inception.npz"]
    loaded = inception.load_weights(path)
    flat, flat_loaded = (traverse_util.flatten_dict(v, sep="/") for v in (variables, loaded))
    assert flat.keys() == flat_loaded.keys()
    for key in flat:
        np.testing.assert_array_equal(flat_loaded[key], flat[key])
    np.testing.assert_array_equal(apply_75(loaded, images_75), apply_75(variables, images_75))


def test_load_weights_names_bad_keys(tmp_path, variables):
    flat = traverse_util.flatten_dict(variables, sep="/")
    kernel = "params/Mixed_6b/branch7x7_2/conv/kernel"
    bad = dict(flat)
    del bad["batch_stats/Mixed_5b/branch1x1/bn/mean"]
    bad[kernel] = np.swapaxes(flat[kernel], 0, 1)
    bad["params/fc/kernel"] = np.zeros((2048, 1008), np.float32)
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(ValueError) as info:
        inception.load_weights(str(tmp_path / "bad.npz"))
    message = str(info.value)
    assert "1 missing: batch_stats/Mixed_5b/branch1x1/bn/mean" in message
    assert "1 unexpected: params/fc/kernel" in message
    assert f"1 mis-shaped: {kernel} (7, 1, 128, 128) != (1, 7, 128, 128)" in message
    with pytest.raises(ValueError, match="missing"):
        inception.save_weights(str(tmp_path / "never.npz"), {"params": variables["params"]})
    assert not (tmp_path / "never.npz").exists()
    with pytest.raises(FileNotFoundError, match="nnd.inception module docstring"):
        inception.load_weights(str(tmp_path / "absent.npz"))


class FakeTensor:
    """Stands in for a torch.Tensor: detach().cpu().numpy()."""

    def __init__(self, value):
        self.value = value

    def detach(self):
        return self

    def cpu(self):
        return self

    def numpy(self):
        return self.value


def torch_state_dict_from(variables):
    """pytorch-fid's names and layouts, built back from flax variables."""
    leaves = {"conv/kernel": "conv.weight", "bn/scale": "bn.weight", "bn/bias": "bn.bias",
              "bn/mean": "bn.running_mean", "bn/var": "bn.running_var"}
    state = {}
    for key, value in traverse_util.flatten_dict(variables, sep="/").items():
        parts = key.split("/")[1:]
        module = ".".join(parts[:-2])
        if parts[-1] == "kernel":
            value = value.transpose(3, 2, 0, 1)
            state[f"{module}.bn.num_batches_tracked"] = np.array(0)
        state[f"{module}.{leaves['/'.join(parts[-2:])]}"] = value
    state["fc.weight"], state["fc.bias"] = np.zeros((1008, 2048)), np.zeros(1008)
    return state


def test_convert_torch_state_dict_inverts_the_layout(variables):
    state = torch_state_dict_from(variables)
    assert state["Mixed_5b.branch1x1.conv.weight"].shape == (64, 192, 1, 1)
    state["Conv2d_1a_3x3.bn.running_var"] = FakeTensor(state["Conv2d_1a_3x3.bn.running_var"])
    converted = traverse_util.flatten_dict(inception.convert_torch_state_dict(state), sep="/")
    flat = traverse_util.flatten_dict(variables, sep="/")
    assert converted.keys() == flat.keys()
    for key in flat:
        np.testing.assert_array_equal(converted[key], flat[key])

    aux = dict(state, **{"AuxLogits.conv0.conv.weight": np.zeros((128, 768, 1, 1))})
    with pytest.raises(ValueError, match="unexpected: params/AuxLogits/conv0/conv/kernel"):
        inception.convert_torch_state_dict(aux)
    del state["Mixed_7c.branch_pool.bn.weight"]
    with pytest.raises(ValueError, match="missing: params/Mixed_7c/branch_pool/bn/scale"):
        inception.convert_torch_state_dict(state)


def test_cli_convert_writes_loadable_weights(monkeypatch, tmp_path, variables, capsys):
    """``python -m nnd.inception convert`` with a stand-in torch whose load returns the state."""
    loads = []

    def load(path, map_location, weights_only):
        loads.append((path, map_location, weights_only))
        return torch_state_dict_from(variables)

    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(load=load))
    out = str(tmp_path / "inception_fid.npz")
    assert inception._main(["convert", "in.pth", out]) == 0
    assert loads == [("in.pth", "cpu", True)]
    assert f"wrote {out}" in capsys.readouterr().out
    loaded = traverse_util.flatten_dict(inception.load_weights(out), sep="/")
    for key, value in traverse_util.flatten_dict(variables, sep="/").items():
        np.testing.assert_array_equal(loaded[key], value)


def test_cli_without_torch_says_so(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    with pytest.raises(SystemExit, match="needs torch"):
        inception._main(["convert", str(tmp_path / "in.pth"), str(tmp_path / "out.npz")])
