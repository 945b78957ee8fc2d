"""Fixed-shape batches on the host: one helper for every loop over a large array.

A jitted function compiles once per input shape, so every batch has the same size:
the last is padded by repeating the last example and the padding is dropped from
the outputs. Used by the likelihood over a split, the walk sum, FID features and
the oracle comparisons of the experiments.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from nnd.progress import Progress

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
      label: if given (and there is more than one batch), show progress under this
        name (:class:`nnd.progress.Progress`): a live bar on a terminal, else a
        line ``"<label>: i/n batches, rate, ETA"`` every ``progress_every`` s.

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
    shown = label is not None and num_batches > 1
    progress = Progress(label, num_batches, every=progress_every) if shown else None
    try:
        for i in range(num_batches):
            idx = np.minimum(np.arange(i * batch_size, (i + 1) * batch_size), n - 1)
            result = fn(jax.tree.map(lambda a: a[idx], xs), i)
            if pending is not None:
                outputs.append(jax.tree.map(np.asarray, pending))
            pending = result
            if progress is not None:
                progress.update()
    finally:
        if progress is not None:
            progress.close()
    outputs.append(jax.tree.map(np.asarray, pending))
    return jax.tree.map(lambda *a: np.concatenate(a)[:n], *outputs)
