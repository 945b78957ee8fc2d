"""Tests for nnd.evaluate (``--mode=eval`` and ``--mode=sample``) with tiny budgets."""

import json
import logging

import numpy as np
import pytest

from nnd import defaults
from nnd import evaluate, losses, train, walks

PNG = b"\x89PNG\r\n\x1a\n"

# Tiny budgets: these tests check what is written and counted, so compile without
# XLA's optimisations (tests/conftest.py).
pytestmark = pytest.mark.plumbing


def _tiny_toy_config():
    config = defaults.default()
    config.data.batch_size = 64
    config.model.hidden, config.model.depth, config.model.embed_dim = 32, 1, 16
    config.loss.num_steps = 20
    config.train.num_steps = 6
    config.train.log_every = 3
    config.train.checkpoint_every = 3
    config.train.sample_every = 0
    config.optim.warmup_steps = 2
    config.sampling.num_samples = 50
    config.sampling.num_steps = 10
    config.eval.num_examples = 40
    config.eval.batch_size = 32  # 40 examples: one full and one padded batch
    config.eval.rtol = config.eval.atol = 1e-3
    config.eval.num_samples = 50
    return config


def _tiny_digits_config(row="laplace"):
    import importlib

    config = importlib.import_module(f"configs.digits_{row}").get_config()
    config.data.batch_size = 16
    config.model.channels, config.model.num_blocks, config.model.embed_dim = 8, 1, 8
    config.loss.num_steps = 10
    config.train.num_steps = 2
    config.train.log_every = 1
    config.train.checkpoint_every = 2
    config.train.sample_every = 0
    config.sampling.num_steps = 5
    config.sampling.num_samples = 8
    config.eval.num_examples = 10
    config.eval.batch_size = 4
    config.eval.num_repeats = 2
    config.eval.rtol = config.eval.atol = 1e-2
    config.eval.num_samples = 8
    return config


def _check_written(tmp_path, result):
    on_disk = json.load(open(tmp_path / "eval" / "metrics.json"))
    assert on_disk == json.loads(json.dumps(result))
    for name in ("samples_by_law.png", "shift_kl.png", "samples.png"):
        assert (tmp_path / "eval" / name).read_bytes()[:8] == PNG
        assert name in result["pictures"]
    assert result["wall_seconds"] > 0


def test_eval_without_checkpoint_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="train first"):
        evaluate.evaluate(_tiny_toy_config(), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="train first"):
        evaluate.sample(_tiny_toy_config(), str(tmp_path))


@pytest.mark.slow  # fast-tier budget: CI's slow tier runs it
def test_toy_eval_writes_every_file(tmp_path, caplog):
    config = _tiny_toy_config()
    config.sampling.num_steps = 30  # the default rule samples with η = 0.8 here
    train.train(config, str(tmp_path))
    with caplog.at_level(logging.INFO):
        result = evaluate.evaluate(config, str(tmp_path))
    _check_written(tmp_path, result)
    assert result["step"] == 6
    assert f"eval of checkpoint step 6 ({tmp_path}/checkpoints/6)" in caplog.records[-1].getMessage()
    lik = result["likelihood"]
    assert lik["num_examples"] == 40 and lik["divergence"] == "exact"
    assert np.isfinite(lik["nats_per_dim"]) and np.isfinite(lik["exact_nats_per_dim"])
    assert lik["nfe_mean"] > 1
    # Every figure in the eval JSON carries its label: pf-ode, bound (the law-p walk) or
    # estimate (eq. (5)).
    on_disk = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert [on_disk[k]["label"] for k in ("likelihood", "walk_bound", "walk_estimate")] == [
        "pf-ode", "bound", "estimate"]
    bound, estimate = result["walk_bound"], result["walk_estimate"]
    assert bound["num_examples"] == 40 and bound["num_steps"] == 20 and bound["law"] == "laplace"
    # the bound is of the η = 1 walk; samples use the default rule's η, and it says so
    assert bound["eta"] == 1.0 and bound["sampled_eta"] == walks.default_eta(30) == 0.8
    assert np.isfinite(bound["total_nats_per_dim"]) and np.isfinite(estimate["total_nats_per_dim"])
    for terms in (bound, estimate):
        np.testing.assert_allclose(
            terms["total_nats"], terms["prior_kl_nats"] + terms["steps_nats"]
            + terms["reconstruction_nats"], rtol=1e-5)
    # laplace/laplace: l(0) = 0, no penalty.
    assert estimate["penalty_nats"] == 0.0
    assert (bound["scheme"], bound["grid"]) == ("ancestral", "lambda")
    s = result["samples"]
    assert s["nfe"] == config.sampling.num_steps + 1 and s["finite"]
    assert len(s["share_per_centre"]) == 8 and np.isfinite(s["energy_distance"])
    # The same numbers and pictures in TensorBoard, read by its own loader, at the checkpoint's step.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard" / "eval"), size_guidance={"images": 0})
    events.Reload()
    [energy] = events.Scalars("eval/samples/energy_distance")
    assert energy.step == 6 and energy.value == pytest.approx(s["energy_distance"], rel=1e-6)
    assert {"eval/likelihood/nats_per_dim", "eval/walk_bound/total_nats"} <= set(
        events.Tags()["scalars"])
    assert set(events.Tags()["images"]) == {"eval/samples", "eval/samples_by_law", "eval/shift_kl"}
    [image] = events.Images("eval/samples")
    assert image.step == 6 and image.encoded_image_string == (
        tmp_path / "eval" / "samples.png").read_bytes()


@pytest.mark.slow  # fast-tier budget: CI's slow tier runs it
def test_eval_walk_sum_counts_the_penalty_for_mismatched_laws(tmp_path):
    config = _tiny_toy_config()
    config.loss.q, config.loss.p = "uniform", "laplace"
    config.eval.likelihood = False
    config.sampling.sampler = "heun"
    config.sampling.scheme, config.sampling.grid = "euler", "t"
    train.train(config, str(tmp_path))
    result = evaluate.evaluate(config, str(tmp_path))
    assert "likelihood" not in result
    # K·D·l(0) with K = 20, D = 2 and l_{U,L}(0) = log(b/a) + a/(2b).
    b, a = 1 / np.sqrt(2), np.sqrt(3)
    penalty = 20 * 2 * (np.log(b / a) + a / (2 * b))
    estimate = result["walk_estimate"]
    assert estimate["penalty_nats"] == pytest.approx(penalty, rel=1e-5)
    assert estimate["total_with_penalty_nats"] - estimate["total_nats"] == pytest.approx(
        penalty, rel=1e-4)
    assert (estimate["label"], estimate["scheme"], estimate["grid"]) == ("estimate", "euler", "t")
    # The bound describes the laplace walk; the samples come from the uniform one, which has none.
    bound = result["walk_bound"]
    assert (bound["label"], bound["law"], bound["sampling_law"]) == ("bound", "laplace", "uniform")
    assert "bounded support" in bound["sampled_walk"] and np.isfinite(bound["total_nats"])
    assert result["samples"]["nfe"] == 2 * config.sampling.num_steps + 1  # heun, + denoise


@pytest.mark.fast_first
@pytest.mark.parametrize("sampler", ["walk", "pc", "ode"])
def test_sample_mode_uses_the_configured_sampler(tmp_path, sampler):
    config = _tiny_toy_config()
    config.sampling.sampler = sampler
    config.sampling.batch_size = 20  # 50 samples in 3 compiled calls
    train.train(config, str(tmp_path))
    samples = evaluate.sample(config, str(tmp_path))
    assert samples.shape == (50, 2) and np.all(np.isfinite(samples))
    with np.load(tmp_path / "samples.npz") as f:
        np.testing.assert_array_equal(f["samples"], samples)
        expected = {"walk": 11, "pc": 21}.get(sampler)
        assert float(f["nfe"]) == expected if expected else float(f["nfe"]) > 1


@pytest.mark.slow
def test_digits_eval_counts_every_test_example_and_writes_every_file(tmp_path):
    config = _tiny_digits_config()
    train.train(config, str(tmp_path))
    result = evaluate.evaluate(config, str(tmp_path))
    _check_written(tmp_path, result)
    lik = result["likelihood"]
    assert lik["unit"] == "bits/dim" and lik["divergence"] == "rademacher"  # the digits configs' choice
    assert lik["num_examples"] == 10 and lik["num_repeats"] == 2 and len(lik["per_repeat"]) == 2
    assert np.isfinite(lik["bpd"]) and lik["se_repeats"] is not None
    bound, estimate = result["walk_bound"], result["walk_estimate"]
    assert np.isfinite(bound["total_bpd"]) and "total_with_penalty_bpd" not in bound
    assert estimate["total_with_penalty_bpd"] == estimate["total_bpd"]
    assert result["samples"]["reference_examples"] == 10


@pytest.mark.slow
def test_fid_is_computed_and_its_reference_cached(tmp_path, monkeypatch):
    """The FID plumbing with a cheap stand-in feature network (the real one is tested in inception_test)."""
    from nnd import inception

    calls = []

    def fake_feature_fn_maker(variables, batch_size=200):
        def features(images):
            calls.append(len(images))
            x = np.asarray(images, np.float64).reshape(len(images), -1)
            return np.stack([x.mean(1), x.std(1), x[:, :8].mean(1)], axis=1)
        return features

    monkeypatch.setattr(inception, "make_feature_fn", fake_feature_fn_maker)
    monkeypatch.setattr(inception, "load_weights", lambda path: {})
    weights = tmp_path / "weights.npz"
    weights.write_bytes(b"stand-in")
    config = _tiny_digits_config()
    config.eval.likelihood = False
    config.eval.fid_weights = str(weights)
    config.eval.fid_cache_dir = str(tmp_path / "cache")
    train.train(config, str(tmp_path / "run"))
    first = evaluate.evaluate(config, str(tmp_path / "run"))["fid"]
    assert np.isfinite(first["fid"]) and first["num_samples"] == 8
    reals = sum(calls) - 8
    from nnd import data

    assert reals == len(data.DigitsSource("train"))  # the whole train split, once
    calls.clear()

    test_split_only = data.image_source

    def no_training_data(name, split, **kwargs):
        assert split != "train", "the cached reference needs no training data"
        return test_split_only(name, split, **kwargs)

    monkeypatch.setattr(data, "image_source", no_training_data)
    second = evaluate.evaluate(config, str(tmp_path / "run"))["fid"]
    assert calls == [8] and second["reference"] == first["reference"]  # cache reused


def test_shift_kl_pairs_are_table_1():
    for q, p in evaluate.TABLE1_PAIRS:
        assert losses.has_closed_form(q, p)


def test_shift_kl_curves_take_parameterised_laws():
    # A run with student_t:5 laws drew shift_kl.png from str(law) = "student_t(df=5)",
    # which the law parser refuses: --mode=eval of such a run failed.
    from nnd import increments
    law = increments.parse("student_t:5")
    curves, own = evaluate.shift_kl_curves(law, law)
    assert own == "student_t(df=5)/student_t(df=5)" and own in curves
    u, ell = curves[own]
    assert ell.shape == u.shape and np.all(np.isfinite(ell)) and abs(ell[120]) < 1e-6
    assert len(evaluate.shift_kl_curves(increments.parse("gaussian"), increments.parse("gaussian"))[0]) == len(curves) - 1
