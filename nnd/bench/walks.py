"""Cost of the reverse walk per increment law (the sampler of Theorem 3.3).

Theorem 3.3 lets the reverse walk use any standardised increment law; this checks
that choosing one costs (almost) nothing: the goal is a time within 1.1× of the
Gaussian walk for every law. Setting: reverse walk of SPEC §3 with K = 1000,
10⁴ points in 2-D, the exact ``gmm8`` score, the ``vp`` process, denoising on.

For each law the walk is compiled once ahead of time (compile time reported
apart), then run ``repeats`` times with ``block_until_ready``; the median is
reported. To tell the sampler's cost from the score's, the same K draws of the
noise alone (a scan of ``law.sample`` of shape [B, D]) are timed too.

Run::

    python -m nnd.bench.walks [--out FILE.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from typing import Sequence

import jax
import jax.numpy as jnp

from nnd import increments
from nnd import oracles
from nnd import processes
from nnd import walks

__all__ = ["LAWS", "benchmark", "markdown_table", "main"]

#: (name, params) of the laws benchmarked, Gaussian first (the reference).
LAWS: tuple[tuple[str, dict], ...] = (
    ("gaussian", {}),
    ("laplace", {}),
    ("uniform", {}),
    ("logistic", {}),
    ("student_t", {"df": 5.0}),
    ("gennorm", {"beta": 1.5}),
    ("rademacher", {}),
)


def _time_compiled(compiled, keys) -> list[float]:
    """Wall seconds of compiled(key).block_until_ready() for each key."""
    out = []
    for key in keys:
        start = time.perf_counter()
        jax.block_until_ready(compiled(key))
        out.append(time.perf_counter() - start)
    return out


def _noise_only(law, shape, num_steps: int):
    """K draws of the walk's noise and nothing else (what the sampler alone costs)."""

    def draw(key):
        def step(acc, k):
            return acc + law.sample(jax.random.fold_in(key, k), shape, jnp.float32), None

        acc, _ = jax.lax.scan(step, jnp.zeros(shape, jnp.float32), jnp.arange(num_steps))
        return acc

    return draw


def _machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }


def benchmark(*, num_steps: int = 1000, num_points: int = 10_000, repeats: int = 5,
              laws: Sequence[tuple[str, dict]] = LAWS, process: str = "vp", seed: int = 0,
              log=print) -> dict:
    """Times the reverse walk (and its noise alone) for each law; returns a JSON-ready dict.

    Rows: law, compile_seconds, seconds (median of ``repeats``), all repeat times,
    ratio to the first law (Gaussian by default), noise_seconds and its ratio.
    """
    proc = processes.get(process)
    score_fn = oracles.gmm_score(proc, oracles.gmm8())
    shape = (num_points, 2)
    root = jax.random.key(seed)
    keys = [jax.random.fold_in(root, r) for r in range(repeats)]
    rows = []
    for name, params in laws:
        law = increments.get(name, **params)
        walk = functools.partial(walks.reverse, proc, law, score_fn, shape=shape,
                                 num_steps=num_steps, denoise=True)
        start = time.perf_counter()
        compiled = jax.jit(walk).lower(root).compile()
        compile_s = time.perf_counter() - start
        jax.block_until_ready(compiled(root))  # warm-up run, not timed
        times = _time_compiled(compiled, keys)
        noise = jax.jit(_noise_only(law, shape, num_steps)).lower(root).compile()
        jax.block_until_ready(noise(root))
        noise_times = _time_compiled(noise, keys)
        rows.append({
            "law": str(law),
            "compile_seconds": compile_s,
            "seconds": statistics.median(times),
            "repeats": times,
            "noise_seconds": statistics.median(noise_times),
        })
        log(f"{str(law):>18s}  walk {rows[-1]['seconds']:.3f}s  noise only "
            f"{rows[-1]['noise_seconds']:.3f}s  compile {compile_s:.2f}s")
    ref, ref_noise = rows[0]["seconds"], rows[0]["noise_seconds"]
    for row in rows:
        row["ratio"] = row["seconds"] / ref
        row["noise_ratio"] = row["noise_seconds"] / ref_noise
    return {
        "benchmark": "reverse walk per increment law",
        "reference_law": rows[0]["law"],
        "num_steps": num_steps,
        "num_points": num_points,
        "dim": 2,
        "repeats": repeats,
        "process": process,
        "score": "exact gmm8 (nnd.oracles.gmm_score)",
        "goal_ratio": 1.1,
        "rows": rows,
        "machine": _machine(),
    }


def markdown_table(result: dict) -> str:
    lines = [
        f"Reverse walk, K = {result['num_steps']}, {result['num_points']} points in 2-D, "
        f"{result['process']}, median of {result['repeats']} "
        f"({result['machine']['backend']}, {result['machine']['nproc']} cores)",
        "",
        "| law | walk s | ratio | noise-only s | noise ratio | compile s |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        flag = "" if r["ratio"] <= result["goal_ratio"] else " ✗"
        lines.append(f"| {r['law']} | {r['seconds']:.3f} | {r['ratio']:.2f}{flag} | "
                     f"{r['noise_seconds']:.3f} | {r['noise_ratio']:.2f} | "
                     f"{r['compile_seconds']:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m nnd.bench.walks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    result = benchmark(num_steps=args.steps, num_points=args.points, repeats=args.repeats)
    print()
    print(markdown_table(result))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
