"""MNIST, Table 2 row q/p = uniform/laplace.

Launch:
  python -m nnd.main --config=configs/mnist_uniform_laplace.py --workdir=runs/mnist_uniform_laplace
Target hardware: one GPU.
Expected time: not yet measured.
"""

from configs import images


def get_config():
    return images.mnist("uniform_laplace")
