"""The train-step benchmark runs offline on tiny settings and reports its fields."""

import json

import pytest

from nnd.bench import OVERHEAD_GOAL, PEAK_FRACTION_GOAL
from nnd.bench import train as bench_train


@pytest.mark.slow
def test_train_benchmark_reports_every_row(tmp_path):
    with pytest.raises(ValueError, match="unknown rows"):
        bench_train.main(["--rows", "gaussian,cauchy"])
    out = tmp_path / "bench.json"
    report = bench_train.main(["--out", str(out), "--width", "8", "--blocks", "1",
                               "--batch", "4", "--steps", "1", "--repeats", "1",
                               "--rows", "gaussian,uniform_laplace", "--matmul-sizes", "64,128",
                               "--no-analysis"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["goal_ratio"] == OVERHEAD_GOAL
    assert report["goal_fraction_of_peak"] == PEAK_FRACTION_GOAL
    rows = report["rows"]
    assert [r["row"] for r in rows] == ["gaussian", "uniform_laplace"]
    assert [(r["q"], r["p"]) for r in rows] == [("gaussian", "gaussian"), ("uniform", "laplace")]
    assert rows[0]["ratio"] == 1.0 and rows[0]["loss_alone_ratio"] == 1.0
    for r in rows:
        for key in ("seconds_per_step", "examples_per_second", "compile_seconds", "flops_per_step",
                    "bytes_per_step", "achieved_flops_per_second", "fraction_of_matmul_peak",
                    "loss_alone_seconds", "ratio", "loss_alone_ratio"):
            assert r[key] > 0, (r["row"], key)
        assert r["achieved_flops_per_second"] == pytest.approx(
            r["flops_per_step"] / r["seconds_per_step"])
    assert report["config"]["image_shape"] == [32, 32, 3]
    peak = report["matmul_peak"]
    assert [p["name"] for p in peak["probes"]] == ["matmul 64", "matmul 128"]
    assert peak["flops_per_second"] == max(p["flops_per_second"] for p in peak["probes"]) > 0
    assert peak["probes"][1]["flops"] == 2 * 128 ** 3
    assert "probes" not in report  # --no-analysis: rows and peak only
    assert {"cpu_model", "device_kind", "backend"} <= set(report["machine"])
    assert "| gaussian / gaussian |" in bench_train.markdown(report)
