"""Fault tolerance of training: SIGTERM, SIGKILL, unreadable checkpoints, NaN, bad workdirs.

Each interrupted run is resumed and compared with an uninterrupted one: every batch
and key is a pure function of the step, so the final parameters must be identical.
"""

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from nnd import checkpoints, data, defaults, paths, summaries, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 1500


def _build(config, workdir):
    """The run as the loop builds it (restores the newest readable checkpoint)."""
    return train.build(config, workdir, batches=data.make_batches(config), mesh=train.make_mesh())


def _config(num_steps=TOTAL, checkpoint_every=50):
    config = defaults.default()
    config.data.batch_size = 32
    config.model.hidden, config.model.depth, config.model.embed_dim = 16, 1, 8
    config.loss.num_steps = 20
    config.train.num_steps = num_steps
    config.train.log_every = 10
    config.train.checkpoint_every = checkpoint_every
    config.train.sample_every = 0
    config.optim.warmup_steps = 2
    return config


def _leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves((state.params, state.ema_params, state.opt_state))]


def _assert_same(a, b):
    for x, y in zip(_leaves(a), _leaves(b)):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return train.train(_config(), str(tmp_path_factory.mktemp("straight")))


_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from tests.fault_tolerance_test import _config
    from nnd import train
    state = train.train(_config(), {workdir!r})
    print("final step", int(state.step))
""")


def _start_child(workdir):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen([sys.executable, "-c", _CHILD.format(root=ROOT, workdir=str(workdir))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_steps(proc, workdir, min_step, timeout=300):
    """Waits until metrics.jsonl shows min_step; fails if the child ends first."""
    path = workdir / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        if path.exists():
            steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if line]
            if steps and steps[-1] >= min_step:
                return steps[-1]
        time.sleep(0.05)
    proc.kill()
    pytest.fail("child made no progress")


def _checkpoints(workdir):
    return sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_resume_is_identical(tmp_path, uninterrupted):
    proc = _start_child(tmp_path)
    _wait_for_steps(proc, tmp_path, 120)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "preempted: checkpoint of step" in err
    stopped = int(out.split("final step")[1])
    assert 120 <= stopped < TOTAL
    assert _checkpoints(tmp_path)[-1] == stopped  # the current step, not the last periodic one
    resumed = train.train(_config(), str(tmp_path))
    assert int(resumed.step) == TOTAL
    _assert_same(resumed, uninterrupted)


@pytest.mark.slow
def test_sigkill_loses_at_most_the_steps_since_the_last_checkpoint(tmp_path, uninterrupted):
    proc = _start_child(tmp_path)
    seen = _wait_for_steps(proc, tmp_path, 170)
    proc.kill()
    proc.communicate()
    saved = _checkpoints(tmp_path)
    # Saves are asynchronous and a save waits for the one before it, so the newest finalised
    # checkpoint is at most two intervals (the one in flight, and the steps since) behind.
    assert saved and seen - 2 * 50 - 10 <= saved[-1] <= TOTAL
    run = _build(_config(), str(tmp_path))
    assert int(run.state.step) == saved[-1]
    run.manager.close()
    resumed = train.train(_config(), str(tmp_path))
    _assert_same(resumed, uninterrupted)


def _corrupt(step_dir):
    """Overwrites every data file of a checkpoint with garbage of half its length."""
    for root, _, files in os.walk(step_dir):
        for name in files:
            path = os.path.join(root, name)
            size = os.path.getsize(path)
            with open(path, "wb") as f:
                f.write(b"\x00garbage" * max(size // 16, 1))


@pytest.mark.slow  # end-to-end or many compiles; the fast tier stays under 5 minutes
def test_unreadable_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    config = _config(num_steps=6, checkpoint_every=3)
    straight = train.train(config, str(tmp_path / "straight"))
    train.train(config, str(tmp_path / "run"))
    _corrupt(tmp_path / "run" / "checkpoints" / "6")
    with caplog.at_level(logging.WARNING):
        run = _build(config, str(tmp_path / "run"))
    assert int(run.state.step) == 3
    assert any("checkpoints/6 is unreadable" in r.getMessage() for r in caplog.records)
    run.manager.close()
    aside = [d for d in os.listdir(tmp_path / "run" / "checkpoints") if d.startswith("6.unreadable")]
    assert len(aside) == 1  # kept for inspection, out of orbax's way
    resumed = train.train(config, str(tmp_path / "run"))
    assert int(resumed.step) == 6
    _assert_same(resumed, straight)


def _poison_step(monkeypatch, bad_step):
    original = data.Batches.__call__

    def batches(self, step):
        x = original(self, step)
        return np.full_like(x, np.nan) if step == bad_step else x

    monkeypatch.setattr(data.Batches, "__call__", batches)


@pytest.mark.plumbing
def test_nan_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    _poison_step(monkeypatch, 4)  # the batch of step index 4 gives step 5 a NaN loss
    config = _config(num_steps=9, checkpoint_every=3)
    with pytest.raises(train.NonFiniteError) as caught:
        train.train(config, str(tmp_path))
    assert str(caught.value) == (
        "step 5: non-finite loss (loss=nan, grad_norm=nan); the last good checkpoint is step 3 "
        f"in {tmp_path}/checkpoints. Set config.train.skip_nonfinite=True to skip such steps "
        "instead.")
    assert caught.value.__cause__ is None and _checkpoints(tmp_path) == [3]
    run = _build(config, str(tmp_path))
    assert all(np.all(np.isfinite(x)) for x in _leaves(run.state))
    run.manager.close()


@pytest.mark.plumbing
@pytest.mark.slow  # a compile (about 3 s)
def test_nan_before_the_first_checkpoint_says_there_is_none(tmp_path, monkeypatch):
    _poison_step(monkeypatch, 1)
    with pytest.raises(train.NonFiniteError, match=r"^step 2: non-finite loss .*; no checkpoint was "
                       rf"saved yet in {tmp_path}/checkpoints\. Set config"):
        train.train(_config(num_steps=9, checkpoint_every=3), str(tmp_path))
    assert _checkpoints(tmp_path) == []


# The NaN stop from the command line: row 24 of docs/errors.md.


def _steps_recorded(workdir):
    """(steps in metrics.jsonl, steps of the loss in TensorBoard, read by its own loader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = [json.loads(line)["step"] for line in open(workdir / "metrics.jsonl")]
    events = EventAccumulator(str(workdir / "tensorboard"))
    events.Reload()
    return rows, [e.step for e in events.Scalars("loss")]


@pytest.mark.plumbing
@pytest.mark.slow  # two runs and a restore (about 11 s); the mechanism's fast test is below
def test_a_fallback_to_an_older_checkpoint_drops_the_records_past_it(tmp_path):
    config = _config(num_steps=6, checkpoint_every=3)
    config.train.log_every = 1
    train.train(config, str(tmp_path))
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    _corrupt(tmp_path / "checkpoints" / "6")
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "lo')  # and a line cut short by a crash
    resumed = train.train(config, str(tmp_path))  # falls back to step 3, trains 4..6 again
    assert int(resumed.step) == 6
    rows, events = _steps_recorded(tmp_path)
    assert rows == events == [1, 2, 3, 4, 5, 6]  # each step once, not 1..6 then 4..6
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["loss"] == first["loss"]  # the retrained steps are the same steps


def test_drop_after_keeps_records_up_to_the_step_and_is_a_no_op_when_nothing_is_later(tmp_path):
    writer = summaries.SummaryWriter(str(tmp_path))
    for step in (2, 4, 6):
        writer.write(step, {"loss": float(step)})
    png = b"\x89PNG\r\n\x1a\n" + b"\0\0\0\x0dIHDR" + b"\0\0\0\x01" * 2 + b"\x08\0\0\0\0"
    writer.images(6, {"samples": png})
    before = {p.name: p.read_bytes() for p in (tmp_path / "tensorboard").iterdir()}
    assert summaries.drop_after(str(tmp_path), 6) == 0
    assert {p.name: p.read_bytes() for p in (tmp_path / "tensorboard").iterdir()} == before
    assert summaries.drop_after(str(tmp_path), 4) == 3  # one row, one scalar event, one image
    rows, events = _steps_recorded(tmp_path)
    assert rows == events == [2, 4]
    assert summaries.drop_after(str(tmp_path), 0) == 4
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    assert list((tmp_path / "tensorboard").iterdir()) == []  # nothing but a header: deleted


def test_skip_nonfinite_skips_the_bad_step(tmp_path, monkeypatch):
    _poison_step(monkeypatch, 4)
    config = _config(num_steps=9, checkpoint_every=3)
    config.train.skip_nonfinite = True
    state = train.train(config, str(tmp_path))
    assert int(state.step) == 9 and _checkpoints(tmp_path) == [3, 6, 9]
    assert all(np.all(np.isfinite(x)) for x in _leaves(state))
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert records[-1]["skipped_steps"] == 1


def test_workdir_that_is_a_file_is_refused_before_training(tmp_path):
    path = tmp_path / "not_a_dir"
    path.write_text("x")
    with pytest.raises(OSError, match="not writable"):
        train.train(_config(num_steps=2), str(path))


def test_full_disk_is_refused_before_training(tmp_path, monkeypatch):
    import shutil
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 100, 100))
    with pytest.raises(OSError, match="MiB free"):
        train.train(_config(num_steps=2), str(tmp_path))
    assert not (tmp_path / "checkpoints" / "2").exists()


def _fail_writes_from(monkeypatch, step):
    """Metrics of ``step`` on: paths.append raises ENOSPC (a disk that fills mid-run)."""
    original = paths.append

    def append(path, data):
        if str(path).endswith("metrics.jsonl") and json.loads(data)["step"] >= step:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return original(path, data)

    monkeypatch.setattr(paths, "append", append)


@pytest.mark.plumbing
def test_a_disk_that_fills_mid_run_ends_naming_the_workdir_and_last_good_checkpoint(tmp_path,
                                                                                     monkeypatch):
    _fail_writes_from(monkeypatch, 20)  # step 20 is logged just before its checkpoint
    with pytest.raises(checkpoints.WorkdirError) as caught:
        train.train(_config(num_steps=30, checkpoint_every=10), str(tmp_path))
    message = str(caught.value)
    assert f"workdir {str(tmp_path)!r}: no space left" in message
    assert f"last good checkpoint is step 10 in {tmp_path}/checkpoints" in message
    assert "\n" not in message and caught.value.__cause__ is None and _checkpoints(tmp_path) == [10]


@pytest.mark.plumbing
def test_a_checkpoint_that_fails_for_a_full_disk_is_reported_the_same_way(tmp_path, monkeypatch):
    # orbax re-raises TensorStore's failure of a background save at the next save, as this.
    full = ("RESOURCE_EXHAUSTED: Error writing \"params.Dense_0.kernel/0.0\" in OCDBT database: "
            "Failed to write 300980 bytes to file 16: No space left on device [os_error_code='28']")
    original = checkpoints.save

    def save(mngr, step, state, **kwargs):
        if step >= 20:
            raise ValueError(full)
        return original(mngr, step, state, **kwargs)

    monkeypatch.setattr(checkpoints, "save", save)
    with pytest.raises(checkpoints.WorkdirError, match="no space left.*last good checkpoint is "
                                                       "step 10 in"):
        train.train(_config(num_steps=30, checkpoint_every=10), str(tmp_path))
    assert checkpoints.is_disk_full(ValueError(full))
    assert not checkpoints.is_disk_full(RuntimeError("commit failed"))
    chained = RuntimeError("save failed")
    chained.__cause__ = OSError(errno.EDQUOT, "Disk quota exceeded")
    assert checkpoints.is_disk_full(chained)


def test_ctrl_c_asks_to_stop_and_a_second_ctrl_c_stops_at_once():
    before = signal.getsignal(signal.SIGINT)
    preemption = checkpoints.Preemption()
    try:
        assert not preemption.reached(1)
        os.kill(os.getpid(), signal.SIGINT)
        assert preemption.reached(2) and preemption.requested == "SIGINT"
        with pytest.raises(KeyboardInterrupt, match="second Ctrl-C"):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        preemption.close()
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.slow
def test_ctrl_c_checkpoints_the_current_step_exits_zero_and_resume_is_identical(tmp_path,
                                                                                 uninterrupted):
    proc = _start_child(tmp_path)
    _wait_for_steps(proc, tmp_path, 120)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "interrupted (Ctrl-C): checkpoint of step" in err and "Traceback" not in err
    stopped = int(out.split("final step")[1])
    assert 120 <= stopped < TOTAL and _checkpoints(tmp_path)[-1] == stopped
    resumed = train.train(_config(), str(tmp_path))
    _assert_same(resumed, uninterrupted)
