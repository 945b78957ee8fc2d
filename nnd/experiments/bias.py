"""How biased is the ε learned with a non-quadratic loss?

The training objective of eq. (5) is, with K = num_steps and t = t_{k+1} on the grid
the network trains on,

.. math::  \\mathbb{E}_{k, x_0, \\varepsilon}\\Big[K \\sum_i \\ell_{q,p}(u_i)\\Big], \\qquad
           u = c_k\\,(\\varepsilon_\\theta - \\varepsilon),

where c_k is the scale of the reverse step from t_{k+1} down to t_k of the scheme the
network trains with (:func:`nnd.losses.scheme_scale`): √expm1(λ_{t_k} - λ_{t_{k+1}}),
λ = log(α²/σ²), for ``ancestral`` and ``analytic``, g(t)√(t_{k+1} - t_k)/σ(t) for
``euler`` (eq. (5) as the paper writes it, on the ``t`` grid). The experiment uses the
training defaults (:data:`nnd.walks.DEFAULT_SCHEME`, :data:`nnd.processes.DEFAULT_GRID`)
unless told otherwise, and the same scheme and grid for the training, the evaluation
times and the loss minimiser.

For G/G (ℓ = u²/2) its minimiser is the posterior mean ε* = E[ε | x_t] = -σ(t) s*(x_t, t).
For a non-quadratic ℓ (L/L, U/L) it is the M-estimate

.. math::  m^*_i(x_t, t) = \\arg\\min_m\\ \\mathbb{E}\\big[\\ell_{q,p}(c_k(m - \\varepsilon_i))
           \\,\\big|\\, x_t\\big],

which differs from ε* wherever the posterior of ε is skewed, and tends to it as
c_k ∝ 1/√K → 0 (ℓ becomes quadratic). On ``gmm8`` both are computable: the posterior of
ε given x_t is a Gaussian mixture (:func:`posterior_eps`), so ε* is the oracle's and m* a
per-coordinate 1-D root (:func:`loss_minimiser`).

For each (q/p pair, K) this experiment trains the library's MLP with the same budget,
batch, seed and learning-rate schedule, and reports per quartile of t the relative error

.. math::  \\mathrm{rel}(\\hat\\varepsilon) = \\sqrt{\\frac{\\sum_n \\|\\hat\\varepsilon(x_n, t_n)
           - \\varepsilon^*(x_n, t_n)\\|^2}{\\sum_n \\|\\varepsilon^*(x_n, t_n)\\|^2}}

over evaluation points drawn like the training ones (x_0 ~ gmm8, k ~ U{0..K-1},
t = t_{k+1} on the training grid of that K, x_t = α x_0 + σ ε:
:func:`nnd.losses.training_draw`),
with a standard error from 10 chunks. Next to the trained network ε_θ it reports

- the loss's own minimiser m* ("population bias": what a perfect fit of that loss
  would err by; 0 for G/G),
- ε_θ against m* ("fit error": how far training got to the minimiser it aims at),
- controls: the exact oracle (0 by construction) and the untrained network (its
  output layer is zero-initialised, so exactly 1).

Caveats. The standard errors are evaluation noise only (one training seed per
cell); the spread between training seeds is larger (at K = 1000, euler on the t grid,
the t < .25 error of G/G was 0.25 with seed 0 and 0.12 with seed 1). Each K is
evaluated on its own grid, so its quartiles hold different times (on vp's log-SNR grid
the first holds t ∈ {0.005, 0.018, 0.054, 0.141} for K = 10 but 470 of the 1000 times for
K = 1000, where ε* varies fastest): compare pairs at one K, not one pair across K.

Run (939 s measured on 2 busy CPU cores, 9 trainings of about 95 s each; the loss
minimiser alone takes 30-70 s per K)::

    python -m nnd.experiments.bias --out docs/figures --steps 3000

It writes ``bias.json``, ``bias.md`` and ``bias.png`` into ``--out``, trains in
``--workdir`` (default ``runs/bias``; a finished run there is restored, not
retrained) and prints progress and a Markdown table.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nnd import batching, defaults, keys, losses, oracles, paths, processes, walks
from nnd import config as config_lib
from nnd.experiments import common
from nnd.increments import Law
from nnd.processes import EpsFn, Process

__all__ = ["DEFAULT_PAIRS", "DEFAULT_K", "QUARTILES", "HERMITE_NODES", "Settings",
           "training_scale", "posterior_eps", "loss_minimiser", "quartile_of", "draw_points",
           "relative_error_table", "relative_error", "make_config", "train_pair", "run",
           "markdown_table", "plot", "main"]

DEFAULT_PAIRS = "gaussian/gaussian,laplace/laplace,uniform/laplace"
DEFAULT_K = "10,100,1000"
#: The t-quartiles: [0, .25), [.25, .5), [.5, .75), [.75, 1] (t = 1 is in the last).
QUARTILES = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))
#: Evaluation points per jitted batch (bounds memory).
_BATCH = 8192
#: Gauss–Hermite nodes per posterior component in :func:`loss_minimiser`.
HERMITE_NODES = 48


@dataclasses.dataclass(frozen=True)
class Settings:
    """One run of the experiment (the command-line flags, parsed)."""

    train_steps: int = 3000
    ks: tuple[int, ...] = common.parse_steps(DEFAULT_K)
    pairs: tuple[tuple[Law, Law], ...] = common.parse_pairs(DEFAULT_PAIRS)
    batch_size: int = 512
    n: int = 65536
    num_chunks: int = 10
    process: str = "vp"
    seed: int = 0
    workdir: str = os.path.join("runs", "bias")
    #: The reverse scheme and grid the networks train with, and so whose c_k and times
    #: the minimiser and the evaluation use.
    scheme: str = walks.DEFAULT_SCHEME
    grid: str = processes.DEFAULT_GRID

    def __post_init__(self):
        for name, low in (("train_steps", 1), ("batch_size", 1), ("num_chunks", 2),
                          ("n", 4 * self.num_chunks)):
            common.check_int(name, getattr(self, name), low)
        _check_scheme_and_grid(self.scheme, self.grid)


def _check_scheme_and_grid(scheme: str, grid: str) -> None:
    if scheme not in walks.SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; choose one of {walks.SCHEMES}")
    if grid not in processes.GRIDS:
        raise ValueError(f"unknown grid {grid!r}; choose one of {processes.GRIDS}")


# -- what a perfect fit learns ----------------------------------------------------------


def training_scale(process: Process, t_B: jax.Array, num_steps: int, *,
               scheme: str = walks.DEFAULT_SCHEME,
               grid: str = processes.DEFAULT_GRID) -> jax.Array:
    """c_k of the training loss at t_B = t_{k+1} of the K-step ``grid``: u = c_k(ε_θ - ε).

    The scale :func:`nnd.losses.step_loss` gives the step from t_{k+1} down to t_k of
    ``scheme`` (:func:`nnd.losses.scheme_scale`), so the minimiser and the table of
    scales see the c_k the network was trained with.
    """
    _check_scheme_and_grid(scheme, grid)
    t_grid = processes.sampling_grid(process, processes.check_num_steps(num_steps), grid)
    return losses.step_scale_on_grid(process, scheme, t_grid, t_B)


def posterior_eps(process: Process, gmm: oracles.GMM, x_BxD: jax.Array,
                  t_B: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The law of each coordinate of ε given x_t = αx_0 + σε, x_0 ~ gmm.

    Coordinate i of ε given x_t = x is the mixture Σ_j r_j N(m_ji, s_ji²) of the
    components' Gaussian posteriors (:func:`nnd.oracles.gmm_components`):

    .. math::  r_j \\propto w_j N(x; \\alpha\\mu_j, C_j), \\quad
               m_j = \\sigma C_j^{-1}(x - \\alpha\\mu_j), \\quad
               s_j^2 = \\operatorname{diag}(\\alpha^2\\Sigma_j C_j^{-1}), \\quad
               C_j = \\alpha^2\\Sigma_j + \\sigma^2 I,

    so Σ_j r_j m_j = E[ε | x_t] = -σ ∇ log p_t.

    Returns:
      (r [B, J], means [B, J, D], stds [B, J, D]).
    """
    components = oracles.gmm_components(process, gmm, x_BxD, t_B, posterior_var=True)
    sigma_Bx1x1 = processes.per_example(process.sigma(t_B), components.score_BxJxD)
    return (jax.nn.softmax(components.log_joint_BxJ, axis=-1),
            -sigma_Bx1x1 * components.score_BxJxD, jnp.sqrt(components.eps_var_BxJxD))


def loss_minimiser(process: Process, gmm: oracles.GMM, q: Law | str, p: Law | str,
                   num_steps: int, *, scheme: str = walks.DEFAULT_SCHEME,
                   grid: str = processes.DEFAULT_GRID, num_nodes: int = HERMITE_NODES,
                   num_iters: int = 40) -> EpsFn:
    """m*(x, t): what a perfect fit of the eq. (5) loss learns for ε.

    Per coordinate, the minimiser of the expected loss given x_t,

    .. math::  m^*_i = \\arg\\min_m \\mathbb{E}[\\ell_{q,p}(c_k(m - \\varepsilon_i)) \\mid x_t],

    with c_k the training scale at t = t_{k+1} (:func:`training_scale` of ``scheme`` and
    ``grid``; t must be a time of that grid), i.e. the root of
    ψ(m) = E[ℓ'(c_k(m - ε_i)) | x_t], non-decreasing in m since ℓ is convex. The
    expectation over the posterior (:func:`posterior_eps`) uses ``num_nodes``
    Gauss–Hermite nodes per component; the root is found by ``num_iters`` bisections on a
    bracket spanning every node. For q = p = gaussian, m* = E[ε | x_t]; for a
    non-quadratic ℓ it is an M-estimate that differs where the posterior is skewed, and
    tends to E[ε | x_t] as c_k ∝ 1/√K → 0.

    Returns:
      ``eps_fn(x [B, D], t [B]) -> m* [B, D]``.

    Raises:
      ValueError: a pair whose KL is infinite (:func:`nnd.losses.check_pair`), an unknown
        scheme or grid.
    """
    q, p = losses.check_pair(q, p)
    num_steps = processes.check_num_steps(num_steps)
    _check_scheme_and_grid(scheme, grid)
    z_H, w_H = np.polynomial.hermite.hermgauss(num_nodes)
    dl = jax.grad(lambda u: jnp.sum(losses.shift_kl(q, p, u)))

    def eps_fn(x_BxD, t_B):
        r_BxJ, mean_BxJxD, std_BxJxD = posterior_eps(process, gmm, x_BxD, t_B)
        dtype = x_BxD.dtype
        z = jnp.asarray(z_H * math.sqrt(2.0), dtype)
        eps_BxJxDxH = mean_BxJxD[..., None] + std_BxJxD[..., None] * z
        w_BxJx1xH = r_BxJ[:, :, None, None] * jnp.asarray(w_H / math.sqrt(math.pi), dtype)
        c_B = training_scale(process, t_B, num_steps, scheme=scheme, grid=grid).astype(dtype)
        c_Bx1x1x1 = c_B[:, None, None, None]

        def psi(m_BxD):
            return jnp.sum(w_BxJx1xH * dl(c_Bx1x1x1 * (m_BxD[:, None, :, None] - eps_BxJxDxH)),
                           axis=(1, 3))

        def bisect(_, bracket):
            lo, hi = bracket
            mid = 0.5 * (lo + hi)
            right = psi(mid) > 0.0  # the root is left of mid
            return jnp.where(right, lo, mid), jnp.where(right, mid, hi)

        bracket = (jnp.min(eps_BxJxDxH, axis=(1, 3)) - 1.0, jnp.max(eps_BxJxDxH, axis=(1, 3)) + 1.0)
        lo, hi = jax.lax.fori_loop(0, num_iters, bisect, bracket)
        return 0.5 * (lo + hi)

    return eps_fn


# -- the measurement ------------------------------------------------------------------


def quartile_of(t_N) -> np.ndarray:
    """Quartile index 0..3 of each t: ⌊4t⌋ clipped to [0, 3] (as nnd.train logs loss_by_quartile)."""
    return np.clip(np.floor(np.asarray(t_N, np.float64) * 4).astype(np.int64), 0, 3)


def _apply(eps_fn: EpsFn, points: dict) -> np.ndarray:
    """eps_fn at every evaluation point, jitted once, in float64 on the host."""
    jitted = jax.jit(eps_fn)
    out = batching.map_batches(lambda batch, _: jitted(*batch), (points["x"], points["t"]),
                               min(_BATCH, len(points["t"])))
    return out.astype(np.float64)


def draw_points(key: jax.Array, process: Process, gmm: oracles.GMM, num_steps: int,
                n: int, *, scheme: str = walks.DEFAULT_SCHEME,
                grid: str = processes.DEFAULT_GRID) -> dict:
    """n evaluation points drawn as in training, on the K-step ``grid``, K = num_steps.

    x_0 ~ gmm, then the training draw (:func:`nnd.losses.training_draw`):
    k ~ U{0..K-1}, t = t_{k+1} of ``grid``, ε ~ N(0, I), x_t = α x_0 + σ ε; plus the
    exact ε*(x_t, t) = E[ε | x_t] and the training scale c_k of ``scheme``
    (:func:`training_scale`).

    Returns:
      dict of host arrays: x0, t, eps, x, eps_star, c, quartile.
    """
    key_x0, key_draw = jax.random.split(key)
    x0_NxD = oracles.sample_gmm(key_x0, gmm, n)
    t_N, eps_NxD, x_NxD = losses.training_draw(key_draw, process, x0_NxD, num_steps, grid)
    c_N = training_scale(process, t_N, num_steps, scheme=scheme, grid=grid)
    points = {"x0": np.asarray(x0_NxD), "t": np.asarray(t_N), "eps": np.asarray(eps_NxD),
              "x": np.asarray(x_NxD), "quartile": quartile_of(t_N),
              "c": np.asarray(c_N, np.float64)}
    oracle = processes.eps_fn_from_score(process, oracles.gmm_score(process, gmm))
    points["eps_star"] = _apply(oracle, points)
    return points


def _ratio(num: float, den: float) -> float:
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
        chunks = np.asarray([_ratio(err2[mask & (chunk == c)].sum(), ref2[mask & (chunk == c)].sum())
                             for c in range(num_chunks)])
        ok = np.isfinite(chunks)
        stderr = (float(np.std(chunks[ok], ddof=1) / math.sqrt(ok.sum()))
                  if ok.sum() >= 2 else math.nan)
        return {"n": int(mask.sum()), "relative_error": _ratio(err2[mask].sum(), ref2[mask].sum()),
                "stderr": stderr}

    return {"quartiles": [{"t_range": [lo, hi], **cell(quartile == i)}
                          for i, (lo, hi) in enumerate(QUARTILES)],
            "overall": cell(np.ones(len(t_N), bool))}


def relative_error(eps_fn: EpsFn, key: jax.Array, *, process: Process, gmm: oracles.GMM,
                   num_steps: int, n: int, num_chunks: int = 10,
                   grid: str = processes.DEFAULT_GRID) -> dict:
    """Per-t-quartile relative error ‖ε̂ - ε*‖/‖ε*‖ of any ``eps_fn(x [B, D], t [B])``.

    Draws n points with :func:`draw_points` (the training distribution on the K-step
    ``grid``, K = num_steps) and returns :func:`relative_error_table` of them.
    """
    points = draw_points(key, process, gmm, num_steps, n, grid=grid)
    return relative_error_table(_apply(eps_fn, points) - points["eps_star"], points["eps_star"],
                                points["t"], num_chunks=num_chunks)


# -- training -------------------------------------------------------------------------


def make_config(settings: Settings, q: Law, p: Law, num_steps: int):
    """nnd.defaults.default() (gmm8, mlp) with the process, (q, p, K), the scheme and grid
    whose c_k weighs the loss, and the shared budget."""
    config = defaults.default()
    config.seed = settings.seed
    config.data.batch_size = settings.batch_size
    config.process.name = settings.process
    config.sampling.scheme, config.sampling.grid = settings.scheme, settings.grid
    config.loss.q, config.loss.p = common.law_spec(q), common.law_spec(p)
    config.loss.num_steps = int(num_steps)
    config.train.num_steps = settings.train_steps
    config.train.sample_every = 0
    config.train.log_every = max(settings.train_steps // 5, 1)
    config.train.checkpoint_every = settings.train_steps
    config.train.keep_checkpoints = 1
    return config


def _law_tag(law: Law) -> str:
    return law.name + "".join(f"{k}{v:g}" for k, v in law.params().items())


def _run_name(settings: Settings, q: Law, p: Law, num_steps: int) -> str:
    return (f"{_law_tag(q)}-{_law_tag(p)}_K{num_steps}_{settings.scheme}-{settings.grid}"
            f"_steps{settings.train_steps}_batch{settings.batch_size}_seed{settings.seed}")


def _final_loss(workdir: str) -> float | None:
    path = paths.get(workdir) / "metrics.jsonl"
    if not path.exists():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return records[-1].get("loss") if records else None


def _eps_fn(config, params) -> EpsFn:
    model = config_lib.resolve(config).model
    return lambda x_BxD, t_B: model.apply({"params": params}, x_BxD, t_B)


def train_pair(settings: Settings, q: Law, p: Law, num_steps: int) -> tuple[EpsFn, dict]:
    """Trains (or restores a finished run) with nnd.train; returns (ε_θ with EMA params, info)."""
    from nnd import train  # noqa: PLC0415  (the training stack only where it is used)

    config = make_config(settings, q, p, num_steps)
    workdir = os.path.join(settings.workdir, _run_name(settings, q, p, num_steps))
    resumed_from = common.latest_step(workdir)
    start = time.perf_counter()
    state = train.train(config, workdir)
    info = {"workdir": workdir, "train_seconds": time.perf_counter() - start,
            "resumed_from_step": resumed_from, "final_step": int(state.step),
            "final_loss": _final_loss(workdir)}
    return _eps_fn(config, state.ema_params), info


def _untrained_eps_fn(settings: Settings) -> EpsFn:
    """The MLP at its initialisation (nnd.train's init stream of the same seed)."""
    config = make_config(settings, *settings.pairs[0], settings.ks[0])
    key = keys.stream(jax.random.key(settings.seed), keys.Stream.INIT)
    model = config_lib.resolve(config).model
    params = model.init(key, jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
    return _eps_fn(config, params)


# -- the experiment -------------------------------------------------------------------


def _quartile_c(points: dict) -> list[dict]:
    """Per quartile: the grid times present and the rms and max of the training scale c_k."""
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

    Evaluation points for K use ``keys.stream(key(seed), Stream.EXPERIMENT, K)``: the
    same points for every pair at that K (paired comparisons). Training keys are
    nnd.train's streams of ``config.seed = seed``.
    """
    process = processes.get(settings.process)
    gmm = oracles.gmm8()
    oracle = processes.eps_fn_from_score(process, oracles.gmm_score(process, gmm))
    untrained = _untrained_eps_fn(settings)
    root = jax.random.key(settings.seed)
    controls, rows = [], []
    for num_steps in settings.ks:
        points = draw_points(keys.stream(root, keys.Stream.EXPERIMENT, num_steps), process, gmm,
                             num_steps, settings.n, scheme=settings.scheme, grid=settings.grid)

        def table(pred, ref=None):
            ref = points["eps_star"] if ref is None else ref
            return relative_error_table(pred - ref, points["eps_star"], points["t"],
                                        num_chunks=settings.num_chunks)

        control = {"K": num_steps, "quartile_scale": _quartile_c(points),
                   "oracle": table(_apply(oracle, points)),
                   "untrained": table(_apply(untrained, points))}
        controls.append(control)
        log(f"K={num_steps:<5d} oracle {_short(control['oracle'])}; "
            f"untrained {_short(control['untrained'])}")
        for q, p in settings.pairs:
            label = common.pair_label(q, p)
            start = time.perf_counter()
            minimiser = _apply(loss_minimiser(process, gmm, q, p, num_steps,
                                              scheme=settings.scheme, grid=settings.grid), points)
            minimiser_s = time.perf_counter() - start
            log(f"{label:>18s}  K={num_steps:<5d} training {settings.train_steps} steps ...")
            eps_fn, info = train_pair(settings, q, p, num_steps)
            start = time.perf_counter()
            pred = _apply(eps_fn, points)
            row = {"pair": label, "q": str(q), "p": str(p), "K": num_steps,
                   "network": table(pred), "loss_minimiser": table(minimiser),
                   "network_vs_minimiser": table(pred, ref=minimiser), **info,
                   "eval_seconds": time.perf_counter() - start, "minimiser_seconds": minimiser_s}
            rows.append(row)
            log(f"{label:>18s}  K={num_steps:<5d} network {_short(row['network'])}; "
                f"minimiser {_short(row['loss_minimiser'])}; "
                f"train {info['train_seconds']:.0f}s")
    return {
        "experiment": "bias of a non-quadratic loss",
        "metric": "sqrt(sum ||eps_hat - eps*||^2 / sum ||eps*||^2) per t-quartile, "
                  "eps* = E[eps | x_t] = -sigma s* (exact gmm8 score)",
        "process": settings.process, "scheme": settings.scheme, "grid": settings.grid,
        "data": "gmm8", "model": "mlp (nnd.defaults.default)",
        "pairs": [common.pair_label(q, p) for q, p in settings.pairs],
        "K": list(settings.ks),
        "train_steps": settings.train_steps, "batch_size": settings.batch_size,
        "seed": settings.seed, "n": settings.n, "num_chunks": settings.num_chunks,
        "hermite_nodes": HERMITE_NODES,
        "eval_key": f"fold_in(fold_in(key({settings.seed}), {int(keys.Stream.EXPERIMENT)}), K)",
        "controls": controls, "rows": rows, "jax": jax.__version__,
    }


# -- reporting ------------------------------------------------------------------------


def markdown_table(result: dict) -> str:
    """Relative error of the network (and of the loss minimiser) per pair, K and quartile."""
    quartiles = ["t∈[0,.25)", "[.25,.5)", "[.5,.75)", "[.75,1]", "all"]

    def cells(table: dict, fmt) -> list[str]:
        return [fmt(c) for c in table["quartiles"] + [table["overall"]]]

    network = common.markdown_table(
        ["pair", "K", *quartiles, "minimiser (all)", "net vs minimiser (all)"],
        ([r["pair"], str(r["K"]),
          *cells(r["network"], lambda c: f"{c['relative_error']:.4f} ± {c['stderr']:.4f}"),
          f"{r['loss_minimiser']['overall']['relative_error']:.4f}",
          f"{r['network_vs_minimiser']['overall']['relative_error']:.4f}"]
         for r in result["rows"]))
    minimiser = common.markdown_table(
        ["pair", "K", *quartiles],
        ([r["pair"], str(r["K"]), *cells(r["loss_minimiser"], lambda c: f"{c['relative_error']:.4f}")]
         for r in result["rows"]))
    controls = "; ".join(f"K={c['K']}: oracle {c['oracle']['overall']['relative_error']:.1e}, "
                         f"untrained {c['untrained']['overall']['relative_error']:.3f}"
                         for c in result["controls"])
    return "\n".join(
        [f"Relative error ‖ε̂ − ε*‖/‖ε*‖ (± 1 s.e. over {result['num_chunks']} chunks; "
         f"n = {result['n']} points per K; {result['train_steps']} steps, batch "
         f"{result['batch_size']}, seed {result['seed']})", "", *network, "",
         "Loss minimiser m* (population bias, no training) per quartile", "", *minimiser, "",
         f"Controls (overall): {controls}"])


def plot(result: dict, path: str) -> None:
    """One panel per pair (relative error per t-quartile, a line per K) and a summary panel.

    Solid lines with ±2 s.e. bars: the trained network; dashed: the loss's own
    minimiser m* (values below 1e-4, e.g. G/G's exact 0, are left off the log axis).
    """
    plt = common.pyplot()
    pairs, ks = result["pairs"], result["K"]
    fig, axes = plt.subplots(1, len(pairs) + 1, figsize=(4.0 * (len(pairs) + 1), 4.2), dpi=150,
                             squeeze=False)
    axes = axes[0]
    floor = 1e-4
    values = []

    def lines(ax, x, rows, color, label):
        net = np.array([r["relative_error"] for r in rows("network")])
        se = np.array([r["stderr"] for r in rows("network")])
        ax.errorbar(x, net, yerr=2 * se, color=color, marker="o", ms=4, capsize=3,
                    label=f"{label}: network")
        m_star = np.array([r["relative_error"] for r in rows("loss_minimiser")])
        if np.any(m_star > floor):
            ax.plot(x, np.where(m_star > floor, m_star, np.nan), color=color, ls="--",
                    marker="x", ms=5, label=f"{label}: loss minimiser m*")
        values.extend(list(net) + [v for v in m_star if v > floor])

    for ax, pair in zip(axes, pairs):
        for i, k in enumerate(ks):
            row = next(r for r in result["rows"] if r["pair"] == pair and r["K"] == k)
            lines(ax, np.arange(4), lambda name: row[name]["quartiles"], f"C{i % 10}", f"K = {k}")
        ax.axhline(1.0, color="0.5", ls=":", lw=1, label="ε̂ = 0 (untrained net)")
        ax.set_xticks(np.arange(4), ["[0,.25)", "[.25,.5)", "[.5,.75)", "[.75,1]"])
    for j, pair in enumerate(pairs):
        rows = sorted((r for r in result["rows"] if r["pair"] == pair), key=lambda r: r["K"])
        lines(axes[-1], [r["K"] for r in rows], lambda name: [r[name]["overall"] for r in rows],
              f"C{j + 5}", pair)
    lo = max(min(v for v in values if v > 0) / 2, floor) if values else floor
    for ax, title in zip(axes, pairs + ["all t"]):
        ax.set_ylim(lo, 2.0)
        summary = title == "all t"
        common.style_axes(ax, title=title, xlabel="K (loss steps)" if summary else "t quartile",
                          logx=summary, logy=True, legend="lower left", fontsize=6)
    axes[0].set_ylabel("‖ε̂ − ε*‖ / ‖ε*‖")
    common.save_figure(fig, path, f"Bias of the learned ε vs E[ε | x_t] on gmm8 ({result['process']}; "
                                  f"{result['train_steps']} steps, batch {result['batch_size']}; "
                                  "bars ±2 s.e.)")


# -- entry point ----------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict:
    """Parses flags, runs the experiment, writes ``bias.json``, ``bias.md`` and ``bias.png``.

    Raises ValueError on bad --pairs / --K / --steps before anything trains.
    """
    parser = common.parser(
        "bias", "Relative error of the learned ε against E[ε | x_t] on gmm8.")
    parser.add_argument("--steps", type=int, default=3000,
                        help="training steps (the same budget for every run)")
    parser.add_argument("--K", default=DEFAULT_K, help="comma-separated loss step counts K")
    parser.add_argument("--pairs", default=DEFAULT_PAIRS,
                        help="comma-separated q/p loss pairs (law 'name' or 'name:param')")
    parser.add_argument("--batch", type=int, default=512, help="training batch size")
    parser.add_argument("--n", type=int, default=65536, help="evaluation points per K")
    parser.add_argument("--chunks", type=int, default=10, help="chunks for the standard error")
    common.add_process_and_seed(parser)
    parser.add_argument("--scheme", default=walks.DEFAULT_SCHEME, choices=walks.SCHEMES,
                        help="reverse scheme whose c_k weighs the training loss (the default's)")
    parser.add_argument("--grid", default=processes.DEFAULT_GRID, choices=processes.GRIDS,
                        help="time grid of training and evaluation (the default's)")
    parser.add_argument("--workdir", default=os.path.join("runs", "bias"),
                        help="training runs go to WORKDIR/<pair>_K<K>_<scheme>-<grid>_...")
    args = parser.parse_args(argv)
    settings = Settings(train_steps=args.steps, ks=common.parse_steps(args.K),
                        pairs=common.parse_pairs(args.pairs), batch_size=args.batch, n=args.n,
                        num_chunks=args.chunks, process=args.process, seed=args.seed,
                        workdir=args.workdir, scheme=args.scheme, grid=args.grid)
    start = time.perf_counter()
    result = run(settings, log=functools.partial(print, flush=True))
    return common.write(args.out, "bias", result, markdown=markdown_table(result),
                        figures={"bias.png": functools.partial(plot, result)}, start=start,
                        argv=argv)


if __name__ == "__main__":
    common.cli(main)
