"""MNIST, Table 2 row q/p = gaussian/gaussian.

Launch:
  python -m nnd.main --config=configs/mnist_gaussian.py --workdir=runs/mnist_gaussian
Target hardware: one GPU.
Expected time: not yet measured.
"""

from configs import images


def get_config():
    return images.mnist("gaussian")
