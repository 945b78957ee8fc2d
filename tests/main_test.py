"""Tests for nnd.main: the command line as a user types it (config overrides, one-line errors)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.train.num_steps=4", "--config.train.log_every=2", "--config.train.checkpoint_every=4",
        "--config.train.sample_every=0", "--config.data.batch_size=32", "--config.model.hidden=16",
        "--config.model.depth=1", "--config.model.embed_dim=8", "--config.loss.num_steps=10"]


def _main(*args):
    return subprocess.run([sys.executable, "-m", "nnd.main", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow  # fast-tier budget: CI's slow tier runs it
def test_law_specs_and_process_parameters_train_a_toy_from_the_command_line(tmp_path):
    result = _main("--config=configs/toy_gaussian.py", f"--workdir={tmp_path}",
                   "--config.loss.q=student_t:5", "--config.loss.p=gaussian",
                   "--config.process.params.beta_max=10", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in records] == [2, 4]
    assert os.listdir(tmp_path / "checkpoints") == ["4"]
    assert "resumed" not in result.stderr
    # Quiet logs: no orbax INFO lines (about 40 per checkpoint otherwise), one closing line.
    lines = result.stderr.splitlines()
    assert not [line for line in lines if "orbax" in line or "checkpoint_manager.py" in line]
    assert len([line for line in lines if "] done: step 4 of 4" in line]) == 1


# One-line errors for a user's mistakes: every row of docs/errors.md, tests/user_errors_test.py.


# The disk filling mid-run: row 25 of docs/errors.md.


def test_orbax_tracebacks_of_a_full_disk_and_closed_event_loops_are_hidden():
    import logging
    import types

    from nnd import main

    full = ValueError("RESOURCE_EXHAUSTED: Error writing: No space left on device "
                      "[os_error_code='28']")
    record = logging.LogRecord("absl", logging.ERROR, "/x/orbax/checkpoint/future.py", 1,
                               "_SignalingThread.run() raised", None, (ValueError, full, None))
    assert not main._QuietLibraries().filter(record)
    other = logging.LogRecord("absl", logging.ERROR, "/x/orbax/checkpoint/future.py", 1,
                              "something else", None, None)
    assert main._QuietLibraries().filter(other)
    seen = []
    closed = types.SimpleNamespace(exc_value=RuntimeError("Event loop is closed"))
    main._quiet_closed_loop(closed, previous=seen.append)
    real = types.SimpleNamespace(exc_value=RuntimeError("real"))
    main._quiet_closed_loop(real, previous=seen.append)
    assert seen == [real]


def test_library_tracebacks_are_dropped_but_their_line_kept():
    # gcsfs logs each failed retry of an unreachable bucket with a traceback; nnd's one
    # line names the cause, so the library's line stays and its traceback goes.
    import logging
    import sys as sys_

    from nnd import main

    try:
        raise ConnectionError("Cannot connect to host storage.googleapis.com:443")
    except ConnectionError:
        info = sys_.exc_info()
    record = logging.LogRecord("gcsfs", logging.ERROR, "/x/gcsfs/retry.py", 1,
                               "_request out of retries", None, info)
    assert main._QuietLibraries().filter(record) and record.exc_info is None
    ours = logging.LogRecord("absl", logging.ERROR, "/x/nnd/train.py", 1, "mine", None, info)
    assert main._QuietLibraries().filter(ours) and ours.exc_info is not None


@pytest.mark.parametrize("env, libtpu, present, plugins, expected", [
    ({}, True, False, set(), "cpu"),  # libtpu on a CPU host: the TPU runtime is not started
    ({}, True, False, {"xla_cuda12"}, "cuda,cpu"),
    ({}, True, True, set(), None),  # a TPU host: nothing hidden
    ({}, False, False, set(), None),  # no libtpu, no noise
    ({"JAX_PLATFORMS": ""}, True, False, set(), None),  # the user's choice stands
    ({}, True, False, {"rocm"}, None),  # another plugin: leave jax's own choice
])
def test_the_tpu_runtime_is_skipped_only_where_libtpu_is_installed_and_no_tpu_is_present(
        monkeypatch, env, libtpu, present, plugins, expected):
    import importlib.util

    import jax

    from nnd import main

    updates = []
    monkeypatch.setattr(jax.config, "update", lambda name, value: updates.append((name, value)))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
        (object() if libtpu else None) if name == "libtpu" else real_find_spec(name, *a)))
    monkeypatch.setattr(main, "_accelerator_plugins", lambda: plugins)
    assert main.skip_absent_tpu(env, present=lambda: present) == expected
    assert updates == ([("jax_platforms", expected)] if expected else [])


def _libtpu_without_tpu():
    import importlib.util

    from nnd import aot

    return importlib.util.find_spec("libtpu") is not None and not aot.tpu_present()


@pytest.mark.slow  # a subprocess that loads libtpu (CI installs requirements-tpu.txt)
@pytest.mark.skipif(not _libtpu_without_tpu(), reason="needs libtpu installed on a host without TPU")
def test_a_config_error_on_a_host_without_tpu_prints_no_libtpu_noise(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    result = subprocess.run(
        [sys.executable, "-m", "nnd.main", "--config=configs/toy_gaussian.py",
         f"--workdir={tmp_path / 'w'}", "--config.loss.q=cauchy"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 2
    lines = result.stderr.splitlines()  # the config is resolved before any device is touched
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("nnd: config.loss.q: unknown increment law 'cauchy'")
