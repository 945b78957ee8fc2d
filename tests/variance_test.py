"""Tests for nnd.experiments.variance (the reverse-variance family on the exact score and on
learned toy networks)."""

import json

import jax
import numpy as np
import pytest

from nnd import increments, metrics, oracles, processes, walks
from nnd.experiments import variance


def test_members_parse_and_refuse():
    members = variance.parse_members("rule,eta=0.8,w=0.5,eta=0.9;w=0.25")
    assert members == (variance.Member(None), variance.Member(0.8), variance.Member(1.0, 0.5),
                       variance.Member(0.9, 0.25))
    assert [str(m) for m in members] == ["rule", "η=0.8", "η=1, w=0.5", "η=0.9, w=0.25"]
    assert members[0].resolved_eta(30) == walks.default_eta(30)
    for bad in ("eta=-1", "w=2", "sigma=1", "eta="):
        with pytest.raises(ValueError):
            variance.parse_members(bad)
    with pytest.raises(ValueError, match="ed_n"):
        variance.Settings(n=100, ed_n=200)


@pytest.mark.slow  # fast-tier budget: CI's slow tier runs it
def test_a_tiny_run_measures_each_member_like_the_walk(tmp_path):
    result = variance.main(["--out", str(tmp_path), "--n", "400", "--ed-n", "200", "--steps", "4",
                            "--laws", "laplace", "--processes", "vdm",
                            "--members", "rule,w=1"])
    written = json.loads((tmp_path / "variance.json").read_text())
    assert written["rows"] == json.loads(json.dumps(result["rows"])) and len(written["rows"]) == 2
    assert "| rule |" in (tmp_path / "variance.md").read_text()
    assert (tmp_path / "variance_widths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the w = 1 row is the analytic walk with the exact variance, from the run's own key
    process, gmm = processes.get("vdm"), oracles.gmm8()
    key_walks, _ = jax.random.split(jax.random.key(0))
    key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key_walks, 0), 0), 4)
    x = walks.reverse(process, increments.get("laplace"), oracles.gmm_score(process, gmm), key,
                      (400, 2), 4, scheme="analytic", x0_variance_fn=oracles.gmm_x0_variance(process, gmm))
    width, _ = metrics.nearest_centre(np.asarray(x), gmm.means)
    row = [r for r in written["rows"] if r["member"] == "η=1, w=1"][0]
    assert row["blob_width"] == pytest.approx(width, rel=1e-4)


@pytest.mark.slow  # trains six tiny networks
def test_learned_run_trains_both_kinds_and_samples_with_the_head(tmp_path):
    result = variance.main(["--out", str(tmp_path / "out"), "--learned", str(tmp_path / "runs"),
                            "--steps", "5", "--n", "200", "--ed-n", "100",
                            "--set", "train.num_steps=20", "--set", "train.checkpoint_every=20"])
    rows = result["rows"]
    assert {(r["config"], r["head"]) for r in rows} == {
        (c, h) for c in variance.TOYS for h in (False, True)}
    assert {r["member"] for r in rows if r["head"]} == {"η=1", "rule", "η=1, w=1", "η=1, w=0.5"}
    assert all(r["train_steps"] == 20 and r["K"] == 5 for r in rows)  # 20 steps: widths are noise
    assert (tmp_path / "runs" / "toy_laplace_head" / "checkpoints").is_dir()
    with pytest.raises(ValueError, match="no checkpoint"):
        variance.main(["--out", str(tmp_path / "out"), "--learned", str(tmp_path / "none"),
                       "--no-train", "--steps", "5", "--n", "200", "--ed-n", "100"])
