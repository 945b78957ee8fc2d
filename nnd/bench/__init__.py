"""Benchmarks of the goals: wall-clock costs of nnd's hot paths (never asserted in tests).

``python -m nnd.bench --out FILE.json [--quick]`` runs them in one process and writes
one JSON (plus Markdown tables naming the machine); ``nnd/bench/bench_gpu.sh`` does the
same on a GPU machine in under 5 minutes. Modules:

- :mod:`nnd.bench.machine`: the machine's description, its float32 matmul peak, and
  round-robin timing.
- :mod:`nnd.bench.train`: train step per (q, p) on a reduced-width CIFAR-10 config:
  examples/s, FLOP per step (XLA's cost analysis), its fraction of the matmul peak,
  compile time.
- :mod:`nnd.bench.walks`: reverse walk per increment law, ratio to the Gaussian walk;
  memory of a K = 1000 walk against K = 10.
- :mod:`nnd.bench.evaluation`: PF-ODE likelihood adaptive vs Heun; samplers at
  matched quality.

Finished studies (exact gamma and Student-t samplers, what limits the train step's
fraction of the peak) are written up in docs/bench_studies.md.
"""

#: Goal for every non-Gaussian choice: train step per (q, p) against gaussian/gaussian,
#: and reverse walk per law against the Gaussian walk.
OVERHEAD_GOAL = 1.05

#: Goal on CPU: the reduced-width CIFAR train step's achieved FLOP/s (XLA cost
#: analysis over the measured step time) over the measured float32 matmul FLOP/s.
PEAK_FRACTION_GOAL = 0.5
