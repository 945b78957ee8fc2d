"""Progress: plain periodic lines in a log, a live bar on a terminal, nothing off process 0."""

import fcntl
import logging
import os
import pty
import struct
import subprocess
import sys
import termios
import textwrap

import numpy as np
import pytest

from nnd import progress
from nnd.batching import map_batches

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_log_gets_periodic_lines_with_rate_and_eta(monkeypatch, caplog):
    monkeypatch.delenv("NND_PROGRESS", raising=False)
    clock = _Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    with caplog.at_level(logging.INFO):
        with progress.Progress("sampling", 10, every=30.0) as bar:
            assert bar.mode == "lines"  # pytest's captured stderr is not a terminal
            for t in (5.0, 10.0, 20.0, 40.0, 41.0, 42.0, 43.0, 44.0, 45.0, 46.0):
                clock.now = 100.0 + t  # the first unit (compilation) ends at 5 s
                bar.set(nfe=31)
                bar.update()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sampling")]
    # A line once 30 s have passed since the start, and one at the end; the rate is
    # measured from the first unit: 3 units in 35 s, then 9 in 41 s.
    assert lines == ["sampling: 4/10 batches, 0.0857 batches/s, ETA 70 s, nfe 31",
                     "sampling: 10/10 batches, 0.22 batches/s, ETA 0 s, nfe 31"]


def test_map_batches_logs_its_label(monkeypatch, caplog):
    monkeypatch.setenv("NND_PROGRESS", "lines")
    with caplog.at_level(logging.INFO):
        map_batches(lambda b, i: b, np.zeros(5), 2, label="things", progress_every=0.0)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("things")]
    assert [line.split(",")[0] for line in lines] == [
        "things: 1/3 batches", "things: 2/3 batches", "things: 3/3 batches"]
    assert lines[-1].endswith("ETA 0 s")


def test_lines_off_for_a_loop_that_logs_its_own(monkeypatch, caplog):
    monkeypatch.setenv("NND_PROGRESS", "lines")
    with caplog.at_level(logging.INFO), progress.Progress("training", 3, lines=False) as bar:
        bar.update(3)
    assert bar.mode == "off" and not [r for r in caplog.records if "training" in r.getMessage()]


def test_only_process_zero_shows_progress(monkeypatch):
    monkeypatch.setenv("NND_PROGRESS", "bar")
    assert progress.mode() == "bar"
    monkeypatch.setattr(progress.jax, "process_index", lambda: 1)
    assert progress.mode() == "off"


def test_a_bad_override_is_named(monkeypatch):
    monkeypatch.setenv("NND_PROGRESS", "fancy")
    with pytest.raises(ValueError, match="NND_PROGRESS='fancy': choose one of bar, lines, off"):
        progress.mode()


_ON_A_TERMINAL = textwrap.dedent("""
    from absl import logging
    from nnd.progress import Progress
    logging.set_verbosity(logging.INFO)
    logging.use_absl_handler()
    with Progress("training", 3, unit="step", lines=False) as bar:
        bar.update()
        logging.info("a line logged while the bar is open")
        bar.update(2)
""")


def test_a_terminal_gets_a_live_bar_and_log_lines_above_it():
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = {k: v for k, v in os.environ.items() if k != "NND_PROGRESS"}
    proc = subprocess.Popen([sys.executable, "-c", _ON_A_TERMINAL], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=120) == 0
    text = b"".join(chunks).decode(errors="replace")
    assert "training" in text and "3/3" in text and "step/s" in text, text
    before, _, _ = text.partition("a line logged while the bar is open")
    start_of_line = max(before.rfind("\r"), before.rfind("\n"))
    assert "|" not in before[start_of_line + 1:], text  # the bar was cleared first
