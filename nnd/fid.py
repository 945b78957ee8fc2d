"""Fréchet Inception Distance (FID): feature statistics and the Fréchet distance.

FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a
Local Nash Equilibrium") is the Fréchet (2-Wasserstein) distance between the Gaussians
fitted to Inception pool features of two image sets (Dowson & Landau 1982):

.. math::

   d^2 = \\lVert\\mu_1 - \\mu_2\\rVert^2
         + \\operatorname{tr}\\Sigma_1 + \\operatorname{tr}\\Sigma_2
         - 2 \\operatorname{tr}\\big(\\Sigma_1^{1/2}\\Sigma_2\\Sigma_1^{1/2}\\big)^{1/2}.

- :func:`statistics`: (mean, covariance) of features, in float64 on the host.
- :func:`frechet_distance`: d² between two (mean, covariance), in float64 on the host.
- :func:`reference_statistics`: a dataset's statistics, computed once and cached.
- :func:`fid`: samples against reference statistics.

The features come from any ``feature_fn: images [N, H, W, C] -> features [N, D]``; the
FID one is :func:`nnd.inception.make_feature_fn` (the network and its weights live in
:mod:`nnd.inception`, whose docstring says how to make the weights file).
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Callable, Iterable

import numpy as np
from jax.typing import ArrayLike

__all__ = [
    "statistics",
    "frechet_distance",
    "reference_statistics",
    "fid",
]

FeatureFn = Callable[[ArrayLike], ArrayLike]  # images [N, H, W, C] -> features [N, D]


def statistics(features_NxD: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], covariance [D, D]) in float64; the covariance divides by N - 1."""
    f = np.asarray(features_NxD, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"statistics needs features [N >= 2, D], got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(sigma):
    """Symmetric square root of a PSD matrix by eigh, rounding-negative eigenvalues → 0."""
    eigenvalues, vectors = np.linalg.eigh(sigma)
    return (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ vectors.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike,
                     sigma2: ArrayLike) -> float:
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


def _feature_statistics(feature_fn: FeatureFn, batches) -> tuple[np.ndarray, np.ndarray, int]:
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


def reference_statistics(feature_fn: FeatureFn, batches: ArrayLike | Iterable[ArrayLike],
                         cache_path: str) -> tuple[np.ndarray, np.ndarray]:
    """Dataset (mu, sigma) of ``feature_fn`` features, computed once and cached at
    ``cache_path`` (.npz). ``batches`` is an array [N, H, W, C] or an iterable of such
    batches. An existing cache is loaded and ``batches`` never touched; a cache is tied
    to its weights and dataset, so name the path after both."""
    if os.path.exists(cache_path):
        with np.load(cache_path) as npz:
            mu, sigma, n = npz["mu"], npz["sigma"], int(npz["num_images"])
        logging.info("FID reference statistics of %d images loaded from %s", n, cache_path)
        return mu, sigma
    mu, sigma, n = _feature_statistics(feature_fn, batches)
    _save_npz_atomically(cache_path, {"mu": mu, "sigma": sigma, "num_images": np.asarray(n)})
    logging.info("FID reference statistics of %d images cached at %s", n, cache_path)
    return mu, sigma


def fid(feature_fn: FeatureFn, samples: ArrayLike | Iterable[ArrayLike],
        reference: tuple[ArrayLike, ArrayLike]) -> float:
    """FID of ``samples`` (an array [N, H, W, C] or an iterable of such batches, in
    [-1, 1]) against ``reference = (mu, sigma)``."""
    mu, sigma, _ = _feature_statistics(feature_fn, samples)
    return frechet_distance(mu, sigma, *reference)
