"""Tests of nnd.experiments.table2: the Markdown from synthetic results, the command line, and
end to end with tiny digits models (slow)."""

import json
import os
import math

import pytest

from nnd.experiments import common, table2

TINY = {
    "data.batch_size": 16, "model.channels": 8, "model.num_blocks": 1, "model.embed_dim": 8,
    "loss.num_steps": 10, "train.num_steps": 2, "train.log_every": 1,
    "train.checkpoint_every": 2, "train.sample_every": 0, "sampling.num_steps": 5,
    "sampling.num_samples": 8, "eval.num_examples": 10, "eval.batch_size": 5,
    "eval.num_samples": 8, "eval.rtol": 1e-2, "eval.atol": 1e-2,
}


def _seed(fd):
    return {"fd": fd, "precision": 0.5, "recall": 0.25, "energy_distance": 0.1, "nfe": 5.0}


def _unit(row, q, p, *, train_seed=0, bpd=1.0, fd=(2.0, 4.0, 6.0), bounded=False, law=None):
    bound = ({"label": "bound", "none": "bounded support"} if bounded else
             {"label": "bound", "total_bpd": 2.0, "steps_nats": 10.0})
    penalty = 0.0 if q == p else 64.0 * 3
    return {
        "row": row, "q": q, "p": p, "train_seed": train_seed, "sampling_law": law or q,
        "num_steps": 5, "workdir": "/nonexistent",
        "likelihood": {"label": "pf-ode", "bpd": bpd, "se_examples": 0.01, "nfe_mean": 50.0},
        "walk_bound": bound,
        "walk_estimate": {"label": "estimate", "total_bpd": 2.5,
                          "total_with_penalty_bpd": 2.5 + penalty / 64 / 0.693,
                          "penalty_nats": penalty},
        "fisher": ({"law": p, "fisher_information": 2.0, "ratio": 1.9} if p == "laplace" else None),
        "sampling": {k: {"num_steps": int(k), "seeds": [_seed(f) for f in fd]} for k in ("2", "5")},
    }


def _result(units_):
    return {"units": units_, "overrides": {}, "sampling_seeds": 3, "few_steps": [2],
            "paper_cifar10": table2.PAPER, "fisher_information": {"gaussian": 1.0, "laplace": 2.0},
            "machine": {"device_kind": "cpu", "device_count": 1, "backend": "cpu",
                        "cpu_model": "test", "nproc": 2, "jax": "0", "platform": "linux"},
            "jobs": 1, "command": "python -m nnd.experiments.table2 --out docs",
            "wall_seconds": 90.0}


def test_markdown_labels_mean_std_bounded_support_and_few_step_table():
    units_ = [_unit("gaussian", "gaussian", "gaussian"),
              _unit("gaussian", "gaussian", "gaussian", train_seed=1, bpd=1.1),
              _unit("laplace", "laplace", "laplace", bpd=0.8, fd=(8.0, 9.0, 10.0)),
              _unit("uniform", "uniform", "gaussian"),
              _unit("bounded", "gaussian", "uniform", bounded=True)]
    text = table2.markdown(_result(units_))
    for label in ("`pf-ode`", "`bound`", "`estimate`", "pf-ode bpd", "bound bpd (law-p walk)",
                  "estimate bpd", "## Few-step sampling", "## What agrees with the paper",
                  "python -m nnd.experiments.table2 --out docs", "1.5 min"):
        assert label in text
    lines = text.splitlines()
    main = [line for line in lines if line.startswith("| gaussian / gaussian | 0 |")]
    assert main[0].split(" | ")[2:6] == ["1.000 ± 0.010", "2.000", "2.500", "4.00 ± 2.00"]
    assert any("| gaussian / uniform | 0 |" in line and "none: bounded support" in line
               for line in lines)
    uniform = next(line for line in lines if line.startswith("| uniform / gaussian | 0 | 1.000"))
    assert "2.500 / " in uniform and "uniform (K 5)" in uniform  # without / with K·D·ℓ(0)
    few = [line for line in lines if line.startswith("| laplace / laplace | 0 | laplace | ")]
    assert [line.split(" | ")[3] for line in few] == ["2", "5"]
    assert "9.00 ± 1.00" in few[0]
    # derived text: laplace lower bpd than gaussian (as the paper), FD worse, Fisher ratio
    assert "agrees in sign" in text and "agrees (laplace worse)" in text
    assert "measured ratio 1.900, ℓ''(0) = 2.000: the factor shows" in text
    assert "Smoke run" not in text


def test_markdown_marks_a_smoke_run():
    result = _result([_unit("gaussian", "gaussian", "gaussian")])
    result["overrides"] = {"train.num_steps": 2}
    assert "**Smoke run, not results**" in table2.markdown(result)


def test_units_add_the_second_training_seed_and_refuse_unknown_rows():
    names = [u.name for u in table2.units()]
    assert names == ["gaussian", "laplace", "uniform", "uniform_laplace", "student_t",
                     "gaussian_seed1", "laplace_seed1"]
    with pytest.raises(ValueError, match="unknown rows"):
        table2.units(["cauchy"])


def test_fisher_information_of_the_laws():
    assert table2.fisher_information("gaussian") == pytest.approx(1.0, abs=1e-3)
    assert table2.fisher_information("laplace") == pytest.approx(2.0, abs=1e-3)


@pytest.mark.slow
def test_fisher_information_of_logistic_and_student_t():  # quadrature: a few seconds of compiling
    assert table2.fisher_information("logistic") == pytest.approx(math.pi ** 2 / 9, abs=1e-3)
    # student_t(ν) scaled to unit variance: ν(ν + 1) / ((ν + 3)(ν - 2)) = 1.25 at ν = 5
    assert table2.fisher_information("student_t:5") == pytest.approx(1.25, abs=1e-3)


def test_missing_checkpoint_without_train_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--train"):
        table2.run(str(tmp_path / "runs"), str(tmp_path / "out"), overrides=TINY)
    assert not (tmp_path / "out" / "results.json").exists()


def test_main_without_train_asks_for_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="--train"):
        table2.main(["--root", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])


def test_set_parses_values():
    assert table2._parse_set(["train.num_steps=3", "sampling.law=model"]) == {
        "train.num_steps": 3, "sampling.law": "model"}
    with pytest.raises(ValueError, match="section.field=value"):
        table2._parse_set(["num_steps=3"])


@pytest.mark.slow
def test_table2_command_trains_evaluates_and_writes_results(tmp_path):
    root, out = tmp_path / "runs", tmp_path / "out"
    sets = [f"--set={k}={v}" for k, v in TINY.items()]
    # a section another command put on the page (the variance family's) survives remaking it
    common.put_section(str(out / "results.md"), "variance-learned", "## Kept section\n\nrows")
    result = table2.main(["--root", str(root), "--out", str(out), "--train", "--jobs", "2",
                          "--rows", "gaussian,uniform", "--second-seed", "gaussian",
                          "--sampling-seeds", "2", "--few-steps", "2", *sets])
    names = [(u["row"], u["train_seed"]) for u in result["units"]]
    assert names == [("gaussian", 0), ("uniform", 0), ("gaussian", 1)]
    g, u, g1 = result["units"]
    # uniform/gaussian shares the gaussian/gaussian checkpoint, hence its likelihood
    assert u["likelihood"]["bpd"] == g["likelihood"]["bpd"] != g1["likelihood"]["bpd"]
    assert u["sampling_law"] == "uniform" and u["walk_estimate"]["penalty_nats"] > 0
    assert g["walk_bound"]["label"] == "bound" and "total_bpd" in g["walk_bound"]
    assert sorted(g["sampling"], key=int) == ["2", "5"]
    assert all(len(s["seeds"]) == 2 for s in g["sampling"].values())
    text = (out / "results.md").read_text()
    assert "Smoke run" in text and "| uniform / gaussian | 0 |" in text
    assert text.count("## Kept section") == 1 and text.index("Smoke run") < text.index("## Kept")
    written = json.loads((out / "results.json").read_text())
    assert "nproc" in written["machine"] and written["wall_seconds"] > 0
    assert (out / "table2_samples.png").read_bytes()[:4] == b"\x89PNG"


def test_a_finished_unit_is_reused_only_with_the_same_settings(tmp_path):
    unit = table2.Unit("laplace", 1)
    settings = table2._settings(share=True, overrides={}, sampling_seeds=3, few_steps=(10, 30, 100))
    assert table2.finished_unit(str(tmp_path), unit, settings) is None
    os.makedirs(unit.workdir(str(tmp_path)))
    path = os.path.join(unit.workdir(str(tmp_path)), table2.UNIT_JSON)
    with open(path, "w") as f:
        json.dump({"row": "laplace", "train_seed": 1, "settings": settings}, f)
    assert table2.finished_unit(str(tmp_path), unit, settings)["train_seed"] == 1
    other = {**settings, "sampling_seeds": 5}
    with pytest.raises(ValueError, match="computed with"):
        table2.finished_unit(str(tmp_path), unit, other)
