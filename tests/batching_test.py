"""Tests for nnd.batching.map_batches against the unbatched computation."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnd.batching import map_batches


def test_outputs_equal_unbatched_and_padding_dropped():
    x = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)
    seen = []

    def fn(batch, i):
        seen.append((i, np.asarray(batch).copy()))
        return batch * 10.0

    out = map_batches(fn, x, 3)
    assert isinstance(out, np.ndarray) and out.shape == (7, 2)
    np.testing.assert_array_equal(out, x * 10.0)
    assert [i for i, _ in seen] == [0, 1, 2]
    assert all(b.shape == (3, 2) for _, b in seen)
    np.testing.assert_array_equal(seen[2][1], x[[6, 6, 6]])  # the last example repeated


@pytest.mark.parametrize("n, batch_size", [(1, 4), (4, 4), (5, 4), (9, 1)])
def test_one_compile_for_a_jitted_fn(n, batch_size):
    traces = []

    @jax.jit
    def fn(x):
        traces.append(x.shape)
        return jnp.sin(x).sum(axis=1)

    x = np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32)
    out = map_batches(lambda b, i: fn(b), jnp.asarray(x), batch_size)
    np.testing.assert_allclose(out, np.sin(x).sum(axis=1), rtol=1e-6, atol=1e-6)
    assert traces == [(batch_size, 3)]


def test_tuple_inputs_and_pytree_outputs():
    a = np.arange(5.0)
    b = np.arange(10.0).reshape(5, 2)
    out = map_batches(lambda batch, i: {"s": batch[0] + batch[1].sum(1), "i": batch[0] * 0 + i},
                      (a, b), 2)
    np.testing.assert_array_equal(out["s"], a + b.sum(1))
    np.testing.assert_array_equal(out["i"], [0, 0, 1, 1, 2])


def test_progress_is_logged_with_the_label(monkeypatch, caplog):
    monkeypatch.setenv("NND_PROGRESS", "lines")  # as in a log file, even under pytest -s
    with caplog.at_level(logging.INFO):
        map_batches(lambda b, i: b, np.zeros(5), 2, label="things")
    assert "things: 3/3 batches" in caplog.text


def test_errors():
    with pytest.raises(ValueError, match="no examples"):
        map_batches(lambda b, i: b, np.zeros((0, 3)), 2)
    with pytest.raises(ValueError, match="no inputs"):
        map_batches(lambda b, i: b, (), 2)
    with pytest.raises(ValueError, match="leading axis"):
        map_batches(lambda b, i: b, (np.zeros(3), np.zeros(4)), 2)
    with pytest.raises(ValueError, match="batch_size"):
        map_batches(lambda b, i: b, np.zeros(3), 0)
