"""Tests for nnd.experiments.invariance (Theorem 3.3 on gmm8 with the exact score) and the
command-line lists and outputs of nnd.experiments.common that every experiment shares.

Parametrised tests run their first case in the fast tier and the rest under ``slow``.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from nnd import increments, oracles, processes, walks
from nnd.experiments import common, invariance

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("invariance")
    result = invariance.main([
        "--out", str(out), "--n", "300", "--steps", "3,100", "--laws", "gaussian,student_t:5",
        "--seed", "1",
    ])
    return out, result


@pytest.mark.slow
def test_json_schema(tiny_run):
    out, result = tiny_run
    with open(out / "invariance.json") as fh:
        written = json.load(fh)
    for key in ("rows", "floor", "data_blob_width", "process", "n", "seed", "jax", "machine",
                "steps", "laws", "wall_seconds", "command"):
        assert key in written, key
    assert written["process"] == "vp" and written["n"] == 300 and written["seed"] == 1
    assert written["laws"] == ["gaussian", "student_t(df=5)"]
    assert written["steps"] == [3, 100]
    assert {"platform", "nproc", "backend", "device_kind"} <= set(written["machine"])
    assert written["command"].startswith("python -m nnd.experiments.invariance --out ")
    assert len(written["rows"]) == 4
    for row in written["rows"]:
        assert set(row) >= {"law", "K", "energy_distance", "blob_width", "seconds"}
        assert row["seconds"] >= 0.0 and row["blob_width"] > 0.0
    floor = written["floor"]
    assert floor["num_seeds"] == len(floor["energy_distance_samples"]) >= 2
    assert floor["energy_distance_std"] > 0.0
    assert written["rows"] == result["rows"]
    table = (out / "invariance.md").read_text()
    assert "| student_t(df=5) |" in table and table.count("| law | K=3 | K=100 |") == 2


@pytest.mark.slow
def test_figures_written(tiny_run):
    out, _ = tiny_run
    for name in ("invariance_ed.png", "invariance_samples.png"):
        data = (out / name).read_bytes()
        assert data[:8] == _PNG_SIGNATURE, name
        assert len(data) > 10_000, (name, len(data))


@pytest.mark.slow
def test_more_steps_get_closer_to_data(tiny_run):
    _, result = tiny_run
    rows = {(r["law"], r["K"]): r for r in result["rows"]}
    for law in ("gaussian", "student_t(df=5)"):
        coarse, fine = rows[(law, 3)], rows[(law, 100)]
        # K = 3 overshoots badly (Δt g² ≈ 7 at t = 1: ED ~ 2, blob width ~ 35);
        # K = 100 is at the data-vs-data floor (|ED| ~ 1e-2 at n = 300).
        assert fine["energy_distance"] < coarse["energy_distance"] - 0.02, (law, coarse, fine)
        assert fine["blob_width"] < 0.5 * coarse["blob_width"], (law, coarse, fine)
        assert abs(fine["blob_width"] - result["data_blob_width"]) < 0.01


@pytest.mark.slow  # fast-tier budget: CI's slow tier runs it
def test_run_draws_each_walk_from_its_documented_key():
    # The walk for (law, K) uses fold_in(fold_in(walks_key, crc32(law)), K), whatever
    # the place of the law in --laws.
    law = increments.get("laplace")
    settings = invariance.Settings(n=64, steps=(3,), laws=(law,), seed=2)
    result, samples, data = invariance.run(settings, log=lambda *a: None)
    process, gmm = processes.get("vp"), oracles.gmm8()
    key_walks, key_data, _ = jax.random.split(jax.random.key(2), 3)
    key = jax.random.fold_in(jax.random.fold_in(key_walks, invariance._law_tag(law)), 3)
    walk, _ = invariance.make_walk(process, law, oracles.gmm_score(process, gmm), 64, 3)
    np.testing.assert_array_equal(samples[("laplace", 3)], np.asarray(walk(key)))
    np.testing.assert_array_equal(data, np.asarray(oracles.sample_gmm(key_data, gmm, 64)))
    (row,) = result["rows"]
    assert row["law"] == "laplace" and row["K"] == 3 and np.isfinite(row["energy_distance"])
    assert result["floor"]["num_seeds"] == invariance.FLOOR_SEEDS


def test_walk_with_exact_score_reaches_the_data():
    process, gmm = processes.get("vp"), oracles.gmm8()
    walk, compile_s = invariance.make_walk(process, increments.get("uniform"),
                                           oracles.gmm_score(process, gmm), 500, 100)
    x = np.asarray(walk(jax.random.key(0)))
    assert x.shape == (500, 2) and compile_s > 0
    width, _ = invariance.metrics.nearest_centre(x, gmm.means)
    assert abs(width - 0.02) < 0.01  # the data's blob width, two coordinates of variance 0.1²


def test_data_floor_is_centred_on_zero():
    floor = invariance.data_floor(jax.random.key(0), oracles.gmm8(), 200, num_seeds=6)
    assert len(floor) == 6 and len(set(floor)) == 6
    assert abs(np.mean(floor)) < 3 * np.std(floor, ddof=1)  # unbiased U-statistic


def _fake_result(laws=("gaussian", "laplace"), steps=(3, 10)):
    rng = np.random.default_rng(0)
    rows = [{"law": law, "K": k, "energy_distance": float(v), "blob_width": 0.02 + abs(v)}
            for law in laws for k, v in zip(steps, rng.normal(size=len(steps)) * 0.01)]
    floor = {"energy_distance_mean": 0.0, "energy_distance_std": 1e-3, "num_seeds": 4}
    return {"laws": list(laws), "steps": list(steps), "rows": rows, "floor": floor, "n": 100,
            "data_blob_width": 0.02, "process": "vp"}


def test_markdown_table():
    lines = invariance.markdown_table(_fake_result()).splitlines()
    assert lines[2] == "| law | K=3 | K=10 |" and lines[3] == "|---|---|---|"
    assert sum(line.startswith("| laplace |") for line in lines) == 2
    assert lines[-1].startswith("| laplace | 0.0")


def test_plots_write_pngs(tmp_path):
    result = _fake_result()
    invariance.plot_energy_distance(result, str(tmp_path / "ed.png"))
    samples = {(law, k): np.random.default_rng(0).normal(size=(50, 2)) for law in result["laws"]
               for k in result["steps"]}
    invariance.plot_samples(result, samples, np.zeros((50, 2)), str(tmp_path / "samples.png"))
    for name in ("ed.png", "samples.png"):
        assert (tmp_path / name).read_bytes()[:8] == _PNG_SIGNATURE


# -- the shared command-line lists (nnd.experiments.common) ---------------------------


def test_parse_laws_reads_specs_through_increments_parse():
    laws = common.parse_laws("gaussian, student_t:5,gennorm:1.5")
    assert laws == (increments.get("gaussian"), increments.get("student_t", df=5.0),
                    increments.get("gennorm", beta=1.5))
    assert common.parse_laws(["laplace", increments.get("uniform")]) == (
        increments.get("laplace"), increments.get("uniform"))
    for law in laws:
        assert increments.parse(common.law_spec(law)) == law


@pytest.mark.fast_first
@pytest.mark.parametrize("text", [
    "gaussian,normal", "cauchy", "gaussian:2", "student_t:abc", "student_t:1.5", "gennorm:-1",
    "", "laplace:", "gaussian,gaussian"])
def test_bad_laws_raise(text):
    with pytest.raises(ValueError):
        common.parse_laws(text)


def test_parse_steps():
    assert common.parse_steps("100, 3,10") == (3, 10, 100)
    assert common.parse_steps([30, 10]) == (10, 30)


@pytest.mark.fast_first
@pytest.mark.parametrize("text", ["0", "10,abc", "", "10,10", "-3", "2.5"])
def test_bad_steps_raise(text):
    with pytest.raises(ValueError):
        common.parse_steps(text)


def test_settings_refuse_a_bad_n():
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        invariance.Settings(n=1)


def test_main_rejects_bad_law_before_running(tmp_path):
    with pytest.raises(ValueError, match="unknown increment law"):
        invariance.main(["--out", str(tmp_path), "--laws", "gaussian,normal"])
    assert not (tmp_path / "invariance.json").exists()


def test_settings_refuse_an_unknown_scheme_or_grid():
    with pytest.raises(ValueError, match="scheme"):
        invariance.Settings(scheme="ddim")
    with pytest.raises(ValueError, match="grid"):
        invariance.Settings(grid="edm")


@pytest.mark.slow  # fast-tier budget: CI's slow tier runs it
def test_make_walk_uses_the_scheme_and_grid(tmp_path):
    process, gmm = processes.get("vp"), oracles.gmm8()
    score = oracles.gmm_score(process, gmm)
    law = increments.get("gaussian")
    default, _ = invariance.make_walk(process, law, score, 64, 5)  # ancestral on the λ grid
    on_t, _ = invariance.make_walk(process, law, score, 64, 5, scheme="ancestral", grid="t")
    key = jax.random.key(3)
    expected = walks.reverse(process, law, score, key, (64, 2), 5, scheme="ancestral", grid="t")
    np.testing.assert_allclose(np.asarray(on_t(key)), np.asarray(expected), rtol=1e-4, atol=1e-5)
    assert not np.allclose(np.asarray(default(key)), np.asarray(expected))


def test_command_line_reports_a_bad_law(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "nnd.experiments.invariance", "--out", str(tmp_path),
         "--laws", "normal"], capture_output=True, text=True, timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 1 and "error: unknown increment law 'normal'" in proc.stderr


def test_write_puts_json_markdown_and_figures(tmp_path, capsys):
    result = {"rows": [1, 2]}
    common.write(str(tmp_path / "out"), "demo", result, markdown="| a |",
                 figures={"demo.txt": lambda path: open(path, "w").write("figure")}, start=0.0,
                 argv=["--out", "x"])
    written = json.loads((tmp_path / "out" / "demo.json").read_text())
    assert written["rows"] == [1, 2] and written["command"] == "python -m nnd.experiments.demo --out x"
    assert written["wall_seconds"] > 0 and "nproc" in written["machine"]
    assert (tmp_path / "out" / "demo.md").read_text() == "| a |\n"
    assert (tmp_path / "out" / "demo.txt").read_text() == "figure"
    assert "| a |" in capsys.readouterr().out
