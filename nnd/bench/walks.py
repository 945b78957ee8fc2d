"""Cost of the reverse walk per increment law (the sampler of Theorem 3.3), and its memory.

Theorem 3.3 lets the reverse walk use any standardised increment law; :func:`benchmark`
checks that choosing one costs (almost) nothing: the goal is a time within
:data:`nnd.bench.OVERHEAD_GOAL` of the Gaussian walk for every law. Setting: reverse
walk of docs/math.md §3 with K = 1000, 10⁴ points in 2-D, the exact ``gmm8`` score, the ``vp``
process, denoising on. Every law's walk is compiled ahead of time (compile time
reported apart), then all are run round-robin (``repeats`` turns), so drift of a shared
machine hits every law alike; a law's ratio is the median over turns of its time over the
Gaussian walk's in the same turn. To tell the sampler's cost from the score's,
the same K draws of the noise alone (a scan of ``law.sample`` of shape [B, D]) are
timed too, in the same turns.

:func:`walk_memory` compiles the walk (any score, e.g. a network's) for K = 10 and
K = 1000 and reads XLA's memory analysis of each: ``lax.scan`` keeps no path, so the
two should need about the same memory; ``return_path=True`` is the contrast.
"""

from __future__ import annotations

import functools
import statistics
import time
from typing import Sequence

import jax
import jax.numpy as jnp

from nnd import increments, oracles, processes, walks
from nnd.bench import OVERHEAD_GOAL, machine

__all__ = ["LAWS", "benchmark", "markdown_table", "walk_memory", "gmm8_memory", "memory_table"]

#: Law specs (:func:`nnd.increments.parse`) benchmarked, Gaussian first (the reference).
LAWS = ("gaussian", "laplace", "uniform", "logistic", "student_t:5", "gennorm:1.5", "rademacher")


def _noise_only(law, shape, num_steps: int):
    """K draws of the walk's noise and nothing else (what the sampler alone costs)."""

    def draw(key):
        def step(acc, k):
            return acc + law.sample(jax.random.fold_in(key, k), shape, jnp.float32), None

        acc, _ = jax.lax.scan(step, jnp.zeros(shape, jnp.float32), jnp.arange(num_steps))
        return acc

    return draw


def _walk(process, law, score_fn, shape, num_steps: int, return_path: bool = False):
    return functools.partial(walks.reverse, process, law, score_fn, shape=tuple(shape),
                             num_steps=num_steps, denoise=True, return_path=return_path)


def _gmm8(process: str):
    proc = processes.get(process)
    return proc, oracles.gmm_score(proc, oracles.gmm8())


def benchmark(*, num_steps: int = 1000, num_points: int = 10_000, repeats: int = 5,
              laws: Sequence[str] = LAWS, process: str = "vp", log=print) -> dict:
    """Times the reverse walk (and its noise alone) for each law; returns a JSON-ready dict.

    Rows: law, compile_seconds, seconds (median of ``repeats``), all repeat times,
    ratio to the first law (Gaussian by default: the median over turns of the two walks'
    time ratio within a turn), ratio_of_medians, noise_seconds and noise_ratio (per turn
    as well).
    """
    proc, score_fn = _gmm8(process)
    shape = (num_points, 2)
    key = jax.random.key(0)
    compiled = []
    for spec in laws:
        law = increments.parse(spec)
        start = time.perf_counter()
        walk = machine.compiled_timed(f"walk {law}", _walk(proc, law, score_fn, shape, num_steps),
                                      key)
        compile_s = time.perf_counter() - start
        noise = machine.compiled_timed(f"noise {law}", _noise_only(law, shape, num_steps), key)
        compiled.append((str(law), compile_s, walk, noise))
        log(f"compiled {str(law):>18s}: {compile_s:.2f}s")
    timed = [t for _, _, walk, noise in compiled for t in (walk, noise)]
    machine.calibrate(timed)  # one warm-up call each, then one call per turn
    machine.time_round_robin(timed, repeats=repeats)
    rows = []
    _, _, ref_walk, ref_noise = compiled[0]
    for law, compile_s, walk, noise in compiled:
        rows.append({"law": law, "compile_seconds": compile_s, "seconds": walk.median,
                     "repeats": list(walk.seconds), "noise_seconds": noise.median,
                     "ratio": _turn_ratio(walk, ref_walk),
                     "ratio_of_medians": walk.median / ref_walk.median,
                     "noise_ratio": _turn_ratio(noise, ref_noise)})
        log(f"{law:>18s}  walk {walk.median:.3f}s (×{rows[-1]['ratio']:.3f})  "
            f"noise only {noise.median:.3f}s (×{rows[-1]['noise_ratio']:.3f})")
    return {"benchmark": "reverse walk per increment law", "reference_law": rows[0]["law"],
            "num_steps": num_steps, "num_points": num_points, "dim": 2, "repeats": repeats,
            "process": process, "score": "exact gmm8 (nnd.oracles.gmm_score)",
            "goal_ratio": OVERHEAD_GOAL, "rows": rows}


def _turn_ratio(timed: machine.Timed, reference: machine.Timed) -> float:
    """Median over turns of this entry's time over the reference's in the same turn: the
    pair ran back to back, so drift of a shared machine cancels in each ratio."""
    return statistics.median(a / b for a, b in zip(timed.seconds, reference.seconds))


def markdown_table(result: dict) -> str:
    lines = [
        f"Reverse walk, K = {result['num_steps']}, {result['num_points']} points in 2-D, "
        f"{result['process']}, median of {result['repeats']} (ratios: median of the per-turn "
        f"ratios); goal: ratio ≤ {result['goal_ratio']}",
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


def _bytes(stats) -> dict:
    out = {k: int(getattr(stats, f"{k}_size_in_bytes")) for k in ("temp", "argument", "output",
                                                                  "alias")}
    out["total"] = out["temp"] + out["argument"] + out["output"] - out["alias"]
    out["xla_peak"] = int(getattr(stats, "peak_memory_in_bytes", 0) or 0)
    return out


def walk_memory(process, law, score_fn, shape, *, num_steps: Sequence[int] = (10, 1000),
                path_steps: int | None = 1000) -> list[dict]:
    """Compile time and XLA memory analysis of the reverse walk for each K (compiled, not run).

    Rows: num_steps, return_path, compile_seconds, and bytes: temp, argument,
    output, alias, total (temp + argument + output − alias: what the executable
    allocates) and xla_peak (the backend's ``peak_memory_in_bytes``, 0 if absent; on
    CPU with jax 0.10 it came out far below ``temp``, e.g. 0.1 against 48.6 MiB for a
    network walk, so ``total`` is the figure to read).
    ``path_steps`` adds a row with ``return_path=True`` (the path [K + 1, *shape] is kept).
    """
    key = jax.random.key(0)
    cases = [(k, False) for k in num_steps] + ([(path_steps, True)] if path_steps else [])
    rows = []
    for k, path in cases:
        start = time.perf_counter()
        compiled = jax.jit(_walk(process, law, score_fn, shape, k, path)).lower(key).compile()
        compile_s = time.perf_counter() - start
        rows.append({"num_steps": k, "return_path": path, "compile_seconds": compile_s,
                     "bytes": _bytes(compiled.memory_analysis())})
    return rows


def gmm8_memory(*, num_points: int = 10_000, process: str = "vp", **kwargs) -> dict:
    """:func:`walk_memory` of the benchmark's setting (gmm8 score, Gaussian law)."""
    proc, score_fn = _gmm8(process)
    shape = (num_points, 2)
    return {"score": "exact gmm8", "law": "gaussian", "shape": list(shape),
            "rows": walk_memory(proc, increments.get("gaussian"), score_fn, shape, **kwargs)}


def memory_table(results: dict) -> str:
    """Markdown of {name: {"shape": ..., "rows": walk_memory(...)}}."""
    mib = 2.0 ** 20
    lines = ["| walk | batch shape | K | path kept | temp MiB | arguments + outputs MiB | "
             "total MiB | compile s |", "|---|---|---|---|---|---|---|---|"]
    for name, res in results.items():
        for r in res["rows"]:
            b = r["bytes"]
            lines.append(f"| {name} | {'×'.join(map(str, res['shape']))} | {r['num_steps']} | "
                         f"{'yes' if r['return_path'] else 'no'} | {b['temp'] / mib:.2f} | "
                         f"{(b['argument'] + b['output'] - b['alias']) / mib:.2f} | "
                         f"{b['total'] / mib:.2f} | {r['compile_seconds']:.2f} |")
    return "\n".join(lines)
