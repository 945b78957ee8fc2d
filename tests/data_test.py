"""Tests for nnd.data: dequantisation, the digits split, image batches and the 2-D toys.

The references are independent of the code under test: dequantised values are checked
against z = 2(n + u)/L - 1 worked out by hand; the digits split against scikit-learn's
own bundled images; batches are mapped back to the integer levels they came from
(z ∈ [n, n + 1) after z ↦ (z + 1)L/2) and matched against the source images; the toys
against their defining geometry and Monte Carlo moments with standard-error tolerances.
"""

import numpy as np
import pytest

from nnd import data

DIGITS_L = 17
N_DIGITS = 1797


# ---------------------------------------------------------------------------------------
# helpers


def _sklearn_digits():
    """scikit-learn's bundled digits: (images uint8 [1797, 8, 8, 1], labels [1797])."""
    from sklearn import datasets

    digits = datasets.load_digits()
    return digits.images.astype(np.uint8)[..., None], digits.target


def _digits_source_images(split):
    source = data.DigitsSource(split)
    return np.stack([source[i]["image"] for i in range(len(source))])


def _match_levels(x_NxHxWxC, images_MxHxWxC, num_levels, tol=1e-4):
    """Index into ``images`` of the image each dequantised x came from.

    x = 2(n + u)/L - 1 with u ∈ [0, 1) means z = (x + 1)L/2 lies in [n, n + 1]; the
    tolerance only absorbs float32 rounding at the bin edges. Each x must match exactly
    one image (the images are pairwise distinct).
    """
    z = (np.asarray(x_NxHxWxC, np.float64) + 1.0) * num_levels / 2.0
    z = z.reshape(len(z), -1)
    centres = images_MxHxWxC.reshape(len(images_MxHxWxC), -1).astype(np.float64) + 0.5
    out = np.empty(len(z), np.int64)
    for start in range(0, len(z), 64):
        d = np.abs(z[start:start + 64, None, :] - centres[None, :, :]).max(axis=-1)
        ok = d <= 0.5 + tol
        counts = ok.sum(axis=1)
        assert np.all(counts == 1), f"batch images matching 0 or >1 sources: {counts}"
        out[start:start + 64] = np.argmax(ok, axis=1)
    return out


def _from_levels(x_NxHxWxC, image_HxWxC, num_levels, tol=1e-4):
    """Per example: is x a dequantisation of exactly this integer image? (z ∈ [n, n + 1])"""
    z = (np.asarray(x_NxHxWxC, np.float64) + 1.0) * num_levels / 2.0
    d = np.abs(z - (image_HxWxC[None].astype(np.float64) + 0.5))
    return np.all(d <= 0.5 + tol, axis=(1, 2, 3))


def _levels(x, num_levels):
    """floor((x + 1)L/2) clipped to the valid levels."""
    z = np.floor((np.asarray(x, np.float64) + 1.0) * num_levels / 2.0)
    return np.clip(z, 0, num_levels - 1).astype(np.int64)


# ---------------------------------------------------------------------------------------
# dequantize


@pytest.mark.parametrize("num_levels", [256, 17])
def test_dequantize_exact_values(num_levels):
    L = num_levels
    below_one = np.nextafter(np.float32(1.0), np.float32(0.0))
    assert data.dequantize(0, 0.0, L) == -1.0
    assert data.dequantize(L - 1, 1.0, L) == 1.0
    np.testing.assert_allclose(data.dequantize(L - 1, below_one, L), 1.0, atol=1e-6)
    # The bin edges n/L map to 2n/L - 1; bin centres to (2n + 1)/L - 1.
    n = np.arange(L)
    np.testing.assert_allclose(data.dequantize(n, np.zeros(L, np.float32), L),
                               2.0 * n / L - 1.0, atol=1e-6)
    np.testing.assert_allclose(data.dequantize(n, np.full(L, 0.5, np.float32), L),
                               (2.0 * n + 1.0) / L - 1.0, atol=1e-6)
    if L % 2:  # the middle level's centre is exactly 0
        assert data.dequantize((L - 1) // 2, 0.5, L) == 0.0
    else:  # the middle bin edge is exactly 0
        assert data.dequantize(L // 2, 0.0, L) == 0.0


def test_likelihood_dequantises_as_the_pipeline_does():
    # likelihood keeps its own copy of the formula (it must not import data); bpd is only
    # right if the two agree.
    from nnd import likelihood

    rng = np.random.default_rng(0)
    for num_levels in (2, 17, 256):
        n = rng.integers(0, num_levels, (5, 7))
        u = rng.random((5, 7), dtype=np.float32)
        np.testing.assert_array_equal(likelihood._dequantize(n, u, num_levels),
                                      data.dequantize(n, u, num_levels))


@pytest.mark.parametrize("num_levels", [256, 17])
def test_dequantize_range_dtype_and_order(num_levels):
    L = num_levels
    rng = np.random.default_rng(0)
    n = np.repeat(np.arange(L), 50)
    u = rng.random(n.shape, dtype=np.float32)
    u[:L] = 0.0
    u[L:2 * L] = np.nextafter(np.float32(1.0), np.float32(0.0))
    z = data.dequantize(n, u, L)
    assert z.dtype == np.float32 and z.shape == n.shape
    assert np.all((z >= -1.0) & (z <= 1.0))
    # level n occupies [2n/L - 1, 2(n+1)/L - 1]: levels stay ordered and in their own bins
    np.testing.assert_allclose(z, 2.0 * (n + u.astype(np.float64)) / L - 1.0, atol=1e-6)
    assert np.all(np.diff(z.reshape(L, 50).max(axis=1)) > 0)
    assert data.dequantize(np.uint8(3), np.float64(0.25), L).dtype == np.float32


# ---------------------------------------------------------------------------------------
# DigitsSource


def test_digits_source_is_a_partition_of_sklearn_digits():
    train, test = _digits_source_images("train"), _digits_source_images("test")
    assert len(train) + len(test) == N_DIGITS
    assert abs(len(test) - 0.2 * N_DIGITS) <= 1.0
    assert len(data.DigitsSource("train")) == len(train)
    for images in (train, test):
        assert images.dtype == np.uint8 and images.shape[1:] == (8, 8, 1)
        assert images.min() >= 0 and images.max() <= 16
    # train ∪ test is exactly scikit-learn's set, so the two are disjoint (the 1797 raw
    # images are pairwise distinct, checked here too).
    full, labels = _sklearn_digits()
    as_rows = lambda a: sorted(bytes(r) for r in a.reshape(len(a), -1))  # noqa: E731
    assert len(set(as_rows(full))) == N_DIGITS
    assert not set(as_rows(train)) & set(as_rows(test))
    assert as_rows(np.concatenate([train, test])) == as_rows(full)
    # the test split is a random 20%, not a block of the source order: all ten digits
    label_of = {bytes(r): y for r, y in zip(full.reshape(N_DIGITS, -1), labels)}
    assert {label_of[bytes(r)] for r in test.reshape(len(test), -1)} == set(range(10))


def test_digits_source_is_fixed_and_refuses_bad_split():
    np.testing.assert_array_equal(_digits_source_images("test"), _digits_source_images("test"))
    with pytest.raises(ValueError, match="split"):
        data.DigitsSource("validation")
    with pytest.raises(ValueError):
        data.image_source("digits", "valid")


# ---------------------------------------------------------------------------------------
# Batches over digits


def test_digits_batches_shape_range_and_determinism():
    a = data.Batches("digits", seed=3, global_batch=16, process_index=0, process_count=1)
    b = data.Batches("digits", seed=3, global_batch=16, process_index=0, process_count=1)
    assert a.shape == (8, 8, 1) and a.num_levels == DIGITS_L
    x5 = a(5)
    assert x5.shape == (16, 8, 8, 1) and x5.dtype == np.float32
    assert np.all((x5 >= -1.0) & (x5 <= 1.0))
    # a pure function of the step: a fresh object, and any call order, give the same batch
    np.testing.assert_array_equal(b(0), a(0))
    np.testing.assert_array_equal(b(5), x5)
    np.testing.assert_array_equal(a(5), x5)
    assert not np.array_equal(a(6), x5)
    assert not np.array_equal(_levels(a(6), DIGITS_L), _levels(x5, DIGITS_L))
    # another seed, another stream
    c = data.Batches("digits", seed=4, global_batch=16, process_index=0, process_count=1)
    assert not np.array_equal(c(5), x5)
    # every batch image is a training image plus dequantisation noise
    _match_levels(x5, _digits_source_images("train"), DIGITS_L)


def test_digits_test_split_batches_come_from_test_images():
    x = data.Batches("digits", seed=0, global_batch=32, split="test",
                     process_index=0, process_count=1)(0)
    _match_levels(x, _digits_source_images("test"), DIGITS_L)


def test_digits_one_epoch_covers_the_training_set_and_reshuffles():
    train = _digits_source_images("train")
    n = len(train)
    assert n % 2 == 0
    batches = data.Batches("digits", seed=0, global_batch=n // 2, process_index=0,
                           process_count=1)
    epoch0 = np.concatenate([_match_levels(batches(s), train, DIGITS_L) for s in (0, 1)])
    epoch1 = np.concatenate([_match_levels(batches(s), train, DIGITS_L) for s in (2, 3)])
    # each epoch is a permutation of the training set ...
    np.testing.assert_array_equal(np.sort(epoch0), np.arange(n))
    np.testing.assert_array_equal(np.sort(epoch1), np.arange(n))
    # ... shuffled (not source order) and a new permutation each epoch
    assert not np.array_equal(epoch0, np.arange(n))
    assert not np.array_equal(epoch0, epoch1)


def test_digits_two_hosts_draw_disjoint_halves():
    train = _digits_source_images("train")
    hosts = [data.Batches("digits", seed=1, global_batch=16, process_index=i, process_count=2)
             for i in range(2)]
    for step in (0, 7):
        x0, x1 = hosts[0](step), hosts[1](step)
        assert x0.shape == x1.shape == (8, 8, 8, 1)
        i0, i1 = _match_levels(x0, train, DIGITS_L), _match_levels(x1, train, DIGITS_L)
        assert len(set(i0.tolist()) | set(i1.tolist())) == 16
    # a whole epoch as one global batch: the two halves partition the training set
    n = len(train)
    halves = [data.Batches("digits", seed=1, global_batch=n, process_index=i, process_count=2)(0)
              for i in range(2)]
    assert halves[0].shape == halves[1].shape == (n // 2, 8, 8, 1)
    idx = np.concatenate([_match_levels(h, train, DIGITS_L) for h in halves])
    np.testing.assert_array_equal(np.sort(idx), np.arange(n))


def test_two_hosts_draw_independent_dequantisation_noise():
    hosts = [data.Batches("digits", seed=1, global_batch=64, process_index=i, process_count=2)
             for i in range(2)]
    x0, x1 = hosts[0](0), hosts[1](0)
    frac = lambda x: (x.astype(np.float64) + 1.0) * DIGITS_L / 2.0 % 1.0  # noqa: E731
    u0, u1 = frac(x0).ravel(), frac(x1).ravel()
    # independent U(0,1) pairs agree to 1e-3 with probability ≈ 2e-3
    assert np.mean(np.abs(u0 - u1) < 1e-3) < 0.05


def test_global_batch_not_divisible_by_processes_is_refused():
    with pytest.raises(ValueError, match="divisible"):
        data.Batches("digits", seed=0, global_batch=15, process_index=0, process_count=2)
    with pytest.raises(ValueError, match="divisible"):
        data.Batches("gmm8", seed=0, global_batch=15, process_index=0, process_count=2)
    with pytest.raises(ValueError, match="divisible"):
        data.image_dataset("digits", "train", seed=0, global_batch=10, process_count=3)


def test_unknown_dataset_is_refused():
    with pytest.raises(ValueError, match="unknown"):
        data.Batches("imagenet", seed=0, global_batch=4, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="unknown"):
        data.image_source("imagenet", "train")


# ---------------------------------------------------------------------------------------
# tfds images (mock data) and flips


@pytest.mark.parametrize("name, shape", [("cifar10", (32, 32, 3)), ("mnist", (28, 28, 1))])
def test_tfds_image_batches_on_mock_data(name, shape):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        a = data.Batches(name, seed=0, global_batch=4, process_index=0, process_count=1)
        b = data.Batches(name, seed=0, global_batch=4, process_index=0, process_count=1)
        source = data.image_source(name, "train")
        images = np.stack([np.asarray(source[i]["image"]).reshape(shape)
                           for i in range(len(source))])
        x0, x1 = a(0), a(1)
        np.testing.assert_array_equal(b(0), x0)
        np.testing.assert_array_equal(b(1), x1)
    assert len(images) == 12
    assert a.shape == shape and x0.shape == (4, *shape) and x0.dtype == np.float32
    assert np.all((x0 >= -1.0) & (x0 <= 1.0))
    assert not np.array_equal(x0, x1)
    # each example is a mock image (CIFAR possibly mirrored) plus dequantisation noise
    candidates = np.concatenate([images, images[:, :, ::-1, :]]) if name == "cifar10" else images
    # mock images are random, so an image and its mirror never coincide; allow either.
    z = (x0.astype(np.float64) + 1.0) * 256 / 2.0
    d = np.abs(z[:, None] - (candidates[None].astype(np.float64) + 0.5))
    assert np.all(d.reshape(4, len(candidates), -1).max(-1).min(-1) <= 0.5 + 1e-3)


def _ramp_source(shape, num_levels, n=8):
    """Records whose level grows left to right (so a mirror image is told apart)."""
    h, w, c = shape
    ramp = np.round(np.linspace(0, num_levels - 1, w)).astype(np.uint8)
    image = np.broadcast_to(ramp[None, :, None], (h, w, c)).copy()
    return [{"image": image} for _ in range(n)], image


def _orientations(name, steps, batch):
    spec = data.IMAGES[name]
    source, image = _ramp_source(spec.shape, spec.num_levels)
    ds = data.image_dataset(name, "train", seed=0, global_batch=batch, source=source)
    x = np.concatenate([ds[s] for s in range(steps)])
    upright = _from_levels(x, image, spec.num_levels)
    mirrored = _from_levels(x, image[:, ::-1], spec.num_levels)
    assert np.all(upright ^ mirrored), "every draw is the image or its mirror, exactly"
    return mirrored.reshape(steps, batch)


def test_cifar_flips_about_half_of_the_draws_per_example():
    mirrored = _orientations("cifar10", steps=16, batch=32)  # 512 draws
    # Binomial(512, 1/2): mean 256, sd ≈ 11.3; ±56 is 5 sd.
    assert abs(int(mirrored.sum()) - 256) <= 56
    # flips are per example, not per batch
    assert np.all(mirrored.any(axis=1)) and not np.any(mirrored.all(axis=1))


@pytest.mark.fast_first
@pytest.mark.parametrize("name", ["mnist", "digits"])
def test_mnist_and_digits_never_flip(name):
    mirrored = _orientations(name, steps=8, batch=32)
    assert not mirrored.any()


# ---------------------------------------------------------------------------------------
# toys


@pytest.mark.fast_first
@pytest.mark.parametrize("name", sorted(data.TOYS))
def test_toy_batches_are_pure_functions_of_seed_and_step(name):
    x = np.asarray(data.toy_batch(name, 0, 3, 256))
    assert x.shape == (256, 2) and np.all(np.isfinite(x))
    np.testing.assert_array_equal(np.asarray(data.toy_batch(name, 0, 3, 256)), x)
    assert not np.allclose(np.asarray(data.toy_batch(name, 0, 4, 256)), x)
    assert not np.allclose(np.asarray(data.toy_batch(name, 1, 3, 256)), x)
    # Batches hands each host its own slice of the global batch
    hosts = [data.Batches(name, seed=0, global_batch=256, process_index=i, process_count=2)
             for i in range(2)]
    parts = [h(3) for h in hosts]
    assert parts[0].shape == parts[1].shape == (128, 2) and hosts[0].shape == (2,)
    np.testing.assert_array_equal(np.concatenate(parts), x)


def test_unknown_toy_is_refused():
    with pytest.raises(ValueError, match="unknown toy"):
        data.toy_batch("spirals", 0, 0, 8)


def test_checkerboard_lies_on_black_squares_uniformly():
    n = 8000
    x = np.asarray(data.toy_batch("checkerboard", 0, 0, n), np.float64)
    assert np.all((x >= -2.0) & (x <= 2.0))
    cells = np.floor(x + 2.0).astype(int)
    assert np.all((cells.sum(axis=1) % 2) == 0)
    # all 8 black cells, each ≈ n/8 (binomial sd ≈ 30; ±150 is 5 sd)
    counts = np.bincount(cells[:, 0] * 4 + cells[:, 1], minlength=16)
    black = [i * 4 + j for i in range(4) for j in range(4) if (i + j) % 2 == 0]
    assert np.all(np.abs(counts[black] - n / 8) <= 150)
    # uniform within a cell: the offset has mean 1/2, variance 1/12 (SE ≈ 0.0032)
    offset = x + 2.0 - cells
    assert np.all(np.abs(offset.mean(axis=0) - 0.5) < 0.016)
    assert np.all(np.abs(offset.var(axis=0) - 1.0 / 12.0) < 0.01)


def test_gmm8_moments_and_blob_width():
    n = 8000
    x = np.asarray(data.toy_batch("gmm8", 0, 0, n), np.float64)
    # mean 0; per-coordinate variance 1/2 + 0.1², so SE ≈ 0.008; 5 SE
    assert np.all(np.abs(x.mean(axis=0)) < 0.04)
    np.testing.assert_allclose(x.var(axis=0), 0.51, atol=0.05)
    angles = 2.0 * np.pi * np.arange(8) / 8
    centres = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    d2 = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
    idx, width = d2.argmin(axis=1), d2.min(axis=1).mean()
    # d² to the own centre is 0.1²·χ²₂: mean 0.02, sd 0.02, SE 0.02/√n ≈ 2.2e-4; 5 SE
    assert abs(width - 0.02) < 5 * 0.02 / np.sqrt(n)
    counts = np.bincount(idx, minlength=8)  # binomial sd ≈ 30
    assert np.all(np.abs(counts - n / 8) <= 150)


def test_moons_and_swissroll_geometry():
    n = 4000
    moons = np.asarray(data.toy_batch("moons", 0, 0, n), np.float64)
    # the two half circles' centroids (0, 2/π) and (1, 1/2 - 2/π) average to (1/2, 1/4),
    # which the scaling moves to the origin; per-coordinate sd < 1, so 5 SE < 0.08
    assert np.all(np.abs(moons.mean(axis=0)) < 0.08)
    raw = moons * 0.9 + np.array([0.5, 0.25])
    r_upper = np.hypot(raw[:, 0], raw[:, 1])
    r_lower = np.hypot(raw[:, 0] - 1.0, raw[:, 1] - 0.5)
    # every point is within noise (sd 0.05, ≤ 0.3 is 6 sd) of one of the unit half circles
    assert np.all(np.minimum(np.abs(r_upper - 1.0), np.abs(r_lower - 1.0)) < 0.3)
    swiss = np.asarray(data.toy_batch("swissroll", 0, 0, n), np.float64)
    # t ∈ [1.5π, 4.5π] at radius t/7.5 and angle t (mod 2π), plus noise 0.05
    r = np.hypot(swiss[:, 0], swiss[:, 1])
    assert np.all((r > 1.5 * np.pi / 7.5 - 0.3) & (r < 4.5 * np.pi / 7.5 + 0.3))
    phase = np.arctan2(swiss[:, 1], swiss[:, 0]) - 7.5 * r
    assert np.mean(np.cos(phase)) > 0.7
