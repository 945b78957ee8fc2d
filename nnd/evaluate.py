"""``--mode=eval`` and ``--mode=sample``: likelihood, the eq. (5) walk sum, samples, FID, pictures.

:func:`evaluate` restores the latest EMA parameters of a run and writes
``WORKDIR/eval/metrics.json`` and pictures:

- ``likelihood`` (label ``pf-ode``): PF-ODE log-likelihood of held-out data, in bits/dim
  for quantised images (every example of the evaluated split, ``num_repeats``
  dequantisations, standard errors) and nats/dim for the 2-D toys;
- ``walk_bound`` (label ``bound``): a true upper bound on -log p of the K-step reverse walk
  with law-p kernels on the sampler's scheme and grid, plus a Gaussian decoder
  N(x̂, (σ_0/α_0)²) around the sampler's last (Tweedie) step, for every p of full support
  (:func:`nnd.likelihood.walk_bound`);
- ``walk_estimate`` (label ``estimate``): the eq. (5) sum (prior KL + Σ_k L_k +
  reconstruction) with and without the mismatch penalty K·D·ℓ(0) on the same examples;
  for q ≠ p it is neither a likelihood nor a bound;
- ``samples``: ``eval.num_samples`` samples by the configured sampler, their NFE
  and energy distance to held-out data (pixel space for images);
- ``fid`` when ``eval.fid_weights`` is set (images only);
- ``samples_by_law.png`` (one seed, one panel per law in ``eval.picture_laws``:
  the paper's Figure 1), ``samples.png`` and ``shift_kl.png`` (ℓ_{q,p}(u) for the
  Table 1 pairs).

The numbers and the three pictures also go to TensorBoard (``WORKDIR/tensorboard/eval``,
tags ``eval/...``, at the checkpoint's step). The workdir may be local or gs://
(:mod:`nnd.paths`).

Both restore only the step and EMA parameters (:func:`restore`): no training data
pipeline, no optimiser, no ``checkpoints/`` folder is created.

Keys: ``Stream.EVAL`` of the root key is split into the named parts of
:class:`nnd.keys.EvalPart`, so each part is reproducible on its own.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from nnd import (batching, checkpoints, compile_cache, data, increments, keys, likelihood, losses,
                 metrics)
from nnd import models, oracles, paths, pictures, processes, samplers, summaries, walks
from nnd import config as config_lib
from nnd.progress import Progress

__all__ = ["TABLE1_PAIRS", "Restored", "restore", "held_out", "draw", "evaluate", "sample"]

#: The (q, p) pairs of the paper's Table 1 (and Table 2's rows), plotted in shift_kl.png.
TABLE1_PAIRS = (("gaussian", "gaussian"), ("laplace", "laplace"), ("uniform", "gaussian"),
                ("uniform", "laplace"))


@dataclasses.dataclass(frozen=True)
class Restored:
    """A trained run as evaluation and sampling see it."""

    experiment: config_lib.Experiment
    step: int
    params: dict  # the EMA parameters
    root: jax.Array
    example_shape: tuple[int, ...]
    num_levels: int | None  # quantisation levels of image data; None for toys


def restore(config, workdir: str) -> Restored:
    """The newest readable checkpoint's step and EMA parameters; raises if there is none."""
    experiment = config_lib.resolve(config)
    shape = data.example_shape(config.data.name)
    root = jax.random.key(config.seed)
    abstract = jax.eval_shape(functools.partial(models.init_params, experiment.model),
                              keys.stream(root, keys.Stream.INIT),
                              jax.ShapeDtypeStruct((1,) + shape, jnp.float32))
    step, params = checkpoints.restore_ema(workdir, abstract)
    spec = data.IMAGES.get(config.data.name)
    return Restored(experiment, step, params, root, shape, spec.num_levels if spec else None)


def draw(restored: Restored, num_samples: int, key, *, law=None, settings=None):
    """(samples, NFE) from the restored EMA parameters with the configured (or given) sampler."""
    e = restored.experiment
    return samplers.draw(e.model, restored.params, e.process,
                         e.sampling_law if law is None else law,
                         e.sampling if settings is None else settings,
                         restored.example_shape, num_samples, key)


def _title(config, restored: Restored, *, law=None, nfe=None) -> str:
    e = restored.experiment
    return pictures.samples_title(config.data.name, e.q, e.p, e.sampling.sampler,
                                  e.sampling_law if law is None else law, nfe)


def held_out(config, num_examples: int):
    """(x, levels): held-out examples; ``levels`` are the integer images (None for toys).

    Images: the first ``num_examples`` of the test split (all if 0). Toys: fresh
    draws from the data stream of seed + 1 (never seen in training).
    """
    name = config.data.name
    if name in data.TOYS:
        n = num_examples or 1000
        return np.asarray(data.toy_batch(name, config.seed + 1, 0, n)), None
    source = data.image_source(name, "test")
    n = len(source) if num_examples == 0 else min(num_examples, len(source))
    shape = data.IMAGES[name].shape
    levels = np.stack([np.asarray(source[i]["image"]).reshape(shape) for i in range(n)])
    return None, levels


def _dequantised(levels, num_levels: int, key):
    u = np.asarray(jax.random.uniform(key, levels.shape))
    return data.dequantize(levels, u, num_levels)


def _likelihood(config, run: Restored, x, levels, key) -> dict:
    e, process = config.eval, run.experiment.process
    model = run.experiment.model

    @jax.jit
    def solve(params, z, k):
        score = processes.score_fn_from_eps(
            process, lambda x_, t_: model.apply({"params": params}, x_, t_))
        lp, stats = likelihood.log_prob_with_stats(
            process, score, z, k, e.divergence, e.rtol, e.atol, solver=e.solver,
            num_steps=e.ode_steps)
        return lp, stats.nfe, stats.finished

    nfes, unfinished = [], []

    def log_prob_fn(z, k):
        if nfes:
            lp, nfe, finished = solve(run.params, z, k)
        else:  # the first call compiles (or loads) the solve: one line says which
            with compile_cache.logged(f"likelihood solve (batch {len(z)})"):
                lp, nfe, finished = jax.block_until_ready(solve(run.params, z, k))
        nfes.append(int(nfe))
        unfinished.append(not bool(finished))
        return lp

    start = time.time()
    dim = math.prod(run.example_shape)
    if levels is not None:
        batch_size = min(e.batch_size, len(levels))
        with Progress("likelihood", e.num_repeats * -(-len(levels) // batch_size)) as bar:
            result = likelihood.dataset_bpd(log_prob_fn, levels, run.num_levels,
                                            batch_size=batch_size, key=key,
                                            num_repeats=e.num_repeats,
                                            progress=lambda done, total: (bar.set(nfe=nfes[-1]),
                                                                          bar.update()))
        result["unit"] = "bits/dim"
    else:
        per_repeat = []
        for r in range(e.num_repeats):
            lp = batching.map_batches(lambda z, i, r=r: log_prob_fn(z, keys.stream(key, r, i)),
                                      x, min(e.batch_size, len(x)), label="likelihood")
            per_repeat.append(float(np.mean(lp)) / dim)
        means = np.asarray(per_repeat)
        result = {"nats_per_dim": float(means.mean()), "num_examples": len(x),
                  "num_repeats": e.num_repeats, "per_repeat": means.tolist(),
                  "se_repeats": float(means.std(ddof=1) / math.sqrt(len(means)))
                  if len(means) > 1 else None, "unit": "nats/dim (log-likelihood)"}
        if config.data.name == "gmm8":
            exact = oracles.gmm_log_prob(process, oracles.gmm8())(
                jnp.asarray(x), jnp.zeros((len(x),), jnp.float32))
            result["exact_nats_per_dim"] = float(np.mean(np.asarray(exact))) / dim
    if any(unfinished):
        raise FloatingPointError("likelihood: the adaptive solver ran out of steps "
                                 f"({sum(unfinished)} batches); loosen eval.rtol/atol")
    result.update(divergence=likelihood.resolve_divergence(e.divergence, dim), solver=e.solver,
                  rtol=e.rtol, atol=e.atol, nfe_mean=float(np.mean(nfes)),
                  seconds=time.time() - start)
    return result


def _walk_bound(config, run: Restored, x, levels, key) -> dict:
    """``{"walk_bound": ..., "walk_estimate": ...}`` on the same held-out examples.

    ``walk_bound`` (label ``bound``): :func:`nnd.likelihood.walk_bound`, a true upper bound on
    -log p of the K-step law-p reverse walk (the run's scheme and grid) plus the Gaussian
    decoder N(x̂, (σ_0/α_0)²) around the sampler's last, Tweedie step. ``walk_estimate``
    (label ``estimate``): the eq. (5) sum of :func:`nnd.likelihood.walk_estimate`, with and
    without K·D·ℓ(0); for q ≠ p it bounds nothing.
    """
    experiment, model, sampling = run.experiment, run.experiment.model, run.experiment.sampling
    key_dequantise, key_bound, key_estimate = jax.random.split(key, 3)
    if levels is not None:
        x = _dequantised(levels, run.num_levels, key_dequantise)
    dim = math.prod(x.shape[1:])
    batch_size = min(config.eval.batch_size, len(x))
    p, law = experiment.p, experiment.sampling_law
    common = {"num_examples": len(x), "num_steps": experiment.num_steps, "scheme": sampling.scheme,
              "grid": sampling.grid,
              # the bound's η: the sampler's if set, else 1 (the member a bound prefers; the
              # default rule's η < 1 loosens it many times, docs/math.md §3.4)
              "eta": 1.0 if sampling.eta is None else sampling.eta,
              "variance_weight": sampling.variance_weight}

    def run_terms(fn, key_):
        @functools.partial(compile_cache.first_call_logged, f"{fn.__name__} (batch {batch_size})")
        @jax.jit
        def terms(params, z, k):
            eps_fn, x0_variance_fn = samplers.network_fns(model, params, experiment.process)
            family = {}
            if fn is likelihood.walk_bound:  # the member of the variance family that samples
                family = dict(eta=common["eta"], variance_weight=sampling.variance_weight,
                              x0_variance_fn=(x0_variance_fn if walks.uses_x0_variance(
                                  sampling.scheme, sampling.variance_weight) else None))
            return fn(experiment.process, eps_fn, z, k, q=experiment.q, p=p,
                      num_steps=experiment.num_steps, scheme=sampling.scheme, grid=sampling.grid,
                      **family)

        start = time.time()
        out = batching.map_batches(
            lambda z, i: {k: v for k, v in terms(run.params, z, jax.random.fold_in(key_, i)).items()
                          if k != "penalty"}, x, batch_size, label=fn.__name__)
        result = {f"{k}_nats": float(np.mean(v)) for k, v in out.items()}
        for k in ("total", "total_with_penalty"):
            if k not in out:
                continue
            if levels is not None:
                result[f"{k}_bpd"] = float(np.mean(likelihood.bits_per_dim(-out[k], dim,
                                                                            run.num_levels)))
            else:
                result[f"{k}_nats_per_dim"] = result[f"{k}_nats"] / dim
        result["seconds"] = time.time() - start
        return result

    walk = (f"the K-step reverse walk with law p={p} kernels ({sampling.scheme} scheme, "
            f"{sampling.grid} grid), then the Gaussian decoder N(x_hat, (sigma_0/alpha_0)^2) "
            "around the sampler's last (Tweedie) step")
    if common["eta"] == 0:
        bound = {"label": "bound", "law": str(p), **common,
                 "none": "eta = 0: deterministic (DDIM) steps have no density, so no bound"}
    elif likelihood.is_bound(experiment.q, p):
        bound = {"label": "bound", "law": str(p), **common, **run_terms(likelihood.walk_bound, key_bound),
                 "note": f"upper bound on -log p(x_0) of {walk}, whatever q trained the network"}
    else:
        bound = {"label": "bound", "law": str(p), **common,
                 "none": f"bounded support: p={p} has no bound of this kind"}
    sampled_eta = walks.resolve_eta(sampling.eta, sampling.scheme, sampling.variance_weight,
                                    sampling.num_steps)
    if sampled_eta != common["eta"]:
        bound["sampled_eta"] = sampled_eta
        bound["sampled_walk_eta"] = (f"samples use eta = {sampled_eta} (the default rule at "
                                     f"{sampling.num_steps} steps); this bound is of eta = "
                                     f"{common['eta']}")
    if str(law) != str(p):
        bound["sampling_law"] = str(law)
        bound["sampled_walk"] = (
            f"samples use law {law}: " + ("bounded support, no bound of this kind"
                                          if not likelihood.is_bound(p, law) else
                                          "its walk differs from the one bounded here"))
    penalty = float(experiment.num_steps * dim * losses.penalty(experiment.q, p))
    estimate = {"label": "estimate", **common, **run_terms(likelihood.walk_estimate, key_estimate),
                "penalty_nats": penalty,
                "note": "eq. (5) sum with Gaussian marginals; not a likelihood and, for q != p, "
                        "not a bound (the true reverse kernel of a non-Gaussian walk is q tilted, "
                        "not shifted)"}
    return {"walk_bound": bound, "walk_estimate": estimate}


#: Images per call of the FID feature function (one network batch, so it logs nothing itself).
FID_BATCH = 200


def _fid(config, samples) -> dict | None:
    from nnd import fid, inception  # noqa: PLC0415  (heavy: only when weights are given)

    weights = config.eval.fid_weights
    if not weights:
        return None
    if config.data.name not in data.IMAGES:
        return {"skipped": "FID needs image data"}
    start = time.time()
    feature_fn = inception.make_feature_fn(inception.load_weights(weights), batch_size=FID_BATCH)
    digest = hashlib.sha1(paths.get(weights).read_bytes()).hexdigest()[:12]
    cache_dir = config.eval.fid_cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "nnd")
    cache = str(paths.get(cache_dir) / f"fid_{config.data.name}_train_{digest}.npz")
    spec = data.IMAGES[config.data.name]

    def reals(source):
        for lo in range(0, len(source), FID_BATCH):
            hi = min(lo + FID_BATCH, len(source))
            n = np.stack([np.asarray(source[i]["image"]).reshape(spec.shape) for i in range(lo, hi)])
            yield 2.0 * n.astype(np.float32) / (spec.num_levels - 1) - 1.0

    if paths.get(cache).exists():  # the training split is opened only to fill the cache
        reference = fid.reference_statistics(feature_fn, (), cache)
    else:
        source = data.image_source(config.data.name, "train")
        reference = fid.reference_statistics(feature_fn, reals(source), cache, total=len(source))
    fakes = (samples[lo:lo + FID_BATCH] for lo in range(0, len(samples), FID_BATCH))
    return {"fid": fid.fid(feature_fn, fakes, reference, total=len(samples)),
            "num_samples": len(samples), "reference": cache, "seconds": time.time() - start}


def _pictures(config, run: Restored, key, out_dir) -> dict[str, bytes]:
    """Draws samples_by_law.png and shift_kl.png into ``out_dir`` (process 0); {file name: PNG}."""
    experiment = run.experiment
    n = 1000 if len(run.example_shape) == 1 else 64
    walk = dataclasses.replace(experiment.sampling, sampler="walk")
    panels = {}
    for law_name in config.eval.picture_laws:
        law = increments.parse(law_name)
        samples, nfe = draw(run, n, key, law=law, settings=walk)
        panels[f"{law_name} steps (NFE {nfe:.0f})"] = samples
    if jax.process_index() != 0:
        return {}
    pngs = {"samples_by_law.png": pictures.side_by_side_png(
        panels, out_dir / "samples_by_law.png",
        f"{config.data.name}: trained with q={experiment.q}, p={experiment.p}; "
        f"reverse walk, K={config.sampling.num_steps}, one seed, increment law per panel")}
    curves, own = shift_kl_curves(experiment.q, experiment.p)
    pngs["shift_kl.png"] = pictures.shift_kl_png(
        curves, out_dir / "shift_kl.png", "Table 1: per-coordinate KL of a shifted step",
        highlight=own)
    return pngs


def shift_kl_curves(q, p) -> tuple[dict, str]:
    """ℓ(u) on u ∈ [-3, 3] for the Table 1 pairs and the run's own (q, p) laws.

    Returns ({"q/p": (u, ℓ(u))}, the label of the run's own pair). The laws are passed as
    laws, not as their printed names (``student_t(df=5)`` is a label, not a spec).
    """
    u = np.linspace(-3.0, 3.0, 241, dtype=np.float32)
    curves = {f"{a}/{b}": (u, np.asarray(losses.shift_kl(a, b, u))) for a, b in TABLE1_PAIRS}
    own = f"{q}/{p}"
    if own not in curves:
        curves[own] = (u, np.asarray(losses.shift_kl(q, p, u)))
    return curves, own


def evaluate(config, workdir: str) -> dict:
    """Evaluates the latest EMA parameters; writes ``workdir/eval/metrics.json``, pictures and
    TensorBoard events (``workdir/tensorboard/eval``, at the checkpoint's step).

    Ctrl-C or SIGTERM ends it with one line ``nnd: interrupted ...`` and exit status 130 or
    143 (:func:`nnd.paths.interruptible`): every file is whole, the new or the old one;
    rerunning the same command evaluates again and overwrites them.
    """
    with paths.interruptible("evaluating", "no file is half-written; rerun the same command "
                             "to evaluate again", sigterm=jax.process_count() == 1):
        return _evaluate(config, workdir)


def _evaluate(config, workdir: str) -> dict:
    start = time.time()
    run = restore(config, workdir)
    checkpoints.check_workdir(workdir)  # writable, before minutes of work
    experiment = run.experiment
    root = keys.stream(run.root, keys.Stream.EVAL)
    out_dir = paths.get(workdir) / "eval"
    writing = jax.process_index() == 0
    x, levels = held_out(config, config.eval.num_examples)
    result = {"step": run.step, "dataset": config.data.name, "q": str(experiment.q),
              "p": str(experiment.p), "num_steps": experiment.num_steps}
    logging.info("eval at step %d: %d held-out examples", run.step,
                 len(x) if x is not None else len(levels))
    if config.eval.likelihood:
        result["likelihood"] = _likelihood(config, run, x, levels,
                                           keys.stream(root, keys.EvalPart.LIKELIHOOD))
        result["likelihood"]["label"] = "pf-ode"
        logging.info("likelihood [pf-ode]: %s", result["likelihood"])
    result.update(_walk_bound(config, run, x, levels, keys.stream(root, keys.EvalPart.BOUND)))
    logging.info("walk bound [bound]: %s", result["walk_bound"])
    logging.info("walk sum [estimate]: %s", result["walk_estimate"])

    t0 = time.time()
    n = config.eval.num_samples
    samples, nfe = draw(run, n, keys.stream(root, keys.EvalPart.SAMPLES))
    reference = x if levels is None else _dequantised(
        levels, run.num_levels, keys.stream(root, keys.EvalPart.DEQUANTISE))
    result["samples"] = {
        "sampler": experiment.sampling.sampler, "law": str(experiment.sampling_law),
        "num_steps": experiment.sampling.num_steps, "nfe": nfe, "num_samples": n,
        "finite": bool(np.all(np.isfinite(samples))),
        "energy_distance": metrics.energy_distance(samples.reshape(n, -1),
                                                   reference.reshape(len(reference), -1)),
        "reference_examples": len(reference), "seconds": time.time() - t0,
    }
    if config.data.name == "gmm8":
        width, nearest = metrics.nearest_centre(samples, oracles.gmm8().means)
        result["samples"]["blob_width"] = width
        result["samples"]["share_per_centre"] = (np.bincount(nearest, minlength=8) / n).tolist()
    fid_result = _fid(config, samples)
    if fid_result is not None:
        result["fid"] = fid_result
    pngs = _pictures(config, run, keys.stream(root, keys.EvalPart.PICTURES), out_dir)
    if writing:
        pngs["samples.png"] = pictures.samples_png(samples, out_dir / "samples.png",
                                                   _title(config, run, nfe=nfe))
    result["pictures"] = ["samples_by_law.png", "shift_kl.png", "samples.png"]
    result["wall_seconds"] = time.time() - start
    if writing:
        paths.write(out_dir / "metrics.json", json.dumps(result, indent=2))
        events = summaries.Events(str(paths.get(workdir) / "tensorboard" / "eval"))
        events.scalars(run.step, summaries.flatten(
            {k: v for k, v in result.items() if k != "step"}, "eval/"))
        events.images(run.step, {f"eval/{name.removesuffix('.png')}": png
                                 for name, png in pngs.items()})
    logging.info("eval of checkpoint step %d (%s) written to %s and %s (%.0f s)", run.step,
                 f"{checkpoints.directory(workdir)}/{run.step}", out_dir,
                 paths.get(workdir) / "tensorboard" / "eval", result["wall_seconds"])
    return result


def sample(config, workdir: str):
    """Draws ``sampling.num_samples`` from the latest EMA parameters with the configured sampler.

    Writes ``workdir/samples.npz`` (arrays ``samples`` in the data space of the
    training batches, and ``nfe``) and ``workdir/samples.png``. Ctrl-C or SIGTERM ends it
    as :func:`evaluate` (one line, exit status 130 or 143, no file half-written).
    """
    with paths.interruptible("sampling", "no file is half-written; rerun the same command "
                             "to sample again", sigterm=jax.process_count() == 1):
        return _sample(config, workdir)


def _sample(config, workdir: str):
    run = restore(config, workdir)
    checkpoints.check_workdir(workdir)
    logging.info("sampling %d with the %s sampler from checkpoint step %d",
                 config.sampling.num_samples, run.experiment.sampling.sampler, run.step)
    samples, nfe = draw(run, config.sampling.num_samples, keys.stream(run.root, keys.Stream.SAMPLE))
    if jax.process_index() == 0:
        root = paths.get(workdir)
        paths.savez(root / "samples.npz", samples=samples, nfe=nfe)
        pictures.samples_png(samples, root / "samples.png", _title(config, run, nfe=nfe))
    logging.info("%d samples (NFE %.0f) of checkpoint step %d (%s) in %s", len(samples), nfe,
                 run.step, f"{checkpoints.directory(workdir)}/{run.step}",
                 paths.get(workdir) / "samples.npz")
    return samples
