"""Toy 2-D run, Gaussian/Gaussian: the classical diffusion model as a walk.

Data: `gmm8` (8 Gaussians on the unit circle, std 0.1; exact score in nnd.oracles),
or `--config.data.name=checkerboard|moons|swissroll`.

Launch (2 CPU cores, about 2 minutes to train; then sample):
  python -m nnd.main --config=configs/toy_gaussian.py --workdir=runs/toy_gaussian
  python -m nnd.main --config=configs/toy_gaussian.py --workdir=runs/toy_gaussian --mode=sample
"""

from nnd import defaults


def get_config():
    config = defaults.default()
    config.loss.q = "gaussian"
    config.loss.p = "gaussian"
    return config
