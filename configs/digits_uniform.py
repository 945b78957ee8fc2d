"""the bundled 8x8 digits, Table 2 row q/p = uniform/gaussian.

Launch:
  python -m nnd.main --config=configs/digits_uniform.py --workdir=runs/digits_uniform
Target hardware: 2 CPU cores.
Expected time: a few minutes for 3000 steps (see README).
"""

from configs import images


def get_config():
    return images.digits("uniform")
