"""Smoke test for nnd.bench.walks: tiny sizes, checks the result's fields, never speed."""

import json

from nnd import increments, oracles, processes
from nnd.bench import OVERHEAD_GOAL
from nnd.bench import walks as bench_walks


def test_benchmark_fields(tmp_path):
    out = tmp_path / "bench.json"
    bench_walks.main(["--steps", "5", "--points", "100", "--repeats", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    for key in ("num_steps", "num_points", "repeats", "process", "rows", "machine",
                "reference_law", "goal_ratio", "memory"):
        assert key in result, key
    assert result["num_steps"] == 5 and result["num_points"] == 100
    assert result["goal_ratio"] == OVERHEAD_GOAL == 1.05
    assert {"platform", "nproc", "jax", "backend", "cpu_model", "device_kind",
            "device_count"} <= set(result["machine"])
    assert [r["law"] for r in result["rows"]] == [
        "gaussian", "laplace", "uniform", "logistic", "student_t(df=5)", "gennorm(beta=1.5)",
        "rademacher"]
    for row in result["rows"]:
        for key in ("seconds", "compile_seconds", "ratio", "noise_seconds", "noise_ratio"):
            assert row[key] > 0.0, (row["law"], key)
        assert len(row["repeats"]) == 1
    assert result["rows"][0]["ratio"] == 1.0
    assert [(r["num_steps"], r["return_path"]) for r in result["memory"]["rows"]] == [
        (10, False), (1000, False), (1000, True)]


def test_walk_memory_does_not_grow_with_k():
    """lax.scan keeps no path: K = 400 needs no more than K = 4; keeping the path does."""
    process = processes.get("vp")
    score = oracles.gmm_score(process, oracles.gmm8())
    rows = bench_walks.walk_memory(process, increments.get("laplace"), score, (300, 2),
                                   num_steps=(4, 400), path_steps=400)
    short, long, path = (r["bytes"] for r in rows)
    for b in (short, long, path):
        assert b["total"] > 0 and b["output"] > 0
        assert b["total"] == b["temp"] + b["argument"] + b["output"] - b["alias"]
    assert long["total"] <= 2 * short["total"]
    assert path["total"] - long["total"] >= 0.9 * 400 * 300 * 2 * 4  # the kept path, float32
    assert all(r["compile_seconds"] > 0 for r in rows)


def test_memory_table_names_every_row():
    res = {"gmm8": {"shape": [3, 2], "rows": [
        {"num_steps": k, "return_path": p, "compile_seconds": 0.1,
         "bytes": {"temp": 1, "argument": 2, "output": 3, "alias": 0, "total": 6, "xla_peak": 0}}
        for k, p in ((10, False), (1000, True))]}}
    table = bench_walks.memory_table(res)
    assert table.count("\n| gmm8 | 3×2 |") == 2
