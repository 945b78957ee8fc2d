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
- :func:`reference_statistics`: a dataset's statistics, computed once and cached
  (a local or gs:// path, :mod:`nnd.paths`).
- :func:`fid`: samples against reference statistics.

Streams of batches show their progress in images (:mod:`nnd.progress`) when told
their ``total``.

The features come from any ``feature_fn: images [N, H, W, C] -> features [N, D]``; the
FID one is :func:`nnd.inception.make_feature_fn` (the network and its weights live in
:mod:`nnd.inception`, whose docstring says how to make the weights file).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Callable, Iterable

import numpy as np
from jax.typing import ArrayLike

from nnd import paths
from nnd.progress import Progress

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


def _feature_statistics(feature_fn: FeatureFn, batches, *, label: str = "FID features",
                        total: int | None = None, progress_every: float = 30.0
                        ) -> tuple[np.ndarray, np.ndarray, int]:
    """(mean, covariance, count) of ``feature_fn`` over batches, streamed in float64.

    Batches merge by Chan, Golub & LeVeque's (1979) pairwise update of (count, mean,
    centred sum of squares M), which equals the two-pass result without keeping features.
    With ``total`` (the number of images), shows progress in images under ``label``
    (:class:`nnd.progress.Progress`: a bar on a terminal, else a line every
    ``progress_every`` seconds).
    """
    n, mean, m2 = 0, None, None
    bar = Progress(label, total, unit="image", every=progress_every) if total else nullcontext()
    with bar:
        for batch in _as_batches(batches):
            n, mean, m2 = _merge(n, mean, m2, np.asarray(feature_fn(batch), np.float64))
            if total:
                bar.update(min(n, total) - bar.n)
    if n < 2:
        raise ValueError(f"FID statistics need at least 2 images, got {n}")
    return mean, m2 / (n - 1), n


def _merge(n, mean, m2, f):
    """(count, mean, M) of the features so far merged with a batch ``f`` [B, D]."""
    if len(f) == 0:
        return n, mean, m2
    mean_b = f.mean(axis=0)
    centred = f - mean_b
    m2_b = centred.T @ centred
    if mean is None:
        return len(f), mean_b, m2_b
    count = n + len(f)
    delta = mean_b - mean
    return (count, mean + delta * (len(f) / count),
            m2 + m2_b + np.outer(delta, delta) * (n * len(f) / count))


def reference_statistics(feature_fn: FeatureFn, batches: ArrayLike | Iterable[ArrayLike],
                         cache_path: str, *, total: int | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Dataset (mu, sigma) of ``feature_fn`` features, computed once and cached at
    ``cache_path`` (.npz, local or gs://). ``batches`` is an array [N, H, W, C] or an
    iterable of such batches (``total`` images, for the progress line). An existing
    cache is loaded and ``batches`` never touched; a cache is tied to its weights and
    dataset, so name the path after both."""
    if paths.get(cache_path).exists():
        npz = paths.load_npz(cache_path)
        mu, sigma, n = npz["mu"], npz["sigma"], int(npz["num_images"])
        logging.info("FID reference statistics of %d images loaded from %s", n, cache_path)
        return mu, sigma
    mu, sigma, n = _feature_statistics(feature_fn, batches, label="FID reference statistics",
                                       total=total)
    paths.savez(cache_path, mu=mu, sigma=sigma, num_images=np.asarray(n))  # never torn
    logging.info("FID reference statistics of %d images cached at %s", n, cache_path)
    return mu, sigma


def fid(feature_fn: FeatureFn, samples: ArrayLike | Iterable[ArrayLike],
        reference: tuple[ArrayLike, ArrayLike], *, total: int | None = None) -> float:
    """FID of ``samples`` (an array [N, H, W, C] or an iterable of such batches, in
    [-1, 1]; ``total`` images, for the progress line) against ``reference = (mu, sigma)``."""
    mu, sigma, _ = _feature_statistics(feature_fn, samples, label="FID of the samples",
                                       total=total)
    return frechet_distance(mu, sigma, *reference)
