"""The machine a benchmark ran on, its float32 matmul peak, and round-robin timing.

- :func:`describe` and :func:`machine_line`, re-exported from :mod:`nnd.provenance`:
  platform, CPU model, device kind and count, JAX version and backend, the default
  matmul precision (every benchmark's JSON records it, and so do the experiments').
- :func:`matmul_probes`: jitted float32 ``[N, N] @ [N, N]`` (2N³ FLOP each). They are
  timed like everything else, round-robin with the code they are the ceiling of
  (:func:`time_round_robin`), so contention on a shared machine lowers ceiling and
  measurement alike. The peak (:func:`peak`) is the fastest probe's median over
  those turns, like the step it is compared with, not a best-of.
- :func:`compiled_timed`: any function jitted and compiled, with XLA's cost analysis.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp

from nnd.provenance import describe, machine_line  # noqa: F401  (re-exported for the benchmarks)

__all__ = ["describe", "machine_line", "Timed", "looped", "cost", "compiled_timed", "calibrate",
           "time_round_robin", "matmul_probes", "peak"]


@dataclasses.dataclass
class Timed:
    """Something timed per call: ``run(n)`` makes n calls and blocks until they are done.

    ``flops`` and ``bytes`` per call (0 if not meaningful); ``calls`` per turn is set
    by :func:`calibrate`; ``seconds`` collects seconds per call, one per turn.
    """

    name: str
    run: Callable[[int], None]
    flops: float = 0.0
    bytes: float = 0.0
    calls: int = 1
    seconds: list = dataclasses.field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def summary(self, peak_flops_per_second: float | None = None) -> dict:
        sec = self.median
        out = {"name": self.name, "seconds": sec, "calls_per_turn": self.calls,
               "repeats": list(self.seconds), "flops": self.flops, "bytes": self.bytes,
               "flops_per_second": self.flops / sec}
        if peak_flops_per_second:
            out["fraction_of_matmul_peak"] = self.flops / sec / peak_flops_per_second
        return out


def looped(fn, *args) -> Callable[[int], None]:
    """``run(n)``: n calls of ``fn(*args)``, then block on the last result."""

    def run(n: int) -> None:
        out = None
        for _ in range(n):
            out = fn(*args)
        jax.block_until_ready(out)

    return run


def cost(compiled) -> dict:
    """FLOP and bytes accessed per call from XLA's cost analysis of a compiled function."""
    c = compiled.cost_analysis()
    c = (c[0] if isinstance(c, (list, tuple)) else c) or {}
    return {"flops": float(c.get("flops", math.nan)),
            "bytes": float(c.get("bytes accessed", math.nan))}


def compiled_timed(name: str, fn, *args) -> Timed:
    """``fn`` jitted and compiled for ``args``, as a :class:`Timed` with XLA's FLOP and bytes."""
    compiled = jax.jit(fn).lower(*args).compile()
    c = cost(compiled)
    return Timed(name, looped(compiled, *args), c["flops"], c["bytes"])


def calibrate(entries: list[Timed], *, min_calls: int = 1, min_turn_seconds: float = 0.0) -> None:
    """Warms each entry up by one call and sets its calls per turn from that call's time:
    at least ``min_calls`` and enough to last ``min_turn_seconds``."""
    for e in entries:
        start = time.perf_counter()
        e.run(1)
        once = time.perf_counter() - start
        e.calls = max(min_calls, math.ceil(min_turn_seconds / max(once, 1e-9)))


def time_round_robin(entries: list[Timed], *, repeats: int) -> None:
    """Times every (calibrated) entry once per turn, ``repeats`` turns, so drift hits all alike."""
    for _ in range(repeats):
        for e in entries:
            start = time.perf_counter()
            e.run(e.calls)
            e.seconds.append((time.perf_counter() - start) / e.calls)


def matmul_probes(sizes=None) -> list[Timed]:
    """Jitted float32 [N, N] @ [N, N] for each N (2N³ FLOP each), compiled.

    Default N: 1024 and 2048 on CPU, 2048 to 8192 on accelerators.
    """
    if sizes is None:
        sizes = (1024, 2048) if jax.default_backend() == "cpu" else (2048, 4096, 8192)
    out = []
    for n in sizes:
        ka, kb = jax.random.split(jax.random.key(n))
        a, b = jax.random.normal(ka, (n, n)), jax.random.normal(kb, (n, n))
        timed = compiled_timed(f"matmul {n}", jnp.matmul, a, b)
        timed.flops, timed.bytes = 2.0 * n ** 3, 3.0 * n * n * 4
        out.append(timed)
    return out


def peak(summaries: list[dict]) -> dict:
    """The fastest matmul probe: {'flops_per_second', 'name'}."""
    best = max(summaries, key=lambda s: s["flops_per_second"])
    return {"flops_per_second": best["flops_per_second"], "name": best["name"]}
