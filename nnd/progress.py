"""Progress a person can watch, for every long loop: training steps, sampling, the
likelihood over a split, FID features.

Attached to a terminal, a :class:`Progress` draws a live tqdm bar with its rate and
ETA (log lines printed meanwhile appear above the bar instead of through it). Written
to a file or a pipe, as on a TPU VM under ``nohup`` or a job scheduler, it logs a plain
line every ``every`` seconds and one at the end::

    sampling: 3/8 batches, 0.42 batches/s, ETA 12 s

Only process 0 of a multi-host run shows anything. The environment variable
``NND_PROGRESS`` overrides the choice: ``bar``, ``lines`` or ``off``.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import jax
from tqdm import tqdm

__all__ = ["MODES", "mode", "Progress"]

#: The ways progress can be shown; :func:`mode` picks one.
MODES = ("bar", "lines", "off")


def mode(stream=None) -> str:
    """``"bar"`` on a terminal, ``"lines"`` otherwise, ``"off"`` on processes other than 0.

    ``stream`` (default ``sys.stderr``, where the logs go) is the one tested for a
    terminal; ``NND_PROGRESS`` overrides the choice on process 0.
    """
    if jax.process_index() != 0:
        return "off"
    chosen = os.environ.get("NND_PROGRESS", "").strip().lower()
    if chosen:
        if chosen not in MODES:
            raise ValueError(f"NND_PROGRESS={chosen!r}: choose one of {', '.join(MODES)}")
        return chosen
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


class _LogsAboveBars:
    """While any bar is open, every handler of the root logger writes above the bars."""

    def __init__(self):
        self.open = 0
        self.patched = []

    def enter(self, stream):
        self.open += 1
        if self.open > 1:
            return
        for handler in logging.getLogger().handlers:
            def handle(record, _handle=handler.handle):  # absl's handler delegates in handle
                with tqdm.external_write_mode(file=stream):
                    return _handle(record)
            handler.handle = handle  # an instance attribute: removing it restores the class's
            self.patched.append(handler)

    def exit(self):
        self.open -= 1
        if self.open == 0:
            for handler in self.patched:
                del handler.handle
            self.patched = []


_LOGS = _LogsAboveBars()


class Progress:
    """Progress of a loop of ``total`` units (``None``: unknown), named ``label``.

    ``update(n)`` after each unit; ``set(**fields)`` shows fields (a loss) beside the
    bar; ``close()`` (or leaving a ``with`` block) ends it. ``lines=False`` shows a bar
    on a terminal but no lines in a log, for a loop that logs its own (training).
    ``initial`` units were done before (a resumed run). The rate leaves out the
    first unit, which usually includes compilation.
    """

    def __init__(self, label: str, total: int | None, *, unit: str = "batch",
                 every: float = 30.0, lines: bool = True, initial: int = 0, stream=None):
        self.label, self.total, self.unit, self.every = label, total, unit, every
        self.mode = mode(stream)
        if self.mode == "lines" and not lines:
            self.mode = "off"
        self.n = self.initial = initial
        self._first = None  # (time, n) after the first unit: the rate is measured from it
        self._last_line = time.monotonic()
        self._bar, self._fields = None, {}
        if self.mode == "bar":
            stream = sys.stderr if stream is None else stream
            self._bar = tqdm(total=total, initial=initial, desc=label, unit=unit, file=stream,
                             dynamic_ncols=True, mininterval=0.5)
            _LOGS.enter(stream)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def rate(self) -> float | None:
        """Units per second since the first unit, or None before the second."""
        if self._first is None or self.n <= self._first[1]:
            return None
        return (self.n - self._first[1]) / max(time.monotonic() - self._first[0], 1e-9)

    def line(self) -> str:
        """The plain line: ``label: n/total units, rate units/s, ETA s`` and any fields."""
        units = f"{self.unit}es" if self.unit.endswith(("s", "sh", "ch")) else f"{self.unit}s"
        done = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        text = f"{self.label}: {done} {units}"
        rate = self.rate()
        if rate is not None:
            text += f", {rate:.3g} {units}/s"
            if self.total is not None:
                text += f", ETA {max(self.total - self.n, 0) / rate:.0f} s"
        return "".join([text] + [f", {k} {v}" for k, v in self._fields.items()])

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._first is None:
            self._first = (time.monotonic(), self.n)
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "lines":
            now = time.monotonic()
            if now - self._last_line >= self.every or self.n == self.total:
                logging.info("%s", self.line())
                self._last_line = now

    def set(self, **fields) -> None:
        """Shows ``fields`` (say a loss or an NFE) beside the bar and in the lines."""
        self._fields.update(fields)
        if self._bar is not None:
            self._bar.set_postfix(self._fields, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            _LOGS.exit()
