"""scikit-learn's bundled 8x8 digits, Table 2 row q/p = uniform/laplace: every field is in
``nnd.defaults.digits``. No download; about 10 minutes for 2000 steps on 2 CPU cores
(measured: 9 min 41 s for uniform/laplace).

  python -m nnd.main --config=configs/digits_uniform_laplace.py --workdir=runs/digits_uniform_laplace
"""

from nnd import defaults


def get_config():
    return defaults.digits("uniform_laplace")
