"""Provenance: the machine and software a figure was measured on, for every JSON nnd writes.

Benchmarks (:mod:`nnd.bench`) and experiments (:mod:`nnd.experiments`) both record
:func:`describe` next to their numbers and head their tables with :func:`machine_line`.
"""

from __future__ import annotations

import os
import platform

import jax

__all__ = ["describe", "machine_line"]


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
