"""The persistent compilation cache: a restarted run loads its programs instead of compiling.

A TPU run compiles its train step in about 10 minutes and its likelihood in 10–16 (docs/tpu.md);
a spot VM that restarts pays that again unless the executables are kept. :func:`setup` points
JAX's persistent cache at ``config.compile_cache`` (default: ``WORKDIR/compile_cache``, local or
``gs://``, beside the checkpoints it serves; ``""`` turns it off), and :func:`logged` wraps the
first call of a program so that one line says its name, its compile time and whether the cache
served it:

    compiled train step in 41.2 s (cache miss: written to gs://bucket/run/compile_cache)
    compiled train step in 0.8 s (cache hit)

A cache that cannot be read (corrupt entries, another JAX version's files) or written never
breaks a run: JAX compiles instead, and the first such problem is one warning line here
(:func:`_one_warning`), not a warning per program.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings

import jax
from absl import logging

from nnd import paths

__all__ = ["setup", "resolve_dir", "logged", "first_call_logged", "Counts", "counts",
           "min_compile_seconds"]


def min_compile_seconds() -> float:
    """Programs that compile faster than this are not written (every small eager op would
    be); ``NND_COMPILE_CACHE_MIN_SECONDS`` changes it (the tests cache a toy's step)."""
    return float(os.environ.get("NND_COMPILE_CACHE_MIN_SECONDS", "0.5"))

_CACHE_WARNINGS = ("Error reading persistent compilation cache", "Error writing persistent compilation cache")


@dataclasses.dataclass
class Counts:
    """What JAX reported since the process started: cache hits and misses, compile seconds."""

    hits: int = 0
    misses: int = 0
    compile_seconds: float = 0.0


_COUNTS = Counts()
_STATE = {"listening": False, "warned": False, "dir": None}


def counts() -> Counts:
    return dataclasses.replace(_COUNTS)


def _on_event(name: str, **_) -> None:
    if name == "/jax/compilation_cache/cache_hits":
        _COUNTS.hits += 1
    elif name == "/jax/compilation_cache/cache_misses":
        _COUNTS.misses += 1


def _on_duration(name: str, seconds: float, **_) -> None:
    if name in ("/jax/core/compile/backend_compile_duration",
                "/jax/compilation_cache/cache_retrieval_time_sec"):
        _COUNTS.compile_seconds += seconds


def _one_warning(message, category, filename, lineno, file=None, line=None,
                 previous=warnings.showwarning):
    """JAX warns once per program about an unusable cache; say it once, in one line."""
    text = str(message)
    if not text.startswith(_CACHE_WARNINGS):
        previous(message, category, filename, lineno, file, line)
        return
    if not _STATE["warned"]:
        _STATE["warned"] = True
        logging.warning("compile cache %s is unusable (%s); compiling instead", _STATE["dir"],
                        " ".join(text.split())[:300])


def resolve_dir(setting: str, workdir: str) -> str:
    """``config.compile_cache``: ``"workdir"`` → ``WORKDIR/compile_cache``, ``""`` → off, else the path."""
    if setting == "workdir":
        return str(paths.get(workdir) / "compile_cache")
    return setting


def setup(setting: str, workdir: str) -> str:
    """Turns the persistent cache on at :func:`resolve_dir` (or off); returns the folder or ""."""
    folder = resolve_dir(setting, workdir)
    if not _STATE["listening"]:
        jax.monitoring.register_event_listener(_on_event)
        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        warnings.showwarning = _one_warning
        _STATE["listening"] = True
    if folder and not paths.is_remote(folder):
        try:
            paths.get(folder).mkdir(parents=True, exist_ok=True)
        except OSError as err:  # unwritable: compile without it
            logging.warning("compile cache %s is unusable (%s); compiling instead", folder, err)
            folder = ""
    _STATE["dir"] = folder
    jax.config.update("jax_compilation_cache_dir", folder or None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds())
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


@contextlib.contextmanager
def logged(name: str):
    """Logs one line for the compile that happens inside: name, seconds, cache hit or miss.

    Wrap the first call of a jitted program (whose time includes its first run, so the
    compile seconds are JAX's own measure, not the wall time). Nothing is logged if nothing
    compiled (the program was already in memory).
    """
    before = counts()
    yield
    after = counts()
    seconds = after.compile_seconds - before.compile_seconds
    if after.hits > before.hits and after.misses == before.misses:
        status = "cache hit"
    elif after.misses > before.misses and seconds >= min_compile_seconds():
        status = f"cache miss: written to {_STATE['dir']}"
    elif after.misses > before.misses:
        status = f"cache miss: not written, under {min_compile_seconds():g} s"
    elif _STATE["dir"]:
        status = "not cached: faster to compile than to load"
    else:
        status = "cache off"
    if seconds > 0 or after.hits > before.hits or after.misses > before.misses:
        logging.info("compiled %s in %.1f s (%s)", name, seconds, status)


class _FirstCallLogged:
    """A jitted function whose first call is logged; its other attributes (``lower``,
    ``trace``, ...) are the function's own."""

    def __init__(self, name: str, fn):
        self._name, self._fn, self._first = name, fn, True

    def __call__(self, *args, **kwargs):
        if not self._first:
            return self._fn(*args, **kwargs)
        self._first = False
        with logged(self._name):
            return jax.block_until_ready(self._fn(*args, **kwargs))

    def __getattr__(self, attr):
        return getattr(self._fn, attr)


def first_call_logged(name: str, fn):
    """``fn`` whose first call runs inside :func:`logged` (later calls go straight through;
    ``lower`` and the other attributes of a jitted ``fn`` are kept)."""
    return _FirstCallLogged(name, fn)

