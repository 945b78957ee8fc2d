"""MNIST, Table 2 row q/p = uniform/gaussian: every field is in ``nnd.defaults.mnist``.

  python -m nnd.data prepare mnist   # once per disk (launch/README.md)
  python -m nnd.main --config=configs/mnist_uniform.py --workdir=runs/mnist_uniform

One GPU; sizes and time per step: docs/tpu.md.
"""

from nnd import defaults


def get_config():
    return defaults.mnist("uniform")
