"""MNIST, Table 2 row q/p = laplace/laplace.

Launch:
  python -m nnd.main --config=configs/mnist_laplace.py --workdir=runs/mnist_laplace
Target hardware: one GPU.
Expected time: not yet measured.
"""

from configs import images


def get_config():
    return images.mnist("laplace")
