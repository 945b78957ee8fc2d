"""Samplers: reverse walk, predictor–corrector and the probability-flow ODE (docs/math.md §5).

Every sampler takes the increment law as a parameter where it injects noise and
returns ``(samples, nfe)``: NFE is the number of score evaluations per sample
(the batch is evaluated together, so it is also the number of network calls).

- ``walk``: the reverse structured random walk of eq. (8) (:func:`nnd.walks.reverse`),
  K score evaluations, plus one for the final denoising step.
- ``pc``: predictor–corrector: before each reverse step (:func:`nnd.walks.euler_step`),
  ``corrector_steps`` Langevin steps at the same t whose noise is the chosen law,
  ``x ← x + ε s(x, t) + √(2ε) z``, z ~ law, with the signal-to-noise step size
  ``ε = 2 (snr mean‖z‖ / mean‖s‖)²`` from batch means (see :func:`predictor_corrector`).
- ``ode``: the probability-flow ODE of eq. (6) (:func:`nnd.processes.pf_ode_drift`)
  from t = 1 to t_eps with adaptive Dormand–Prince (:func:`nnd.ode.dopri5`).
- ``heun``: the same ODE with ``num_steps`` fixed Heun steps (2 NFE each).

All finish with the noise-free Tweedie step at t_eps when ``denoise`` (one NFE).

:func:`draw` draws many samples from a network's parameters in fixed-size batches
with a sampler compiled once per (model, process, law, batch shape, settings) and
the parameters passed as an argument, so progress pictures and evaluation reuse it.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nnd import batching, compile_cache, losses, ode, walks
from nnd import processes as processes_lib
from nnd.increments import Law
from nnd.processes import Process, ScoreFn

__all__ = ["SAMPLERS", "Settings", "pf_ode_field", "reverse_walk", "predictor_corrector", "pf_ode",
           "sample", "compiled", "network_fns", "draw"]

#: Sampler names a config may use (``sampling.sampler``).
SAMPLERS = ("walk", "pc", "ode", "heun")


@dataclasses.dataclass(frozen=True)
class Settings:
    """How to sample (the ``sampling`` section of a config, typed): hashable, so static under jit."""

    sampler: str = "walk"
    scheme: str = walks.DEFAULT_SCHEME  # reverse step of walk and pc (walks.SCHEMES)
    eta: float | None = None  # the variance family's η; None: the rule (walks.resolve_eta)
    variance_weight: float | None = None  # its w; None: the scheme's own (0 ancestral, 1 analytic)
    grid: str = processes_lib.DEFAULT_GRID  # times of walk, pc and heun (processes.GRIDS)
    num_steps: int = 300
    denoise: bool = True
    snr: float = 0.16
    corrector_steps: int = 1
    rtol: float = 1e-3
    atol: float = 1e-3
    batch_size: int = 2000


def _batch_time(x, t):
    return jnp.full((x.shape[0],), t, jnp.float32)


def pf_ode_field(process: Process, score_fn: ScoreFn):
    """The vector field h(x, t) of eq. (6) for an ODE solver: t scalar, x a batch."""

    def field(x, t):
        s = score_fn(x, _batch_time(x, t)).astype(x.dtype)
        return processes_lib.pf_ode_drift(process, x, s, t)

    return field


def reverse_walk(process: Process, law: Law, score_fn: ScoreFn, key: jax.Array, shape, *,
                 num_steps: int, denoise: bool = True, scheme: str = walks.DEFAULT_SCHEME,
                 grid: str = processes_lib.DEFAULT_GRID,
                 dtype=jnp.float32, **family):
    """The reverse walk (:func:`nnd.walks.reverse`) with increments from ``law``; returns (x, nfe).

    ``family``: ``eta``, ``variance_weight`` and ``x0_variance_fn`` of :func:`nnd.walks.reverse`.
    """
    x = walks.reverse(process, law, score_fn, key, shape, num_steps, denoise=denoise, scheme=scheme,
                      grid=grid, dtype=dtype, **family)
    return x, jnp.asarray(num_steps + int(denoise), jnp.int32)


def _per_example_norm(v):
    return jnp.sqrt(jnp.sum(jnp.square(v.reshape(v.shape[0], -1)), axis=1))


def predictor_corrector(process: Process, law: Law, score_fn: ScoreFn, key: jax.Array, shape, *,
                        num_steps: int, snr: float = 0.16, corrector_steps: int = 1,
                        denoise: bool = True, scheme: str = walks.DEFAULT_SCHEME,
                        grid: str = processes_lib.DEFAULT_GRID,
                        dtype=jnp.float32, eta=None, variance_weight=None,
                        x0_variance_fn=None):
    """Reverse-walk predictor with a Langevin corrector whose noise is ``law``; returns (x, nfe).

    At t = t_{k+1}, ``corrector_steps`` times: ``x ← x + ε s + √(2ε) z`` with
    ``ε = 2 a_k (snr mean‖z‖ / mean‖s‖)²``, the norms averaged over the batch (a
    per-example ratio blows up in low dimension where ‖s‖ vanishes at a mode's
    centre), and ``a_k = (α(t_{k+1}) / α(t_k))²``, the signal kept by one forward
    step: score_sde's α_i = 1 - β_iΔt for vp and sub-vp to first order in Δt, and 1
    for ve (Song et al. 2021, Alg. 5); then the reverse step to t_k of ``scheme``
    (:func:`nnd.walks.scheme_step`; eq. 8 for ``euler``) with increments from
    ``law``, on the times of ``grid`` (:func:`nnd.processes.sampling_grid`), with the
    variance family's ``eta``, ``variance_weight`` and ``x0_variance_fn``
    (:func:`nnd.walks.reverse`).
    """
    num_steps = processes_lib.check_num_steps(num_steps)
    eta = walks.resolve_eta(eta, scheme, variance_weight, num_steps)
    walks.check_family(scheme, eta, variance_weight, x0_variance_fn is not None)
    if snr <= 0:
        raise ValueError(f"snr must be positive, got {snr}")
    if corrector_steps < 0:
        raise ValueError(f"corrector_steps must be >= 0, got {corrector_steps}")
    shape = tuple(shape)
    t_grid = processes_lib.sampling_grid(process, num_steps, grid)
    key_prior, key_pred, key_corr = jax.random.split(key, 3)
    x_init = process.prior_sample(key_prior, shape, dtype)

    def step(x, inputs):
        k, t, t_down = inputs
        t_B = jnp.full((shape[0],), t, jnp.float32)
        signal_kept = jnp.exp(2.0 * (process.log_alpha(t) - process.log_alpha(t_down)))
        for j in range(corrector_steps):
            s = score_fn(x, t_B).astype(dtype)
            z = law.sample(jax.random.fold_in(jax.random.fold_in(key_corr, k), j), shape, dtype)
            ratio = jnp.mean(_per_example_norm(z)) / jnp.maximum(jnp.mean(_per_example_norm(s)), 1e-12)
            eps = (2.0 * signal_kept * jnp.square(snr * ratio)).astype(dtype)
            x = x + eps * s + jnp.sqrt(2.0 * eps) * z
        s = score_fn(x, t_B).astype(dtype)
        z = law.sample(jax.random.fold_in(key_pred, k), shape, dtype)
        v = None if x0_variance_fn is None else x0_variance_fn(x, t_B).astype(dtype)
        return walks.scheme_step(process, scheme, x, s, z, t, t_down, v, eta=eta,
                                 variance_weight=variance_weight), None

    x, _ = jax.lax.scan(step, x_init, (jnp.arange(num_steps), t_grid[1:], t_grid[:-1]),
                        reverse=True)
    if denoise:
        x = walks.tweedie_denoise(process, score_fn, x, process.t_eps)
    nfe = num_steps * (1 + corrector_steps) + int(denoise)
    return x, jnp.asarray(nfe, jnp.int32)


def pf_ode(process: Process, score_fn: ScoreFn, key: jax.Array, shape, *, solver: str = "ode",
           num_steps: int = 100, rtol: float = 1e-5, atol: float = 1e-5, denoise: bool = True,
           grid: str = processes_lib.DEFAULT_GRID, dtype=jnp.float32):
    """Integrates eq. (6) from a prior draw at t = 1 down to t_eps; returns (x, nfe).

    ``solver`` is ``ode`` (adaptive Dormand–Prince, ``rtol``/``atol``) or
    ``heun`` (``num_steps`` fixed steps on the times of ``grid``). The only randomness
    is the prior draw.
    """
    x1 = process.prior_sample(key, tuple(shape), dtype)
    drift = pf_ode_field(process, score_fn)
    if solver == "ode":
        x, stats = ode.dopri5(drift, x1, 1.0, process.t_eps, rtol=rtol, atol=atol)
    elif solver == "heun":
        times = processes_lib.sampling_grid(process, num_steps, grid)[::-1]
        x, stats = ode.heun(drift, x1, 1.0, process.t_eps, num_steps, times=times)
    else:
        raise ValueError(f"ODE solver must be 'ode' or 'heun', got {solver!r}")
    if denoise:
        x = walks.tweedie_denoise(process, score_fn, x, process.t_eps)
    return x, stats.nfe + int(denoise)


def sample(sampler: str, process: Process, law: Law, score_fn: ScoreFn, key: jax.Array, shape, *,
           num_steps: int, denoise: bool = True, snr: float = 0.16, corrector_steps: int = 1,
           rtol: float = 1e-3, atol: float = 1e-3, scheme: str = walks.DEFAULT_SCHEME,
           grid: str = processes_lib.DEFAULT_GRID,
           dtype=jnp.float32, eta=None, variance_weight=None, x0_variance_fn=None):
    """Dispatches on ``sampler`` (one of :data:`SAMPLERS`); returns (samples, nfe).

    ``law`` is the increment law of the walk and corrector noise (unused by the
    ODE samplers, which are deterministic given the prior draw); ``eta``,
    ``variance_weight`` and ``x0_variance_fn`` choose the walk's and pc's member of the
    variance family (:func:`nnd.walks.reverse`).
    """
    family = dict(eta=eta, variance_weight=variance_weight, x0_variance_fn=x0_variance_fn)
    if sampler == "walk":
        return reverse_walk(process, law, score_fn, key, shape, num_steps=num_steps,
                            denoise=denoise, scheme=scheme, grid=grid, dtype=dtype, **family)
    if sampler == "pc":
        return predictor_corrector(process, law, score_fn, key, shape, num_steps=num_steps,
                                   snr=snr, corrector_steps=corrector_steps, denoise=denoise,
                                   scheme=scheme, grid=grid, dtype=dtype, **family)
    if sampler in ("ode", "heun"):
        return pf_ode(process, score_fn, key, shape, solver=sampler, num_steps=num_steps,
                      rtol=rtol, atol=atol, denoise=denoise, grid=grid, dtype=dtype)
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")


@functools.lru_cache(maxsize=64)
def compiled(model: nn.Module, process: Process, law: Law, shape: tuple, settings: Settings):
    """``draw_batch(params, key) -> (samples [shape], nfe)`` for an ε-network, jitted once.

    Cached per (model, process, law, shape, settings), all hashable values, so a
    second call with new parameters reuses the compiled sampler.
    """

    def draw_batch(params, key):
        eps_fn, x0_variance_fn = network_fns(model, params, process)
        score_fn = processes_lib.score_fn_from_eps(process, eps_fn)
        return sample(settings.sampler, process, law, score_fn, key, shape,
                      num_steps=settings.num_steps, denoise=settings.denoise, snr=settings.snr,
                      corrector_steps=settings.corrector_steps, rtol=settings.rtol,
                      atol=settings.atol, scheme=settings.scheme, grid=settings.grid,
                      eta=settings.eta, variance_weight=settings.variance_weight,
                      x0_variance_fn=(x0_variance_fn if walks.uses_x0_variance(
                          settings.scheme, settings.variance_weight) else None))

    return jax.jit(draw_batch)


#: Compiled samplers that have run once in this process (their compile line is logged).
_USED: set = set()


def network_fns(model: nn.Module, params, process: Process):
    """(eps_fn, x0_variance_fn) of an ε-network; x0_variance_fn is None without a learned variance.

    With the learned-variance head both come from one network call: the second function,
    called on the same (x, t) right after the first (as a sampler's step does), reuses that
    call's head output (:func:`nnd.losses.learned_x0_variance`) instead of calling again.
    """
    if not getattr(model, "learned_variance", False):
        return (lambda x, t_B: model.apply({"params": params}, x, t_B)), None
    last = {}

    def both(x, t_B):
        if last.get("args", (None, None))[0] is not x or last["args"][1] is not t_B:
            last["args"] = (x, t_B)  # held, so the ids cannot be reused while cached
            last["out"] = model.apply({"params": params}, x, t_B, with_variance=True)
        return last["out"]

    def eps_fn(x, t_B):
        return both(x, t_B)[0]

    def x0_variance_fn(x, t_B):
        return losses.learned_x0_variance(process, both(x, t_B)[1], t_B)

    return eps_fn, x0_variance_fn


def draw(model: nn.Module, params, process: Process, law: Law, settings: Settings,
         example_shape: tuple, num_samples: int, key: jax.Array):
    """(samples [N, *example_shape] on the host, mean NFE per batch) from an ε-network.

    Drawn ``settings.batch_size`` at a time with the cached :func:`compiled`
    sampler (:func:`nnd.batching.map_batches`, which logs progress with an ETA);
    batch i uses ``fold_in(key, i)``.
    """
    batch = min(num_samples, settings.batch_size)
    draw_batch = compiled(model, process, law, (batch,) + tuple(example_shape), settings)
    nfes = []
    name = f"sampler ({settings.sampler}, {law}, {settings.num_steps} steps, batch {batch})"

    def one_batch(_, i):
        if draw_batch in _USED:
            x, nfe = draw_batch(params, jax.random.fold_in(key, i))
        else:  # the first call compiles (or loads) it: one line says which
            with compile_cache.logged(name):
                x, nfe = jax.block_until_ready(draw_batch(params, jax.random.fold_in(key, i)))
            _USED.add(draw_batch)
        nfes.append(nfe)
        return x

    samples = batching.map_batches(one_batch, np.arange(num_samples), batch, label="sampling")
    return samples, float(np.mean([int(n) for n in nfes]))
