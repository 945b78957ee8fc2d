"""CIFAR-10, Table 2 row q/p = uniform/gaussian.

Data (once per disk, before the first run; see launch/README.md):
  python -m nnd.data prepare cifar10
Launch:
  python -m nnd.main --config=configs/cifar_uniform.py --workdir=runs/cifar_uniform
Target hardware: Cloud TPU v4-8 or 8 GPUs (data parallel); one CPU core cannot train it.
Expected time (ESTIMATES from `--mode=compile` of cifar_uniform, the same network and batch:
train step memory per chip, FLOP, time to 1,000,000 steps at MFU 0.3; docs/tpu.md):
  v4-8 (4 chips): 3.6 GiB of 32 per chip (unrolled blocks, the default: issue 11's compile;
  7.4 GiB with --config.model.scan=True), 2.05e+13 FLOP/step, est. 62 ms/step, 17 h
"""

from nnd import defaults


def get_config():
    return defaults.image("cifar10", "uniform")
