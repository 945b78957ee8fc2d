"""Entry point: ``python -m nnd.main --config=configs/<name>.py --workdir=DIR [--mode=...]``.

Flags and logging only; the work is in :mod:`nnd.train` and :mod:`nnd.evaluate`.
"""

from absl import app, flags, logging
from ml_collections import config_flags

import jax

from nnd import evaluate, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "sample"],
                  "train (resumes automatically), eval (writes WORKDIR/eval/metrics.json) "
                  "or sample (writes WORKDIR/samples.npz and samples.png).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if jax.process_index() == 0:
        logging.set_verbosity(logging.INFO)
    else:
        logging.set_verbosity(logging.WARNING)
    logging.info("devices: %s", jax.devices())
    if FLAGS.mode == "train":
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    elif FLAGS.mode == "eval":
        evaluate.evaluate(FLAGS.config, FLAGS.workdir)
    else:
        evaluate.sample(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
