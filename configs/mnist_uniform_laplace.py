"""MNIST, Table 2 row q/p = uniform/laplace.

Data (once per disk, before the first run; see launch/README.md):
  python -m nnd.data prepare mnist
Launch:
  python -m nnd.main --config=configs/mnist_uniform_laplace.py --workdir=runs/mnist_uniform_laplace
Target hardware: one GPU.
Expected time: not yet measured; estimate it without a TPU with
  python -m nnd.main --config=configs/mnist_uniform_laplace.py --workdir=DIR --mode=compile --topology=v4-8
"""

from nnd import defaults


def get_config():
    return defaults.image("mnist", "uniform_laplace")
