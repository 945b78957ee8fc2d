"""SPEC §4 (ii): how biased is the ε learned with a non-quadratic loss?

The training objective of eq. (5) (SPEC §4) is, with K = num_steps and t = t_{k+1},

.. math::  \\mathbb{E}_{k, x_0, \\varepsilon}\\Big[K \\sum_i \\ell_{q,p}(u_i)\\Big], \\qquad
           u = c(t)\\,(\\varepsilon_\\theta - \\varepsilon), \\quad
           c(t) = \\frac{g(t)\\sqrt{\\Delta t}}{\\sigma(t)}.

For G/G (ℓ = u²/2) its minimiser is the posterior mean ε* = E[ε | x_t] = -σ(t) s*(x_t, t).
For a non-quadratic ℓ (L/L, U/L) it is the M-estimate

.. math::  m^*_i(x_t, t) = \\arg\\min_m\\ \\mathbb{E}\\big[\\ell_{q,p}(c(t)(m - \\varepsilon_i))
           \\,\\big|\\, x_t\\big],

which differs from ε* wherever the posterior of ε is skewed, and tends to it as
c ∝ 1/√K → 0 (ℓ becomes quadratic). On ``gmm8`` both are computable: the posterior of
ε given x_t is a Gaussian mixture (SPEC §6), so ε* is the oracle's and m* a
per-coordinate 1-D root (Gauss–Hermite + bisection, :func:`loss_minimiser`).

For each (q/p pair, K) this experiment trains the library's MLP with the same budget,
batch, seed and learning-rate schedule, and reports per quartile of t the relative error

.. math::  \\mathrm{rel}(\\hat\\varepsilon) = \\sqrt{\\frac{\\sum_n \\|\\hat\\varepsilon(x_n, t_n)
           - \\varepsilon^*(x_n, t_n)\\|^2}{\\sum_n \\|\\varepsilon^*(x_n, t_n)\\|^2}}

over evaluation points drawn like the training ones (x_0 ~ gmm8, k ~ U{0..K-1},
t = t_{k+1} on the grid of that K, x_t = α x_0 + σ ε), with a standard error from
10 chunks. Next to the trained network ε_θ it reports

- the loss's own minimiser m* ("population bias": what a perfect fit of that loss
  would err by; 0 for G/G),
- ε_θ against m* ("fit error": how far training got to the minimiser it aims at),
- controls: the exact oracle (0 by construction) and the untrained network (its
  output layer is zero-initialised, so exactly 1).

Caveats. The standard errors are evaluation noise only (one training seed per
cell); the spread between training seeds is larger (at K = 1000 the t < .25
error of G/G was 0.25 with seed 0 and 0.12 with seed 1). Each K is evaluated on
its own grid, so the first quartile holds t ∈ {0.10, 0.20} for K = 10 but
t ∈ [0.002, 0.25) for K = 1000, where ε* varies fastest: compare pairs at one K,
not one pair across K.

Run (939 s measured on 2 busy CPU cores, 9 trainings of about 95 s each)::

    python -m nnd.experiments.bias --out docs/figures --steps 3000

It writes ``bias.json`` and ``bias.png`` into ``--out``, trains in
``--workdir`` (default ``runs/bias``; a finished run there is restored, not
retrained) and prints progress and a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import logging
import math
import os
import platform
import re
import sys
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nnd import losses
from nnd import oracles
from nnd import processes
from nnd.experiments import invariance

__all__ = [
    "DEFAULT_PAIRS",
    "DEFAULT_K",
    "QUARTILES",
    "Settings",
    "parse_pair",
    "parse_pairs",
    "quartile_of",
    "loss_scale",
    "draw_points",
    "relative_error_table",
    "relative_error",
    "oracle_eps_fn",
    "posterior_eps",
    "loss_minimiser",
    "make_config",
    "train_pair",
    "run",
    "markdown_table",
    "plot",
    "main",
]

DEFAULT_PAIRS = "gaussian/gaussian,laplace/laplace,uniform/laplace"
DEFAULT_K = "10,100,1000"
#: The t-quartiles: [0, .25), [.25, .5), [.5, .75), [.75, 1] (t = 1 is in the last).
QUARTILES = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))
#: Gauss–Hermite nodes per posterior component in :func:`loss_minimiser`.
HERMITE_NODES = 48
#: Evaluation points per jitted chunk (bounds memory).
_CHUNK = 8192
#: fold_in tags of the root key's streams (training uses config.seed inside nnd.train).
_EVAL_STREAM, _INIT_STREAM = 7, 0


# -- command-line values --------------------------------------------------------------


def parse_pair(spec: str):
    """``'q/p'`` (each ``name`` or ``name:param``) → (q, p) laws; refused pairs raise.

    Raises:
      ValueError: not of the form q/p, an unknown law, or a pair whose KL is
        infinite (nnd.losses.check_pair), e.g. p = uniform.
    """
    if not isinstance(spec, str) or spec.count("/") != 1:
        raise ValueError(f"a loss pair is 'q/p', e.g. 'laplace/laplace', got {spec!r}")
    q_spec, p_spec = spec.split("/")
    q, p = invariance.parse_law(q_spec), invariance.parse_law(p_spec)
    return losses.check_pair(q, p)


def parse_pairs(text: str | Sequence[str]):
    """Comma-separated 'q/p' specs (or a sequence of them) → tuple of (q, p); duplicates raise."""
    specs = text.split(",") if isinstance(text, str) else list(text)
    pairs = tuple(parse_pair(s.strip()) for s in specs)
    if not pairs:
        raise ValueError("no loss pairs given")
    labels = [pair_label(q, p) for q, p in pairs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"duplicate loss pairs in {labels}")
    return pairs


def pair_label(q, p) -> str:
    return f"{q}/{p}"


@dataclasses.dataclass(frozen=True)
class Settings:
    """One run of the experiment (the command-line flags, parsed)."""

    train_steps: int = 3000
    ks: tuple[int, ...] = (10, 100, 1000)
    pairs: tuple = dataclasses.field(default_factory=lambda: parse_pairs(DEFAULT_PAIRS))
    batch_size: int = 512
    n: int = 65536
    num_chunks: int = 10
    process: str = "vp"
    seed: int = 0
    workdir: str = os.path.join("runs", "bias")

    def __post_init__(self):
        for name, low in (("train_steps", 1), ("batch_size", 1), ("num_chunks", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 4 * self.num_chunks:
            raise ValueError(f"n must be an integer >= 4 * num_chunks, got {self.n!r}")


# -- the measurement ------------------------------------------------------------------


def quartile_of(t_N):
    """Quartile index 0..3 of each t: ⌊4t⌋ clipped to [0, 3] (as nnd.train logs loss_by_quartile)."""
    return np.clip(np.floor(np.asarray(t_N, np.float64) * 4).astype(np.int64), 0, 3)


def loss_scale(process, num_steps: int, t_B):
    """c(t) = g(t)√Δt / σ(t), the factor of u = c (ε_θ - ε) in eq. (5)."""
    _, dt = processes.time_grid(process, num_steps)
    return process.g(t_B) * math.sqrt(dt) / process.sigma(t_B)


def oracle_eps_fn(process, gmm: oracles.GMM):
    """ε*(x, t) = E[ε | x_t = x] = -σ(t) s*(x, t), s* the exact score (SPEC §4, §6)."""
    score_fn = oracles.gmm_score(process, gmm)

    def eps_fn(x_BxD, t_B):
        return -process.sigma(t_B)[:, None].astype(x_BxD.dtype) * score_fn(x_BxD, t_B)

    return eps_fn


def _apply_chunked(fn: Callable, x_NxD, t_N, chunk: int = _CHUNK) -> np.ndarray:
    """fn(x, t) over fixed-size chunks (one compile; the last chunk padded), on the host."""
    n = x_NxD.shape[0]
    size = min(chunk, n)
    jitted = jax.jit(fn)
    out = []
    for start in range(0, n, size):
        x, t = x_NxD[start:start + size], t_N[start:start + size]
        pad = size - x.shape[0]
        if pad:
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
            t = np.concatenate([t, np.repeat(t[-1:], pad, axis=0)])
        out.append(np.asarray(jitted(jnp.asarray(x), jnp.asarray(t)))[:size - pad])
    return np.concatenate(out).astype(np.float64)


def draw_points(key, process, gmm: oracles.GMM, num_steps: int, n: int) -> dict:
    """Evaluation points drawn as in training (nnd.losses.objective) on the grid of K.

    x_0 ~ gmm, k ~ U{0..K-1}, t = t_{k+1}, ε ~ N(0, I), x_t = α x_0 + σ ε; plus the
    exact ε*(x_t, t) and c(t) = g√Δt/σ.

    Returns:
      dict of host arrays: x0, k, t, noise, x, eps_star, c, quartile.
    """
    num_steps = processes.check_num_steps(num_steps)
    key_x0, key_k, key_eps = jax.random.split(key, 3)
    x0_NxD = oracles.sample_gmm(key_x0, gmm, n)
    k_N = jax.random.randint(key_k, (n,), 0, num_steps)
    t_grid, _ = processes.time_grid(process, num_steps)
    t_N = t_grid[k_N + 1]
    noise_NxD = jax.random.normal(key_eps, x0_NxD.shape, x0_NxD.dtype)
    x_NxD = process.alpha(t_N)[:, None] * x0_NxD + process.sigma(t_N)[:, None] * noise_NxD
    x_NxD, t_N = np.asarray(x_NxD), np.asarray(t_N)
    eps_star = _apply_chunked(oracle_eps_fn(process, gmm), x_NxD, t_N)
    return {
        "x0": np.asarray(x0_NxD), "k": np.asarray(k_N), "t": t_N,
        "noise": np.asarray(noise_NxD), "x": x_NxD, "eps_star": eps_star,
        "c": np.asarray(loss_scale(process, num_steps, jnp.asarray(t_N)), np.float64),
        "quartile": quartile_of(t_N),
    }


def _ratio(num, den):
    return float(np.sqrt(num / den)) if den > 0 else math.nan


def relative_error_table(err_NxD, ref_NxD, t_N, *, num_chunks: int = 10) -> dict:
    """sqrt(Σ‖err‖² / Σ‖ref‖²) per t-quartile and overall, with chunk standard errors.

    Sample n goes to chunk n mod num_chunks; the standard error is the spread of
    the per-chunk ratios / √num_chunks (points are i.i.d., so any split is fair).

    Args:
      err_NxD: ε̂ - ε* (or any difference) [N, ...].
      ref_NxD: ε* [N, ...] (the denominator).
      t_N: the time of each point; quartile ⌊4t⌋ clipped to 0..3.

    Returns:
      {"quartiles": [{"t_range", "n", "relative_error", "stderr"} × 4], "overall": {...}}.
    """
    err2 = np.sum(np.square(np.asarray(err_NxD, np.float64)).reshape(len(t_N), -1), axis=1)
    ref2 = np.sum(np.square(np.asarray(ref_NxD, np.float64)).reshape(len(t_N), -1), axis=1)
    quartile = quartile_of(t_N)
    chunk = np.arange(len(t_N)) % num_chunks

    def cell(mask):
        chunks = [_ratio(err2[mask & (chunk == c)].sum(), ref2[mask & (chunk == c)].sum())
                  for c in range(num_chunks)]
        chunks = np.asarray(chunks)
        ok = np.isfinite(chunks)
        stderr = (float(np.std(chunks[ok], ddof=1) / math.sqrt(ok.sum()))
                  if ok.sum() >= 2 else math.nan)
        return {"n": int(mask.sum()), "relative_error": _ratio(err2[mask].sum(), ref2[mask].sum()),
                "stderr": stderr}

    table = {"quartiles": [], "overall": cell(np.ones(len(t_N), bool))}
    for i, (lo, hi) in enumerate(QUARTILES):
        table["quartiles"].append({"t_range": [lo, hi], **cell(quartile == i)})
    return table


def relative_error(eps_fn, key, *, process, gmm: oracles.GMM, num_steps: int, n: int,
                   num_chunks: int = 10) -> dict:
    """Per-t-quartile relative error ‖ε̂ - ε*‖/‖ε*‖ of any ``eps_fn(x [B, D], t [B])``.

    Draws n points with :func:`draw_points` (the training distribution on the grid
    of K = num_steps) and returns :func:`relative_error_table` of them.
    """
    points = draw_points(key, process, gmm, num_steps, n)
    pred = _apply_chunked(eps_fn, points["x"], points["t"])
    return relative_error_table(pred - points["eps_star"], points["eps_star"], points["t"],
                                num_chunks=num_chunks)


# -- the loss's own minimiser ---------------------------------------------------------


def posterior_eps(process, gmm: oracles.GMM, x_BxD, t_B):
    """The posterior of ε given x_t for diagonal-covariance mixture data (SPEC §6).

    With x_0 ~ Σ_j w_j N(μ_j, diag v_j) and x_t = α x_0 + σ ε, the posterior of ε
    is the mixture Σ_j r_j N(m_j, diag s_j²) with

    .. math::  r \\propto w_j N(x; \\alpha\\mu_j, \\alpha^2 v_j + \\sigma^2), \\quad
               m_j = \\frac{\\sigma (x - \\alpha\\mu_j)}{\\alpha^2 v_j + \\sigma^2}, \\quad
               s_j^2 = \\frac{\\alpha^2 v_j}{\\alpha^2 v_j + \\sigma^2},

    so Σ_j r_j m_j = ε* = -σ s*.

    Returns:
      (r [B, J], means [B, J, D], stds [B, J, D]).
    """
    if not gmm.diagonal:
        raise ValueError("posterior_eps needs diagonal mixture covariances")
    dtype = x_BxD.dtype
    alpha_B = process.alpha(t_B).astype(dtype)[:, None, None]
    sigma2_B = process.sigma2(t_B).astype(dtype)[:, None, None]
    v_JxD = jnp.asarray(np.diagonal(gmm.covs, axis1=1, axis2=2), dtype)[None]
    mu_JxD = jnp.asarray(gmm.means, dtype)[None]
    var_BxJxD = jnp.square(alpha_B) * v_JxD + sigma2_B
    diff_BxJxD = x_BxD[:, None, :] - alpha_B * mu_JxD
    log_joint_BxJ = jnp.log(jnp.asarray(gmm.weights, dtype))[None] - 0.5 * jnp.sum(
        jnp.square(diff_BxJxD) / var_BxJxD + jnp.log(2.0 * jnp.pi * var_BxJxD), axis=-1)
    r_BxJ = jax.nn.softmax(log_joint_BxJ, axis=-1)
    means = jnp.sqrt(sigma2_B) * diff_BxJxD / var_BxJxD
    stds = jnp.sqrt(jnp.square(alpha_B) * v_JxD / var_BxJxD)
    return r_BxJ, means, stds


def loss_minimiser(process, gmm: oracles.GMM, q, p, num_steps: int, *,
                   num_nodes: int = HERMITE_NODES, num_iters: int = 40):
    """m*(x, t): the per-coordinate minimiser of the eq. (5) loss given x_t (SPEC §4 (ii)).

    .. math::  m^*_i = \\arg\\min_m \\mathbb{E}[\\ell_{q,p}(c(m - \\varepsilon_i)) \\mid x_t],
               \\qquad c = g\\sqrt{\\Delta t}/\\sigma \\text{ at } t = t_{k+1},

    i.e. the root of ψ(m) = E[ℓ'(c(m - ε_i)) | x_t], which is non-decreasing in m
    (ℓ is convex). The expectation over the Gaussian-mixture posterior
    (:func:`posterior_eps`) uses ``num_nodes`` Gauss–Hermite nodes per component;
    the root is found by ``num_iters`` bisections on a bracket spanning every node.
    For G/G, m* = ε*.

    Returns:
      ``eps_fn(x [B, D], t [B]) -> m* [B, D]``.
    """
    q, p = losses.check_pair(q, p)
    z_H, w_H = np.polynomial.hermite.hermgauss(num_nodes)
    dl = jax.grad(lambda u: jnp.sum(losses.shift_kl(q, p, u)))

    def eps_fn(x_BxD, t_B):
        r_BxJ, mean_BxJxD, std_BxJxD = posterior_eps(process, gmm, x_BxD, t_B)
        dtype = x_BxD.dtype
        z = jnp.asarray(z_H * math.sqrt(2.0), dtype)
        eps_BxJxDxH = mean_BxJxD[..., None] + std_BxJxD[..., None] * z
        w_BxJx1xH = r_BxJ[:, :, None, None] * jnp.asarray(w_H / math.sqrt(math.pi), dtype)
        c_B = loss_scale(process, num_steps, t_B).astype(dtype)[:, None, None, None]

        def psi(m_BxD):
            return jnp.sum(w_BxJx1xH * dl(c_B * (m_BxD[:, None, :, None] - eps_BxJxDxH)),
                           axis=(1, 3))

        lo = jnp.min(eps_BxJxDxH, axis=(1, 3)) - 1.0
        hi = jnp.max(eps_BxJxDxH, axis=(1, 3)) + 1.0

        def bisect(_, bracket):
            lo_, hi_ = bracket
            mid = 0.5 * (lo_ + hi_)
            right = psi(mid) > 0.0  # root is left of mid
            return jnp.where(right, lo_, mid), jnp.where(right, mid, hi_)

        lo, hi = jax.lax.fori_loop(0, num_iters, bisect, (lo, hi))
        return 0.5 * (lo + hi)

    return eps_fn


# -- training -------------------------------------------------------------------------


def make_config(settings: Settings, q, p, num_steps: int):
    """configs/default.py with gmm8, mlp, the process, (q, p, K) and the shared budget."""
    default = importlib.import_module("configs.default")
    config = default.get_config()
    config.seed = settings.seed
    config.data.name = "gmm8"
    config.data.batch_size = settings.batch_size
    config.model.name = "mlp"
    config.process.name = settings.process
    config.loss.q, config.loss.p = q.name, p.name
    config.loss.q_params.update(q.params())
    config.loss.p_params.update(p.params())
    config.loss.num_steps = int(num_steps)
    config.train.num_steps = settings.train_steps
    config.train.sample_every = 0
    config.train.log_every = max(settings.train_steps // 5, 1)
    config.train.checkpoint_every = settings.train_steps
    config.train.keep_checkpoints = 1
    return config


def _run_name(settings: Settings, q, p, num_steps: int) -> str:
    name = f"{q.name}{_params_tag(q)}-{p.name}{_params_tag(p)}_K{num_steps}"
    return f"{name}_steps{settings.train_steps}_batch{settings.batch_size}_seed{settings.seed}"


def _params_tag(law) -> str:
    return "".join(f"{k}{v:g}" for k, v in law.params().items())


def _latest_checkpoint(workdir: str):
    ckpt = os.path.join(workdir, "checkpoints")
    steps = [int(d) for d in os.listdir(ckpt) if re.fullmatch(r"\d+", d)] if os.path.isdir(ckpt) else []
    return max(steps) if steps else None


def train_pair(settings: Settings, q, p, num_steps: int):
    """Trains (or restores a finished run) with nnd.train; returns (eps_fn, info dict)."""
    from nnd import train  # noqa: PLC0415  (training stack only where it is used)

    config = make_config(settings, q, p, num_steps)
    workdir = os.path.join(settings.workdir, _run_name(settings, q, p, num_steps))
    resumed_from = _latest_checkpoint(workdir)
    start = time.perf_counter()
    state = train.train_and_evaluate(config, workdir)
    seconds = time.perf_counter() - start
    model = train.make_model(config)
    params = state.ema_params

    def eps_fn(x_BxD, t_B):
        return model.apply({"params": params}, x_BxD, t_B)

    info = {"workdir": workdir, "train_seconds": seconds,
            "resumed_from_step": resumed_from, "final_step": int(state.step),
            "final_loss": _final_loss(workdir)}
    return eps_fn, info


def _final_loss(workdir: str):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    last = None
    with open(path) as fh:
        for line in fh:
            if line.strip():
                last = json.loads(line)
    return None if last is None else last.get("loss")


def _untrained_eps_fn(settings: Settings):
    """The MLP at its initialisation (nnd.train's init stream of the same seed)."""
    from nnd import train  # noqa: PLC0415

    pairs = settings.pairs
    config = make_config(settings, *pairs[0], settings.ks[0])
    model = train.make_model(config)
    key = jax.random.fold_in(jax.random.key(settings.seed), _INIT_STREAM)
    params = model.init(key, jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
    return lambda x, t: model.apply({"params": params}, x, t)


# -- the experiment -------------------------------------------------------------------


def _machine() -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = list(os.getloadavg())
    return info


def _quartile_c(points: dict) -> list[dict]:
    """Per quartile: the grid times present and the rms of c = g√Δt/σ."""
    out = []
    for i in range(4):
        mask = points["quartile"] == i
        c = points["c"][mask]
        out.append({"num_grid_times": int(np.unique(points["t"][mask]).size),
                    "c_rms": float(np.sqrt(np.mean(np.square(c)))) if c.size else math.nan,
                    "c_max": float(np.max(c)) if c.size else math.nan})
    return out


def _short(table: dict) -> str:
    cells = " ".join(f"{c['relative_error']:.4f}" for c in table["quartiles"])
    return f"[{cells}] all {table['overall']['relative_error']:.4f}"


def run(settings: Settings, *, log=print) -> dict:
    """Trains every (pair, K), measures the errors; returns the JSON-ready result.

    Evaluation points for K use ``fold_in(fold_in(key(seed), 7), K)``: the same
    points for every pair at that K (paired comparisons). Training keys are
    nnd.train's streams of ``config.seed = seed``.
    """
    process = processes.get(settings.process)
    gmm = oracles.gmm8()
    oracle = oracle_eps_fn(process, gmm)
    untrained = _untrained_eps_fn(settings)
    key_eval = jax.random.fold_in(jax.random.key(settings.seed), _EVAL_STREAM)
    chunks = settings.num_chunks
    controls, rows = [], []
    for num_steps in settings.ks:
        points = draw_points(jax.random.fold_in(key_eval, num_steps), process, gmm,
                             num_steps, settings.n)
        eps_star, t = points["eps_star"], points["t"]

        def table(pred, ref=None):
            ref_pred = eps_star if ref is None else ref
            return relative_error_table(pred - ref_pred, eps_star, t, num_chunks=chunks)

        control = {
            "K": num_steps,
            "quartile_scale": _quartile_c(points),
            "oracle": table(_apply_chunked(oracle, points["x"], t)),
            "untrained": table(_apply_chunked(untrained, points["x"], t)),
        }
        controls.append(control)
        log(f"K={num_steps:<5d} oracle {_short(control['oracle'])}; "
            f"untrained {_short(control['untrained'])}")
        for q, p in settings.pairs:
            label = pair_label(q, p)
            start = time.perf_counter()
            minimiser = _apply_chunked(loss_minimiser(process, gmm, q, p, num_steps),
                                       points["x"], t)
            minimiser_s = time.perf_counter() - start
            log(f"{label:>18s}  K={num_steps:<5d} training {settings.train_steps} steps ...")
            eps_fn, info = train_pair(settings, q, p, num_steps)
            start = time.perf_counter()
            pred = _apply_chunked(eps_fn, points["x"], t)
            eval_s = time.perf_counter() - start
            row = {
                "pair": label, "q": str(q), "p": str(p), "K": num_steps,
                "network": table(pred),
                "loss_minimiser": table(minimiser),
                "network_vs_minimiser": table(pred, ref=minimiser),
                **info,
                "eval_seconds": eval_s, "minimiser_seconds": minimiser_s,
            }
            rows.append(row)
            log(f"{label:>18s}  K={num_steps:<5d} network {_short(row['network'])}; "
                f"minimiser {_short(row['loss_minimiser'])}; "
                f"train {info['train_seconds']:.0f}s")
    return {
        "experiment": "bias of a non-quadratic loss (SPEC §4 (ii))",
        "metric": "sqrt(sum ||eps_hat - eps*||^2 / sum ||eps*||^2) per t-quartile, "
                  "eps* = E[eps | x_t] = -sigma s* (exact gmm8 score)",
        "process": settings.process, "data": "gmm8", "model": "mlp (configs/default.py)",
        "pairs": [pair_label(q, p) for q, p in settings.pairs],
        "K": list(settings.ks),
        "train_steps": settings.train_steps, "batch_size": settings.batch_size,
        "seed": settings.seed, "n": settings.n, "num_chunks": settings.num_chunks,
        "hermite_nodes": HERMITE_NODES,
        "eval_key": f"fold_in(fold_in(key({settings.seed}), {_EVAL_STREAM}), K)",
        "controls": controls, "rows": rows,
        "jax": jax.__version__, "machine": _machine(),
    }


# -- reporting ------------------------------------------------------------------------


def markdown_table(result: dict) -> str:
    """Relative error of the network (and of the loss minimiser) per pair, K and quartile."""
    head = ("| pair | K | t∈[0,.25) | [.25,.5) | [.5,.75) | [.75,1] | all | "
            "minimiser (all) | net vs minimiser (all) |")
    lines = [f"Relative error ‖ε̂ − ε*‖/‖ε*‖ (± 1 s.e. over {result['num_chunks']} chunks; "
             f"n = {result['n']} points per K; {result['train_steps']} steps, batch "
             f"{result['batch_size']}, seed {result['seed']})", "", head,
             "|---|---|" + "---|" * 7]
    for row in result["rows"]:
        cells = [f"{c['relative_error']:.4f} ± {c['stderr']:.4f}"
                 for c in row["network"]["quartiles"] + [row["network"]["overall"]]]
        cells.append(f"{row['loss_minimiser']['overall']['relative_error']:.4f}")
        cells.append(f"{row['network_vs_minimiser']['overall']['relative_error']:.4f}")
        lines.append(f"| {row['pair']} | {row['K']} | " + " | ".join(cells) + " |")
    lines += ["", "Loss minimiser m* (population bias, no training) per quartile", "",
              "| pair | K | t∈[0,.25) | [.25,.5) | [.5,.75) | [.75,1] | all |",
              "|---|---|" + "---|" * 5]
    for row in result["rows"]:
        cells = [f"{c['relative_error']:.4f}" for c in
                 row["loss_minimiser"]["quartiles"] + [row["loss_minimiser"]["overall"]]]
        lines.append(f"| {row['pair']} | {row['K']} | " + " | ".join(cells) + " |")
    lines += ["", "Controls (overall): "
              + "; ".join(f"K={c['K']}: oracle {c['oracle']['overall']['relative_error']:.1e}, "
                          f"untrained {c['untrained']['overall']['relative_error']:.3f}"
                          for c in result["controls"])]
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    """One panel per pair (relative error per t-quartile, a line per K) and a summary panel.

    Solid lines with ±2 s.e. bars: the trained network; dashed: the loss's own
    minimiser m* (values below 1e-4, e.g. G/G's exact 0, are left off the log axis).
    """
    plt = invariance._pyplot()
    pairs, ks = result["pairs"], result["K"]
    fig, axes = plt.subplots(1, len(pairs) + 1, figsize=(4.0 * (len(pairs) + 1), 4.2), dpi=150,
                             squeeze=False)
    axes = axes[0]
    x = np.arange(4)
    floor = 1e-4
    values = []
    for ax, pair in zip(axes, pairs):
        for i, k in enumerate(ks):
            row = next(r for r in result["rows"] if r["pair"] == pair and r["K"] == k)
            color = f"C{i % 10}"
            net = np.array([c["relative_error"] for c in row["network"]["quartiles"]])
            se = np.array([c["stderr"] for c in row["network"]["quartiles"]])
            ax.errorbar(x, net, yerr=2 * se, color=color, marker="o", ms=4, capsize=3,
                        label=f"K = {k}: network")
            m_star = np.array([c["relative_error"] for c in row["loss_minimiser"]["quartiles"]])
            if np.any(m_star > floor):
                ax.plot(x, np.where(m_star > floor, m_star, np.nan), color=color, ls="--",
                        marker="x", ms=5, label=f"K = {k}: loss minimiser m*")
            values += list(net) + [v for v in m_star if v > floor]
        ax.axhline(1.0, color="0.5", ls=":", lw=1, label="ε̂ = 0 (untrained net)")
        ax.set_title(pair, fontsize=10)
        ax.set_xticks(x, ["[0,.25)", "[.25,.5)", "[.5,.75)", "[.75,1]"])
        ax.set_xlabel("t quartile")
    summary = axes[-1]
    for j, pair in enumerate(pairs):
        rows = sorted((r for r in result["rows"] if r["pair"] == pair), key=lambda r: r["K"])
        k = [r["K"] for r in rows]
        net = [r["network"]["overall"]["relative_error"] for r in rows]
        se = [r["network"]["overall"]["stderr"] for r in rows]
        summary.errorbar(k, net, yerr=2 * np.asarray(se), color=f"C{j + 5}", marker="o", ms=4,
                         capsize=3, label=f"{pair}: network")
        m_star = np.array([r["loss_minimiser"]["overall"]["relative_error"] for r in rows])
        if np.any(m_star > floor):
            summary.plot(k, np.where(m_star > floor, m_star, np.nan), color=f"C{j + 5}", ls="--",
                         marker="x", ms=5, label=f"{pair}: minimiser m*")
    summary.set_xscale("log")
    summary.set_xlabel("K (loss steps)")
    summary.set_title("all t", fontsize=10)
    lo = max(min(v for v in values if v > 0) / 2, floor) if values else floor
    for ax in axes:
        ax.set_yscale("log")
        ax.set_ylim(lo, 2.0)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, loc="lower left")
    axes[0].set_ylabel("‖ε̂ − ε*‖ / ‖ε*‖")
    fig.suptitle(f"Bias of the learned ε vs E[ε | x_t] on gmm8 ({result['process']}; "
                 f"{result['train_steps']} steps, batch {result['batch_size']}; "
                 f"bars ±2 s.e.)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- entry point ----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nnd.experiments.bias",
        description="SPEC §4 (ii): relative error of the learned ε against E[ε | x_t] on gmm8.")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--steps", type=int, default=3000,
                        help="training steps (the same budget for every run)")
    parser.add_argument("--K", default=DEFAULT_K, help="comma-separated loss step counts K")
    parser.add_argument("--pairs", default=DEFAULT_PAIRS,
                        help="comma-separated q/p loss pairs (law 'name' or 'name:param')")
    parser.add_argument("--batch", type=int, default=512, help="training batch size")
    parser.add_argument("--n", type=int, default=65536, help="evaluation points per K")
    parser.add_argument("--chunks", type=int, default=10, help="chunks for the standard error")
    parser.add_argument("--process", default="vp", choices=sorted(processes.PROCESSES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=os.path.join("runs", "bias"),
                        help="training runs go to WORKDIR/<pair>_K<K>_steps..._seed...")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """Parses flags, runs the experiment, writes ``bias.json`` and ``bias.png``.

    Raises ValueError on bad --pairs / --K / --steps before anything trains.
    """
    args = _parser().parse_args(argv)
    settings = Settings(train_steps=args.steps, ks=invariance.parse_steps(args.K),
                        pairs=parse_pairs(args.pairs), batch_size=args.batch, n=args.n,
                        num_chunks=args.chunks, process=args.process, seed=args.seed,
                        workdir=args.workdir)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("jax").setLevel(logging.WARNING)
    logging.getLogger("absl").setLevel(logging.WARNING)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    log = functools.partial(print, flush=True)
    result = run(settings, log=log)
    result["wall_seconds"] = time.perf_counter() - start
    result["command"] = "python -m nnd.experiments.bias " + " ".join(
        list(argv) if argv is not None else sys.argv[1:])
    with open(os.path.join(args.out, "bias.json"), "w") as fh:
        json.dump(result, fh, indent=2)
    plot(result, os.path.join(args.out, "bias.png"))
    print()
    print(markdown_table(result))
    print(f"\nwall time {result['wall_seconds']:.1f}s; wrote {args.out}/bias.json, bias.png")
    return result


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except ValueError as err:
        sys.exit(f"error: {err}")
