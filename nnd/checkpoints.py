"""Checkpoints: orbax manager, robust restore, workdir checks and preemption.

A run's checkpoints live in ``WORKDIR/checkpoints/<step>``, saved with orbax's
``CheckpointManager`` and the args API (one item, ``state``). Resume order: the
newest checkpoint of the workdir that restores; one that fails to read (truncated,
corrupted) is reported with a warning naming it and moved aside to
``<step>.unreadable.<time>`` (deleted if remote), and the previous one is tried.

Evaluation and sampling read only ``step`` and ``ema_params`` (:func:`restore_ema`),
without an optimiser and without creating a ``checkpoints/`` folder.

A workdir may be local or remote (``gs://bucket/run``): orbax reaches it through
``etils.epath`` like every other artifact (:mod:`nnd.paths`). :func:`check_workdir`
probes either kind before training; :func:`is_disk_full` recognises a full disk in
whatever form orbax, TensorStore or a writer report it.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import threading
import time

import jax
import orbax.checkpoint as ocp

from nnd import paths

__all__ = ["WorkdirError", "directory", "manager", "restore_latest", "set_aside", "restore_ema", "save",
           "latest_step", "check_workdir", "is_disk_full", "Preemption"]


class WorkdirError(OSError):
    """The workdir cannot hold the run (not writable, too little room); the message names it."""


def directory(workdir: str) -> str:
    """``WORKDIR/checkpoints``, absolute for local paths (orbax needs that), as given for gs://."""
    path = str(paths.get(workdir) / "checkpoints")
    return path if paths.is_remote(path) else os.path.abspath(path)


def manager(workdir: str, keep: int, *, create: bool = True) -> ocp.CheckpointManager:
    """The run's CheckpointManager, keeping the last ``keep`` checkpoints."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
    return ocp.CheckpointManager(directory(workdir), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state, *, force: bool = False) -> None:
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=force)


def _newest_readable(mngr: ocp.CheckpointManager, args, step_of):
    """(step, state, bad_steps) of the newest checkpoint that restores with ``args``.

    A checkpoint that fails to restore (truncated, corrupted, or holding another step
    than its name, read by ``step_of``) is reported with a warning naming it and the
    previous one is tried; step and state are None if none restores.
    """
    bad = []
    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            state = mngr.restore(step, args=ocp.args.Composite(state=args))["state"]
            if int(step_of(state)) != step:
                raise ValueError(f"holds step {int(step_of(state))}")
        except Exception as err:  # noqa: BLE001  (any failure to read means: unusable)
            logging.warning("checkpoint %s/%d is unreadable (%s: %s); trying the previous one",
                            mngr.directory, step, type(err).__name__, str(err)[:200])
            bad.append(step)
            continue
        if bad:
            logging.warning("restored step %d instead of the unreadable step(s) %s", step, bad)
        return step, state, bad
    return None, None, bad


def restore_latest(mngr: ocp.CheckpointManager, abstract_state):
    """(state, bad_steps): the newest checkpoint that restores, in ``abstract_state``'s shardings.

    A checkpoint that fails to restore is reported with a warning naming it, and
    the previous one is tried; ``state`` is None if there is no readable checkpoint.
    """
    _, state, bad = _newest_readable(mngr, ocp.args.StandardRestore(abstract_state),
                                     lambda state: state.step)
    return state, bad


def set_aside(mngr: ocp.CheckpointManager, steps, workdir: str, keep: int) -> ocp.CheckpointManager:
    """Moves unreadable checkpoints to ``<step>.unreadable.<time>`` (deletes them if remote).

    Returns a fresh manager (the old one is closed), since orbax caches the step list.
    """
    if jax.process_index() == 0:
        for step in steps:
            path = os.path.join(str(mngr.directory), str(step))
            if not paths.is_remote(path):
                target = f"{path}.unreadable.{int(time.time())}"
                os.replace(path, target)
                logging.warning("moved unreadable checkpoint %s to %s", path, target)
            else:
                mngr.delete(step)
                logging.warning("deleted unreadable checkpoint %s", path)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415

        multihost_utils.sync_global_devices("nnd: unreadable checkpoints set aside")
    mngr.close()
    return manager(workdir, keep)


def restore_ema(workdir: str, abstract_params):
    """(step, ema_params) of the newest readable checkpoint, for evaluation and sampling.

    Only ``step`` and ``ema_params`` are read (orbax partial restore): no optimiser
    state is materialised and no folder is created. ``abstract_params`` gives the
    parameters' shapes (``jax.eval_shape`` of the model's ``init``).

    Raises:
      FileNotFoundError: no readable checkpoint in ``WORKDIR/checkpoints`` ("train first").
    """
    path = directory(workdir)
    missing = FileNotFoundError(f"no checkpoint in {path}: train first (--mode=train)")
    if not paths.get(path).is_dir():
        raise missing
    mngr = manager(workdir, keep=1, create=False)
    target = {"step": jax.ShapeDtypeStruct((), jax.numpy.int32), "ema_params": abstract_params}
    args = ocp.args.PyTreeRestore(
        target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True)
    try:
        step, restored, _ = _newest_readable(mngr, args, lambda state: state["step"])
    finally:
        mngr.close()
    if step is None:
        raise missing
    return step, restored["ema_params"]


def latest_step(workdir: str) -> int | None:
    """The newest finished checkpoint step in ``WORKDIR/checkpoints`` as stored now, or None.

    Read afresh (a manager caches its step list); a save that did not finish is not
    counted. Never raises: used to name the last good checkpoint after a failure.
    """
    try:
        if not paths.get(directory(workdir)).is_dir():
            return None
        mngr = manager(workdir, keep=1, create=False)
        try:
            return mngr.latest_step()
        finally:
            mngr.close()
    except Exception:  # noqa: BLE001  (a report after a failure must not fail)
        return None


def check_workdir(workdir: str, state=None, keep: int = 1) -> None:
    """Raises a clear :class:`WorkdirError` (an OSError), before training, if ``workdir`` cannot hold the run.

    Checks that the directory can be created (local) and written: a small probe
    file is written and removed, for local and remote (gs://) workdirs alike. For a
    local workdir it also checks that the free space holds ``keep + 1`` checkpoints
    of ``state`` (parameters, EMA and optimiser state) with a 10% margin.

    Raises:
      nnd.paths.UnsupportedPath: a URL that etils.epath cannot open (e.g. memory://).
    """
    root = paths.get(workdir)
    probe = root / f".nnd_write_probe_{os.getpid()}"
    try:
        paths.write(probe, b"\0" * 4096)
        probe.unlink()
    except Exception as err:  # noqa: BLE001  (remote clients raise more than OSError)
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        raise WorkdirError(f"workdir {workdir!r} is not writable: {type(err).__name__}: "
                           f"{reason}") from None
    if state is not None and not paths.is_remote(workdir):
        need = int(1.1 * (keep + 1) * sum(x.nbytes for x in jax.tree.leaves(state)))
        free = shutil.disk_usage(workdir).free
        if free < need:
            raise WorkdirError(f"workdir {workdir!r}: {free / 2**20:.1f} MiB free, but {keep + 1} "
                          f"checkpoints need about {need / 2**20:.1f} MiB")


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "os_error_code='28'",
                   "os_error_code='122'")


def is_disk_full(err: BaseException | str | None) -> bool:
    """True if ``err`` (or an exception it was raised from, or a message) says the disk or quota is full.

    A writer raises ``OSError(ENOSPC)``; orbax re-raises TensorStore's failure as a
    ``ValueError("RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']")``.
    """
    if isinstance(err, str):
        return any(text in err for text in _DISK_FULL_TEXT)
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _DISK_FULL:
            return True
        if any(text in str(err) for text in _DISK_FULL_TEXT):
            return True
        err = err.__cause__ or err.__context__
    return False


class Preemption:
    """SIGTERM (a preemption notice) or Ctrl-C (SIGINT) sets a flag the loop checks after every step.

    The loop then checkpoints the current step and returns. A second Ctrl-C stops at
    once (KeyboardInterrupt, no checkpoint). With several processes no Python handler
    is installed: JAX's preemption sync point (its own SIGTERM notifier) makes every
    host stop at the same step, and Ctrl-C keeps its default. If that service is missing, the
    per-process handler is the fallback (logged: hosts may then stop at different
    steps). The previous handlers are restored on close.
    """

    def __init__(self):
        self.requested = None  # the name of the signal that asked to stop
        self._previous = {}
        self._sync = jax.process_count() > 1
        if not self._sync:  # several hosts: Ctrl-C keeps its default (one host cannot stop alone)
            self._install(signal.SIGINT)
            self._install(signal.SIGTERM)

    def _install(self, signum):
        if threading.current_thread() is threading.main_thread():
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and self.requested == "SIGINT":
            raise KeyboardInterrupt("second Ctrl-C: stopped without a checkpoint")
        if signum == signal.SIGINT:
            logging.warning("Ctrl-C: checkpointing after the current step, then exiting "
                            "(press Ctrl-C again to stop at once)")
        else:
            logging.warning("%s received: checkpointing after the current step, then exiting", name)
        self.requested = name

    def reached(self, step: int) -> bool:
        if self._sync and self.requested is None:
            from jax.experimental import multihost_utils  # noqa: PLC0415

            try:
                return bool(multihost_utils.reached_preemption_sync_point(step))
            except RuntimeError as err:  # no preemption service in this jax.distributed set-up
                logging.warning("no preemption sync point (%s): SIGTERM is handled per process, "
                                "so hosts may stop at different steps", err)
                self._sync = False
                self._install(signal.SIGTERM)
        return self.requested is not None

    def close(self):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
