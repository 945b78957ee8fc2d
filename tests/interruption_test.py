"""Interruption in every mode: SIGINT or SIGTERM leaves whole files, one line, and a rerun works.

Each test starts the command in a subprocess, waits until it is mid-work, signals it, and
checks that the exit status is the mode's (training: 0 after its checkpoint; sample, eval
and prepare: 128 + the signal), that stderr holds one ``nnd: interrupted`` line and no
traceback, and that every file where the user pointed is whole (it loads) or absent, with
no temporary file left. Then the same command runs again to completion.

Where the signal lands must not be left to timing: the child is ``python -m nnd.main``
(``nnd.data``'s ``main`` for prepare) with one hook, :data:`_GATED_CHILD`, that stops at a
chosen moment and says so on stderr, and the signal is sent then:

- sample and eval: just before the rename that publishes a written file (its whole
  content is in the temporary file: the latest moment a file can be cut);
- train: after step 2 is logged (the loop checkpoints the next step and stops cleanly);
- prepare: after tfds wrote the array_record files, before it writes dataset_info.json.
"""

import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests import data_prepare_test

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.train.log_every=2", "--config.train.checkpoint_every=4",
        "--config.train.sample_every=0", "--config.data.batch_size=32", "--config.model.hidden=16",
        "--config.model.depth=1", "--config.model.embed_dim=8", "--config.loss.num_steps=10",
        "--config.sampling.num_steps=10", "--config.sampling.num_samples=64",
        "--config.sampling.batch_size=32", "--config.eval.likelihood=false",
        "--config.eval.num_examples=32", "--config.eval.batch_size=32",
        "--config.eval.num_samples=32", "--config.eval.picture_laws=('gaussian',)"]
COMMAND = ["--config=configs/toy_gaussian.py", "--config.train.num_steps=8", *TINY]
READY = "nnd-test: waiting for a signal"
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}

#: ``python -m nnd.main`` with one hook (NND_TEST_GATE), which waits for the test's signal:
#: ``replace:NAME`` before the rename that publishes the file NAME; ``logged:N`` once step N
#: is in metrics.jsonl, until the loop's preemption handler has seen the signal.
_GATED_CHILD = """
import os, signal, sys, time
from absl import app
from nnd import main, paths

kind, _, what = os.environ["NND_TEST_GATE"].partition(":")

def wait(done=lambda: False):
    print({ready!r}, file=sys.stderr, flush=True)
    deadline = time.time() + 120
    while time.time() < deadline and not done():
        time.sleep(0.01)  # a signal handler that raises ends the wait here

if kind == "replace":
    replace = os.replace

    def gated_replace(src, dst):
        if os.path.basename(os.fspath(dst)) == what:
            wait()
        return replace(src, dst)

    os.replace = gated_replace
else:
    append = paths.append

    def gated_append(path, data):
        append(path, data)
        if str(path).endswith("metrics.jsonl") and '"step": %s,' % what in str(data):
            handler = signal.getsignal(signal.SIGINT)
            wait(lambda: getattr(getattr(handler, "__self__", None), "requested", None))

    paths.append = gated_append
sys.argv = ["nnd.main"] + sys.argv[1:]
app.run(main.main)
""".format(ready=READY)


class _Child:
    """A subprocess whose stderr is read line by line on a thread (so waiting never blocks)."""

    def __init__(self, args, env=None):
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self.lines, self._seen = [], threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stderr:
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def wait_for(self, text, timeout=300):
        deadline = time.time() + timeout
        with self._seen:
            while not any(text in line for line in self.lines):
                if self.proc.poll() is not None and not self._reader.is_alive():
                    pytest.fail(f"the child ended before {text!r}:\n{self.stderr[-3000:]}")
                if time.time() > deadline:
                    self.proc.kill()
                    pytest.fail(f"no {text!r} within {timeout} s:\n{self.stderr[-3000:]}")
                self._seen.wait(1.0)

    def finish(self, timeout=300):
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=30)
        self.proc.stdout.close()
        return self.proc.returncode

    @property
    def stderr(self):
        return "".join(self.lines)


def _main(workdir, *args, gate=None):
    """``python -m nnd.main --workdir=WORKDIR ARGS`` (gated: the same with the hook above)."""
    if gate is None:
        return _Child([sys.executable, "-m", "nnd.main", f"--workdir={workdir}", *args])
    env = dict(os.environ, NND_TEST_GATE=gate)
    return _Child([sys.executable, "-c", _GATED_CHILD, f"--workdir={workdir}", *args], env=env)


def _interrupt(child, signum, gate_text=READY):
    child.wait_for(gate_text)
    child.proc.send_signal(signum)
    return child.finish()


def _tfrecords_whole(data: bytes) -> bool:
    at = 0
    while at + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[at:at + 8])
        at += 12 + length + 4
    return at == len(data)


def _assert_whole_or_absent(root, skip=("checkpoints",)):
    """Every file below ``root`` loads as what its name says; none is a temporary file."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip]
        for name in files:
            path = os.path.join(folder, name)
            assert not name.startswith(".") and ".tmp" not in name, f"left behind: {path}"
            if name.endswith(".npz"):
                with np.load(path) as npz:
                    [npz[k] for k in npz.files]
            elif name.endswith(".json"):
                json.load(open(path))
            elif name.endswith(".jsonl"):
                text = open(path).read()
                assert text.endswith("\n"), path
                [json.loads(line) for line in text.splitlines()]
            elif name.endswith(".png"):
                png = open(path, "rb").read()
                assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[-8:-4] == b"IEND", path
            elif name.startswith("events.out.tfevents."):
                assert _tfrecords_whole(open(path, "rb").read()), path


def _assert_one_line(stderr, text):
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("nnd: ")]
    assert len(lines) == 1 and lines[0].startswith(text), stderr[-3000:]


# ---------------------------------------------------------------------------------------
# the mechanism, in this process (fast): a signal in the middle of a write


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_write_leaves_the_old_file_no_temporary_and_one_line(
        tmp_path, monkeypatch, capsys, signum):
    from nnd import paths

    target = tmp_path / "samples.npz"
    paths.savez(target, x=np.zeros(3))
    replace = os.replace

    def signalled_replace(src, dst):  # the new content is whole in the temporary file
        os.kill(os.getpid(), signum)  # the handler runs at the next instruction
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", signalled_replace)
    before = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a library's handler: Ctrl-C still stops
    with pytest.raises(SystemExit) as stopped:
        with paths.interruptible("sampling", lambda: "rerun the same command"):
            paths.savez(target, x=np.ones(3))
    assert stopped.value.code == EXIT[signum]
    assert signal.getsignal(signal.SIGTERM) is before
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    signal.signal(signal.SIGINT, signal.default_int_handler)
    name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
    assert capsys.readouterr().err == (f"nnd: interrupted ({name}) while sampling; rerun the "
                                       "same command\n")
    assert os.listdir(tmp_path) == ["samples.npz"]
    np.testing.assert_array_equal(paths.load_npz(target)["x"], np.zeros(3))


def test_prepare_removes_what_a_killed_preparation_left(tmp_path, capsys):
    from nnd import data

    left = tmp_path / "mnist" / "incomplete.AB12CD_3.0.1"
    left.mkdir(parents=True)
    (left / "mnist-train.array_record-00000-of-00001").write_bytes(b"half")
    other = tmp_path / "mnist" / "incomplete.AB12CD_2.0.0"  # another version: not this one's
    other.mkdir()
    data._remove_incomplete(str(tmp_path / "mnist" / "3.0.1"))
    assert os.listdir(tmp_path / "mnist") == [other.name]
    assert f"removing {left}, left by an interrupted preparation" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# every mode from the command line (slow: two or three jax start-ups each)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workdir with the checkpoint of COMMAND (8 steps), trained through the command line."""
    workdir = tmp_path_factory.mktemp("trained")
    child = _main(workdir, *COMMAND)
    assert child.finish() == 0, child.stderr[-3000:]
    return workdir


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.slow  # fast-tier budget (about 15 s): CI's slow tier runs it
def test_ctrl_c_in_training_checkpoints_the_step_and_the_rerun_finishes(tmp_path):
    child = _main(tmp_path, *COMMAND, gate="logged:2")
    assert _interrupt(child, signal.SIGINT) == 0, child.stderr[-3000:]  # the existing contract
    assert "Traceback" not in child.stderr
    stopped = re.search(r"interrupted \(Ctrl-C\): checkpoint of step (\d+) saved", child.stderr)
    assert stopped, child.stderr[-3000:]
    step = int(stopped.group(1))
    assert 2 < step < 8  # the step after the one whose record waited for the signal
    assert max(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == step
    _assert_whole_or_absent(tmp_path)
    rerun = _main(tmp_path, *COMMAND)
    assert rerun.finish() == 0, rerun.stderr[-3000:]
    assert f"resumed from step {step}" in rerun.stderr
    assert [json.loads(r)["step"] for r in open(tmp_path / "metrics.jsonl")] == [2, 4, 6, 8]
    _assert_whole_or_absent(tmp_path)


@pytest.mark.slow  # fast-tier budget (about 8 s each, and 8 s to train): CI's slow tier runs it
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sample_interrupted_writes_nothing_and_the_rerun_writes_every_file(
        trained, tmp_path, signum):
    workdir = _copy(trained, tmp_path / "w")
    child = _main(workdir, *COMMAND, "--mode=sample", gate="replace:samples.npz")
    assert _interrupt(child, signum) == EXIT[signum], child.stderr[-3000:]
    _assert_one_line(child.stderr, "nnd: interrupted")
    assert not (workdir / "samples.npz").exists() and not (workdir / "samples.png").exists()
    _assert_whole_or_absent(workdir)
    rerun = _main(workdir, *COMMAND, "--mode=sample")
    assert rerun.finish() == 0, rerun.stderr[-3000:]
    with np.load(workdir / "samples.npz") as npz:
        assert npz["samples"].shape == (64, 2)
    assert (workdir / "samples.png").exists()
    _assert_whole_or_absent(workdir)


@pytest.mark.slow  # fast-tier budget (about 20 s each): CI's slow tier runs it
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_eval_interrupted_leaves_whole_files_and_the_rerun_writes_every_file(
        trained, tmp_path, signum):
    workdir = _copy(trained, tmp_path / "w")
    child = _main(workdir, *COMMAND, "--mode=eval", gate="replace:metrics.json")
    assert _interrupt(child, signum) == EXIT[signum], child.stderr[-3000:]
    _assert_one_line(child.stderr, "nnd: interrupted")
    assert not (workdir / "eval" / "metrics.json").exists()
    _assert_whole_or_absent(workdir)
    rerun = _main(workdir, *COMMAND, "--mode=eval")
    assert rerun.finish() == 0, rerun.stderr[-3000:]
    assert json.load(open(workdir / "eval" / "metrics.json"))["step"] == 8
    assert sorted(os.listdir(workdir / "eval")) == ["metrics.json", "samples.png",
                                                    "samples_by_law.png", "shift_kl.png"]
    _assert_whole_or_absent(workdir)


#: ``python -m nnd.data`` on fake raw MNIST files (tests/data_prepare_test.py's ``raw``
#: fixture, in a child), optionally waiting for the test's signal once tfds has written the
#: array_record files and before it writes dataset_info.json.
_PREPARE_CHILD = """
import os, sys, time
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download import checksums
from nnd import data

raw_dir, gated, argv = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
cls = tfds.builder_cls("mnist")
fake = {{}}
for url, info in cls.url_infos.items():
    fake[url] = checksums.compute_url_info(os.path.join(raw_dir, info.filename))
    fake[url].filename = info.filename
cls.url_infos = fake
module = sys.modules[cls.__module__]
module._TRAIN_EXAMPLES, module._TEST_EXAMPLES = {train}, {test}
if gated:
    write = tfds.core.DatasetInfo.write_to_directory

    def gated_write(self, *args, **kwargs):
        print({ready!r}, file=sys.stderr, flush=True)
        time.sleep(120)  # a signal handler that raises ends the wait here
        return write(self, *args, **kwargs)

    tfds.core.DatasetInfo.write_to_directory = gated_write
sys.exit(data.main(argv))
""".format(ready=READY, train=data_prepare_test.MNIST_TRAIN, test=data_prepare_test.MNIST_TEST)


@pytest.mark.slow  # fast-tier budget (about 13 s each): CI's slow tier runs it
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_prepare_interrupted_leaves_no_partial_dataset_and_the_rerun_prepares_it(tmp_path, signum):
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    data_prepare_test._mnist_files(raw_dir, np.random.default_rng(0))
    data_dir = tmp_path / "tfds"
    args = ["prepare", "mnist", f"--data_dir={data_dir}", f"--manual_dir={raw_dir}"]
    env = dict(os.environ, PYTHONPATH=ROOT, **data_prepare_test.OFFLINE_ENV)

    def prepare(gated):
        return _Child([sys.executable, "-c", _PREPARE_CHILD, str(raw_dir), "1" if gated else "0",
                       *args], env=env)

    child = prepare(True)
    assert _interrupt(child, signum) == EXIT[signum], child.stderr[-3000:]
    _assert_one_line(child.stderr[child.stderr.index(READY):], "nnd: interrupted")
    left = sorted(os.listdir(data_dir / "mnist")) if (data_dir / "mnist").exists() else []
    assert not [name for name in left if "incomplete" in name or name == "3.0.1"], left
    rerun = prepare(False)
    assert rerun.finish() == 0, rerun.stderr[-3000:]
    assert "nnd: mnist ready in" in rerun.stderr
    assert sorted(os.listdir(data_dir / "mnist")) == ["3.0.1"]
    from nnd import data

    assert len(data.image_source("mnist", "train", data_dir=str(data_dir))) == \
        data_prepare_test.MNIST_TRAIN
