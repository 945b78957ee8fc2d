"""CIFAR-10, Table 2 row q/p = gaussian/gaussian.

Data (once per disk, before the first run; see launch/README.md):
  python -m nnd.data prepare cifar10
Launch:
  python -m nnd.main --config=configs/cifar_gaussian.py --workdir=runs/cifar_gaussian
Target hardware: Cloud TPU v4-8 or 8 GPUs (data parallel); one CPU core cannot train it.
Expected time (ESTIMATES from `--mode=compile` of cifar_uniform, the same network and batch:
train step memory per chip, FLOP, time to 1,000,000 steps at MFU 0.3; docs/tpu.md):
  v4-8 (4 chips): 4.8 GiB of 32 per chip, 2.05e+13 FLOP/step, est. 62 ms/step, 17 h
  v5litepod-16 (16 chips, 4 hosts): 1.6 GiB of 16 per chip, est. 22 ms/step, 6.0 h
  (v5litepod-8 not compiled yet.) Sampler and likelihood (eval.batch_size 100) fit both.
  python -m nnd.main --config=configs/cifar_gaussian.py --workdir=DIR --mode=compile --topology=v4-8
"""

from nnd import defaults


def get_config():
    return defaults.image("cifar10", "gaussian")
