"""Smoke test for nnd.bench.evaluation: tiny sizes, checks the result's fields, never speed."""

import json

import pytest

from nnd.bench import evaluation


@pytest.mark.slow
def test_benchmark_fields(tmp_path):
    out = tmp_path / "bench.json"
    evaluation.main(["--examples", "3", "--heun-steps", "2", "--rtol", "1e-2", "--points", "50",
                     "--target", "10", "--quick", "--out", str(out)])
    result = json.loads(out.read_text())
    lik = result["likelihood"]
    assert lik["num_examples"] == 3 and not lik["trained"]
    for solver in ("ode", "heun"):
        row = lik["rows"][solver]
        assert row["seconds_per_1000"] > 0 and row["nfe"] > 0
    assert lik["rows"]["heun"]["nfe"] == 4
    assert lik["bpd_difference"] == lik["rows"]["heun"]["bpd"] - lik["rows"]["ode"]["bpd"]
    smp = result["samplers"]
    assert [r["sampler"] for r in smp["rows"]] == ["walk", "pc", "heun", "ode"]
    # target 10 is met by everything: the cheapest setting of each sampler is reported
    assert all(smp["cheapest_at_target"][s] is not None for s in ("walk", "pc", "heun", "ode"))
    assert {"platform", "nproc", "jax", "backend"} <= set(result["machine"])
