"""Every row of docs/errors.md, run as a user types it: exit status 2, that one line, no traceback.

The rows run as subprocesses of ``python -m nnd.main``, all of a tier at once (a few at a
time) in one module fixture, and each row is its own test. A row's "before it" names a
set-up below; an unknown set-up fails the test, so the page cannot name one the test does
not make.
"""

import concurrent.futures
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "errors.md"
TINY = ["--config.train.num_steps=4", "--config.train.log_every=2", "--config.train.checkpoint_every=4",
        "--config.train.sample_every=0", "--config.data.batch_size=32", "--config.model.hidden=16",
        "--config.model.depth=1", "--config.model.embed_dim=8", "--config.loss.num_steps=10"]

# Children that run nnd.main with one thing broken on purpose.
_NAN_AT_STEP_5 = """
import sys
import numpy as np
from nnd import data, main
original = data.Batches.__call__
data.Batches.__call__ = lambda self, step: (np.full_like(original(self, step), np.nan)
                                            if step == 4 else original(self, step))
sys.argv = ["nnd.main"] + sys.argv[1:]
main.run()
"""
_DISK_FULL_AT_STEP_4 = """
import errno, sys
from nnd import main, paths
original = paths.append

def append(path, data):
    if str(path).endswith("metrics.jsonl") and '"step": 4' in str(data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return original(path, data)

paths.append = append
sys.argv = ["nnd.main"] + sys.argv[1:]
main.run()
"""
_NO_GOOGLE = {"NO_GCE_CHECK": "true", "GCE_METADATA_HOST": "127.0.0.1:1",
              "GCE_METADATA_ROOT": "127.0.0.1:1", "GOOGLE_CLOUD_PROJECT": "fake",
              "GOOGLE_APPLICATION_CREDENTIALS": "/nonexistent/credentials.json"}


def _rows():
    rows = []
    for line in PAGE.read_text().splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 5 and cells[0].isdigit():
            number, tier, before, typed, expected = cells
            rows.append(dict(number=int(number), tier=tier, before=before,
                             typed=typed.strip("`"), expected=expected.strip("`").replace("\\|", "|")))
    return rows


ROWS = _rows()


def _trained(base: pathlib.Path) -> pathlib.Path:
    """A 4-step toy run, trained once per module and copied into the rows that need it."""
    source = base / "trained"
    if not source.exists():
        result = subprocess.run([sys.executable, "-m", "nnd.main", "--config=configs/toy_gaussian.py",
                                 f"--workdir={source}", *TINY], cwd=ROOT, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
    return source


def _run_row(row: dict, base: pathlib.Path) -> subprocess.CompletedProcess:
    workdir = base / f"row{row['number']}"
    env, command = dict(os.environ), [sys.executable, "-m", "nnd.main"]
    typed = row["typed"].replace("$W", str(workdir)).split()
    before = row["before"].replace("`", "")
    add_workdir = True
    if before == "$W is a file":
        workdir.write_text("not a folder")
    elif before == "$W-junk.npz is a text file":
        pathlib.Path(f"{workdir}-junk.npz").write_text("not weights")
    elif before == "$W holds a 4-step run":
        shutil.copytree(_trained(base), workdir)
    elif before == "no Google credentials, no network":
        env.update(_NO_GOOGLE)
    elif before == "the batch of step 5 is NaN":
        command = [sys.executable, "-c", _NAN_AT_STEP_5]
    elif before == "the disk fills when step 4 is logged":
        command = [sys.executable, "-c", _DISK_FULL_AT_STEP_4]
    elif before == "no --workdir":
        add_workdir = False
    elif before:
        raise AssertionError(f"row {row['number']}: no set-up for {row['before']!r}")
    # The config first (overrides may only follow it), then the tiny run, then what the row
    # types (a later override wins).
    config = [word for word in typed if word.startswith("--config=")] or ["--config=configs/toy_gaussian.py"]
    typed = [word for word in typed if not word.startswith("--config=")]
    if add_workdir and not any(word.startswith("--workdir=") for word in typed):
        typed.insert(0, f"--workdir={workdir}")
    return subprocess.run(command + config + TINY + typed, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def results(tmp_path_factory, request):
    """Every row of the tiers this session runs, three at a time."""
    base = tmp_path_factory.mktemp("user_errors")
    tiers = {"fast"} | ({"slow"} if "slow" in (request.config.getoption("-m") or "") else set())
    todo = [row for row in ROWS if row["tier"] in tiers]
    if any(row["before"].replace("`", "") == "$W holds a 4-step run" for row in todo):
        _trained(base)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        done = dict(zip([row["number"] for row in todo], pool.map(lambda r: _run_row(r, base), todo)))
    return base, done


def test_the_page_has_the_rows_the_issue_asks_for():
    typed = " ".join(row["typed"] for row in ROWS)
    for needed in ("configs/nope.py", "--config.trainng", "--config.train.batch_size=abc",
                   "--config.model.dtype", "--mode=sample", "--mode=eval", "student_t:1",
                   "fid_weights", "gs://"):
        assert needed in typed, needed
    assert [row["number"] for row in ROWS] == list(range(1, len(ROWS) + 1))
    assert {row["tier"] for row in ROWS} <= {"fast", "slow"}


@pytest.mark.parametrize("number", [r["number"] for r in ROWS if r["tier"] == "fast"])
def test_fast_row(results, number):
    _check(results, number)


@pytest.mark.slow
@pytest.mark.parametrize("number", [r["number"] for r in ROWS if r["tier"] == "slow"])
def test_slow_row(results, number):
    _check(results, number)


def _check(results, number):
    base, done = results
    row = next(r for r in ROWS if r["number"] == number)
    result = done[number]
    workdir = str(base / f"row{number}")
    lines = [line.replace(workdir, "$W") for line in result.stderr.splitlines() if line.startswith("nnd: ")]
    assert result.returncode == 2, (number, result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(lines) == 1, lines
    expected = row["expected"]
    if expected.endswith("…"):
        assert lines[0].startswith(expected[:-1]), (lines[0], expected)
    else:
        assert lines[0] == expected
