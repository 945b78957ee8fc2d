"""CIFAR-10, Table 2 row q/p = gaussian/gaussian.

Data (once per disk, before the first run; see launch/README.md):
  python -m nnd.data prepare cifar10
Launch:
  python -m nnd.main --config=configs/cifar_gaussian.py --workdir=runs/cifar_gaussian
Target hardware: Cloud TPU v4-8 or 8 GPUs (data parallel); one CPU core cannot train it.
Expected time: not yet measured; VDM trained 10M steps.
"""

from nnd import defaults


def get_config():
    return defaults.image("cifar10", "gaussian")
