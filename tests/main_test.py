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


@pytest.mark.fast_first
@pytest.mark.parametrize("args, message", [
    (["--config.loss.q=cauchy"], "nnd: config.loss.q: unknown increment law 'cauchy'"),
    (["--config.process.params.sigma_max=80"], "nnd: config.process: process 'vp' got unexpected"),
    (["--mode=sample"], "nnd: no checkpoint in"),
])
def test_a_users_mistake_is_one_line_and_no_traceback(tmp_path, args, message):
    result = _main("--config=configs/toy_gaussian.py", f"--workdir={tmp_path / 'w'}", *TINY, *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("nnd: ")] == [
        next(line for line in result.stderr.splitlines() if line.startswith(message))]
