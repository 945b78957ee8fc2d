"""Sample-quality metrics computed on the host in float64.

- :func:`energy_distance`: the (U-statistic) energy distance between two samples,
  zero in expectation iff they come from the same law.
- :func:`nearest_centre`: mean squared distance to, and index of, the nearest
  of a set of centres (blob width and mode coverage on mixture toys).
"""

from __future__ import annotations

import numpy as np

__all__ = ["energy_distance", "nearest_centre", "mean_pairwise_distance"]


def mean_pairwise_distance(x, y, *, exclude_diagonal: bool = False, chunk: int = 1024) -> float:
    """Mean Euclidean distance over all pairs (x_i, y_j), in float64.

    With ``exclude_diagonal`` (x is y) the i = j pairs are left out, which makes
    the within-sample mean an unbiased estimate of E|X - X'|.
    """
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    total = 0.0
    for start in range(0, len(x), chunk):
        xb = x[start:start + chunk]
        d2 = (
            np.sum(xb**2, axis=1)[:, None]
            + np.sum(y**2, axis=1)[None, :]
            - 2.0 * xb @ y.T
        )
        total += np.sqrt(np.clip(d2, 0.0, None)).sum()
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
