"""scikit-learn's bundled 8x8 digits, Table 2 row q/p = uniform/gaussian: every field is in
``nnd.defaults.digits``. No download; about 10 minutes for 2000 steps on 2 CPU cores
(measured: 9 min 41 s for uniform/laplace).

  python -m nnd.main --config=configs/digits_uniform.py --workdir=runs/digits_uniform
"""

from nnd import defaults


def get_config():
    return defaults.digits("uniform")
