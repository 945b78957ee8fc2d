"""CIFAR-10, Table 2 row q/p = uniform/gaussian.

Data (once per disk, before the first run; see launch/README.md):
  python -m nnd.data prepare cifar10
Launch:
  python -m nnd.main --config=configs/cifar_uniform.py --workdir=runs/cifar_uniform
Target hardware: Cloud TPU v4-8 or 8 GPUs (data parallel); one CPU core cannot train it.
Expected time: not yet measured; VDM trained 10M steps.
"""

from nnd import defaults


def get_config():
    return defaults.image("cifar10", "uniform")
