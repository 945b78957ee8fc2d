"""End-to-end test of nnd.experiments.table2 with tiny digits models."""

import json
import os

import pytest

from nnd.experiments import table2

TINY = {
    "data.batch_size": 16, "model.channels": 8, "model.num_blocks": 1, "model.embed_dim": 8,
    "loss.num_steps": 10, "train.num_steps": 2, "train.log_every": 1,
    "train.checkpoint_every": 2, "train.sample_every": 0, "sampling.num_steps": 5,
    "sampling.num_samples": 8, "eval.num_examples": 10, "eval.batch_size": 5,
    "eval.num_samples": 8, "eval.rtol": 1e-2, "eval.atol": 1e-2,
}


def test_missing_checkpoint_without_train_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--train"):
        table2.run(str(tmp_path / "runs"), str(tmp_path / "out"), overrides=TINY)


@pytest.mark.slow
def test_table2_trains_evaluates_and_writes_table_and_figure(tmp_path):
    root, out = tmp_path / "runs", tmp_path / "out"
    result = table2.run(str(root), str(out), train_missing=True, overrides=TINY)
    assert list(result["rows"]) == ["gaussian", "laplace", "uniform", "uniform_laplace"]
    # uniform/gaussian shares the gaussian/gaussian checkpoint, hence its likelihood model.
    assert sorted(os.listdir(root / "digits_uniform" / "checkpoints")) == sorted(
        os.listdir(root / "digits_gaussian" / "checkpoints"))
    rows = result["rows"]
    assert rows["uniform"]["walk_bound"]["penalty_nats"] > 0
    assert rows["gaussian"]["walk_bound"]["penalty_nats"] == 0
    assert rows["uniform"]["samples"]["law"] == "uniform"
    for r in rows.values():
        assert r["likelihood"]["num_examples"] == 10 and r["samples"]["num_samples"] == 8
    table = (out / "table2.md").read_text().strip().splitlines()
    assert len(table) == 2 + 4 and table[2].startswith("| gaussian / gaussian |")
    assert json.loads((out / "table2.json").read_text())["rows"].keys() == rows.keys()
    assert (out / "table2_samples.png").read_bytes()[:4] == b"\x89PNG"
