"""Benchmarks: wall-clock costs of nnd's hot paths (never asserted in tests).

``python -m nnd.bench --out FILE.json [--quick]`` runs them all in one process and
writes one JSON (plus Markdown tables naming the machine); ``nnd/bench/bench_gpu.sh``
does the same on a GPU machine in under 5 minutes. Modules:

- :mod:`nnd.bench.machine`: the machine's description and ceilings (float32 matmul
  peak, stream bandwidth), timed round-robin with what they bound.
- :mod:`nnd.bench.train`: train step per (q, p) on a reduced-width CIFAR-10 config:
  examples/s, achieved FLOP/s and its fraction of the matmul peak, compile time.
- :mod:`nnd.bench.limits`: what limits that fraction (op counts, probes, a list).
- :mod:`nnd.bench.walks`: reverse walk per increment law, ratio to the Gaussian walk;
  compile time and memory of a K = 1000 walk against K = 10.
- :mod:`nnd.bench.evaluation`, :mod:`nnd.bench.samplers`: likelihood and sampler costs,
  exact samplers for the gamma-based laws.
"""

#: Goal of issue 5 for every non-Gaussian choice: train step per (q, p) against
#: gaussian/gaussian, and reverse walk per law against the Gaussian walk.
OVERHEAD_GOAL = 1.05

#: Goal of issue 5 on CPU: the reduced-width CIFAR train step's achieved FLOP/s
#: (XLA cost analysis over the measured step time) over the measured matmul FLOP/s.
PEAK_FRACTION_GOAL = 0.5
