"""Tests for nnd.train, nnd.config and nnd.main on the 2-D toy: train, resume, sample, refuse."""

import json
import logging
import os

import jax
import numpy as np
import pytest

from nnd import defaults
from nnd import config as config_lib
from nnd import evaluate, train


def _tiny_config(num_steps=6):
    config = defaults.default()
    config.data.batch_size = 64
    config.model.hidden = 32
    config.model.depth = 1
    config.model.embed_dim = 16
    config.loss.num_steps = 20
    config.train.num_steps = num_steps
    config.train.log_every = 2
    config.train.checkpoint_every = 3
    config.optim.warmup_steps = 2
    config.sampling.num_samples = 50
    config.sampling.num_steps = 10
    return config


def _params(state):
    return [np.asarray(x) for x in jax.tree.leaves(state.params)]


@pytest.mark.plumbing
def test_train_writes_metrics_and_checkpoints(tmp_path):
    state = train.train(_tiny_config(), str(tmp_path))
    assert int(state.step) == 6
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in records] == [2, 4, 6]
    for r in records:
        assert np.isfinite(r["loss"]) and len(r["loss_by_quartile"]) == 4
    # The first interval includes compilation, so it reports no rate (and no ETA).
    assert "steps_per_s" not in records[0]
    assert all(r["steps_per_s"] > 0 for r in records[1:])
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "6"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"loss", "grad_norm", "lr", "loss_by_quartile_3"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss")] == [2, 4, 6]
    np.testing.assert_allclose([e.value for e in events.Scalars("loss")],
                               [r["loss"] for r in records], rtol=1e-6)


@pytest.mark.plumbing
def test_resume_matches_uninterrupted_run(tmp_path):
    straight = train.train(_tiny_config(6), str(tmp_path / "straight"))
    train.train(_tiny_config(3), str(tmp_path / "resumed"))
    resumed = train.train(_tiny_config(6), str(tmp_path / "resumed"))
    assert int(resumed.step) == 6
    for a, b in zip(_params(straight), _params(resumed)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.plumbing
def test_sample_mode_writes_samples_and_picture(tmp_path, caplog):
    config = _tiny_config()
    train.train(config, str(tmp_path))
    with caplog.at_level(logging.INFO):
        samples = evaluate.sample(config, str(tmp_path))
    assert samples.shape == (50, 2) and np.all(np.isfinite(samples))
    with np.load(tmp_path / "samples.npz") as f:
        np.testing.assert_array_equal(f["samples"], samples)
    assert (tmp_path / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "of checkpoint step 6 (" in caplog.records[-1].getMessage()
    # The newest checkpoint unreadable: the final line names the older one that was used.
    for root, _, files in os.walk(tmp_path / "checkpoints" / "6"):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        evaluate.sample(config, str(tmp_path))
    assert f"of checkpoint step 3 ({tmp_path}/checkpoints/3)" in caplog.records[-1].getMessage()


def test_sample_without_checkpoint_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="train first"):
        evaluate.sample(_tiny_config(), str(tmp_path))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("loss.q", "cauchy", "config.loss.q"),
        ("loss.p", "uniform", r"config.loss \(q, p\)"),
        ("process.name", "edm", "config.process"),
        ("data.name", "cifar100", "config.data.name"),
        ("loss.num_steps", 0, "config.loss.num_steps"),
        ("sampling.law", "normal", "config.sampling.law"),
        ("sampling.sampler", "euler", "config.sampling.sampler"),
        ("sampling.scheme", "ddim", "config.sampling.scheme"),
        ("sampling.grid", "karras", "config.sampling.grid"),
        ("sampling.snr", 0.0, "config.sampling.snr"),
        ("sampling.eta", -0.5, "config.sampling.eta"),
        ("sampling.variance_weight", 1.5, "config.sampling.variance_weight"),
        ("sampling.scheme", "analytic", "needs a per-point Var"),
        ("sampling.variance_weight", 0.5, "config.model.learned_variance = True"),
        ("eval.divergence", "hutchinson", "config.eval.divergence"),
        ("eval.solver", "rk4", "config.eval.solver"),
        ("eval.num_samples", 1, "config.eval.num_samples"),
        ("eval.picture_laws", ("gaussian", "normal"), "config.eval.picture_laws"),
        ("eval.fid_weights", "/nonexistent/inception.npz", "config.eval.fid_weights"),
    ],
)
def test_bad_config_is_refused_naming_the_field(field, value, message):
    config = _tiny_config()
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=message):
        config_lib.resolve(config)


def test_learned_variance_config_reaches_the_sampler_and_refuses_euler():
    config = _tiny_config()
    config.model.learned_variance = True
    config.sampling.scheme = "analytic"
    experiment = config_lib.resolve(config)
    assert experiment.model.learned_variance and experiment.sampling.scheme == "analytic"
    config.sampling.scheme = "euler"
    with pytest.raises(config_lib.ConfigError, match="config.model.learned_variance"):
        config_lib.resolve(config)


def test_a_workdir_recorded_before_the_learned_variance_field_still_loads(tmp_path):
    # run_config.json of earlier runs has no model.learned_variance: off is what it meant.
    config = _tiny_config()
    workdir = tmp_path / "run"
    (workdir / "checkpoints" / "10").mkdir(parents=True)
    config_lib.check_same_run(str(workdir), config, record=True)  # no record yet: writes one
    stored = json.loads((workdir / config_lib.RUN_CONFIG).read_text())
    del stored["model.learned_variance"]
    (workdir / config_lib.RUN_CONFIG).write_text(json.dumps(stored))
    config_lib.check_same_run(str(workdir), config, record=True)
    config.model.learned_variance = True
    with pytest.raises(config_lib.ConfigError, match="model.learned_variance"):
        config_lib.check_same_run(str(workdir), config, record=True)


@pytest.mark.parametrize("mode", ["train", "sample", "eval"])
def test_an_invalid_config_creates_nothing(tmp_path, mode):
    config = _tiny_config()
    config.loss.q = "cauchy"
    run = {"train": train.train, "sample": evaluate.sample, "eval": evaluate.evaluate}[mode]
    with pytest.raises(config_lib.ConfigError, match="config.loss.q"):
        run(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_student_t_df_at_most_two_is_refused():
    config = _tiny_config()
    config.loss.q = "student_t:2"
    with pytest.raises(ValueError, match="config.loss.q.*df must be > 2"):
        config_lib.resolve(config)


def test_law_specs_and_process_parameters_reach_the_typed_experiment():
    config = _tiny_config()
    config.loss.q, config.loss.p = "student_t:5", "gaussian"
    config.process.params.beta_max = 10.0
    experiment = config_lib.resolve(config)
    assert str(experiment.q) == "student_t(df=5)" and experiment.sampling_law == experiment.q
    assert experiment.process.beta_max == 10.0 and experiment.process.beta_min == 0.1


def test_a_parameter_the_process_does_not_take_is_refused():
    config = _tiny_config()
    config.process.params.sigma_max = 80.0  # a ve parameter on the default vp process
    with pytest.raises(ValueError, match="config.process.*sigma_max"):
        config_lib.resolve(config)


def test_model_section_holds_only_the_chosen_models_fields():
    config = _tiny_config()
    assert set(config.model) == {"name", "hidden", "depth", "embed_dim", "learned_variance"}
    config.model.name = "vdm"  # the mlp's fields do not fit VDM's network
    with pytest.raises(ValueError, match="config.model"):
        config_lib.resolve(config)


def test_batch_not_divisible_by_devices_is_refused():
    config = _tiny_config()
    config.data.batch_size = 63
    with pytest.raises(ValueError, match="config.data.batch_size"):
        config_lib.resolve(config, num_devices=8)


def _tiny_image_config(module, num_steps):
    config = module.get_config()
    config.data.batch_size = 4
    small = dict(channels=8, num_blocks=1, channel_mult=(1, 2), num_res_blocks=1,
                 attn_resolutions=(16,), embed_dim=8)
    for field, value in small.items():
        if field in config.model:
            config.model[field] = value
    config.loss.num_steps = 10
    config.train.num_steps = num_steps
    config.train.log_every = 1
    config.train.checkpoint_every = 2
    config.train.sample_every = 0
    config.optim.warmup_steps = 1
    config.sampling.num_samples = 4
    config.sampling.num_steps = 3
    return config


@pytest.mark.plumbing
@pytest.mark.slow
@pytest.mark.parametrize("row", ["gaussian", "laplace", "uniform", "uniform_laplace"])
def test_cifar_configs_train_checkpoint_and_resume_on_mock_data(tmp_path, row):
    import importlib

    import tensorflow_datasets as tfds

    module = importlib.import_module(f"configs.cifar_{row}")
    with tfds.testing.mock_data(num_examples=16):
        state = train.train(_tiny_image_config(module, 2), str(tmp_path))
        assert int(state.step) == 2
        resumed = train.train(_tiny_image_config(module, 4), str(tmp_path))
    assert int(resumed.step) == 4
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "metrics.jsonl")]
    assert len(losses) == 4 and np.all(np.isfinite(losses))


@pytest.mark.plumbing
@pytest.mark.slow
def test_unet_option_trains_on_mock_cifar(tmp_path):
    import tensorflow_datasets as tfds

    from configs import cifar_laplace

    config = _tiny_image_config(cifar_laplace, 1)
    config.model = defaults.model("unet", channels=8, channel_mult=(1, 2), num_res_blocks=1,
                                  attn_resolutions=(16,), embed_dim=8)
    with tfds.testing.mock_data(num_examples=8):
        state = train.train(config, str(tmp_path))
        samples = evaluate.sample(config, str(tmp_path))
    assert int(state.step) == 1
    assert samples.shape == (4, 32, 32, 3) and np.all(np.isfinite(samples))


@pytest.mark.slow
def test_digits_laplace_loss_falls_and_writes_a_sample_grid(tmp_path):
    from configs import digits_laplace

    config = digits_laplace.get_config()
    config.train.num_steps = 300
    config.train.log_every = 50
    config.train.checkpoint_every = 300
    config.train.sample_every = 300
    config.model.num_blocks = 2
    config.sampling.num_steps = 50
    train.train(config, str(tmp_path))
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "metrics.jsonl")]
    # Per-batch losses are noisy: compare the first and last two logged values.
    assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), losses
    png = tmp_path / "samples" / "step_300.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # fast-tier budget: CI's slow tier runs it
@pytest.mark.plumbing
def test_uniform_gaussian_trains_exactly_like_gaussian_gaussian(tmp_path):
    # docs/math.md §4 (i): with p = gaussian the loss differs only by the constant l(0), so the
    # gradients, and hence the parameters, are those of gaussian/gaussian.
    from configs import toy_gaussian, toy_uniform

    states = {}
    for name, module in (("gaussian", toy_gaussian), ("uniform", toy_uniform)):
        config = module.get_config()
        for field, value in _tiny_config(5).train.items():
            config.train[field] = value
        config.model.hidden, config.model.depth, config.model.embed_dim = 32, 1, 16
        states[name] = train.train(config, str(tmp_path / name))
    for a, b in zip(_params(states["gaussian"]), _params(states["uniform"])):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    records = {name: [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]
               for name in states}
    for rg, ru in zip(records["gaussian"], records["uniform"]):
        assert rg["grad_norm"] == pytest.approx(ru["grad_norm"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["toy_gaussian", "toy_laplace", "toy_uniform"])
def test_toy_config_learns_gmm8(tmp_path, name):
    # Acceptance: the toy configs train from scratch (a few minutes on 2 cores)
    # and their samples (n = 2000) reach energy distance <= 0.005 to fresh gmm8 data,
    # put 8%-17% of the points nearest each centre and have a blob width within 20% of
    # 0.02. A missing mode alone gives ED ≈ 0.02 and 0% at one centre.
    import importlib

    from nnd import metrics, oracles

    config = importlib.import_module(f"configs.{name}").get_config()
    config.train.sample_every = 0
    train.train(config, str(tmp_path))
    samples = evaluate.sample(config, str(tmp_path))
    assert samples.shape == (2000, 2)
    gmm = oracles.gmm8()
    data = np.asarray(oracles.sample_gmm(jax.random.key(12345), gmm, 2000))
    ed = metrics.energy_distance(samples, data)
    width, nearest = metrics.nearest_centre(samples, gmm.means)
    share = np.bincount(nearest, minlength=8) / len(samples)
    assert ed <= 0.005, ed
    assert np.all((share >= 0.08) & (share <= 0.17)), share
    assert abs(width - 0.02) <= 0.2 * 0.02, width
