"""CIFAR-10, Table 2 row q/p = laplace/laplace.

Data (once per disk, before the first run; see launch/README.md):
  python -m nnd.data prepare cifar10
Launch:
  python -m nnd.main --config=configs/cifar_laplace.py --workdir=runs/cifar_laplace
Target hardware: Cloud TPU v4-8 or 8 GPUs (data parallel); one CPU core cannot train it.
Expected time: not yet measured; VDM trained 10M steps.
"""

from nnd import defaults


def get_config():
    return defaults.image("cifar10", "laplace")
