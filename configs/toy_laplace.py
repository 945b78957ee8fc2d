"""Toy 2-D run, Laplace/Laplace (Table 1 L/L, corrected).

Data: `gmm8` (8 Gaussians on the unit circle, std 0.1; exact score in nnd.oracles),
or `--config.data.name=checkerboard|moons|swissroll`.

Launch (2 CPU cores, about 2 minutes to train; then sample):
  python -m nnd.main --config=configs/toy_laplace.py --workdir=runs/toy_laplace
  python -m nnd.main --config=configs/toy_laplace.py --workdir=runs/toy_laplace --mode=sample
"""

from nnd import defaults


def get_config():
    config = defaults.default()
    config.loss.q = "laplace"
    config.loss.p = "laplace"
    return config
