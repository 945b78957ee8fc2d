"""Fixed-shape batches on the host: one helper for every loop over a large array.

A jitted function compiles once per input shape, so every batch has the same size:
the last is padded by repeating the last example and the padding is dropped from
the outputs. Used by the likelihood over a split, the walk sum, FID features and
the oracle comparisons of the experiments.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import jax
import numpy as np

__all__ = ["map_batches"]


def map_batches(fn: Callable, xs, batch_size: int, *, label: str | None = None,
                progress_every: float = 30.0):
    """Applies ``fn(batch, i)`` to fixed-size batches of ``xs`` and concatenates the outputs.

    Args:
      fn: ``fn(batch, i) -> pytree of arrays with leading axis batch_size``; ``batch``
        has the structure of ``xs`` (an array or a tuple/pytree of arrays sharing
        their leading axis N) and ``i`` is the batch index (for per-batch keys).
      xs: the inputs, leading axis N ≥ 1 (host or device arrays).
      batch_size: examples per call (≥ 1); the last batch is padded by repeating
        the last example, and the padding is dropped.
      label: if given, log ``"<label>: batch i/n, ETA"`` every ``progress_every`` s.

    Returns:
      The outputs of ``fn`` as host numpy arrays with leading axis N. Batch i's
      result is fetched after batch i + 1 is dispatched, so the device never waits.
    """
    leaves = jax.tree.leaves(xs)
    if not leaves:
        raise ValueError("map_batches: no inputs")
    n = len(leaves[0])
    if n == 0:
        raise ValueError("map_batches: no examples")
    if any(len(leaf) != n for leaf in leaves):
        raise ValueError("map_batches: inputs differ in their leading axis")
    if batch_size < 1:
        raise ValueError(f"map_batches: batch_size must be >= 1, got {batch_size}")
    num_batches = -(-n // batch_size)
    outputs, pending = [], None
    start = last = time.time()
    for i in range(num_batches):
        idx = np.minimum(np.arange(i * batch_size, (i + 1) * batch_size), n - 1)
        result = fn(jax.tree.map(lambda a: a[idx], xs), i)
        if pending is not None:
            outputs.append(jax.tree.map(np.asarray, pending))
        pending = result
        now = time.time()
        if label and num_batches > 1 and (now - last > progress_every or i + 1 == num_batches):
            eta = (now - start) / (i + 1) * (num_batches - i - 1)
            logging.info("%s: batch %d/%d, ETA %.0f s", label, i + 1, num_batches, eta)
            last = now
    outputs.append(jax.tree.map(np.asarray, pending))
    return jax.tree.map(lambda *a: np.concatenate(a)[:n], *outputs)
