"""Reproducible experiments, one module per claim of the paper.

- :mod:`nnd.experiments.invariance`: Theorem 3.3 (invariance principle) on the
  8-Gaussian toy with the exact score: the reverse walk's samples converge to the
  data whatever the increment law. Run with
  ``python -m nnd.experiments.invariance --out DIR``.
"""
