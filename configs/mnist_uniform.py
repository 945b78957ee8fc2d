"""MNIST, Table 2 row q/p = uniform/gaussian.

Launch:
  python -m nnd.main --config=configs/mnist_uniform.py --workdir=runs/mnist_uniform
Target hardware: one GPU.
Expected time: not yet measured.
"""

from nnd import defaults


def get_config():
    return defaults.image("mnist", "uniform")
