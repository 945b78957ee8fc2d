"""Tests for nnd.compile_cache: a second start loads its programs; a bad cache never breaks a run.

Each start is its own process (JAX keeps compiled programs in memory, so only a new process
shows what the persistent cache does). The programs are small, so the tests lower the
threshold below which a program is not written (``NND_COMPILE_CACHE_MIN_SECONDS=0``).
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = ["--config.train.num_steps=4", "--config.train.log_every=2", "--config.train.checkpoint_every=4",
        "--config.train.sample_every=0", "--config.data.batch_size=32", "--config.model.hidden=16",
        "--config.model.depth=1", "--config.model.embed_dim=8", "--config.loss.num_steps=10"]

_START = """
import sys
import jax, jax.numpy as jnp
from absl import logging
from nnd import compile_cache
logging.set_verbosity(logging.INFO)
compile_cache.setup(sys.argv[1], "unused")

@jax.jit
def program(x):
    for _ in range(20):
        x = jnp.tanh(x @ x)
    return x

with compile_cache.logged("toy program"):
    jax.block_until_ready(program(jnp.ones((32, 32))))
"""


def _start(cache: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NND_COMPILE_CACHE_MIN_SECONDS": "0"}
    return subprocess.run([sys.executable, "-c", _START, cache], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _compiled_lines(stderr: str) -> list[str]:
    """The "compiled ..." lines, from absl's format (``I... file.py:N] compiled``) or, before
    absl's handler is set up, Python's (``INFO:absl:compiled``)."""
    return [re.split(r"\] |INFO:absl:", line, maxsplit=1)[-1] for line in stderr.splitlines()
            if re.search(r"(\] |INFO:absl:)compiled ", line)]


def test_a_second_start_hits_the_cache(tmp_path):
    cache = tmp_path / "cache"
    first, second = _start(str(cache)), _start(str(cache))
    assert first.returncode == second.returncode == 0, first.stderr[-2000:] + second.stderr[-2000:]
    [miss], [hit] = _compiled_lines(first.stderr), _compiled_lines(second.stderr)
    assert miss.startswith("compiled toy program in ") and f"cache miss: written to {cache}" in miss
    assert hit.startswith("compiled toy program in ") and hit.endswith("(cache hit)")
    assert any(name.startswith("jit_program") for name in os.listdir(cache))


@pytest.mark.slow  # fast-tier budget: CI's slow tier runs it
def test_cache_off_says_so(tmp_path):
    result = _start("")
    assert result.returncode == 0, result.stderr[-2000:]
    [line] = _compiled_lines(result.stderr)
    assert line.endswith("(cache off)")


def test_a_corrupt_cache_falls_back_with_one_warning(tmp_path):
    cache = tmp_path / "cache"
    assert _start(str(cache)).returncode == 0
    for entry in cache.iterdir():
        if entry.is_file():
            entry.write_bytes(b"not an executable")
    result = _start(str(cache))
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in result.stderr.splitlines() if "compile cache" in line and "unusable" in line]
    assert len(warnings) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    [line] = _compiled_lines(result.stderr)
    assert line.startswith("compiled toy program in ")


@pytest.mark.slow  # fast-tier budget: CI's slow tier runs it
def test_an_unwritable_cache_falls_back_with_one_warning(tmp_path):
    cache = tmp_path / "a_file"
    cache.write_text("not a folder")
    result = _start(str(cache))
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in result.stderr.splitlines() if "compile cache" in line and "unusable" in line]
    assert len(warnings) == 1, result.stderr[-3000:]
    [line] = _compiled_lines(result.stderr)
    assert line.endswith("(cache off)")


def test_the_default_cache_is_beside_the_run():
    from nnd import compile_cache, defaults

    assert defaults.default().compile_cache == "workdir"
    assert compile_cache.resolve_dir("workdir", "gs://bucket/run") == "gs://bucket/run/compile_cache"
    assert compile_cache.resolve_dir("", "runs/x") == ""
    assert compile_cache.resolve_dir("/tmp/c", "runs/x") == "/tmp/c"


@pytest.mark.slow  # fast-tier budget: CI's slow tier runs it
def test_a_restarted_training_loads_its_train_step(tmp_path):
    env = {**os.environ, "NND_COMPILE_CACHE_MIN_SECONDS": "0"}

    def start(steps):
        return subprocess.run([sys.executable, "-m", "nnd.main", "--config=configs/toy_gaussian.py",
                               f"--workdir={tmp_path}", *TINY, f"--config.train.num_steps={steps}"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)

    first, second = start(4), start(6)
    assert first.returncode == second.returncode == 0, first.stderr[-2000:] + second.stderr[-2000:]
    miss = [line for line in _compiled_lines(first.stderr) if line.startswith("compiled train step")]
    hit = [line for line in _compiled_lines(second.stderr) if line.startswith("compiled train step")]
    assert len(miss) == 1 and "cache miss: written to" in miss[0], first.stderr[-3000:]
    assert len(hit) == 1 and hit[0].endswith("(cache hit)"), second.stderr[-3000:]
    assert (tmp_path / "compile_cache").is_dir()


def test_a_logged_program_keeps_its_jit_attributes():
    import jax
    import jax.numpy as jnp

    from nnd import compile_cache

    step = compile_cache.first_call_logged("toy step", jax.jit(lambda x: x + 1))
    compiled = step.lower(jnp.float32(1.0)).compile()  # what the benchmarks do with a run's step
    assert float(compiled(jnp.float32(1.0))) == 2.0
    assert float(step(jnp.float32(2.0))) == float(step(jnp.float32(3.0))) - 1.0 == 3.0
