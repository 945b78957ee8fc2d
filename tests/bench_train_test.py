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
    # chunked attention by default; FLOP per step are those of the unchunked step (XLA
    # would count the chunk loop once)
    assert report["config"]["query_chunk"] == bench_train.QUERY_CHUNK > 0
    whole = bench_train.main(["--width", "8", "--blocks", "1", "--batch", "4", "--steps", "1",
                              "--repeats", "1", "--rows", "gaussian", "--matmul-sizes", "64",
                              "--no-analysis", "--query-chunk", "-1"])
    assert whole["config"]["query_chunk"] == -1
    assert whole["rows"][0]["flops_per_step"] == rows[0]["flops_per_step"]


@pytest.mark.slow
def test_probes_time_each_formulation_before_and_after():
    probes = bench_train._probes(2, (32, 32, 3), 8, query_chunk=128)
    names = [p.name for p in probes]
    assert len(names) == 5
    assert "as a convolution" in names[1] and "as Pointwise" in names[2]
    assert "query_chunk" not in names[3] and "query_chunk=128" in names[4]
    # before and after compute the same FLOP (the chunked loop's taken from the whole)
    assert probes[1].flops == pytest.approx(probes[2].flops, rel=0.01)
    assert probes[4].flops == probes[3].flops > 0
    for p in probes:
        p.run(1)
