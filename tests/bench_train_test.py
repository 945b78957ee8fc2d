"""The train-step benchmark runs offline on tiny settings and reports its fields."""

import json

import pytest

from nnd.bench import train as bench_train


@pytest.mark.slow
def test_train_benchmark_reports_every_row(tmp_path):
    out = tmp_path / "bench.json"
    report = bench_train.main(["--out", str(out), "--width", "8", "--blocks", "1",
                               "--batch", "4", "--steps", "1", "--repeats", "1",
                               "--rows", "gaussian,uniform_laplace"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    rows = report["rows"]
    assert [r["row"] for r in rows] == ["gaussian", "uniform_laplace"]
    assert rows[0]["ratio"] == 1.0
    for r in rows:
        assert r["seconds_per_step"] > 0 and r["examples_per_second"] > 0
        assert r["compile_seconds"] > 0


def test_unknown_row_is_refused():
    with pytest.raises(ValueError, match="unknown rows"):
        bench_train.main(["--rows", "gaussian,cauchy"])
