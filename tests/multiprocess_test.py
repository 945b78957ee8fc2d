"""Two processes on localhost with jax.distributed (CPU collectives): data parallelism is exact.

The two-process run trains one step over the global batch (each process feeds its
half) and writes a checkpoint; the result must equal one process doing the same
step on the whole batch, and the checkpoint must restore in a one-process run.
"""

import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from nnd import main as main_lib
from nnd import train
from tests.fault_tolerance_test import _build, _config, _leaves

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from nnd import main
    assert main.initialize_distributed()
    import jax
    import numpy as np
    from tests.fault_tolerance_test import _config, _leaves
    from nnd import train
    assert jax.process_count() == 2 and jax.device_count() == 2, jax.devices()
    state = train.train(_config(num_steps=1, checkpoint_every=1), {workdir!r})
    if jax.process_index() == 0:
        np.savez({out!r}, *[np.asarray(x) for x in _leaves(state)])
    print("process", jax.process_index(), "done")
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_environment_detection():
    detect = main_lib.multiprocess_environment
    assert not detect({})
    assert detect({"JAX_COORDINATOR_ADDRESS": "host:1234"})
    assert detect({"SLURM_NTASKS": "4"}) and not detect({"SLURM_NTASKS": "1"})
    assert detect({"OMPI_COMM_WORLD_SIZE": "2"})
    assert detect({"TPU_WORKER_HOSTNAMES": "a,b"}) and not detect({"TPU_WORKER_HOSTNAMES": "a"})
    assert detect({"NND_DISTRIBUTED": "1"}) and not detect({"NND_DISTRIBUTED": "0", "SLURM_NTASKS": "4"})
    assert not main_lib.initialize_distributed({})  # single process: nothing to do
    with pytest.raises(ValueError, match="NND_PROCESS_ID"):
        main_lib.initialize_distributed({"JAX_COORDINATOR_ADDRESS": "localhost:1",
                                         "NND_NUM_PROCESSES": "2"})


@pytest.mark.slow
def test_two_processes_equal_one_and_their_checkpoint_restores_in_one(tmp_path):
    port = _free_port()
    workdir, out = tmp_path / "two", tmp_path / "two.npz"
    script = _CHILD.format(root=ROOT, workdir=str(workdir), out=str(out))
    procs = []
    for pid in range(2):
        env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1",
                   XLA_FLAGS="", JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                   NND_NUM_PROCESSES="2", NND_PROCESS_ID=str(pid))
        procs.append(subprocess.Popen([sys.executable, "-c", script], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
    two = [a for _, a in sorted(np.load(out).items(), key=lambda kv: int(kv[0].split("_")[1]))]

    single = train.train(_config(num_steps=1, checkpoint_every=1), str(tmp_path / "one"))
    assert jax.process_count() == 1
    for a, b in zip(_leaves(single), two):
        # Same batch and keys; only the order of the cross-process gradient sum differs.
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)

    # The two-process checkpoint restores (resharded onto this process's devices).
    run = _build(_config(num_steps=1, checkpoint_every=1), str(workdir))
    assert int(run.state.step) == 1
    for a, b in zip(_leaves(run.state), two):
        np.testing.assert_array_equal(a, b)
    run.manager.close()
