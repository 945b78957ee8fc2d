"""Exact scores of Gaussian-mixture data under any forward process.

If x_0 ~ Σ_j w_j N(μ_j, Σ_j) and x_t | x_0 ~ N(alpha x_0, sigma² I), then

.. math::  p_t(x) = \\sum_j w_j\\, N\\big(x;\\ \\alpha\\mu_j,\\ C_j\\big), \\qquad
           C_j = \\alpha^2\\Sigma_j + \\sigma^2 I,

so log p_t and its score ∇ log p_t are exact (a logsumexp over components), and so
is the posterior of the noise ε of x_t = alpha x_0 + sigma ε, component by component
(:func:`gmm_components`). They are the ground truth for samplers, likelihoods and
learned scores: the exact ε-prediction E[ε | x_t] = -sigma ∇ log p_t is
``processes.eps_fn_from_score(process, gmm_score(...))``.

``gmm8`` is the toy data: 8 equal weights, means (cos 2πj/8, sin 2πj/8),
covariance 0.1² I.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nnd import processes
from nnd.processes import Process

__all__ = ["GMM", "gmm8", "sample_gmm", "gmm_log_prob", "gmm_score", "Components",
           "gmm_components", "gmm_x0_variance"]

_LOG_2PI = math.log(2.0 * math.pi)

#: ``log_prob_fn(x [B, D], t [B]) -> [B]``.
LogProbFn = Callable[[jax.Array, jax.Array], jax.Array]
#: ``x0_variance_fn(x [B, D], t [B]) -> Var[x_0 | x_t = x] per coordinate [B, D]``.
X0VarianceFn = Callable[[jax.Array, jax.Array], jax.Array]


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

    @property
    def shared(self) -> bool:
        """Whether all components have the same covariance."""
        return bool(np.all(self.covs == self.covs[:1]))


def _as_gmm(weights, means, covs) -> GMM:
    if isinstance(weights, GMM):
        return weights
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
    """The 8 Gaussians on the unit circle (std 0.1 per coordinate): the toy data ``gmm8``."""
    angles = 2.0 * np.pi * np.arange(8) / 8
    means = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    covs = np.tile((std**2) * np.eye(2), (8, 1, 1))
    return _as_gmm(np.full(8, 1.0 / 8), means, covs)


def sample_gmm(key: jax.Array, gmm: GMM, n: int, dtype=jnp.float32) -> jax.Array:
    """n i.i.d. draws [n, D] from the mixture."""
    key_j, key_z = jax.random.split(key)
    j = jax.random.choice(key_j, gmm.weights.shape[0], (n,), p=jnp.asarray(gmm.weights))
    lam, vec = np.linalg.eigh(gmm.covs)  # a square root that allows singular covariances
    chol = jnp.asarray(vec * np.sqrt(np.clip(lam, 0.0, None))[:, None, :], dtype)
    z = jax.random.normal(key_z, (n, gmm.dim), dtype)
    return jnp.asarray(gmm.means, dtype)[j] + jnp.einsum("nde,ne->nd", chol[j], z)


class Components(NamedTuple):
    """The components of p_t at x (:func:`gmm_components`); J components, D coordinates."""

    #: log w_j N(x; αμ_j, C_j) [B, J]: softmax over j gives the responsibilities r_j(x).
    log_joint_BxJ: jax.Array
    #: The component scores -C_j⁻¹(x - αμ_j) [B, J, D].
    score_BxJxD: jax.Array
    #: Var(ε_i | x_t = x, j) = diag(α²Σ_j C_j⁻¹) [B, J, D], or None when not asked for.
    eps_var_BxJxD: jax.Array | None


def gmm_components(process: Process, gmm: GMM, x_BxD: jax.Array, t_B: jax.Array, *,
                   posterior_var: bool = False) -> Components:
    """The components of p_t at x, and the posterior of the noise ε given each.

    x_t = αx_0 + σε with x_0 from component j is N(αμ_j, C_j), C_j = α²Σ_j + σ²I, and
    ε given x_t = x and j is Gaussian (Gaussian conditioning, Cov(ε, x_t | j) = σI):

    .. math::  r_j \\propto w_j N(x; \\alpha\\mu_j, C_j), \\quad
               \\mathbb{E}[\\varepsilon \\mid x, j] = \\sigma C_j^{-1}(x - \\alpha\\mu_j)
               = -\\sigma\\, s_j(x), \\quad
               \\operatorname{Var}(\\varepsilon_i \\mid x, j) = (\\alpha^2\\Sigma_j C_j^{-1})_{ii},

    with s_j the component score, so Σ_j r_j E[ε | x, j] = E[ε | x_t] = -σ ∇ log p_t. The
    variance is computed as α²(Σ_j C_j⁻¹)_ii, not 1 - σ²(C_j⁻¹)_ii, which cancels in float32
    where α is small.

    Args:
      gmm: the mixture (:class:`GMM`); x_BxD: points [B, D]; t_B: their times [B].
      posterior_var: also return Var(ε_i | x, j) (a D×D solve per component otherwise
        skipped).

    Returns:
      :class:`Components` (``eps_var_BxJxD`` None unless ``posterior_var``).
    """
    dtype = x_BxD.dtype
    alpha_B = process.alpha(t_B).astype(dtype)
    sigma2_B = process.sigma2(t_B).astype(dtype)
    log_w_J = jnp.log(jnp.asarray(gmm.weights, dtype))
    mu_JxD = jnp.asarray(gmm.means, dtype)
    diff_BxJxD = x_BxD[:, None, :] - alpha_B[:, None, None] * mu_JxD[None]
    a2_B = jnp.square(alpha_B)
    post_var_BxJxD = None
    if gmm.diagonal:
        var_JxD = jnp.asarray(np.diagonal(gmm.covs, axis1=1, axis2=2), dtype)
        prior_BxJxD = a2_B[:, None, None] * var_JxD[None]
        var_BxJxD = prior_BxJxD + sigma2_B[:, None, None]
        score_BxJxD = -diff_BxJxD / var_BxJxD
        log_n_BxJ = -0.5 * jnp.sum(
            diff_BxJxD * (-score_BxJxD) + jnp.log(var_BxJxD) + _LOG_2PI, axis=-1
        )
        if posterior_var:
            post_var_BxJxD = prior_BxJxD / var_BxJxD
    else:
        cov_JxDxD = jnp.asarray(gmm.covs, dtype)
        eye = jnp.eye(gmm.dim, dtype=dtype)
        cov_BxJxDxD = a2_B[:, None, None, None] * cov_JxDxD[None] + sigma2_B[:, None, None, None] * eye
        chol = jnp.linalg.cholesky(cov_BxJxDxD)
        sol = jax.scipy.linalg.cho_solve((chol, True), diff_BxJxD[..., None])[..., 0]
        score_BxJxD = -sol
        logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        log_n_BxJ = -0.5 * (jnp.sum(diff_BxJxD * sol, axis=-1) + logdet + gmm.dim * _LOG_2PI)
        if posterior_var:
            # α² C⁻¹Σ, written so that no 1 - σ²(C⁻¹)_ii cancels when α is small.
            inv_cov = jax.scipy.linalg.cho_solve(
                (chol, True), jnp.broadcast_to(cov_JxDxD, cov_BxJxDxD.shape))
            post_var_BxJxD = a2_B[:, None, None] * jnp.diagonal(inv_cov, axis1=-2, axis2=-1)
    return Components(log_w_J[None] + log_n_BxJ, score_BxJxD, post_var_BxJxD)


#: Up to this many components × coordinates the shared-covariance path is written per
#: coordinate and component on [B] rows (no reductions across small axes, which XLA on CPU
#: ran 10-15x slower than the same sums written out, e.g. for gmm8 at B = 10^4).
_ROWS_MAX = 256


def _shared_terms(process: Process, gmm: GMM, x_BxD, t_B):
    """The mixture's terms when every component has the same diagonal covariance Σ.

    With C = α²Σ + σ²I the same for every j, the normaliser of N(x; αμ_j, C) does not
    depend on j: it is computed once per example (a log over [B, D], not [B, J, D]) and
    cancels in the responsibilities r = softmax_j(log w_j - ½ (x - αμ_j)ᵀ C⁻¹ (x - αμ_j)).

    Returns:
      (the logits above [B, J], the normaliser -½ (log det C + D log 2π) [B], C⁻¹ [B, D]).
    """
    dtype = x_BxD.dtype
    alpha_B = process.alpha(t_B).astype(dtype)
    sigma2_B = process.sigma2(t_B).astype(dtype)
    var_D = np.diagonal(gmm.covs[0])
    log_w_J = np.log(gmm.weights)
    var_BxD = jnp.square(alpha_B)[:, None] * jnp.asarray(var_D, dtype) + sigma2_B[:, None]
    precision_BxD = 1.0 / var_BxD
    num, dim = gmm.means.shape
    if num * dim <= _ROWS_MAX:
        # quad_j = Σ_d (x_d - α μ_jd)² / C_d, each a [B] row.
        quad = [sum(jnp.square(x_BxD[:, d] - float(gmm.means[j, d]) * alpha_B) * precision_BxD[:, d]
                    for d in range(dim)) for j in range(num)]
        logits_BxJ = jnp.stack([float(log_w_J[j]) - 0.5 * quad[j] for j in range(num)], axis=-1)
        log_det_B = sum(jnp.log(var_BxD[:, d]) for d in range(dim))
    else:
        diff_BxJxD = x_BxD[:, None, :] - alpha_B[:, None, None] * jnp.asarray(gmm.means, dtype)
        quad_BxJ = jnp.sum(jnp.square(diff_BxJxD) * precision_BxD[:, None, :], axis=-1)
        logits_BxJ = jnp.asarray(log_w_J, dtype) - 0.5 * quad_BxJ
        log_det_B = jnp.sum(jnp.log(var_BxD), axis=-1)
    return logits_BxJ, -0.5 * (log_det_B + dim * _LOG_2PI), precision_BxD


def _softmax_rows(logits_BxJ):
    """(r [B, J], logsumexp [B]) over a few components, written out per component."""
    num = logits_BxJ.shape[-1]
    rows = [logits_BxJ[:, j] for j in range(num)]
    top = rows[0]
    for row in rows[1:]:
        top = jnp.maximum(top, row)
    exps = [jnp.exp(row - top) for row in rows]
    total = sum(exps)
    return jnp.stack([e / total for e in exps], axis=-1), top + jnp.log(total)


def _log_prob_fn(process: Process, gmm: GMM, shared: bool) -> LogProbFn:
    def log_prob_fn(x_BxD, t_B):
        if shared:
            logits_BxJ, log_norm_B, _ = _shared_terms(process, gmm, x_BxD, t_B)
            if gmm.means.size <= _ROWS_MAX:
                return _softmax_rows(logits_BxJ)[1] + log_norm_B
            return jax.nn.logsumexp(logits_BxJ, axis=-1) + log_norm_B
        log_joint_BxJ, _, _ = gmm_components(process, gmm, x_BxD, t_B)
        return jax.nn.logsumexp(log_joint_BxJ, axis=-1)

    return log_prob_fn


def _score_fn(process: Process, gmm: GMM, shared: bool) -> processes.ScoreFn:
    def score_fn(x_BxD, t_B):
        if shared:
            # Σ_j r_j C⁻¹(αμ_j - x) = C⁻¹(α Σ_j r_j μ_j - x), as Σ_j r_j = 1.
            logits_BxJ, _, precision_BxD = _shared_terms(process, gmm, x_BxD, t_B)
            alpha_B = process.alpha(t_B).astype(x_BxD.dtype)
            num, dim = gmm.means.shape
            if num * dim <= _ROWS_MAX:
                r_BxJ, _ = _softmax_rows(logits_BxJ)
                mean_BxD = jnp.stack(
                    [sum(r_BxJ[:, j] * float(gmm.means[j, d]) for j in range(num))
                     for d in range(dim)], axis=-1)
            else:
                r_BxJ = jax.nn.softmax(logits_BxJ, axis=-1)
                mean_BxD = r_BxJ @ jnp.asarray(gmm.means, x_BxD.dtype)
            return (alpha_B[:, None] * mean_BxD - x_BxD) * precision_BxD
        log_joint_BxJ, score_BxJxD, _ = gmm_components(process, gmm, x_BxD, t_B)
        r_BxJ = jax.nn.softmax(log_joint_BxJ, axis=-1)
        return jnp.einsum("bj,bjd->bd", r_BxJ, score_BxJxD)

    return score_fn


def gmm_log_prob(process: Process, weights, means=None, covs=None) -> LogProbFn:
    """Exact log p_t(x): returns ``log_prob_fn(x [B, D], t [B]) -> [B]``.

    Pass either (weights, means, covs) or a GMM as the first argument. When the
    components share one diagonal covariance (``GMM.shared``, e.g. ``gmm8``) the
    Gaussian normaliser is computed once per example.
    """
    gmm = _as_gmm(weights, means, covs)
    return _log_prob_fn(process, gmm, gmm.shared and gmm.diagonal)


def gmm_score(process: Process, weights, means=None, covs=None) -> processes.ScoreFn:
    """Exact score ∇_x log p_t(x): returns ``score_fn(x [B, D], t [B]) -> [B, D]``.

    .. math::  \\nabla \\log p_t(x) = \\sum_j r_j(x)\\,
               (\\alpha^2\\Sigma_j + \\sigma^2 I)^{-1}(\\alpha\\mu_j - x),

    with responsibilities r = softmax_j(log w_j + log N_j(x)). Pass either
    (weights, means, covs) or a GMM as the first argument. When the components share
    one diagonal covariance Σ (``GMM.shared``, e.g. ``gmm8``), the normaliser of N_j
    cancels in the softmax and the score is C⁻¹(α Σ_j r_j μ_j - x) with C = α²Σ + σ²I.
    """
    gmm = _as_gmm(weights, means, covs)
    return _score_fn(process, gmm, gmm.shared and gmm.diagonal)


def gmm_x0_variance(process: Process, weights, means=None, covs=None) -> X0VarianceFn:
    r"""Exact Var[x_0 | x_t = x] per coordinate: returns ``fn(x [B, D], t [B]) -> [B, D]``.

    Given component j, x_0 is Gaussian with mean m_j = μ_j + αΣ_jC_j⁻¹(x - αμ_j)
    = μ_j - αΣ_j s_j (s_j the component score) and covariance Σ_j - α²Σ_jC_j⁻¹Σ_j
    = σ²Σ_jC_j⁻¹; over the components (the law of total variance, responsibilities r_j)

    .. math::  \operatorname{Var}[x_{0,i} \mid x_t = x] = \sum_j r_j(x)\Big(
               \sigma^2 (\Sigma_j C_j^{-1})_{ii} + (m_{j,i} - \bar m_i)^2\Big),
               \qquad \bar m = \sum_j r_j m_j,

    the spread of the means taken about their mean (no difference of large squares).
    This is the per-point variance the ``analytic`` reverse scheme takes
    (:func:`nnd.walks.reverse`'s ``x0_variance_fn``; docs/math.md §3). Pass either
    (weights, means, covs) or a GMM as the first argument.
    """
    gmm = _as_gmm(weights, means, covs)

    def x0_variance_fn(x_BxD, t_B):
        dtype = x_BxD.dtype
        comps = gmm_components(process, gmm, x_BxD, t_B, posterior_var=True)
        r_BxJ = jax.nn.softmax(comps.log_joint_BxJ, axis=-1)
        alpha_B = process.alpha(t_B).astype(dtype)
        mu_JxD = jnp.asarray(gmm.means, dtype)
        cov_JxDxD = jnp.asarray(gmm.covs, dtype)
        # Σ_j s_j: the prior covariance times the component score, [B, J, D]
        cov_score_BxJxD = jnp.einsum("jde,bje->bjd", cov_JxDxD, comps.score_BxJxD)
        m_BxJxD = mu_JxD[None] - alpha_B[:, None, None] * cov_score_BxJxD
        m_bar_BxD = jnp.einsum("bj,bjd->bd", r_BxJ, m_BxJxD)
        # σ²(Σ_jC_j⁻¹)_ii from Var(ε_i | x, j) = α²(Σ_jC_j⁻¹)_ii, i.e. times σ²/α²
        ratio_B = (process.sigma2(t_B) / jnp.square(process.alpha(t_B))).astype(dtype)
        within_BxJxD = ratio_B[:, None, None] * comps.eps_var_BxJxD
        spread_BxJxD = jnp.square(m_BxJxD - m_bar_BxD[:, None, :])
        return jnp.einsum("bj,bjd->bd", r_BxJ, within_BxJxD + spread_BxJxD)

    return x0_variance_fn
