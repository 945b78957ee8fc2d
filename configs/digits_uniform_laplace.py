"""the bundled 8x8 digits, Table 2 row q/p = uniform/laplace.

Launch:
  python -m nnd.main --config=configs/digits_uniform_laplace.py --workdir=runs/digits_uniform_laplace
Target hardware: 2 CPU cores.
Expected time: about 10 minutes for 2000 steps on 2 CPU cores (measured: 9 min 41 s).
"""

from nnd import defaults


def get_config():
    return defaults.image("digits", "uniform_laplace")
