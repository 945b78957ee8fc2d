"""Tests for nnd.aot: topology names, the one-line error, the compile report (libtpu) and the
likelihood's precision in the lowered HLO.

The compile tests need libtpu (requirements-tpu.txt, which CI installs; about 0.7 GB installed): XLA's TPU
compiler builds for a described slice on this CPU host, no TPU involved.
"""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from nnd import aot, defaults
from nnd import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name, libtpu_name, chips", [
    ("v4:2x2x1", "v4:2x2x1", 4), ("v4-8", "v4:2x2x1", 4), ("v4-16", "v4:2x2x2", 8),
    ("v5e:4x4", "v5e:4x4", 16), ("v5litepod-16", "v5e:4x4", 16), ("v5litepod-8", "v5e:2x4", 8),
    ("v5p-8", "v5p:2x2x1", 4), ("v6e-8", "v6e:2x4", 8),
])
def test_parse_topology_accepts_libtpu_and_cloud_names(name, libtpu_name, chips):
    topology = aot.parse_topology(name)
    assert (topology.libtpu_name, topology.num_chips, topology.name) == (libtpu_name, chips, name)


@pytest.mark.parametrize("name", ["v4-7", "v3-8", "v5e:2x2x1", "v4:2x2", "tpu", "", "v9:2x2"])
def test_parse_topology_refuses_unknown_names(name):
    with pytest.raises(aot.TopologyError, match="unknown TPU topology.*v4:2x2x1.*v4-8"):
        aot.parse_topology(name)


def test_main_reports_an_unknown_topology_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "nnd.main", "--config=configs/digits_gaussian.py",
         f"--workdir={tmp_path}", "--mode=compile", "--topology=v4-7"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("nnd: ")] == [
        next(line for line in result.stderr.splitlines() if "unknown TPU topology 'v4-7'" in line)]


def _toy_report():
    program = {"argument_bytes": 2**20, "output_bytes": 2**20, "temp_bytes": 2**21,
               "total_bytes": 2**22, "fits": True, "flops": 1.234e6, "compile_seconds": 3.0,
               "flops_per_example": 1.234e6 / 64}
    return {"topology": "v4-8", "libtpu_topology": "v4:2x2x1", "num_devices": 4,
              "device_kind": "TPU v4", "num_processes": 1, "hbm_bytes_per_chip": 32 * 2**30,
              "config": {"dataset": "gmm8", "model": "mlp", "dtype": "float32", "remat": False,
                         "global_batch": 64, "per_device_batch": 16, "num_steps": 20000},
              "programs": {"train_step": program}, "fits": True,
              "estimate": aot._estimate(1.234e6, aot.parse_topology("v4-8"), 20000)}


def test_the_table_prints_estimates_with_three_significant_figures():
    table = aot.format_table(_toy_report())
    step = 1.234e6 / (4 * 275e12 * aot.ASSUMED_MFU)  # 3.74e-9 s: a toy step on four v4 chips
    assert f"ESTIMATED {step * 1e6:.3g} µs/step, {step * 2e4 * 1e6:.3g} µs to 20,000 steps" in table
    assert "0.0 ms" not in table and " 0.0 h" not in table
    assert "0.00123" in table  # GFLOP of the step, not 0.0
    assert [aot._duration(s) for s in (62e-3, 21.7e-3 * 1e6, 150.0, 2.5e-7)] == [
        "62 ms", "6.03 h", "2.5 min", "0.25 µs"]
    assert [aot._figure(x) for x in (13804.2, 13.21, 0.001234)] == ["13,804", "13.2", "0.00123"]


def test_a_gs_workdir_gets_the_report_and_the_local_disk_nothing(tmp_path, monkeypatch):
    from nnd import paths
    from tests import fake_gcs

    monkeypatch.chdir(tmp_path)  # compiling is stood in for: the write is what is tested
    monkeypatch.setattr(aot, "compile_report", lambda config, topology: _toy_report())
    with fake_gcs.serve() as (store, _):
        report = aot.run(defaults.default(), "gs://bucket/run", "v4-8")
        assert json.loads(paths.get("gs://bucket/run/compile/v4-8.json").read_text()) == report
        assert not store.unsupported, store.unsupported
    assert os.listdir(tmp_path) == []


def test_likelihood_solve_runs_at_highest_precision():
    # a bfloat16 training network: the solve still uses float32 and HIGHEST everywhere
    config = defaults.image("digits", "gaussian")
    config.model.num_blocks = 1
    config.model.dtype = "bfloat16"
    experiment = config_lib.resolve(config, num_devices=1)
    params = jax.eval_shape(experiment.model.init, jax.random.key(0),
                            jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)))["params"]
    text = aot.likelihood_solve(config, experiment).lower(
        params, jax.ShapeDtypeStruct((4, 8, 8, 1), jnp.float32), jax.random.key(0)).as_text()
    ops = [line for line in text.splitlines()
           if re.search(r"stablehlo\.(dot_general|convolution)", line)]
    assert ops and all("HIGHEST" in line for line in ops), [l for l in ops if "HIGHEST" not in l][:3]
    assert "bf16" not in text


def _digits(**model):
    config = defaults.image("digits", "gaussian")
    config.model.update(model)
    config.sampling.num_steps = 10
    config.eval.solver = "heun"  # the same network evaluations in a cheaper program
    config.eval.ode_steps = 4
    return config


_FIELDS = {"topology", "libtpu_topology", "device_kind", "num_devices", "num_processes",
           "num_chips", "hbm_bytes_per_chip", "config", "programs", "fits", "estimate"}
_PROGRAM_FIELDS = {"argument_bytes", "output_bytes", "temp_bytes", "total_bytes", "fits", "flops",
                   "compile_seconds"}


# Slow tier: each compiles three programs for TPU (about 90 s on 2 idle cores; 5 min busy).
@pytest.mark.slow
@pytest.mark.parametrize("topology, processes", [
    pytest.param("v4-8", 1, id="single_host"),
    pytest.param("v5e:2x4", 2, id="multi_host", marks=pytest.mark.slow),
])
def test_compile_writes_the_report(tmp_path, topology, processes):
    pytest.importorskip("libtpu")
    report = aot.run(_digits(num_blocks=2), str(tmp_path), topology)
    with open(tmp_path / "compile" / f"{topology.replace(':', '_')}.json") as f:
        assert json.load(f) == json.loads(json.dumps(report))
    assert _FIELDS <= set(report) and report["num_processes"] == processes
    assert report["device_kind"].startswith("TPU v")
    assert set(report["programs"]) == {"train_step", "sampler", "likelihood"}
    for program in report["programs"].values():
        assert _PROGRAM_FIELDS <= set(program) and program["fits"] and program["flops"] > 0
    step = report["programs"]["train_step"]
    assert step["total_bytes"] < report["hbm_bytes_per_chip"]
    assert step["flops_per_example"] == pytest.approx(step["flops"] / 128)
    assert report["fits"] and 0 < report["estimate"]["step_seconds"] < 1
    assert "ESTIMATE" in report["estimate"]["label"]


@pytest.mark.slow
def test_a_batch_that_cannot_fit_reports_fits_false(tmp_path):
    pytest.importorskip("libtpu")
    config = _digits(num_blocks=1)
    config.data.batch_size = 2**19  # 2^17 examples per v5e chip: far beyond 16 GiB
    report = aot.compile_report(config, "v5e:2x2", programs=("train_step",))
    step = report["programs"]["train_step"]
    assert report["fits"] is False and step["fits"] is False
    assert step["total_bytes"] > report["hbm_bytes_per_chip"]
