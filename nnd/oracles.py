"""Exact scores of Gaussian-mixture data under any forward process (SPEC §6).

If x_0 ~ Σ_j w_j N(μ_j, Σ_j) and x_t | x_0 ~ N(alpha x_0, sigma² I), then

.. math::  p_t(x) = \\sum_j w_j\\, N\\big(x;\\ \\alpha\\mu_j,\\ \\alpha^2\\Sigma_j + \\sigma^2 I\\big),

so log p_t and its score ∇ log p_t are exact (a logsumexp over components).
They are the ground truth for samplers, likelihoods and learned scores.

``gmm8`` is the toy of SPEC §6: 8 equal weights, means (cos 2πj/8, sin 2πj/8),
covariance 0.1² I.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["GMM", "gmm8", "gmm_score", "gmm_log_prob", "sample_gmm"]

_LOG_2PI = math.log(2.0 * math.pi)


@dataclasses.dataclass(frozen=True, eq=False)
class GMM:
    """Mixture parameters as host arrays: weights [J], means [J, D], covs [J, D, D]."""

    weights: np.ndarray
    means: np.ndarray
    covs: np.ndarray

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def diagonal(self) -> bool:
        off = self.covs - np.einsum("jd,de->jde", np.diagonal(self.covs, axis1=1, axis2=2),
                                    np.eye(self.dim))
        return bool(np.all(off == 0.0))


def _as_gmm(weights, means, covs) -> GMM:
    w = np.asarray(weights, np.float64)
    mu = np.asarray(means, np.float64)
    cov = np.asarray(covs, np.float64)
    if w.ndim != 1 or mu.ndim != 2 or mu.shape[0] != w.shape[0]:
        raise ValueError(
            f"expected weights [J] and means [J, D], got shapes {w.shape} and {mu.shape}"
        )
    j, d = mu.shape
    if cov.shape != (j, d, d):
        raise ValueError(f"expected covs of shape {(j, d, d)}, got {cov.shape}")
    if np.any(w <= 0) or abs(w.sum() - 1.0) > 1e-6:
        raise ValueError(f"weights must be positive and sum to 1, got {w} (sum {w.sum()})")
    if not np.allclose(cov, np.swapaxes(cov, 1, 2)):
        raise ValueError("covariances must be symmetric")
    if np.any(np.linalg.eigvalsh(cov) < 0):
        raise ValueError("covariances must be positive semi-definite")
    return GMM(w, mu, cov)


def gmm8(std: float = 0.1) -> GMM:
    """The 8 Gaussians on the unit circle of SPEC §6 (std 0.1 per coordinate)."""
    angles = 2.0 * np.pi * np.arange(8) / 8
    means = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    covs = np.tile((std**2) * np.eye(2), (8, 1, 1))
    return _as_gmm(np.full(8, 1.0 / 8), means, covs)


def sample_gmm(key, gmm: GMM, n: int, dtype=jnp.float32):
    """n i.i.d. draws [n, D] from the mixture."""
    key_j, key_z = jax.random.split(key)
    j = jax.random.choice(key_j, gmm.weights.shape[0], (n,), p=jnp.asarray(gmm.weights))
    lam, vec = np.linalg.eigh(gmm.covs)  # a square root that allows singular covariances
    chol = jnp.asarray(vec * np.sqrt(np.clip(lam, 0.0, None))[:, None, :], dtype)
    z = jax.random.normal(key_z, (n, gmm.dim), dtype)
    return jnp.asarray(gmm.means, dtype)[j] + jnp.einsum("nde,ne->nd", chol[j], z)


def _component_terms(process, gmm: GMM, x_BxD, t_B):
    """Per-component log w_j N(x; αμ_j, α²Σ_j + σ²I) [B, J] and scores [B, J, D]."""
    dtype = x_BxD.dtype
    alpha_B = process.alpha(t_B).astype(dtype)
    sigma2_B = process.sigma2(t_B).astype(dtype)
    log_w_J = jnp.log(jnp.asarray(gmm.weights, dtype))
    mu_JxD = jnp.asarray(gmm.means, dtype)
    diff_BxJxD = x_BxD[:, None, :] - alpha_B[:, None, None] * mu_JxD[None]
    a2_B = jnp.square(alpha_B)
    if gmm.diagonal:
        var_JxD = jnp.asarray(np.diagonal(gmm.covs, axis1=1, axis2=2), dtype)
        var_BxJxD = a2_B[:, None, None] * var_JxD[None] + sigma2_B[:, None, None]
        score_BxJxD = -diff_BxJxD / var_BxJxD
        log_n_BxJ = -0.5 * jnp.sum(
            diff_BxJxD * (-score_BxJxD) + jnp.log(var_BxJxD) + _LOG_2PI, axis=-1
        )
    else:
        cov_JxDxD = jnp.asarray(gmm.covs, dtype)
        eye = jnp.eye(gmm.dim, dtype=dtype)
        cov_BxJxDxD = a2_B[:, None, None, None] * cov_JxDxD[None] + sigma2_B[:, None, None, None] * eye
        chol = jnp.linalg.cholesky(cov_BxJxDxD)
        sol = jax.scipy.linalg.cho_solve((chol, True), diff_BxJxD[..., None])[..., 0]
        score_BxJxD = -sol
        logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        log_n_BxJ = -0.5 * (jnp.sum(diff_BxJxD * sol, axis=-1) + logdet + gmm.dim * _LOG_2PI)
    return log_w_J[None] + log_n_BxJ, score_BxJxD


def gmm_log_prob(process, weights, means=None, covs=None):
    """Exact log p_t(x): returns ``log_prob_fn(x [B, D], t [B]) -> [B]``.

    Pass either (weights, means, covs) or a GMM as the first argument.
    """
    gmm = weights if isinstance(weights, GMM) else _as_gmm(weights, means, covs)

    def log_prob_fn(x_BxD, t_B):
        log_joint_BxJ, _ = _component_terms(process, gmm, x_BxD, t_B)
        return jax.nn.logsumexp(log_joint_BxJ, axis=-1)

    return log_prob_fn


def gmm_score(process, weights, means=None, covs=None):
    """Exact score ∇_x log p_t(x): returns ``score_fn(x [B, D], t [B]) -> [B, D]``.

    .. math::  \\nabla \\log p_t(x) = \\sum_j r_j(x)\\,
               (\\alpha^2\\Sigma_j + \\sigma^2 I)^{-1}(\\alpha\\mu_j - x),

    with responsibilities r = softmax_j(log w_j + log N_j(x)). Pass either
    (weights, means, covs) or a GMM as the first argument.
    """
    gmm = weights if isinstance(weights, GMM) else _as_gmm(weights, means, covs)

    def score_fn(x_BxD, t_B):
        log_joint_BxJ, score_BxJxD = _component_terms(process, gmm, x_BxD, t_B)
        r_BxJ = jax.nn.softmax(log_joint_BxJ, axis=-1)
        return jnp.einsum("bj,bjd->bd", r_BxJ, score_BxJxD)

    return score_fn
