"""Entry point: ``python -m nnd.main --config=configs/<name>.py --workdir=DIR [--mode=...]``.

Flags and logging only; the work is in :mod:`nnd.train` and :mod:`nnd.evaluate`.
"""

import importlib.metadata
import importlib.util
import logging as py_logging
import os
import pkgutil
import sys

from absl import app, flags, logging
from ml_collections import config_flags

import jax

from nnd import aot, checkpoints, evaluate, paths, train
from nnd import config as config_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "sample", "compile"],
                  "train (resumes automatically), eval (writes WORKDIR/eval/metrics.json), "
                  "sample (writes WORKDIR/samples.npz and samples.png) or compile (for "
                  "--topology, no TPU needed: WORKDIR/compile/<topology>.json).")
flags.DEFINE_string("topology", None, "--mode=compile: a TPU slice, as libtpu (v4:2x2x1, "
                    "v5e:4x4) or Cloud (v4-8, v5litepod-16) names it.")
flags.DEFINE_bool("debug", False, "Show the traceback of a config, workdir or missing-checkpoint "
                  "error instead of one line.")
flags.mark_flags_as_required(["config", "workdir"])

#: A user's mistake, or a run stopped by a non-finite step: reported in one line naming the
#: field, path or step and the last good checkpoint (no traceback), exit status 2.
USER_ERRORS = (config_lib.ConfigError, checkpoints.WorkdirError, paths.UnsupportedPath,
               FileNotFoundError, train.NonFiniteError)


def multiprocess_environment(env=None) -> bool:
    """True where several processes must join one JAX runtime.

    That is: ``NND_DISTRIBUTED=1`` (set by launch/tpu_run.sh: on a TPU VM JAX finds
    the slice's workers itself), ``JAX_COORDINATOR_ADDRESS`` set, a Slurm or Open MPI
    job of more than one task, or a TPU worker list naming more than one host.
    ``NND_DISTRIBUTED=0`` turns it off.
    """
    env = os.environ if env is None else env
    if env.get("NND_DISTRIBUTED") in ("0", "1"):
        return env["NND_DISTRIBUTED"] == "1"
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    for count in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if int(env.get(count, "1") or "1") > 1:
            return True
    for hosts in ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES"):
        if len([h for h in env.get(hosts, "").split(",") if h]) > 1:
            return True
    return False


def initialize_distributed(env=None) -> bool:
    """Calls ``jax.distributed.initialize()`` in a multi-process environment (the only call in nnd).

    JAX finds the processes itself on Cloud TPU, Slurm, Open MPI and GKE. Elsewhere
    set ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0), ``NND_NUM_PROCESSES``
    and ``NND_PROCESS_ID`` on every process. Must run before anything touches the
    devices. Returns whether it initialised.
    """
    env = os.environ if env is None else env
    if not multiprocess_environment(env):
        return False
    kwargs = {}
    if env.get("NND_NUM_PROCESSES"):
        missing = [v for v in ("JAX_COORDINATOR_ADDRESS", "NND_PROCESS_ID") if not env.get(v)]
        if missing:
            raise ValueError(f"NND_NUM_PROCESSES is set but {', '.join(missing)} is not")
        kwargs = dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                      num_processes=int(env["NND_NUM_PROCESSES"]),
                      process_id=int(env["NND_PROCESS_ID"]))
    jax.distributed.initialize(**kwargs)
    return True


def _accelerator_plugins() -> set[str]:
    """Names of installed jax plugins (``jax_plugins`` modules and entry points), e.g. ``xla_cuda12``."""
    names = set()
    try:
        import jax_plugins  # noqa: PLC0415

        names |= {name for _, name, _ in pkgutil.iter_modules(jax_plugins.__path__)}
    except ImportError:
        pass
    names |= {entry.name for entry in importlib.metadata.entry_points(group="jax_plugins")}
    return names


def skip_absent_tpu(env=None, *, present=aot.tpu_present) -> str | None:
    """Runs jax without its TPU backend where libtpu is installed but the host has no TPU.

    Otherwise jax starts libtpu's runtime at every start-up, which prints five lines
    (``E0000 ... unexpected worker hostname``, a ``TPU_ACCELERATOR_TYPE`` warning) before
    failing quietly. Sets ``jax_platforms`` to ``cpu`` (``cuda,cpu`` with jax's CUDA
    plugin installed), before any backend starts, unless ``JAX_PLATFORMS`` is set, libtpu
    is absent, the host may have a TPU (:func:`nnd.aot.tpu_present`: there nothing is
    hidden), or other jax plugins are installed. ``--mode=compile`` still loads libtpu to
    describe its slice (:mod:`nnd.aot`). Returns the platforms set, or None.
    """
    env = os.environ if env is None else env
    if "JAX_PLATFORMS" in env or importlib.util.find_spec("libtpu") is None or present():
        return None
    plugins = _accelerator_plugins()
    if any("cuda" not in name for name in plugins):
        return None
    platforms = "cuda,cpu" if plugins else "cpu"
    jax.config.update("jax_platforms", platforms)
    return platforms


class _QuietLibraries(py_logging.Filter):
    """Drops INFO lines of orbax (about 40 per checkpoint), asyncio and jax's backend probing
    (e.g. "Unable to initialize backend 'tpu'" where libtpu is installed on a CPU host)
    unless --verbosity >= 1, and orbax's tracebacks of a full disk (training reports it in
    one line)."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        library = any(part in record.pathname
                      for part in ("/orbax/", "/asyncio/", "/jax/_src/xla_bridge.py"))
        if library and (checkpoints.is_disk_full(record.exc_info[1] if record.exc_info else None)
                        or checkpoints.is_disk_full(record.getMessage())):
            return False
        if record.levelno >= py_logging.WARNING or FLAGS.verbosity >= 1:
            return True
        return not library


def _quiet_closed_loop(unraisable, previous=sys.unraisablehook):
    """Hides "Event loop is closed" from TensorStore callbacks of a save that failed (orbax has
    closed its event loop by then); anything else goes to the previous hook."""
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and "Event loop is closed" in str(error)):
        previous(unraisable)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # before anything starts jax's backends (their probing logs at INFO)
    logging.get_absl_handler().addFilter(_QuietLibraries())
    skip_absent_tpu()
    initialize_distributed()
    if FLAGS.verbosity < 1:  # the user did not ask for more than INFO
        if jax.process_index() == 0:
            logging.set_verbosity(logging.INFO)
        else:
            logging.set_verbosity(logging.WARNING)
    sys.unraisablehook = _quiet_closed_loop
    logging.info("devices: %s", jax.devices())
    run = {"train": train.train, "eval": evaluate.evaluate, "sample": evaluate.sample,
           "compile": lambda config, workdir: aot.run(config, workdir, FLAGS.topology)}[FLAGS.mode]
    try:
        run(FLAGS.config, FLAGS.workdir)
    except USER_ERRORS as err:
        if FLAGS.debug:
            raise
        print(f"nnd: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
