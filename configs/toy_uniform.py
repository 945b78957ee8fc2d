"""Toy 2-D run, uniform steps with a Gaussian model law (Table 1 U/G).

With p = gaussian the loss differs from gaussian/gaussian only by the constant
l(0), so it trains exactly like it (same gradients); it samples with uniform steps.

Data: `gmm8` (8 Gaussians on the unit circle, std 0.1; exact score in nnd.oracles),
or `--config.data.name=checkerboard|moons|swissroll`.

Launch (2 CPU cores, about 2 minutes to train; then sample):
  python -m nnd.main --config=configs/toy_uniform.py --workdir=runs/toy_uniform
  python -m nnd.main --config=configs/toy_uniform.py --workdir=runs/toy_uniform --mode=sample
"""

from nnd import defaults


def get_config():
    config = defaults.default()
    config.loss.q = "uniform"
    config.loss.p = "gaussian"
    return config
