"""MNIST, Table 2 row q/p = gaussian/gaussian.

Data (once per disk, before the first run; see launch/README.md):
  python -m nnd.data prepare mnist
Launch:
  python -m nnd.main --config=configs/mnist_gaussian.py --workdir=runs/mnist_gaussian
Target hardware: one GPU.
Expected time (ESTIMATES from `--mode=compile` of mnist_uniform, the same network and batch:
train step memory per chip, FLOP, time to 100,000 steps at MFU 0.3; docs/tpu.md):
  v4-8 (4 chips): 0.3 GiB of 32 per chip, 8.60e+11 FLOP/step, est. 2.6 ms/step, 4 min
  python -m nnd.main --config=configs/mnist_gaussian.py --workdir=DIR --mode=compile --topology=v4-8
"""

from nnd import defaults


def get_config():
    return defaults.image("mnist", "gaussian")
