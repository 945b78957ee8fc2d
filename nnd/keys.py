"""The PRNG streams of a run, defined once.

One root key, ``jax.random.key(config.seed)``; each use of randomness has its own
stream ``fold_in(root, Stream.X)``, and within a stream step s (or batch i) uses
``fold_in(stream, s)``. The numbers are fixed: changing one changes every result
drawn from it.
"""

from __future__ import annotations

import enum

import jax

__all__ = ["Stream", "EvalPart", "stream"]


class Stream(enum.IntEnum):
    INIT = 0  # parameter initialisation
    DATA = 1  # toy batches, dequantisation and flips (nnd.data)
    TRAIN = 2  # the train step's time, noise and dropout draws; step s: fold_in(TRAIN, s)
    SAMPLE = 3  # progress pictures (fold_in(SAMPLE, step)) and --mode=sample
    EVAL = 4  # --mode=eval, split into EvalPart streams
    EXPERIMENT = 7  # evaluation points of nnd.experiments


class EvalPart(enum.IntEnum):
    """Sub-streams of ``Stream.EVAL``: each part of an evaluation reproducible on its own."""

    LIKELIHOOD = 0
    BOUND = 1
    SAMPLES = 2
    PICTURES = 3
    DEQUANTISE = 4


def stream(root, which: int, *more: int):
    """``fold_in(root, which)``, then folded with each of ``more`` in turn."""
    key = jax.random.fold_in(root, int(which))
    for m in more:
        key = jax.random.fold_in(key, int(m))
    return key
