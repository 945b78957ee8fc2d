"""The coarse-K experiment on learned runs: trains what is missing, samples at each K, writes."""

import json

import pytest

from nnd.experiments import coarse

TINY = {"train.num_steps": 4, "train.log_every": 2, "train.checkpoint_every": 4,
        "model.hidden": 16, "model.depth": 1, "model.embed_dim": 8}


@pytest.mark.plumbing
@pytest.mark.slow  # end-to-end or many compiles; the fast tier stays under 5 minutes
def test_trains_missing_runs_and_measures_each_k(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="pass --train"):
        coarse.run(["toy_laplace"], str(tmp_path / "runs"), str(out), steps=(3, 7), n=50,
                   overrides=TINY)
    result = coarse.run(["toy_laplace"], str(tmp_path / "runs"), str(out), steps=(3, 7), n=50,
                        train_missing=True, overrides=TINY)
    row = result["runs"]["toy_laplace"]
    assert row["step"] == 4 and (row["scheme"], row["grid"]) == ("ancestral", "lambda")
    # K walk steps and the final Tweedie step
    assert row["by_steps"]["3"]["nfe"] == 4 and row["by_steps"]["7"]["nfe"] == 8
    for cell in row["by_steps"].values():
        assert cell["finite"] and cell["energy_distance"] > 0 and cell["blob_width"] > 0
    assert abs(row["data_floor"]) < 0.05 and abs(row["data_blob_width"] - 0.02) < 0.01
    assert json.loads((out / "coarse.json").read_text())["steps"] == [3, 7]
    assert "| toy_laplace | laplace / laplace | ancestral, lambda |" in (out / "coarse.md").read_text()
    assert (out / "coarse_samples.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_config_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no config configs/nope.py"):
        coarse.run(["nope"], str(tmp_path), str(tmp_path), steps=(3,), n=10)
