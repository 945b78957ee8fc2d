"""the bundled 8x8 digits, Table 2 row q/p = uniform/gaussian.

Launch:
  python -m nnd.main --config=configs/digits_uniform.py --workdir=runs/digits_uniform
Target hardware: 2 CPU cores.
Expected time: about 10 minutes for 2000 steps on 2 CPU cores (measured: 9 min 41 s).
"""

from nnd import defaults


def get_config():
    return defaults.image("digits", "uniform")
