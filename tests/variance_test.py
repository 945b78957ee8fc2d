"""Tests for nnd.experiments.variance (the reverse-variance family on the exact score and on
learned toy networks)."""

import json
import math
import os

import jax
import numpy as np
import pytest

from nnd import increments, metrics, oracles, processes, walks
from nnd.experiments import common, variance


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


def test_configs_parse_sets_and_names_and_refuse_others():
    assert variance.parse_configs("toys") == variance.TOYS
    assert variance.parse_configs("digits,digits_gaussian") == variance.DIGITS
    assert variance.parse_configs("toy_laplace,digits_uniform") == ("toy_laplace", "digits_uniform")
    with pytest.raises(ValueError, match="unknown --configs entry 'cifar_uniform'"):
        variance.parse_configs("cifar_uniform")
    with pytest.raises(ValueError, match="w > 0 goes in --head-members"):
        variance.Learned(members=variance.parse_members("w=0.5"))
    with pytest.raises(ValueError, match="--results goes with --learned"):
        variance.main(["--out", "unused", "--results", "page.md"])


def test_a_section_is_put_on_a_page_once_and_kept_when_the_page_is_remade(tmp_path):
    page = str(tmp_path / "results.md")
    common.put_section(page, "variance-learned", "## A\n\nfirst")
    common.put_section(page, "variance-learned", "## A\n\nsecond")
    text = (tmp_path / "results.md").read_text()
    assert text.count("## A") == 1 and "second" in text and "first" not in text
    (tmp_path / "results.md").write_text("# Table\n\nrows\n\n" + text + "\ntrailing words\n")
    kept = common.kept_sections(page)
    assert kept.startswith("<!-- begin variance-learned") and kept.endswith("-->\n")
    assert "second" in kept and "Table" not in kept and "trailing" not in kept
    common.put_section(page, "variance-learned", "## A\n\nthird")
    text = (tmp_path / "results.md").read_text()
    assert text.startswith("# Table\n\nrows\n\n") and text.endswith("trailing words\n")
    assert "third" in text and "second" not in text
    assert common.kept_sections(str(tmp_path / "none.md")) == ""


@pytest.mark.slow  # trains two tiny digits networks (about a minute)
def test_learned_digits_share_the_gaussian_network_score_fd_and_fill_the_results_page(
        tmp_path, monkeypatch):
    from nnd import samplers
    from nnd.experiments import digit_features

    runs, out, page = tmp_path / "runs", tmp_path / "out", tmp_path / "results.md"
    page.write_text("# Table 2\n")
    tiny = ["--set", "model.channels=8", "--set", "model.num_blocks=1", "--set",
            "model.embed_dim=8", "--set", "train.num_steps=2", "--set", "train.checkpoint_every=2",
            "--set", "train.sample_every=0", "--set", "data.batch_size=16"]
    argv = ["--out", str(out), "--learned", str(runs), "--configs",
            "digits_gaussian,digits_uniform", "--steps", "3", "--n", "40", "--ed-n", "40",
            "--head-members", "w=0.5", "--results", str(page), *tiny]
    result = variance.main(argv)
    rows = result["rows"]
    assert [(r["config"], r["head"], r["member"], r["law"]) for r in rows] == [
        ("digits_gaussian", False, "η=1", "gaussian"), ("digits_gaussian", False, "rule", "gaussian"),
        ("digits_gaussian", True, "η=1, w=0.5", "gaussian"),
        ("digits_uniform", False, "η=1", "uniform"), ("digits_uniform", False, "rule", "uniform"),
        ("digits_uniform", True, "η=1, w=0.5", "uniform")]
    # uniform/gaussian samples the gaussian/gaussian networks: copied, not trained
    for suffix in ("", "_head"):
        assert sorted(os.listdir(runs / f"digits_uniform{suffix}" / "checkpoints")) == sorted(
            os.listdir(runs / f"digits_gaussian{suffix}" / "checkpoints"))
        assert not (runs / f"digits_uniform{suffix}" / "metrics.jsonl").exists()
    assert all(math.isfinite(r["fd"]) and -1 < r["spread_error"] for r in rows)
    written = (out / "variance_digits.md").read_text()
    assert "| digits_uniform | yes | η=1, w=0.5 |" in written
    text = page.read_text()
    assert text.startswith("# Table 2\n") and text.count("| digits_gaussian | no | η=1 |") == 1
    assert "python -m nnd.experiments.variance --out" in text
    # a second run with the same settings reuses every unit (nothing is sampled) and
    # replaces the page's section instead of adding one
    monkeypatch.setattr(samplers, "draw", lambda *a, **k: pytest.fail("sampled again"))
    again = variance.main(argv + ["--no-train"])
    assert again["rows"] == json.loads(json.dumps(rows))
    assert page.read_text().count("| digits_gaussian | no | η=1 |") == 1
    # the spread error is 0 for the test digits themselves; FD is FID's in the classifier's features
    score = variance._DigitsScore()
    reference = digit_features.held_out_digits()
    assert score(reference)["spread_error"] == pytest.approx(0.0, abs=1e-6)
    assert score(2 * reference)["spread_error"] == pytest.approx(3.0, rel=1e-5)
    assert score(reference)["fd"] == pytest.approx(digit_features.sample_quality(
        score.classifier, reference, reference)["fd"])
