"""The train step on 8 simulated CPU devices equals the step on 1 device.

Runs in a subprocess because the device count is fixed when jax starts.
"""

import os
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    from nnd import defaults
    from nnd import train
    import tempfile

    assert jax.device_count() == 8, jax.devices()
    config = defaults.default()
    config.data.batch_size = 64
    config.model.hidden = 32
    config.model.depth = 1
    config.model.embed_dim = 16
    config.train.num_steps = 3
    config.train.log_every = 3
    config.train.checkpoint_every = 3
    config.optim.warmup_steps = 1
    meshes = {"one": train.make_mesh(jax.devices()[:1]), "eight": train.make_mesh()}
    params = {}
    for name, mesh in meshes.items():
        with tempfile.TemporaryDirectory() as workdir:
            state = train.train(config, workdir, mesh=mesh)
        leaves = jax.tree.leaves(state.params)
        assert all(len(x.sharding.device_set) == mesh.size for x in leaves)
        params[name] = [np.asarray(x) for x in leaves]
    worst = 0.0
    for a, b in zip(params["one"], params["eight"]):
        scale = np.maximum(np.abs(a), 1e-3)
        worst = max(worst, float(np.max(np.abs(a - b) / scale)))
    print("max relative difference", worst)
    assert worst <= 1e-5, worst
    """
)


@pytest.mark.slow
def test_eight_devices_match_one_device():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=root, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "max relative difference" in result.stdout
