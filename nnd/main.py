"""Entry point: ``python -m nnd.main --config=configs/<name>.py --workdir=DIR [--mode=...]``.

Flags and logging only; the work is in :mod:`nnd.train` and :mod:`nnd.evaluate`.
"""

import difflib
import importlib.metadata
import importlib.util
import logging as py_logging
import os
import pkgutil
import re
import sys

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

import jax

from nnd import aot, checkpoints, compile_cache, evaluate, paths, train
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


# -- the config-flag layer in nnd's words -----------------------------------------------


class FlagError(ValueError):
    """A command-line mistake found before the run starts; the message is one line."""


def _config_argument(argv: list[str]) -> str | None:
    """The value of ``--config`` (``--config=PATH[:ARG]`` or ``--config PATH[:ARG]``), if any."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _load_config_file(spec: str):
    """The ConfigDict of ``--config=PATH[:ARG]`` as ml_collections would build it."""
    path, arg = spec, None
    if not os.path.isfile(path) and ":" in spec:
        path, arg = spec.split(":", 1)
    if not os.path.isfile(path):
        hint = ""
        folder = os.path.dirname(path) or "."
        if os.path.isdir(folder):
            names = [n for n in os.listdir(folder) if n.endswith(".py") and not n.startswith("_")]
            close = difflib.get_close_matches(os.path.basename(path), names, n=1)
            hint = f"; did you mean {os.path.join(os.path.dirname(path), close[0])}?" if close else ""
        raise FlagError(f"--config={spec}: no such config file{hint}")
    module_spec = importlib.util.spec_from_file_location("_nnd_user_config", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
        return module.get_config(arg) if arg is not None else module.get_config()
    except Exception as err:  # the user's file: say what broke, in one line
        raise FlagError(f"--config={spec}: the config file fails to load: "
                        f"{type(err).__name__}: {_one_line(err)}") from None


def _one_line(err: BaseException) -> str:
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(text.split())


def _leaf_paths(config, prefix: str = "") -> list[str]:
    found = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        found += _leaf_paths(value, path + ".") if isinstance(value, ml_collections.ConfigDict) else [path]
    return found


def _nearest_field(config, dotted: str) -> str:
    """Why ``config.<dotted>`` does not exist, and the nearest field that does, in one clause."""
    parts, node, walked = dotted.split("."), config, []
    for part in parts:
        if isinstance(node, ml_collections.ConfigDict) and part in node:
            node, walked = node[part], walked + [part]
            continue
        where = "config" + "".join(f".{w}" for w in walked)
        if not isinstance(node, ml_collections.ConfigDict):
            return f"{where} is a value, not a section"
        same_leaf = [p for p in _leaf_paths(config) if p.split(".")[-1] == parts[-1]]
        close = difflib.get_close_matches(part, list(node.keys()), n=1)
        if part == parts[-1] and same_leaf:
            guess = same_leaf[0]
        elif close:
            guess = ".".join(walked + [close[0]])
        elif same_leaf:
            guess = same_leaf[0]
        else:
            return f"no field {part!r} in {where}; it has {', '.join(sorted(node.keys()))}"
        return f"no field {part!r} in {where}; did you mean config.{guess}?"
    return ""


def _check_config_flags(argv: list[str]) -> None:
    """Raises FlagError for a missing or broken config file and for an override of a field
    the config does not have, naming the flag and the nearest valid field."""
    spec = _config_argument(argv)
    if spec is None:
        return
    config = _load_config_file(spec)
    for arg in argv:
        if arg.startswith("--config.") and "=" in arg:
            dotted = arg[len("--config."):].split("=", 1)[0]
            problem = _nearest_field(config, dotted)
            if problem:
                raise FlagError(f"--config.{dotted}: {problem}")
            _check_literal(arg, dotted, config)


def _check_literal(arg: str, dotted: str, config) -> None:
    """A number or bool field given a value of another type (as ml_collections would refuse)."""
    value, text = config, arg.split("=", 1)[1]
    for part in dotted.split("."):
        value = value[part]
    kind = {bool: ("true or false", lambda v: v.lower() in ("true", "false", "1", "0")),
            int: ("an integer", lambda v: v.lstrip("+-").replace("_", "").isdigit()),
            float: ("a number", _is_float)}.get(type(value))
    if kind and not kind[1](text):
        raise FlagError(f"--config.{dotted}={text}: config.{dotted} takes {kind[0]}, got {text!r}")


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with every mistake in one line ``nnd: ...`` and exit status 2.

    Overrides (``--config.section.field=value``) work exactly as ml_collections parses them;
    this only puts its errors (a missing config file, an unknown field or section, a value of
    the wrong type, an unknown flag) in one line that names the flag and, for a field, the
    nearest one that exists. ``--debug`` shows the original traceback instead.
    """
    debug = "--debug" in argv or "--debug=true" in argv
    try:
        _check_config_flags(argv)
        return FLAGS(argv)
    except FlagError as err:
        if debug:
            raise
        message = str(err)
    except flags.UnrecognizedFlagError as err:
        if debug:
            raise
        close = difflib.get_close_matches(err.flagname, list(FLAGS), n=1)
        message = f"--{err.flagname}: unknown flag" + (f"; did you mean --{close[0]}?" if close else "")
    except flags.Error as err:
        if debug:
            raise
        message = _one_line(err)
        if message.startswith("flag --"):
            message = message[len("flag "):]
        required = re.search(r"Flag --(\w+) must have a value other than None", message)
        if required:
            message = f"--{required.group(1)} is required: " + FLAGS[required.group(1)].help
    except (KeyError, AttributeError, OSError, ValueError, TypeError) as err:
        if debug:
            raise
        message = f"{type(err).__name__}: {_one_line(err)}"
    print(f"nnd: {message}", file=sys.stderr)
    sys.exit(2)


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
    """Drops INFO lines of orbax (about 40 per checkpoint), asyncio, gcsfs and jax's backend
    probing (e.g. "Unable to initialize backend 'tpu'" where libtpu is installed on a CPU host)
    and these libraries' tracebacks unless --verbosity >= 1, and orbax's lines about a full
    disk (training reports it in one line)."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        library = any(part in record.pathname
                      for part in ("/orbax/", "/asyncio/", "/jax/_src/xla_bridge.py", "/gcsfs/"))
        if library and (checkpoints.is_disk_full(record.exc_info[1] if record.exc_info else None)
                        or checkpoints.is_disk_full(record.getMessage())):
            return False
        verbose = FLAGS.is_parsed() and FLAGS.verbosity >= 1
        if library and record.exc_info and not verbose:
            # e.g. gcsfs's retries of an unreachable bucket: the nnd: line names the cause
            record.exc_info, record.exc_text = None, None
        if record.levelno >= py_logging.WARNING or verbose:
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
    run = {"train": train.train, "eval": evaluate.evaluate, "sample": evaluate.sample,
           "compile": lambda config, workdir: aot.run(config, workdir, FLAGS.topology)}[FLAGS.mode]
    try:
        if FLAGS.mode != "compile":  # a bad field is the only line printed (compile checks its slice's)
            config_lib.resolve(FLAGS.config, num_devices=jax.device_count())
            if FLAGS.mode == "train":
                checkpoints.check_workdir(FLAGS.workdir)
            config_lib.check_same_run(FLAGS.workdir, FLAGS.config, record=FLAGS.mode == "train")
        compile_cache.setup(FLAGS.config.compile_cache, FLAGS.workdir)
        logging.info("devices: %s", jax.devices())
        run(FLAGS.config, FLAGS.workdir)
    except USER_ERRORS as err:
        if FLAGS.debug:
            raise
        print(f"nnd: {err}", file=sys.stderr)
        sys.exit(2)


def run() -> None:
    """``python -m nnd.main``: absl's app with nnd's flag parsing (:func:`parse_flags`)."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
