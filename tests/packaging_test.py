"""Tests of the package as a user installs it: ``pip install -e .``, then nnd from any directory."""

import json
import os
import re
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _names(specs):
    """Distribution names of requirement specs, normalised (``ml_collections`` -> ``ml-collections``)."""
    return {re.split(r"[<>=\[; ]", spec)[0].lower().replace("_", "-") for spec in specs}


@pytest.mark.slow  # an editable install into a fresh venv, then a tiny run (about 20 s)
def test_pip_install_editable_then_train_and_sample_from_another_directory(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # The dependencies (setuptools for the build among them) are this interpreter's.
    with open(os.path.join(site, "zz_borrowed_dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    # pyproject.toml's own build (setuptools, no isolation: the test needs no index), no deps
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
         "--no-build-isolation", "--no-index", "-e", ROOT],
        capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([python, "-c", "import nnd; print(nnd.__file__)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True)
    assert where.stdout.strip() == os.path.join(ROOT, "nnd", "__init__.py"), where.stderr[-2000:]
    # `pip install -e .` brings the dependencies of requirements.txt (and extras test, tpu)
    requires = subprocess.run([python, "-c", "import importlib.metadata as m; "
                               "print('\\n'.join(m.requires('nnd')))"], cwd=elsewhere, env=env,
                              capture_output=True, text=True).stdout.splitlines()
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        needed = [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]
    assert _names(needed) <= _names(requires)
    assert any("extra == \"tpu\"" in r for r in requires)
    tiny = ["--config.train.num_steps=4", "--config.train.log_every=2", "--config.train.sample_every=0",
            "--config.data.batch_size=32", "--config.model.hidden=16", "--config.model.depth=1",
            "--config.model.embed_dim=8", "--config.sampling.num_samples=20",
            "--config.sampling.num_steps=5"]
    for mode in ("train", "sample"):
        # a config given by absolute path, a relative workdir: as in `cd /tmp && python -m nnd.main`
        result = subprocess.run(
            [python, "-m", "nnd.main", f"--config={ROOT}/configs/toy_laplace.py", "--workdir=run",
             f"--mode={mode}", *tiny], cwd=elsewhere, env=env, capture_output=True, text=True,
            timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    assert [json.loads(line)["step"] for line in open(elsewhere / "run" / "metrics.jsonl")] == [2, 4]
    assert (elsewhere / "run" / "samples.npz").exists()
