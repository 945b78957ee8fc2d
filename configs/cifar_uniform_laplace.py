"""CIFAR-10, Table 2 row q/p = uniform/laplace: every field is in ``nnd.defaults.cifar10``.

  python -m nnd.data prepare cifar10   # once per disk (launch/README.md)
  python -m nnd.main --config=configs/cifar_uniform_laplace.py --workdir=runs/cifar_uniform_laplace

Cloud TPU v4-8 or 8 GPUs; chips, memory and time per step: docs/tpu.md.
"""

from nnd import defaults


def get_config():
    return defaults.cifar10("uniform_laplace")
