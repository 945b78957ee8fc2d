"""Reproducible experiments, one module per claim of the paper.

- :mod:`nnd.experiments.invariance`: Theorem 3.3 (invariance principle) on the
  8-Gaussian toy with the exact score: the reverse walk's samples converge to the
  data whatever the increment law. Run with
  ``python -m nnd.experiments.invariance --out DIR``.
- :mod:`nnd.experiments.bias`: SPEC §4 (ii): how far the learned ε of a
  non-quadratic loss (laplace/laplace, uniform/laplace) is from E[ε | x_t],
  against gaussian/gaussian, per t-quartile and K, on gmm8 with the exact oracle.
- :mod:`nnd.experiments.table2`: a small Table 2 on the bundled digits (the four
  (q, p) rows, bpd, the eq. (5) walk sum, energy distance, NFE).

They share :mod:`nnd.experiments.common` (command-line lists, Markdown tables,
figures, and the JSON + machine description they write).
"""
