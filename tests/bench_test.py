"""Smoke test for nnd.bench.walks: tiny sizes, checks the result's fields, never speed."""

import json

from nnd.bench import walks as bench_walks


def test_benchmark_fields(tmp_path):
    out = tmp_path / "bench.json"
    bench_walks.main(["--steps", "5", "--points", "100", "--repeats", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    for key in ("num_steps", "num_points", "repeats", "process", "rows", "machine",
                "reference_law", "goal_ratio"):
        assert key in result, key
    assert result["num_steps"] == 5 and result["num_points"] == 100
    assert {"platform", "nproc", "jax", "backend"} <= set(result["machine"])
    assert [r["law"] for r in result["rows"]] == [
        "gaussian", "laplace", "uniform", "logistic", "student_t(df=5)", "gennorm(beta=1.5)",
        "rademacher"]
    for row in result["rows"]:
        for key in ("seconds", "compile_seconds", "ratio", "noise_seconds", "noise_ratio"):
            assert row[key] > 0.0, (row["law"], key)
        assert len(row["repeats"]) == 1
    assert result["rows"][0]["ratio"] == 1.0
