"""Sample-quality metrics computed on the host in float64.

- :func:`energy_distance`: the (U-statistic) energy distance between two samples,
  zero in expectation iff they come from the same law.
- :func:`nearest_centre`: mean squared distance to, and index of, the nearest
  of a set of centres (blob width and mode coverage on mixture toys).
- :func:`precision_recall`: improved precision and recall (Kynkäänniemi et al. 2019),
  the share of samples on the data's k-NN manifold and the reverse; they separate
  under-dispersion (precision high, recall low) from over-dispersion (the opposite).
"""

from __future__ import annotations

import numpy as np

__all__ = ["energy_distance", "nearest_centre", "mean_pairwise_distance", "knn_radii",
           "precision_recall"]


def mean_pairwise_distance(x, y, *, exclude_diagonal: bool = False, chunk: int = 1024) -> float:
    """Mean Euclidean distance over all pairs (x_i, y_j), in float64.

    With ``exclude_diagonal`` (x is y) the i = j pairs are left out, which makes
    the within-sample mean an unbiased estimate of E|X - X'|.
    """
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    total = 0.0
    for start in range(0, len(x), chunk):
        total += np.sqrt(_squared_distances(x[start:start + chunk], y)).sum()
    if exclude_diagonal:
        n = len(x)
        return total / (n * (n - 1))
    return total / (len(x) * len(y))


def energy_distance(x, y) -> float:
    """Energy distance 2E|X - Y| - E|X - X'| - E|Y - Y'| between samples x [n, ...], y [m, ...].

    Within-sample terms leave out i = j (U-statistics), so the estimate is
    unbiased and its expectation is 0 when x and y come from the same law.
    """
    if len(x) < 2 or len(y) < 2:
        raise ValueError("energy_distance needs at least 2 points in each sample")
    xy = mean_pairwise_distance(x, y)
    xx = mean_pairwise_distance(x, x, exclude_diagonal=True)
    yy = mean_pairwise_distance(y, y, exclude_diagonal=True)
    return float(2.0 * xy - xx - yy)


def nearest_centre(x, centres):
    """(mean squared distance to the nearest centre, index of that centre per point)."""
    x = np.asarray(x, np.float64)
    c = np.asarray(centres, np.float64)
    d2 = np.sum((x[:, None, :] - c[None, :, :]) ** 2, axis=-1)
    idx = np.argmin(d2, axis=1)
    return float(np.mean(d2[np.arange(len(x)), idx])), idx


def _squared_distances(x_NxD, y_MxD):
    """|x_i - y_j|² [N, M] in float64 (rounding negatives to 0)."""
    d2_NxM = (np.sum(x_NxD**2, axis=1)[:, None] + np.sum(y_MxD**2, axis=1)[None, :]
              - 2.0 * x_NxD @ y_MxD.T)
    return np.clip(d2_NxM, 0.0, None)


def _as_rows(x, name: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"{name} needs points [N >= 1, ...], got shape {x.shape}")
    return x.reshape(len(x), -1)


def knn_radii(x, *, k: int = 3, chunk: int = 1024) -> np.ndarray:
    """Distance from each x_i [N, ...] to its k-th nearest neighbour among the others, [N].

    .. math::

       r_k(x_i) = \\lVert x_i - \\mathrm{NN}_k(x_i, X \\setminus \\{x_i\\}) \\rVert_2

    (the point itself, at distance 0, is not counted; duplicates of it are).
    """
    x_NxD = _as_rows(x, "knn_radii")
    if not 1 <= k < len(x_NxD):
        raise ValueError(f"knn_radii needs 1 <= k < N, got k={k}, N={len(x_NxD)}")
    radii_N = np.empty(len(x_NxD))
    for start in range(0, len(x_NxD), chunk):
        d2_BxN = _squared_distances(x_NxD[start:start + chunk], x_NxD)
        # Index k of the sorted row skips the self-distance at index 0 (possibly tied with
        # an exact duplicate, whose distance is 0 either way).
        d2_BxN[np.arange(len(d2_BxN)), np.arange(start, start + len(d2_BxN))] = -1.0
        radii_N[start:start + chunk] = np.sqrt(np.clip(
            np.partition(d2_BxN, k, axis=1)[:, k], 0.0, None))
    return radii_N


def _share_within(points_MxD, centres_NxD, radii_N, chunk: int) -> float:
    """Share of points within at least one ball |p - c_j| <= r_j."""
    inside = 0
    r2_N = radii_N**2
    for start in range(0, len(points_MxD), chunk):
        d2_BxN = _squared_distances(points_MxD[start:start + chunk], centres_NxD)
        inside += int(np.any(d2_BxN <= r2_N[None, :], axis=1).sum())
    return inside / len(points_MxD)


def precision_recall(real, fake, *, k: int = 3, chunk: int = 1024) -> tuple[float, float]:
    """Improved precision and recall of ``fake`` [M, ...] against ``real`` [N, ...].

    Kynkäänniemi, Karras, Laine, Lehtinen & Aila (2019), "Improved Precision and Recall
    Metric for Assessing Generative Models", eqs. (1)–(2). Each set's manifold is the
    union of balls around its points with radius the distance to the k-th nearest
    neighbour in the same set (:func:`knn_radii`); with

    .. math::

       f(\\phi, \\Phi) = 1 \\text{ if } \\exists \\phi' \\in \\Phi:\\;
           \\lVert\\phi - \\phi'\\rVert_2 \\le r_k(\\phi', \\Phi), \\text{ else } 0,

       \\mathrm{precision} = \\frac{1}{M}\\sum_{\\phi_g} f(\\phi_g, \\Phi_r),
       \\qquad
       \\mathrm{recall} = \\frac{1}{N}\\sum_{\\phi_r} f(\\phi_r, \\Phi_g).

    Precision is the share of samples that look real; recall the share of real points
    the samples cover. A collapsed generator scores high precision and low recall; an
    over-dispersed one low precision and high recall (its balls are wide). The paper
    uses k = 3 and equal set sizes: the radii, and so both figures, depend on N and M,
    so compare figures only at equal sizes. Float64 on the host, chunked rows.

    Returns:
      (precision, recall), each in [0, 1].
    """
    real_NxD, fake_MxD = _as_rows(real, "precision_recall"), _as_rows(fake, "precision_recall")
    if real_NxD.shape[1] != fake_MxD.shape[1]:
        raise ValueError(f"real and fake differ in dimension: {real_NxD.shape[1]} vs "
                         f"{fake_MxD.shape[1]}")
    precision = _share_within(fake_MxD, real_NxD, knn_radii(real_NxD, k=k, chunk=chunk), chunk)
    recall = _share_within(real_NxD, fake_MxD, knn_radii(fake_MxD, k=k, chunk=chunk), chunk)
    return precision, recall
