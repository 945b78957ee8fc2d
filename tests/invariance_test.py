"""Tests for nnd.experiments.invariance (Theorem 3.3 on gmm8 with the exact score)."""

import json

import pytest

from nnd import increments
from nnd.experiments import invariance

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("invariance")
    result = invariance.main([
        "--out", str(out), "--n", "300", "--steps", "3,100", "--laws", "gaussian,student_t:5",
        "--seed", "1",
    ])
    return out, result


def test_json_schema(tiny_run):
    out, result = tiny_run
    with open(out / "invariance.json") as fh:
        written = json.load(fh)
    for key in ("rows", "floor", "data_blob_width", "process", "n", "seed", "jax", "machine",
                "steps", "laws"):
        assert key in written, key
    assert written["process"] == "vp" and written["n"] == 300 and written["seed"] == 1
    assert written["laws"] == ["gaussian", "student_t(df=5)"]
    assert written["steps"] == [3, 100]
    assert {"platform", "nproc"} <= set(written["machine"])
    assert len(written["rows"]) == 4
    for row in written["rows"]:
        assert set(row) >= {"law", "K", "energy_distance", "blob_width", "seconds"}
        assert row["seconds"] >= 0.0 and row["blob_width"] > 0.0
    floor = written["floor"]
    assert floor["num_seeds"] == len(floor["energy_distance_samples"]) >= 2
    assert floor["energy_distance_std"] > 0.0
    assert written["rows"] == result["rows"]


def test_figures_written(tiny_run):
    out, _ = tiny_run
    for name in ("invariance_ed.png", "invariance_samples.png"):
        data = (out / name).read_bytes()
        assert data[:8] == _PNG_SIGNATURE, name
        assert len(data) > 10_000, (name, len(data))


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


@pytest.mark.parametrize("spec, param", [("student_t:5", 5.0), ("gennorm:1.5", 1.5)])
def test_parse_law_with_parameter(spec, param):
    law = invariance.parse_law(spec)
    assert law == increments.get(spec.split(":")[0], **{
        "student_t": {"df": param}, "gennorm": {"beta": param}}[spec.split(":")[0]])


@pytest.mark.parametrize("spec", [
    "cauchy", "gaussian:2", "student_t:abc", "student_t:1.5", "gennorm:-1", "", "laplace:",
])
def test_bad_law_raises(spec):
    with pytest.raises(ValueError):
        invariance.parse_law(spec)


def test_main_rejects_bad_law_before_running(tmp_path):
    with pytest.raises(ValueError, match="unknown increment law"):
        invariance.main(["--out", str(tmp_path), "--laws", "gaussian,normal"])
    assert not (tmp_path / "invariance.json").exists()


@pytest.mark.parametrize("steps", ["0", "10,abc", ""])
def test_bad_steps_raise(steps):
    with pytest.raises(ValueError):
        invariance.parse_steps(steps)
