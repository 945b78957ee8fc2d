"""Tests of nnd.experiments.table2: the table, the command line, and end to end with tiny digits models."""

import json
import os

import pytest

from nnd import defaults
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
    assert not (tmp_path / "out" / "table2.json").exists()


def test_main_without_train_asks_for_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="--train"):
        table2.main(["--root", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])


def test_markdown_has_a_line_per_row():
    rows = {row: {"likelihood": {"bpd": 1.0, "se_examples": 0.01, "nfe_mean": 50.0},
                  "walk_bound": {"total_bpd": 2.0},
                  "walk_estimate": {"total_bpd": 2.5, "total_with_penalty_bpd": 3.0},
                  "samples": {"energy_distance": 0.5, "nfe": 10.0}} for row in defaults.ROWS}
    rows["laplace"].pop("likelihood")
    lines = table2.markdown({"rows": rows, "paper_cifar10": table2.PAPER}).splitlines()
    assert len(lines) == 2 + 4 and lines[1] == "|" + "---|" * 7
    assert lines[2] == ("| gaussian / gaussian | 1.000 ± 0.010 | 2.000 | 3.00 | 0.5000 | 10 / 50 "
                        "| 2.49, 1.98 |")
    assert lines[3] == "| laplace / laplace | – | 2.000 | 3.00 | 0.5000 | 10 / – | 2.47, 2.44 |"


@pytest.mark.slow
def test_table2_trains_evaluates_and_writes_table_and_figure(tmp_path):
    root, out = tmp_path / "runs", tmp_path / "out"
    result = table2.run(str(root), str(out), train_missing=True, overrides=TINY)
    assert list(result["rows"]) == ["gaussian", "laplace", "uniform", "uniform_laplace"]
    # uniform/gaussian shares the gaussian/gaussian checkpoint, hence its likelihood model.
    assert sorted(os.listdir(root / "digits_uniform" / "checkpoints")) == sorted(
        os.listdir(root / "digits_gaussian" / "checkpoints"))
    rows = result["rows"]
    assert rows["uniform"]["walk_estimate"]["penalty_nats"] > 0
    assert rows["gaussian"]["walk_estimate"]["penalty_nats"] == 0
    assert rows["uniform"]["samples"]["law"] == "uniform"
    for r in rows.values():
        assert r["likelihood"]["num_examples"] == 10 and r["samples"]["num_samples"] == 8
    table = (out / "table2.md").read_text().strip().splitlines()
    assert len(table) == 2 + 4 and table[2].startswith("| gaussian / gaussian |")
    written = json.loads((out / "table2.json").read_text())
    assert written["rows"].keys() == rows.keys() and "nproc" in written["machine"]
    assert (out / "table2_samples.png").read_bytes()[:4] == b"\x89PNG"
