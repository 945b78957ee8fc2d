"""nnd.bench.evaluation: tiny sizes, checks the result's fields, never speed."""

import json

import pytest

from nnd import defaults, train
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


@pytest.mark.slow
def test_likelihood_of_a_trained_run(tmp_path):
    """A one-step digits run: its EMA parameters are restored, and said to be trained."""
    config = defaults.image("digits", "laplace")
    config.data.batch_size = 8
    config.train.num_steps = config.train.checkpoint_every = config.train.log_every = 1
    config.train.sample_every = 0
    train.train(config, str(tmp_path))
    lik = evaluation.likelihood_benchmark(row="laplace", workdir=str(tmp_path), num_examples=2,
                                          heun_steps=2, rtol=1e-2, log=lambda _: None)
    assert lik["trained"] and lik["num_examples"] == 2
    assert lik["config"] == "defaults.image('digits', 'laplace')"
    with pytest.raises(FileNotFoundError, match="train first"):
        evaluation.likelihood_benchmark(workdir=str(tmp_path / "empty"), num_examples=2)
