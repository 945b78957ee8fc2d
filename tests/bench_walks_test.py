"""nnd.bench.walks: tiny sizes, checks the result's fields and the walk's memory, never speed."""

import pytest

from nnd import increments, oracles, processes
from nnd.bench import OVERHEAD_GOAL
from nnd.bench import walks as bench_walks


@pytest.mark.slow
def test_benchmark_fields():
    result = bench_walks.benchmark(num_steps=5, num_points=100, repeats=1,
                                   laws=("gaussian", "student_t:5"), log=lambda _: None)
    assert result["num_steps"] == 5 and result["num_points"] == 100
    assert result["goal_ratio"] == OVERHEAD_GOAL == 1.05
    assert [r["law"] for r in result["rows"]] == ["gaussian", "student_t(df=5)"]
    for row in result["rows"]:
        for key in ("seconds", "compile_seconds", "ratio", "noise_seconds", "noise_ratio"):
            assert row[key] > 0.0, (row["law"], key)
        assert len(row["repeats"]) == 1
    assert result["rows"][0]["ratio"] == 1.0
    assert "| student_t(df=5) |" in bench_walks.markdown_table(result)


@pytest.mark.slow
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
    table = bench_walks.memory_table({"gmm8": {"shape": [300, 2], "rows": rows}})
    assert table.count("\n| gmm8 | 300×2 |") == 3
