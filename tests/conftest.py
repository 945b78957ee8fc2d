"""Test tiers.

``python -m pytest -q`` runs the fast tier (pyproject's ``-m "not slow"``); CI runs every
tier with ``-m "slow or not slow"``. A parametrised test marked ``fast_first`` keeps only
its first parameter combination in the fast tier; the others are marked ``slow`` here
(ott-jax's "only fast" idea), so the fast tier checks every function once and CI checks
the whole matrix.

A test marked ``plumbing`` checks files, flow and bookkeeping rather than numbers, so it
runs with XLA's ``jax_disable_most_optimizations`` (compiles about a third faster).
"""

import jax
import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    seen = set()
    for item in items:
        if item.get_closest_marker("fast_first") is None:
            continue
        function = (item.path, item.cls, item.originalname)
        if function in seen:
            item.add_marker(pytest.mark.slow)
        else:
            seen.add(function)


@pytest.fixture(autouse=True)
def _unoptimised_compiles_for_plumbing(request):
    if request.node.get_closest_marker("plumbing") is None:
        yield
        return
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)
