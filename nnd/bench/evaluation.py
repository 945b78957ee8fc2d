"""Cost of evaluation: PF-ODE likelihood (adaptive vs fixed step) and samplers at matched quality.

1. Likelihood of the digits model of a Table 2 row (``--row``; the EMA parameters of
   ``--workdir``'s newest checkpoint, restored by :func:`nnd.evaluate.restore`;
   without ``--workdir`` the freshly initialised network, said so in the output):
   bits/dim of ``--examples`` held-out digits by the adaptive Dormand–Prince solve
   (rtol = atol = 1e-5) and by fixed-step Heun, with the same dequantisation and
   the same Hutchinson probes, so the bpd difference is the solvers' alone.
   Reported: seconds per 1000 examples (compiled ahead of time, compile apart),
   NFE, bpd of each and their difference.
2. Samplers on the 2-D ``gmm8`` toy with its exact score (so the sampler alone is
   measured): each of walk, pc (gaussian noise), heun over a sweep of step counts
   and ode over a sweep of tolerances; energy distance of ``--points`` samples to
   as many data points; the cheapest setting of each that reaches
   ``--target`` (matched quality) is the headline.

Run::

    python -m nnd.bench.evaluation [--workdir runs/table2/digits_gaussian] [--row gaussian]
        [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from nnd import config as config_lib
from nnd import data, defaults, evaluate, increments, keys, likelihood, metrics, oracles
from nnd import processes, samplers
from nnd.bench import machine

__all__ = ["likelihood_benchmark", "sampler_benchmark", "markdown_tables", "main"]

SAMPLER_SWEEP = {
    "walk": [25, 50, 100, 200, 400, 800],
    "pc": [25, 50, 100, 200, 400],
    "heun": [5, 10, 20, 40, 80],
    "ode": [1e-1, 1e-2, 1e-3, 1e-4, 1e-5],
}


def _timed(compiled, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    return out, time.perf_counter() - start


def _model(config, workdir: str | None):
    """(experiment, EMA parameters, trained): restored from ``workdir``, else initialised."""
    if workdir:
        restored = evaluate.restore(config, workdir)
        return restored.experiment, restored.params, True
    experiment = config_lib.resolve(config)
    shape = data.example_shape(config.data.name)
    params = experiment.model.init(keys.stream(jax.random.key(config.seed), keys.Stream.INIT),
                                   jnp.zeros((1,) + shape), jnp.zeros((1,)))["params"]
    return experiment, params, False


def likelihood_benchmark(*, row: str = "gaussian", workdir: str | None = None,
                         num_examples: int = 256, heun_steps: int = 100, rtol: float = 1e-5,
                         log=print) -> dict:
    """Adaptive vs fixed-step PF-ODE bits/dim of held-out digits; a JSON-ready dict."""
    config = defaults.image("digits", row)
    experiment, params, trained = _model(config, workdir)
    process, model = experiment.process, experiment.model
    _, levels = evaluate.held_out(config, num_examples)
    n, dim = len(levels), math.prod(levels.shape[1:])
    num_levels = data.IMAGES["digits"].num_levels
    u = np.asarray(jax.random.uniform(jax.random.key(1), levels.shape))
    z = jnp.asarray(data.dequantize(levels, u, num_levels))

    def solve(params, z, key, solver):
        score = processes.score_fn_from_eps(
            process, lambda x, t: model.apply({"params": params}, x, t))
        lp, stats = likelihood.log_prob_with_stats(process, score, z, key, "rademacher", rtol, rtol,
                                                   solver=solver, num_steps=heun_steps)
        return lp, stats.nfe

    rows = {}
    for solver in ("ode", "heun"):
        start = time.perf_counter()
        compiled = jax.jit(solve, static_argnums=3).lower(params, z, jax.random.key(2), solver).compile()
        compile_s = time.perf_counter() - start
        (lp, nfe), seconds = _timed(compiled, params, z, jax.random.key(2))
        bpd = likelihood.bits_per_dim(np.asarray(lp), dim, num_levels)
        rows[solver] = {"bpd": float(bpd.mean()), "bpd_se": float(bpd.std(ddof=1) / np.sqrt(n)),
                        "nfe": int(nfe), "seconds": seconds, "seconds_per_1000": 1000 * seconds / n,
                        "compile_seconds": compile_s}
        log(f"likelihood {solver}: {rows[solver]}")
    return {"config": f"defaults.image('digits', {row!r})", "trained": trained, "workdir": workdir,
            "num_examples": n, "divergence": "rademacher", "rtol": rtol, "atol": rtol,
            "heun_steps": heun_steps, "rows": rows,
            "bpd_difference": rows["heun"]["bpd"] - rows["ode"]["bpd"]}


def sampler_benchmark(*, num_points: int = 2000, target: float = 0.002, sweep=None,
                      log=print) -> dict:
    """NFE, seconds and energy distance per sampler setting on gmm8 with the exact score."""
    sweep = SAMPLER_SWEEP if sweep is None else sweep
    process = processes.get("vp")
    gmm = oracles.gmm8()
    score = oracles.gmm_score(process, gmm)
    reference = np.asarray(oracles.sample_gmm(jax.random.key(12345), gmm, num_points))
    law = increments.get("gaussian")
    rows = []
    for sampler, settings in sweep.items():
        for setting in settings:
            kwargs = (dict(num_steps=1, rtol=setting, atol=setting) if sampler == "ode"
                      else dict(num_steps=int(setting)))
            fn = jax.jit(lambda k, s=sampler, kw=kwargs: samplers.sample(
                s, process, law, score, k, (num_points, 2), **kw))
            start = time.perf_counter()
            compiled = fn.lower(jax.random.key(0)).compile()
            compile_s = time.perf_counter() - start
            (x, nfe), seconds = _timed(compiled, jax.random.key(7))
            ed = metrics.energy_distance(np.asarray(x), reference)
            row = {"sampler": sampler, "setting": setting, "nfe": int(nfe), "seconds": seconds,
                   "compile_seconds": compile_s, "energy_distance": ed}
            rows.append(row)
            log(f"sampler {row}")
    best = {}
    for sampler in sweep:
        ok = [r for r in rows if r["sampler"] == sampler and r["energy_distance"] <= target]
        best[sampler] = min(ok, key=lambda r: r["nfe"]) if ok else None
    return {"num_points": num_points, "target_energy_distance": target, "process": "vp",
            "score": "exact gmm8 oracle", "rows": rows, "cheapest_at_target": best}


def markdown_tables(result: dict) -> str:
    lik, smp = result["likelihood"], result["samplers"]
    lines = [
        f"PF-ODE likelihood, {lik['num_examples']} held-out digits, {lik['divergence']} divergence, "
        f"{'trained' if lik['trained'] else 'untrained'} model, on "
        f"{machine.machine_line(result['machine'])}",
        "",
        "| solver | bpd | NFE | s per 1000 examples | compile s |",
        "|---|---|---|---|---|",
    ]
    for name, label in (("ode", f"Dormand–Prince rtol=atol={lik['rtol']:g}"),
                        ("heun", f"Heun, {lik['heun_steps']} steps")):
        r = lik["rows"][name]
        lines.append(f"| {label} | {r['bpd']:.3f} ± {r['bpd_se']:.3f} | {r['nfe']} | "
                     f"{r['seconds_per_1000']:.1f} | {r['compile_seconds']:.1f} |")
    lines += ["", f"bpd(Heun) − bpd(adaptive) = {lik['bpd_difference']:+.4f}", "",
              f"Samplers on gmm8 with the exact score, {smp['num_points']} samples: cheapest setting "
              f"reaching energy distance ≤ {smp['target_energy_distance']}", "",
              "| sampler | setting | NFE | seconds | energy distance |", "|---|---|---|---|---|"]
    for name, r in smp["cheapest_at_target"].items():
        if r is None:
            lines.append(f"| {name} | none in sweep | | | |")
        else:
            lines.append(f"| {name} | {r['setting']:g} | {r['nfe']} | {r['seconds']:.2f} | "
                         f"{r['energy_distance']:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=None, help="trained digits run (EMA parameters)")
    parser.add_argument("--row", default="gaussian", choices=sorted(defaults.ROWS),
                        help="Table 2 row of the digits config")
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--heun-steps", type=int, default=100)
    parser.add_argument("--rtol", type=float, default=1e-5, help="adaptive solver rtol = atol")
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--target", type=float, default=0.002)
    parser.add_argument("--quick", action="store_true", help="tiny sweep (for tests)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    sweep = {"walk": [5], "pc": [5], "heun": [3], "ode": [1e-1]} if args.quick else None
    result = {
        "likelihood": likelihood_benchmark(row=args.row, workdir=args.workdir,
                                           num_examples=args.examples, heun_steps=args.heun_steps,
                                           rtol=args.rtol),
        "samplers": sampler_benchmark(num_points=args.points, target=args.target, sweep=sweep),
        "machine": machine.describe(),
    }
    print(markdown_tables(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
