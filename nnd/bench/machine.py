"""The machine a benchmark ran on, and its ceilings measured in the same process.

- :func:`describe`: platform, CPU model, device kind and count, JAX version and
  backend, the default matmul precision (what every benchmark's JSON records).
- :func:`matmul_probes` / :func:`bandwidth_probe`: timed float32 ``[N, N] @ [N, N]``
  (2N³ FLOP) and a streaming ``x + 1`` (reads and writes the array once), jitted on
  the default backend. They are timed like everything else, round-robin with the
  code they are the ceiling of (:func:`time_round_robin`), so contention on a shared
  machine lowers ceiling and measurement alike. The peak is the fastest probe's
  median over those turns (like the step it is compared with), not a best-of.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp

__all__ = ["describe", "machine_line", "Timed", "calibrate", "time_round_robin", "peak",
           "matmul_probes", "bandwidth_probe", "default_matmul_sizes"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict:
    """What the numbers were measured on (JSON-ready)."""
    import jaxlib  # noqa: PLC0415

    devices = jax.devices()
    return {
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "processor": platform.processor() or platform.machine(),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "devices": [str(d) for d in devices],
        "matmul_precision": str(getattr(jax.config, "jax_default_matmul_precision", None)
                                or "default"),
    }


def machine_line(machine: dict) -> str:
    """One line naming the machine, for the head of a Markdown table."""
    return (f"{machine['device_kind']} ×{machine['device_count']} ({machine['backend']}), "
            f"CPU {machine['cpu_model']} ({machine['nproc']} cores), jax {machine['jax']}, "
            f"{machine['platform']}")


@dataclasses.dataclass
class Timed:
    """Something timed per call: ``run(n)`` makes n calls and blocks until they are done.

    ``flops`` and ``bytes`` per call (0 if not meaningful); ``calls`` per turn is set
    by :func:`time_round_robin`; ``seconds`` collects seconds per call, one per turn.
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

    def summary(self) -> dict:
        sec = self.median
        return {"name": self.name, "seconds": sec, "calls_per_turn": self.calls,
                "repeats": list(self.seconds), "flops": self.flops, "bytes": self.bytes,
                "flops_per_second": self.flops / sec, "bytes_per_second": self.bytes / sec}


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


def _looped(fn, *args) -> Callable[[int], None]:
    def run(n: int) -> None:
        out = None
        for _ in range(n):
            out = fn(*args)
        jax.block_until_ready(out)

    return run


def default_matmul_sizes() -> tuple[int, ...]:
    """N of the matmul probes: 1024 and 2048 on CPU, larger on accelerators."""
    return (1024, 2048) if jax.default_backend() == "cpu" else (2048, 4096, 8192)


def matmul_probes(sizes=None, dtype=jnp.float32) -> list[Timed]:
    """Jitted [N, N] @ [N, N] in ``dtype`` for each N (2N³ FLOP each), compiled."""
    sizes = default_matmul_sizes() if sizes is None else sizes
    out = []
    for n in sizes:
        ka, kb = jax.random.split(jax.random.key(n))
        a = jax.random.normal(ka, (n, n), dtype)
        b = jax.random.normal(kb, (n, n), dtype)
        compiled = jax.jit(jnp.matmul).lower(a, b).compile()
        out.append(Timed(f"matmul {n}", _looped(compiled, a, b), flops=2.0 * n ** 3,
                         bytes=3.0 * n * n * jnp.dtype(dtype).itemsize))
    return out


def bandwidth_probe(num_elements: int | None = None) -> Timed:
    """Jitted float32 ``x + 1`` over a large array: reads and writes it once."""
    if num_elements is None:
        num_elements = 2 ** 25 if jax.default_backend() == "cpu" else 2 ** 28
    x = jnp.zeros((num_elements,), jnp.float32)
    compiled = jax.jit(lambda v: v + 1.0).lower(x).compile()
    return Timed(f"stream x + 1 ({4 * num_elements / 2 ** 20:.0f} MiB)",
                 _looped(compiled, x), flops=float(num_elements), bytes=8.0 * num_elements)


def peak(summaries: list[dict]) -> dict:
    """The fastest matmul probe: {'flops_per_second', 'name'}."""
    best = max(summaries, key=lambda s: s["flops_per_second"])
    return {"flops_per_second": best["flops_per_second"], "name": best["name"]}
