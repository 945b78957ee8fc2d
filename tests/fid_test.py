"""Tests for nnd.fid: the Fréchet distance, feature statistics, the network and its weights.

References: the closed form Σ(√a − √b)² + |Δμ|² for diagonal covariances; scipy.linalg.sqrtm
for full ones; the sampling error of mean and covariance estimates (Isserlis) for draws from
a known Gaussian; a numpy transcription of PyTorch's bilinear resize (align_corners=False);
the published InceptionV3 size (Keras' include_top=False summary: 21,768,352 trainable =
conv kernels + BN offsets, 34,432 running statistics; PyTorch adds the 17,216 BN scales).
Weights are random (numpy, fast) rather than flax's init, which takes ~25 s on a CPU.
"""

import logging
import math
import os
import sys

import jax
import numpy as np
import pytest
import scipy.linalg
from flax import traverse_util

from nnd import fid

EPS = np.finfo(np.float64).eps


def random_weights(seed=0):
    """Variables of every expected shape: He-scaled kernels, BN statistics off (0, 1)."""
    rng = np.random.default_rng(seed)
    flat = {}
    for key, shape in fid._expected_shapes().items():
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
    return jax.jit(fid.InceptionV3().apply)


@pytest.fixture(scope="module")
def images_75():
    return np.random.default_rng(1).uniform(-1, 1, size=(2, 75, 75, 3)).astype(np.float32)


def random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# ------------------------------------------------------------------ Fréchet distance


def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3, size=5), rng.uniform(0.1, 3, size=5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2) ** 2)
    np.testing.assert_allclose(fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)),
                               expected, rtol=1e-12)


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(1)
    s1, s2 = random_spd(rng, 6), random_spd(rng, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    np.testing.assert_allclose(fid.frechet_distance(mu1, s1, mu2, s2), expected, rtol=1e-10)
    np.testing.assert_allclose(fid.frechet_distance(mu2, s2, mu1, s1), expected, rtol=1e-10)


@pytest.mark.parametrize("n, d", [(500, 16), (40, 64)])  # full rank; rank 39 of 64
def test_frechet_distance_of_identical_statistics_is_zero(n, d):
    rng = np.random.default_rng(2)
    f = np.abs(rng.normal(size=(n, d))) * rng.uniform(0.1, 2, size=d)
    mu, sigma = fid.statistics(f)
    # Backward-stable eigh and SVD leave each of the d singular values an absolute error
    # of a few ε‖Σ‖ ≤ ε tr Σ; tr Σ₁ + tr Σ₂ - 2Σσᵢ then cancels to within ~d ε tr Σ.
    # (sqrt of the eigenvalues of Σ^{1/2}ΣΣ^{1/2} would give ~1e-6 on the null space.)
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 10 * d * EPS * np.trace(sigma)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_statistics_converge_to_the_law():
    rng = np.random.default_rng(3)
    n, mu = 20_000, np.array([1.0, -2.0, 0.5])
    sigma = random_spd(rng, 3)
    f = rng.multivariate_normal(mu, sigma, size=n)
    mean, cov = fid.statistics(f)
    assert mean.dtype == cov.dtype == np.float64
    # standard errors: √(Σᵢᵢ/n) for the mean; √((ΣᵢᵢΣⱼⱼ + Σᵢⱼ²)/n) for a covariance entry
    var = np.diag(sigma)
    assert np.all(np.abs(mean - mu) < 5 * np.sqrt(var / n))
    assert np.all(np.abs(cov - sigma) < 5 * np.sqrt((np.outer(var, var) + sigma**2) / n))
    with pytest.raises(ValueError, match="N >= 2"):
        fid.statistics(f[:1])


def test_streamed_statistics_equal_two_pass():
    rng = np.random.default_rng(4)
    f = 1e3 + rng.normal(size=(103, 5))  # a large mean: a naive Σx² - n x̄² would lose digits
    batches = [f[:1], f[1:50], f[50:50], f[50:]]
    mean, cov, n = fid._feature_statistics(lambda x: x, batches)
    ref_mean, ref_cov = fid.statistics(f)
    assert n == 103
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-14)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-10)


# --------------------------------------------------------------------------- network


def test_inception_variables_have_the_published_sizes():
    shapes = fid._expected_shapes()
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
    assert out.shape == (2, fid.NUM_FEATURES) and out.dtype == np.float32
    assert np.all(np.isfinite(out)) and np.all(out >= 0) and out.std() > 0  # means of ReLUs
    swapped = np.asarray(apply_75(variables, images_75[::-1]))
    np.testing.assert_allclose(swapped[::-1], out, rtol=1e-5, atol=1e-6 * out.max())
    with pytest.raises(ValueError, match="75"):
        fid.InceptionV3().apply(variables, images_75[:, :74])


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
    x = np.asarray(fid.preprocess(gray))
    assert x.shape == (1, 299, 299, 3)
    np.testing.assert_array_equal(x[..., 0], x[..., 2])  # 1 channel tiled to 3
    # both compute sample coordinates (≤ 320) in float32: a weight error of a few
    # 320·2⁻²⁴ times neighbour differences ≤ 2
    np.testing.assert_allclose(x[0, :, :, 1], torch_bilinear(gray[0, :, :, 0], 299, 299),
                               atol=8 * max(size, 299) * 2.0**-24)


def test_preprocess_clips_and_checks_channels():
    x = np.asarray(fid.preprocess(np.full((1, 299, 299, 3), 3.0)))
    np.testing.assert_array_equal(x, 1.0)
    with pytest.raises(ValueError, match="C in"):
        fid.preprocess(np.zeros((1, 32, 32, 2)))


def test_make_feature_fn_at_299(variables):
    images = np.random.default_rng(6).uniform(-1, 1, size=(3, 32, 32, 1)).astype(np.float32)
    feature_fn = fid.make_feature_fn(variables, batch_size=2)
    out = feature_fn(images)  # batches [0, 1] and [2, padding]
    assert out.shape == (3, 2048) and out.dtype == np.float32 and np.all(np.isfinite(out))
    np.testing.assert_allclose(feature_fn(images[1:]), out[1:], rtol=1e-5,
                               atol=1e-6 * out.max())


def test_batched_pads_the_last_batch_and_compiles_once():
    traces = []

    @jax.jit
    def fn(x):
        traces.append(x.shape)
        return 2.0 * x.sum(axis=(1, 2, 3))[:, None]

    apply = fid._batched(fn, batch_size=3)
    x = np.random.default_rng(7).normal(size=(7, 2, 2, 1)).astype(np.float32)
    expected = 2.0 * x.sum(axis=(1, 2, 3))[:, None]
    np.testing.assert_allclose(apply(x), expected, rtol=1e-6)
    np.testing.assert_allclose(apply(jax.numpy.asarray(x[:3])), expected[:3], rtol=1e-6)
    np.testing.assert_allclose(apply(x[:1]), expected[:1], rtol=1e-6)
    assert traces == [(3, 2, 2, 1)]
    with pytest.raises(ValueError, match="no images"):
        apply(x[:0])


# --------------------------------------------------------------------------- weights


def test_save_and_load_weights_round_trip(tmp_path, variables, apply_75, images_75):
    path = str(tmp_path / "sub" / "inception.npz")
    fid.save_weights(path, variables)
    assert os.listdir(tmp_path / "sub") == ["inception.npz"]
    loaded = fid.load_weights(path)
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
        fid.load_weights(str(tmp_path / "bad.npz"))
    message = str(info.value)
    assert "1 missing: batch_stats/Mixed_5b/branch1x1/bn/mean" in message
    assert "1 unexpected: params/fc/kernel" in message
    assert f"1 mis-shaped: {kernel} (7, 1, 128, 128) != (1, 7, 128, 128)" in message
    with pytest.raises(ValueError, match="missing"):
        fid.save_weights(str(tmp_path / "never.npz"), {"params": variables["params"]})
    assert not (tmp_path / "never.npz").exists()
    with pytest.raises(FileNotFoundError, match="docstring"):
        fid.load_weights(str(tmp_path / "absent.npz"))


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
    converted = traverse_util.flatten_dict(fid.convert_torch_state_dict(state), sep="/")
    flat = traverse_util.flatten_dict(variables, sep="/")
    assert converted.keys() == flat.keys()
    for key in flat:
        np.testing.assert_array_equal(converted[key], flat[key])

    aux = dict(state, **{"AuxLogits.conv0.conv.weight": np.zeros((128, 768, 1, 1))})
    with pytest.raises(ValueError, match="unexpected: params/AuxLogits/conv0/conv/kernel"):
        fid.convert_torch_state_dict(aux)
    del state["Mixed_7c.branch_pool.bn.weight"]
    with pytest.raises(ValueError, match="missing: params/Mixed_7c/branch_pool/bn/scale"):
        fid.convert_torch_state_dict(state)


def test_cli_without_torch_says_so(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    with pytest.raises(SystemExit, match="needs torch"):
        fid._main(["convert", str(tmp_path / "in.pth"), str(tmp_path / "out.npz")])


# ------------------------------------------------------------------ reference and FID


def fake_feature_fn(calls):
    """Cheap stand-in for the Inception features: 4 pixel values per image."""

    def feature_fn(images):
        calls.append(len(images))
        return np.asarray(images).reshape(len(images), -1)[:, :4]

    return feature_fn


def test_reference_statistics_computed_once_then_loaded(tmp_path, caplog):
    rng = np.random.default_rng(8)
    images = rng.uniform(-1, 1, size=(30, 4, 4, 1))
    calls = []
    path = str(tmp_path / "ref" / "cifar10_train.npz")
    with caplog.at_level(logging.INFO):
        mu, sigma = fid.reference_statistics(fake_feature_fn(calls), np.split(images, 3), path)
    assert calls == [10, 10, 10]
    assert os.listdir(tmp_path / "ref") == ["cifar10_train.npz"]
    assert "30 images cached" in caplog.text
    ref_mu, ref_sigma = fid.statistics(images.reshape(30, -1)[:, :4])
    np.testing.assert_allclose(mu, ref_mu, rtol=1e-12)
    np.testing.assert_allclose(sigma, ref_sigma, rtol=1e-12)

    def untouchable():
        raise AssertionError("batches read although the cache exists")
        yield

    with caplog.at_level(logging.INFO):
        mu2, sigma2 = fid.reference_statistics(fake_feature_fn(calls), untouchable(), path)
    assert calls == [10, 10, 10]
    np.testing.assert_array_equal(mu2, mu)
    np.testing.assert_array_equal(sigma2, sigma)
    assert "loaded from" in caplog.text


def test_fid_of_array_or_batches():
    rng = np.random.default_rng(9)
    samples = rng.uniform(-1, 1, size=(40, 4, 4, 1))
    reference = (rng.normal(size=4), random_spd(rng, 4))
    expected = fid.frechet_distance(*fid.statistics(samples.reshape(40, -1)[:, :4]), *reference)
    calls = []
    np.testing.assert_allclose(fid.fid(fake_feature_fn(calls), samples, reference), expected,
                               rtol=1e-12)
    np.testing.assert_allclose(fid.fid(fake_feature_fn(calls), iter(np.split(samples, 4)),
                                       reference), expected, rtol=1e-10)
    assert calls == [40, 10, 10, 10, 10]
