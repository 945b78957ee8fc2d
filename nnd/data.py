"""Training data: 2-D toys and quantised images, as a pure function of the step.

Every batch is a pure function of (seed, step, process index), so the data
position saved with a checkpoint is the step itself and a resumed run sees
exactly the batches an uninterrupted run would have seen.

Images (``cifar10``, ``mnist`` through ``tfds.data_source``, no TensorFlow at
train time; ``digits``, scikit-learn's bundled 8×8 handwritten digits, no
download) go through a grain ``MapDataset``: shuffle (a new permutation each
epoch), this host's shard, uniform dequantisation of the L levels
``z = 2(n + U)/L - 1`` into [-1, 1], a random horizontal flip for CIFAR-10,
then batching. ``dataset[step]`` is the host-local batch of that step.

Toys (2-D, drawn fresh from a key):

- ``gmm8``: 8 Gaussians on the unit circle, std 0.1 (SPEC §6; exact score known).
- ``checkerboard``: uniform on the black squares of a 4×4 board on [-2, 2]².
- ``moons``: two interleaved half circles with Gaussian noise 0.05 (scaled to ≈ unit).
- ``swissroll``: a 2-D swiss roll with noise 0.05 (scaled to ≈ unit).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from nnd import keys, oracles

__all__ = ["toy_batch", "TOYS", "IMAGES", "ImageSpec", "image_source", "image_dataset",
           "dequantize", "example_shape", "Batches", "make_batches", "DATASETS"]


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
    data_root = keys.stream(jax.random.key(seed), keys.Stream.DATA)
    key = jax.random.fold_in(data_root, step)
    return TOYS[name](key, batch_size)


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """A quantised image dataset: tfds name (None if embedded), shape, levels L, flips."""

    tfds_name: str | None
    shape: tuple[int, int, int]
    num_levels: int
    flip: bool


IMAGES = {
    "cifar10": ImageSpec("cifar10", (32, 32, 3), 256, True),
    "mnist": ImageSpec("mnist", (28, 28, 1), 256, False),
    "digits": ImageSpec(None, (8, 8, 1), 17, False),
}

#: Every dataset name a config may use.
DATASETS = tuple(TOYS) + tuple(IMAGES)

_DIGITS_TEST_FRACTION = 0.2


class DigitsSource:
    """scikit-learn's 1797 bundled 8×8 digits (levels 0..16) as a random-access source.

    A fixed permutation (seed 0) puts 80% in ``train`` and 20% in ``test``.
    """

    def __init__(self, split: str):
        from sklearn import datasets  # noqa: PLC0415  (only this dataset needs it)

        if split not in ("train", "test"):
            raise ValueError(f"digits has splits 'train' and 'test', got {split!r}")
        images = datasets.load_digits().images.astype(np.uint8)[..., None]
        order = np.random.default_rng(0).permutation(len(images))
        n_test = int(round(_DIGITS_TEST_FRACTION * len(images)))
        idx = order[n_test:] if split == "train" else order[:n_test]
        self._images = images[np.sort(idx)]

    def __len__(self):
        return len(self._images)

    def __getitem__(self, i):
        return {"image": self._images[i]}


def image_source(name: str, split: str):
    """Random-access source of {'image': uint8 [H, W, C]} records."""
    if name not in IMAGES:
        raise ValueError(f"unknown image dataset {name!r}; choose one of {sorted(IMAGES)}")
    spec = IMAGES[name]
    if spec.tfds_name is None:
        return DigitsSource(split)
    import tensorflow_datasets as tfds  # noqa: PLC0415

    return tfds.data_source(spec.tfds_name, split=split)


def dequantize(n, u, num_levels: int):
    """z = 2(n + u)/L - 1: integer levels n ∈ {0..L-1} plus uniform u ∈ [0, 1) into [-1, 1]."""
    return (2.0 * (np.asarray(n, np.float32) + u) / num_levels - 1.0).astype(np.float32)


def image_dataset(name: str, split: str, *, seed: int, global_batch: int,
                  process_index: int = 0, process_count: int = 1, source=None):
    """grain MapDataset whose item ``step`` is this host's batch [B/processes, H, W, C]."""
    import grain  # noqa: PLC0415

    spec = IMAGES[name]
    if global_batch % process_count:
        raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
    source = image_source(name, split) if source is None else source

    def transform(record, rng):
        image = np.asarray(record["image"]).reshape(spec.shape)
        x = dequantize(image, rng.random(image.shape, dtype=np.float32), spec.num_levels)
        if spec.flip and rng.random() < 0.5:
            x = x[:, ::-1, :]
        return x

    ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
    # Random transforms before sharding: their draws are keyed by the global
    # position, so hosts get independent dequantisation noise and flips.
    ds = ds.random_map(transform, seed=seed + 1)
    ds = ds[process_index::process_count]
    return ds.batch(global_batch // process_count, drop_remainder=True)


def example_shape(name: str) -> tuple[int, ...]:
    """The shape of one example of dataset ``name`` (no data is read)."""
    if name in TOYS:
        return (2,)
    if name in IMAGES:
        return IMAGES[name].shape
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")


class Batches:
    """``batches(step)`` is this host's numpy batch of that step; ``shape`` one example's shape."""

    def __init__(self, name: str, seed: int, global_batch: int, *, split: str = "train",
                 process_index: int | None = None, process_count: int | None = None):
        self.name, self.seed, self.global_batch = name, seed, global_batch
        self.process_index = jax.process_index() if process_index is None else process_index
        self.process_count = jax.process_count() if process_count is None else process_count
        if global_batch % self.process_count:
            raise ValueError(f"global batch {global_batch} is not divisible by "
                             f"{self.process_count} processes")
        self.local_batch = global_batch // self.process_count
        if name in TOYS:
            self.shape, self.num_levels, self._images = (2,), None, None
        elif name in IMAGES:
            spec = IMAGES[name]
            self.shape, self.num_levels = spec.shape, spec.num_levels
            self._images = image_dataset(
                name, split, seed=seed, global_batch=global_batch,
                process_index=self.process_index, process_count=self.process_count)
        else:
            raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")

    def __call__(self, step: int) -> np.ndarray:
        if self._images is not None:
            return np.asarray(self._images[step])
        full = np.asarray(toy_batch(self.name, self.seed, step, self.global_batch))
        lo = self.process_index * self.local_batch
        return full[lo:lo + self.local_batch]


def make_batches(config, split: str = "train") -> Batches:
    return Batches(config.data.name, config.seed, config.data.batch_size, split=split)
