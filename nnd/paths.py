"""Where a run's files go: a local folder or a bucket (``gs://``), all through ``etils.epath``.

Every artifact (checkpoints, ``metrics.jsonl``, TensorBoard events, pictures,
``eval/``, ``samples.npz``, FID statistics, the experiments' outputs) is written
through this module, so a ``gs://`` workdir stays in the bucket; orbax opens its
directory with epath too. epath reaches ``gs://`` through ``tf.io.gfile`` when
TensorFlow is installed and through gcsfs otherwise (``EPATH_USE_TF=0`` forces
gcsfs); ``s3://`` and ``az://`` need s3fs and adlfs.

Object stores have no append and no rename, so:

- :func:`write` puts a whole file at once: a local file through a temporary file
  and ``os.replace`` (never a torn file), a remote object in one upload (an object
  appears whole or not at all);
- :func:`append` adds to a local file in place and rewrites a remote object, which
  then is whole and visible after every call (for small files: ``metrics.jsonl``
  and TensorBoard events, a few hundred bytes per logged step).

A command interrupted by Ctrl-C (SIGINT) or SIGTERM inside :func:`interruptible` stops
at the next Python instruction: a :func:`write` in progress removes its temporary file
and leaves the target as it was, and the user reads one line ``nnd: interrupted ...``
(exit status 130 or 143, no traceback). Rerunning the same command redoes the work.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import threading
from typing import Callable, Union

import numpy as np
from etils import epath

__all__ = ["UnsupportedPath", "get", "is_remote", "write", "append", "savez", "load_npz",
           "copytree", "Interrupted", "interruptible"]

PathLike = Union[str, os.PathLike]


class UnsupportedPath(ValueError):
    """A URL whose scheme etils.epath cannot open; the message names it."""


def is_remote(path: PathLike) -> bool:
    """True for a URL (``gs://bucket/run``), False for a local path."""
    return "://" in os.fspath(path)


def get(path: PathLike) -> epath.Path:
    """``path`` as an ``epath.Path``.

    Raises:
      UnsupportedPath: a URL whose scheme epath does not know (e.g. ``memory://``),
        rather than a local folder named after the scheme.
    """
    text = os.fspath(path)
    try:
        return epath.Path(text)
    except KeyError:
        scheme = text.split("://", 1)[0]
        raise UnsupportedPath(f"{text}: etils.epath cannot open {scheme}:// paths; use a local "
                              "path or gs://bucket/...") from None


def _bytes(data: bytes | str) -> bytes:
    return data.encode() if isinstance(data, str) else data


def write(path: PathLike, data: bytes | str) -> None:
    """Writes ``data`` to ``path`` whole (local: temporary file + os.replace; remote: one object)."""
    path, data = get(path), _bytes(data)
    if is_remote(path):
        path.write_bytes(data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def append(path: PathLike, data: bytes | str) -> None:
    """Appends ``data`` to ``path`` (local: in place; remote: the object is rewritten whole)."""
    path, data = get(path), _bytes(data)
    if is_remote(path):
        path.write_bytes((path.read_bytes() if path.exists() else b"") + data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as f:
        f.write(data)


def savez(path: PathLike, **arrays) -> None:
    """``np.savez`` to a local or remote ``path``, written whole or not at all (:func:`write`)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write(path, buffer.getvalue())


def load_npz(path: PathLike) -> dict[str, np.ndarray]:
    """The arrays of a local or remote ``.npz`` file."""
    with np.load(io.BytesIO(get(path).read_bytes())) as npz:
        return {name: npz[name] for name in npz.files}


def copytree(src: PathLike, dst: PathLike) -> None:
    """Copies every file below ``src`` to the same place below ``dst`` (local or remote)."""
    src, dst = get(src), get(dst)
    for child in src.iterdir():
        target = dst / child.name
        if child.is_dir():
            copytree(child, target)
            continue
        if not is_remote(target):
            target.parent.mkdir(parents=True, exist_ok=True)
        child.copy(target, overwrite=True)


class Interrupted(KeyboardInterrupt):
    """SIGTERM inside :func:`interruptible`: raised like Ctrl-C's KeyboardInterrupt, so every
    ``finally`` and ``except BaseException`` (a :func:`write`'s clean-up) runs."""


def _raise_interrupted(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def interruptible(doing: str, then: Union[str, Callable[[], str]] = "rerun the same command", *,
                  sigterm: bool = True):
    """Ctrl-C or SIGTERM in the block ends the command with one line, not a traceback.

    SIGTERM's default (death on the spot, temporary files left behind) becomes
    :class:`Interrupted` in the main thread while the block runs; either signal then
    unwinds the block (files in progress are removed by their writers), prints
    ``nnd: interrupted (Ctrl-C) while <doing>; <then>`` on stderr and raises
    ``SystemExit(128 + signal)``: 130 for Ctrl-C, 143 for SIGTERM. ``then`` (a string, or a
    function called at that moment) says what a rerun does. In the block Ctrl-C raises
    KeyboardInterrupt whatever handler a library installed before; the previous SIGINT and
    SIGTERM handlers are restored on exit. ``sigterm=False`` leaves SIGTERM alone (several
    JAX processes: JAX's own preemption notifier handles it).
    """
    main = threading.current_thread() is threading.main_thread()
    # Ctrl-C raises KeyboardInterrupt here whatever handler an earlier library left.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler) if main else None
    main_term = main and sigterm
    previous = signal.signal(signal.SIGTERM, _raise_interrupted) if main_term else None
    try:
        yield
    except KeyboardInterrupt as err:
        sigterm = isinstance(err, Interrupted)
        note = then() if callable(then) else then
        print(f"nnd: interrupted ({'SIGTERM' if sigterm else 'Ctrl-C'}) while {doing}; {note}",
              file=sys.stderr, flush=True)
        raise SystemExit(128 + int(signal.SIGTERM if sigterm else signal.SIGINT)) from None
    finally:  # None: a handler not set from Python; the default is the nearest
        if main_term:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        if main:
            signal.signal(signal.SIGINT, signal.SIG_DFL if previous_int is None else previous_int)
