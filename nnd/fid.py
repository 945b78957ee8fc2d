"""Fréchet Inception Distance (FID) with the FID InceptionV3 in Flax linen.

FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a
Local Nash Equilibrium") is the Fréchet (2-Wasserstein) distance between the Gaussians
fitted to Inception pool features of two image sets (Dowson & Landau 1982):

.. math::

   d^2 = \\lVert\\mu_1 - \\mu_2\\rVert^2
         + \\operatorname{tr}\\Sigma_1 + \\operatorname{tr}\\Sigma_2
         - 2 \\operatorname{tr}\\big(\\Sigma_1^{1/2}\\Sigma_2\\Sigma_1^{1/2}\\big)^{1/2}.

- :class:`InceptionV3`: the network of TF's 2015-12-05 graph as pytorch-fid builds it
  (its FID blocks: padding-excluding average pools, a max pool in the last block).
- :func:`features`, :func:`make_feature_fn`: images NHWC in [-1, 1] → [N, 2048].
- :func:`statistics`, :func:`frechet_distance`, :func:`reference_statistics`, :func:`fid`.
- :func:`load_weights`, :func:`save_weights`, :func:`convert_torch_state_dict`.

Weights come from a local ``.npz`` only; nothing is downloaded. To make one (with
internet and PyTorch, once)::

    wget https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
    python -m nnd.fid convert pt_inception-2015-12-05-6726825d.pth inception_fid.npz

which is ``torch.load`` → :func:`convert_torch_state_dict` → :func:`save_weights`. Then
point the config field ``eval.fid_weights`` at ``inception_fid.npz``. The network,
resize (bilinear to 299, no antialiasing) and [-1, 1] input follow pytorch-fid so that the
features match it; this has NOT yet been checked against the real weights (no download
here): compare a few features with pytorch-fid once before publishing numbers.
pytorch-fid's features are themselves close to, not bit-identical with, TF's original FID.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import tempfile
from typing import Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

__all__ = [
    "InceptionV3",
    "preprocess",
    "features",
    "make_feature_fn",
    "load_weights",
    "save_weights",
    "convert_torch_state_dict",
    "statistics",
    "frechet_distance",
    "reference_statistics",
    "fid",
]

INPUT_SIZE = 299
NUM_FEATURES = 2048
_MIN_SIZE = 75  # the smallest input the strided convs and pools leave ≥ 1 px
# full float32 convs: TF32 (the GPU default) would move the features and so the FID
_PRECISION = jax.lax.Precision.HIGHEST


class BasicConv2d(nn.Module):
    """Conv without bias → batch norm (eps 1e-3, running statistics) → ReLU."""

    features: int
    kernel_size: tuple[int, int]
    strides: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x):
        ph, pw = self.padding
        x = nn.Conv(self.features, self.kernel_size, strides=self.strides,
                    padding=((ph, ph), (pw, pw)), use_bias=False, precision=_PRECISION,
                    name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _pool_3x3(x, kind: str):
    """3×3, stride 1, padding 1: mean over the in-image pixels only, or max."""
    if kind == "avg":
        return nn.avg_pool(x, (3, 3), padding=((1, 1), (1, 1)), count_include_pad=False)
    return nn.max_pool(x, (3, 3), padding=((1, 1), (1, 1)))


def _max_pool_3x3_stride_2(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(nn.Module):
    """Mixed_5b/5c/5d: 64 + 64 + 96 + pool_features channels."""

    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(64, (1, 1), name="branch1x1")(x)
        b5 = BasicConv2d(48, (1, 1), name="branch5x5_1")(x)
        b5 = BasicConv2d(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv2d(self.pool_features, (1, 1), name="branch_pool")(_pool_3x3(x, "avg"))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a: halves H, W; 384 + 96 + input channels."""

    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(384, (3, 3), strides=2, name="branch3x3")(x)
        bd = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv2d(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_stride_2(x)], axis=-1)


class InceptionC(nn.Module):
    """Mixed_6b..6e: factorised 7×7 convs of width c7; 4 × 192 channels."""

    c7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.c7
        b1 = BasicConv2d(192, (1, 1), name="branch1x1")(x)
        b7 = BasicConv2d(c7, (1, 1), name="branch7x7_1")(x)
        b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv2d(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv2d(192, (1, 1), name="branch_pool")(_pool_3x3(x, "avg"))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a: halves H, W; 320 + 192 + input channels."""

    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(192, (1, 1), name="branch3x3_1")(x)
        b3 = BasicConv2d(320, (3, 3), strides=2, name="branch3x3_2")(b3)
        b7 = BasicConv2d(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv2d(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_stride_2(x)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b/7c: 320 + 768 + 768 + 192 = 2048 channels; ``pool`` is 'avg' or 'max'."""

    pool: str

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(320, (1, 1), name="branch1x1")(x)
        b3 = BasicConv2d(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([
            BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
            BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = BasicConv2d(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv2d(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([
            BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
            BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        bp = BasicConv2d(192, (1, 1), name="branch_pool")(_pool_3x3(x, self.pool))
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
    """FID InceptionV3 up to the global average pool: [N, H, W, 3] in [-1, 1] → [N, 2048].

    H, W ≥ 75 (FID uses 299; :func:`features` resizes). Submodule names are
    pytorch-fid's, so its state dict maps onto the variables name by name.
    """

    @nn.compact
    def __call__(self, x_NxHxWx3):
        if min(x_NxHxWx3.shape[1:3]) < _MIN_SIZE or x_NxHxWx3.shape[-1] != 3:
            raise ValueError(f"InceptionV3 takes [N, H, W, 3] with H, W >= {_MIN_SIZE}, "
                             f"got {x_NxHxWx3.shape}")
        x = BasicConv2d(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x_NxHxWx3)
        x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_stride_2(x)
        x = BasicConv2d(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_stride_2(x)
        for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
            x = InceptionA(pool_features, name=name)(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                         ("Mixed_6e", 192)):
            x = InceptionC(c7, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE("avg", name="Mixed_7b")(x)
        x = InceptionE("max", name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


def preprocess(images_NxHxWxC):
    """Images NHWC in [-1, 1] (C = 1 or 3, any H, W) → [N, 299, 299, 3] float32.

    Values are clipped to [-1, 1]; the resize is bilinear with half-pixel centres and
    no antialiasing, i.e. PyTorch's ``interpolate(..., 'bilinear', align_corners=False)``
    as in pytorch-fid (linear, so resizing before its [0, 1] → [-1, 1] map is the same).
    """
    if images_NxHxWxC.ndim != 4 or images_NxHxWxC.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [N, H, W, C] with C in (1, 3), got "
                         f"{images_NxHxWxC.shape}")
    x = jnp.clip(jnp.asarray(images_NxHxWxC, jnp.float32), -1.0, 1.0)
    n, h, w, c = x.shape
    if (h, w) != (INPUT_SIZE, INPUT_SIZE):
        x = jax.image.resize(x, (n, INPUT_SIZE, INPUT_SIZE, c), "bilinear", antialias=False)
    return jnp.broadcast_to(x, (n, INPUT_SIZE, INPUT_SIZE, 3))


def features(variables, images_NxHxWxC):
    """Inception pool features [N, 2048] float32 of images NHWC in [-1, 1] (pure; jit it)."""
    return InceptionV3().apply(variables, preprocess(images_NxHxWxC))


def _batched(fn: Callable, batch_size: int) -> Callable:
    """Host function applying ``fn`` to fixed-size batches: the last is zero-padded and
    the padding dropped, so a jitted ``fn`` compiles once per image shape. Each batch's
    result is fetched while the next one runs."""

    def apply(images):
        outputs, pending = [], None
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            k = len(batch)
            if k < batch_size:
                padding = [(0, batch_size - k)] + [(0, 0)] * (batch.ndim - 1)
                batch = jnp.pad(jnp.asarray(batch), padding)
            result = fn(batch)
            if pending is not None:
                outputs.append(np.asarray(pending[0])[:pending[1]])
            pending = (result, k)
        if pending is None:
            raise ValueError("no images")
        outputs.append(np.asarray(pending[0])[:pending[1]])
        return np.concatenate(outputs)

    return apply


def make_feature_fn(variables, *, batch_size: int = 200) -> Callable[..., np.ndarray]:
    """``images [N, H, W, C] in [-1, 1] -> features [N, 2048]`` on the host, in jitted
    batches of ``batch_size`` (weights put on the device once)."""
    variables = jax.device_put(variables)
    jitted = jax.jit(features)
    return _batched(lambda batch: jitted(variables, batch), batch_size)


# ---------------------------------------------------------------------------- weights


@functools.cache
def _expected_shapes() -> dict[str, tuple[int, ...]]:
    """'/'-joined variable path ('params/Mixed_5b/branch1x1/conv/kernel') → shape."""
    shapes = jax.eval_shape(InceptionV3().init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, _MIN_SIZE, _MIN_SIZE, 3), jnp.float32))
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes, sep="/").items()}


def _listed(names, limit: int = 8) -> str:
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _check_and_unflatten(flat: dict, source: str) -> dict:
    """Flat '/'-keyed arrays → variables dict (float32), or a ValueError that counts the
    missing, unexpected and mis-shaped keys and names (up to 8 of each kind)."""
    expected = _expected_shapes()
    missing = expected.keys() - flat.keys()
    unexpected = flat.keys() - expected.keys()
    mismatched = [f"{k} {tuple(np.shape(flat[k]))} != {expected[k]}"
                  for k in expected.keys() & flat.keys() if tuple(np.shape(flat[k])) != expected[k]]
    problems = [f"{len(names)} {what}: {_listed(names)}" for what, names in
                (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched))
                if names]
    if problems:
        raise ValueError(f"{source} does not hold FID InceptionV3 weights: " + "; ".join(problems))
    return traverse_util.unflatten_dict(
        {k: np.asarray(v, np.float32) for k, v in flat.items()}, sep="/")


def _save_npz_atomically(path: str, arrays: dict) -> None:
    """np.savez to a temporary file beside ``path``, then os.replace: never a torn file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp's 0o600 would make the file private
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_weights(path: str) -> dict:
    """Variables {'params', 'batch_stats'} from an .npz of '/'-joined paths (see module doc)."""
    try:
        with np.load(path) as npz:
            flat = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"no FID weights at {path!r}; the nnd.fid module docstring "
                                "says how to make them") from None
    return _check_and_unflatten(flat, path)


def save_weights(path: str, variables) -> None:
    """Writes ``variables`` in the format :func:`load_weights` reads (after checking them)."""
    flat = traverse_util.flatten_dict(jax.device_get(dict(variables)), sep="/")
    _check_and_unflatten(flat, "variables")
    _save_npz_atomically(path, flat)


# pytorch-fid's '<module>.<leaf>' → (collection, flax leaf path)
_TORCH_LEAVES = {
    "conv.weight": ("params", "conv/kernel"),
    "bn.weight": ("params", "bn/scale"),
    "bn.bias": ("params", "bn/bias"),
    "bn.running_mean": ("batch_stats", "bn/mean"),
    "bn.running_var": ("batch_stats", "bn/var"),
}


def convert_torch_state_dict(state_dict) -> dict:
    """pytorch-fid's FIDInceptionA..E network state dict (name → array or tensor) → variables.

    ``Mixed_5b.branch1x1.conv.weight`` [O, I, kh, kw] becomes
    ``params/Mixed_5b/branch1x1/conv/kernel`` [kh, kw, I, O]; ``bn.weight``/``bias`` become
    ``bn/scale``/``bias``, ``bn.running_mean``/``var`` the batch_stats ``bn/mean``/``var``.
    The classifier ``fc.*`` and ``num_batches_tracked`` are dropped; other names raise.
    """
    flat = {}
    for name, value in state_dict.items():
        if name.startswith("fc.") or name.endswith(".num_batches_tracked"):
            continue
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().numpy()
        parts = name.split(".")
        leaf = _TORCH_LEAVES.get(".".join(parts[-2:]))
        if leaf is None:  # kept as is, so the check below names it as unexpected
            flat[name] = np.asarray(value)
            continue
        collection, flax_leaf = leaf
        value = np.asarray(value, np.float32)
        if flax_leaf == "conv/kernel":
            value = value.transpose(2, 3, 1, 0)
        flat["/".join([collection, *parts[:-2], flax_leaf])] = value
    return _check_and_unflatten(flat, "state dict")


# ------------------------------------------------------------------------- statistics


def statistics(features_NxD):
    """(mean [D], covariance [D, D]) in float64; the covariance divides by N - 1."""
    f = np.asarray(features_NxD, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"statistics needs features [N >= 2, D], got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(sigma):
    """Symmetric square root of a PSD matrix by eigh, rounding-negative eigenvalues → 0."""
    eigenvalues, vectors = np.linalg.eigh(sigma)
    return (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂), in float64 on the host.

    .. math::

       d^2 = \\lVert\\mu_1-\\mu_2\\rVert^2 + \\operatorname{tr}\\Sigma_1
             + \\operatorname{tr}\\Sigma_2 - 2\\operatorname{tr}(\\Sigma_1^{1/2}\\Sigma_2
             \\Sigma_1^{1/2})^{1/2}

    Σᵢ^{1/2} come from symmetric eigendecompositions. The last trace is the sum of the
    singular values of Σ₂^{1/2}Σ₁^{1/2} (their squares are the eigenvalues of
    Σ₁^{1/2}Σ₂Σ₁^{1/2}): unlike square roots of eigenvalues, singular values carry only
    O(ε) absolute error on the null space that N < D samples leave, so identical
    statistics give |d²| ~ ε·D·tr Σ rather than √ε. Never complex, no ``sqrtm`` retries.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"shapes differ: mu {mu1.shape}, {mu2.shape}; "
                         f"sigma {sigma1.shape}, {sigma2.shape}")
    cross = np.linalg.svd(_psd_sqrt(sigma2) @ _psd_sqrt(sigma1), compute_uv=False).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * cross)


def _as_batches(images) -> Iterable:
    """One array [N, H, W, C] is one batch; anything else is an iterable of batches."""
    return [images] if hasattr(images, "ndim") else images


def _feature_statistics(feature_fn: Callable, batches) -> tuple[np.ndarray, np.ndarray, int]:
    """(mean, covariance, count) of ``feature_fn`` over batches, streamed in float64.

    Batches merge by Chan, Golub & LeVeque's (1979) pairwise update of (count, mean,
    centred sum of squares M), which equals the two-pass result without keeping features.
    """
    n, mean, m2 = 0, None, None
    for batch in _as_batches(batches):
        f = np.asarray(feature_fn(batch), np.float64)
        if len(f) == 0:
            continue
        mean_b = f.mean(axis=0)
        centred = f - mean_b
        m2_b = centred.T @ centred
        if mean is None:
            n, mean, m2 = len(f), mean_b, m2_b
            continue
        total = n + len(f)
        delta = mean_b - mean
        mean = mean + delta * (len(f) / total)
        m2 = m2 + m2_b + np.outer(delta, delta) * (n * len(f) / total)
        n = total
    if n < 2:
        raise ValueError(f"FID statistics need at least 2 images, got {n}")
    return mean, m2 / (n - 1), n


def reference_statistics(feature_fn: Callable, batches, cache_path: str):
    """Dataset (mu, sigma) of ``feature_fn`` features, computed once and cached at
    ``cache_path`` (.npz). An existing cache is loaded and ``batches`` never touched; a
    cache is tied to its weights and dataset, so name the path after both."""
    if os.path.exists(cache_path):
        with np.load(cache_path) as npz:
            mu, sigma, n = npz["mu"], npz["sigma"], int(npz["num_images"])
        logging.info("FID reference statistics of %d images loaded from %s", n, cache_path)
        return mu, sigma
    mu, sigma, n = _feature_statistics(feature_fn, batches)
    _save_npz_atomically(cache_path, {"mu": mu, "sigma": sigma, "num_images": np.asarray(n)})
    logging.info("FID reference statistics of %d images cached at %s", n, cache_path)
    return mu, sigma


def fid(feature_fn: Callable, samples, reference) -> float:
    """FID of ``samples`` (an array [N, H, W, C] or an iterable of such batches, in
    [-1, 1]) against ``reference = (mu, sigma)``."""
    mu, sigma, _ = _feature_statistics(feature_fn, samples)
    return frechet_distance(mu, sigma, *reference)


def _main(argv) -> int:
    parser = argparse.ArgumentParser(prog="python -m nnd.fid", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="pytorch-fid .pth state dict → nnd .npz")
    convert.add_argument("torch_weights", help="e.g. pt_inception-2015-12-05-6726825d.pth")
    convert.add_argument("output", help="the .npz to write")
    args = parser.parse_args(argv)
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise SystemExit("python -m nnd.fid convert reads a PyTorch file and needs torch "
                         "(pip install torch); nnd itself does not depend on it") from None
    state_dict = torch.load(args.torch_weights, map_location="cpu", weights_only=True)
    save_weights(args.output, convert_torch_state_dict(state_dict))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
