"""Default configuration: the 2-D `gmm8` toy with Laplace/Laplace steps on a VP process.

Launch (2 CPU cores, about 2 minutes to train):
    python -m nnd.main --config=configs/default.py --workdir=runs/default

Every field can be set on the command line, e.g. `--config.loss.q=student_t:5`,
`--config.process.params.beta_max=10`. The defaults live in `nnd/defaults.py`.
"""

from nnd import defaults


def get_config():
    return defaults.default()
