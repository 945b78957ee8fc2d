"""Benchmarks: wall-clock costs of nnd's hot paths (never asserted in tests).

- :mod:`nnd.bench.walks`: reverse walk (K = 1000, 10⁴ points, exact gmm8 score)
  per increment law, with the ratio to the Gaussian walk. Run with
  ``python -m nnd.bench.walks [--out FILE.json]``.
"""
