"""Tests for nnd.experiments.bias (the bias of the ε learned with a non-quadratic loss, gmm8).

The loss minimiser against a brute-force scipy minimisation of the expected loss under the
posterior of ε; the training scale c_k it and the evaluation use against the one the
training loss (:func:`nnd.losses.step_loss`) applies to the same draw; the measurement
(evaluation points, relative-error tables), the training configs and the written outputs.
The posterior of ε itself is checked against Gaussian conditioning in
tests/oracles_test.py (:func:`nnd.oracles.gmm_components`). Parametrised tests run their
first case in the fast tier.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from nnd import config as config_lib
from nnd import defaults, increments, losses, oracles, processes, walks
from nnd.experiments import bias, common

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def setup():
    process = processes.get("vp")
    gmm = oracles.gmm8()
    return process, gmm, processes.eps_fn_from_score(process, oracles.gmm_score(process, gmm))


def _error(eps_fn, setup, num_steps=10, n=4000, seed=0):
    process, gmm, _ = setup
    return bias.relative_error(eps_fn, jax.random.key(seed), process=process, gmm=gmm,
                               num_steps=num_steps, n=n)


@pytest.mark.fast_first
@pytest.mark.parametrize("num_steps", [10, 1000])
def test_exact_oracle_has_zero_error(setup, num_steps):
    table = _error(setup[2], setup, num_steps)
    for cell in table["quartiles"] + [table["overall"]]:
        assert cell["relative_error"] == 0.0 and cell["stderr"] == 0.0
        assert cell["n"] > 0
    assert sum(c["n"] for c in table["quartiles"]) == table["overall"]["n"] == 4000


@pytest.mark.fast_first
@pytest.mark.parametrize("scale", [1.1, 0.5])
def test_scaled_oracle_has_known_error(setup, scale):
    oracle = setup[2]
    table = _error(lambda x, t: scale * oracle(x, t), setup)
    for cell in table["quartiles"] + [table["overall"]]:
        np.testing.assert_allclose(cell["relative_error"], abs(scale - 1.0), rtol=1e-5)
        assert cell["stderr"] < 1e-6


def test_zero_prediction_has_error_one(setup):
    table = _error(lambda x, t: jnp.zeros_like(x), setup)
    for cell in table["quartiles"] + [table["overall"]]:
        assert cell["relative_error"] == pytest.approx(1.0)


def test_quartile_of():
    t = [0.0, 1e-3, 0.2499, 0.25, 0.4999, 0.5, 0.7499, 0.75, 0.999, 1.0]
    np.testing.assert_array_equal(bias.quartile_of(t), [0, 0, 0, 1, 1, 2, 2, 3, 3, 3])


def test_table_groups_by_quartile():
    # One error level per quartile: relative error 0.1 (i + 1) in quartile i; the
    # overall value pools squared errors (not an average of the quartile ratios).
    t = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 1.0] * 5)
    q = bias.quartile_of(t)
    ref = np.ones((t.size, 2))
    err = ref * 0.1 * (q + 1)[:, None]
    table = bias.relative_error_table(err, ref, t, num_chunks=4)
    for i, cell in enumerate(table["quartiles"]):
        assert cell["n"] == 10 and cell["t_range"] == list(bias.QUARTILES[i])
        assert cell["relative_error"] == pytest.approx(0.1 * (i + 1))
    assert table["overall"]["relative_error"] == pytest.approx(math.sqrt(np.mean(0.01 * (q + 1) ** 2)))


def test_table_empty_quartile_is_nan():
    t = np.array([0.9] * 20)
    table = bias.relative_error_table(np.ones((20, 2)), np.ones((20, 2)), t, num_chunks=4)
    assert table["quartiles"][0]["n"] == 0 and math.isnan(table["quartiles"][0]["relative_error"])
    assert table["quartiles"][3]["relative_error"] == pytest.approx(1.0)


@pytest.mark.slow
def test_standard_error_shrinks_with_n(setup):
    oracle = setup[2]

    def noisy(x, t):  # a biased field with an x-dependent error
        return oracle(x, t) + 0.1 * jnp.sin(5 * x)

    small, large = _error(noisy, setup, n=2000), _error(noisy, setup, n=16000)
    assert large["overall"]["stderr"] < small["overall"]["stderr"]
    assert abs(large["overall"]["relative_error"] - small["overall"]["relative_error"]) < (
        4 * small["overall"]["stderr"])


def _training_c(process, points, num_steps, **scheme_and_grid):
    """The c_k with which the training loss weighs each point: for G/G and ε_θ = ε + δ,
    step_loss = Σ_i ½ c_k² δ² = D c_k² δ² / 2 (the full KL, no penalty subtracted)."""
    eps = jnp.asarray(points["eps"])
    delta = 0.25
    loss = losses.step_loss(eps, eps + delta, jnp.asarray(points["t"]), process=process,
                            q="gaussian", p="gaussian", num_steps=num_steps,
                            subtract_penalty=False, **scheme_and_grid)
    return np.sqrt(2.0 * np.asarray(loss, np.float64) / (eps.shape[1] * delta**2))


@pytest.mark.fast_first
@pytest.mark.parametrize("num_steps", [10, 100])
def test_points_are_the_training_draw(setup, num_steps):
    process, gmm, _ = setup
    key = jax.random.key(3)
    points = bias.draw_points(key, process, gmm, num_steps, 5000)
    # x_0 from the data, then exactly the training draw of eq. (5) (the training grid) with
    # the rest of the key
    key_x0, key_draw = jax.random.split(key)
    x0 = oracles.sample_gmm(key_x0, gmm, 5000)
    t, eps, x = losses.training_draw(key_draw, process, x0, num_steps)
    for name, value in (("x0", x0), ("t", t), ("eps", eps), ("x", x)):
        np.testing.assert_array_equal(points[name], np.asarray(value), err_msg=name)
    grid = processes.sampling_grid(process, num_steps, processes.DEFAULT_GRID)
    assert set(np.unique(points["t"])) == set(np.asarray(grid)[1:].tolist())  # every t_{k+1}, k < K
    np.testing.assert_array_equal(points["quartile"], bias.quartile_of(points["t"]))
    # c_k is the one the training loss applies to the same draw (default scheme and grid on
    # both sides: ancestral on the log-SNR grid, c_k = 2.408 on vp at K = 10, where euler
    # on the t grid, which the experiment used to pair with it, gives 1.00-1.41).
    np.testing.assert_allclose(points["c"], _training_c(process, points, num_steps), rtol=1e-5)
    # ε* = E[ε | x_t]: ε* is orthogonal to the residual ε - ε* (a property of the
    # conditional mean), within 4 standard errors.
    eps_, star = points["eps"].ravel(), points["eps_star"].ravel()
    prod = (eps_ - star) * star
    assert abs(np.mean(prod)) < 4 * np.std(prod) / math.sqrt(eps_.size)


@pytest.mark.slow
@pytest.mark.parametrize("scheme, grid", [("ancestral", "lambda"), ("euler", "t"),
                                          ("analytic", "lambda"), ("ancestral", "t")])
def test_points_scale_follows_the_scheme_and_grid(setup, scheme, grid):
    process, gmm, _ = setup
    points = bias.draw_points(jax.random.key(5), process, gmm, 10, 400, scheme=scheme, grid=grid)
    assert set(np.unique(points["t"])) <= set(
        np.asarray(processes.sampling_grid(process, 10, grid)).tolist())
    np.testing.assert_allclose(points["c"],
                               _training_c(process, points, 10, scheme=scheme, grid=grid),
                               rtol=1e-5)
    log_snr = np.asarray(process.log_snr(jnp.asarray([process.t_eps, 1.0])), np.float64)
    if (scheme, grid) == ("ancestral", "lambda"):  # equal steps in λ: one c_k for every k
        np.testing.assert_allclose(points["c"], math.sqrt(math.expm1((log_snr[0] - log_snr[1])
                                                                     / 10)), rtol=1e-5)
        assert points["c"][0] == pytest.approx(2.408, abs=1e-3)
    if (scheme, grid) == ("euler", "t"):  # the paper's g√Δt/σ: 1.00-1.41 at K = 10
        assert 1.0 < points["c"].min() < 1.01 and 1.41 < points["c"].max() < 1.42


def test_config_trains_with_the_scheme_and_grid_it_is_scored_with():
    # The default: the library's training defaults; any other: passed through to training.
    default = config_lib.resolve(defaults.default()).sampling
    for settings in (bias.Settings(), bias.Settings(scheme="euler", grid="t")):
        sampling = config_lib.resolve(bias.make_config(settings, *settings.pairs[0], 10)).sampling
        assert (sampling.scheme, sampling.grid) == (settings.scheme, settings.grid)
    assert (bias.Settings().scheme, bias.Settings().grid) == (default.scheme, default.grid)
    with pytest.raises(ValueError, match="scheme"):
        bias.Settings(scheme="heun")
    with pytest.raises(ValueError, match="grid"):
        bias.loss_minimiser(processes.get("vp"), oracles.gmm8(), "laplace", "laplace", 10,
                            grid="log")


# -- the loss minimiser -------------------------------------------------------------------


def _training_points(process, gmm, num_steps, n, seed):
    key_x0, key_draw = jax.random.split(jax.random.key(seed))
    t, _, x = losses.training_draw(key_draw, process, oracles.sample_gmm(key_x0, gmm, n),
                                   num_steps)  # the default grid, which loss_minimiser uses
    return x, t


def _full_mixture():
    """3 components in 3-D with full (non-diagonal) covariances."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 3, 3)) * 0.4
    return oracles.GMM(np.array([0.2, 0.5, 0.3]), rng.normal(size=(3, 3)),
                       np.einsum("jab,jcb->jac", a, a) + 0.05 * np.eye(3))


@pytest.mark.slow  # fast-tier budget: CI's slow tier runs it
@pytest.mark.parametrize("mixture", ["full", "gmm8"])
def test_gaussian_minimiser_is_the_posterior_mean(mixture):
    gmm = oracles.gmm8() if mixture == "gmm8" else _full_mixture()
    p = processes.get("vp")
    x, t = _training_points(p, gmm, 10, 256, seed=0)
    m_star = jax.jit(bias.loss_minimiser(p, gmm, "gaussian", "gaussian", 10))(x, t)
    eps_star = processes.eps_fn_from_score(p, oracles.gmm_score(p, gmm))(x, t)
    np.testing.assert_allclose(np.asarray(m_star), np.asarray(eps_star), atol=2e-5)
    r, mean, _ = bias.posterior_eps(p, gmm, x, t)  # the posterior's mean is E[ε | x_t]
    np.testing.assert_allclose(np.asarray(jnp.einsum("bj,bjd->bd", r, mean)),
                               np.asarray(eps_star), atol=2e-6)


@pytest.mark.slow  # fast-tier budget: CI's slow tier runs it
def test_minimiser_of_a_symmetric_posterior_is_its_mean():
    # One-component data: the posterior of ε is Gaussian, so every symmetric ℓ has
    # the posterior mean as its minimiser (no bias at any K).
    p = processes.get("vp")
    gmm = oracles.GMM(np.ones(1), np.array([[0.3, -0.2]]), 0.2**2 * np.eye(2)[None])
    x, t = _training_points(p, gmm, 10, 256, seed=1)
    m_star = bias.loss_minimiser(p, gmm, "laplace", "laplace", 10)(x, t)
    eps_star = processes.eps_fn_from_score(p, oracles.gmm_score(p, gmm))(x, t)
    np.testing.assert_allclose(np.asarray(m_star), np.asarray(eps_star), atol=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("pair", ["laplace/laplace", "uniform/laplace"])
def test_minimiser_matches_brute_force(pair):
    """m* against scipy's minimisation of the expected loss under the posterior, on a grid,
    with the c_k the training loss applies (ancestral on the log-SNR grid)."""
    q, p = pair.split("/")
    process, gmm = processes.get("vp"), oracles.gmm8()
    x, t = _training_points(process, gmm, 10, 6, seed=2)
    m_star = np.asarray(bias.loss_minimiser(process, gmm, q, p, 10)(x, t))
    r, mean, std = (np.asarray(a, np.float64) for a in bias.posterior_eps(process, gmm, x, t))
    c = _training_c(process, {"eps": np.zeros(x.shape, np.float32), "t": t}, 10)
    shift_kl = jax.jit(lambda u: losses.shift_kl(q, p, u))
    biggest = 0.0
    for b in range(len(t)):
        for d in range(2):
            grid = np.linspace((mean[b, :, d] - 12 * std[b, :, d]).min(),
                               (mean[b, :, d] + 12 * std[b, :, d]).max(), 20001)
            dens = sum(r[b, j] * np.exp(-0.5 * ((grid - mean[b, j, d]) / std[b, j, d]) ** 2)
                       / std[b, j, d] for j in range(8))
            dens /= np.trapezoid(dens, grid)

            def risk(m):
                u = jnp.asarray(c[b] * (m - grid), jnp.float32)
                return np.trapezoid(dens * np.asarray(shift_kl(u), np.float64), grid)

            centre = float(np.einsum("j,j->", r[b], mean[b, :, d]))
            best = optimize.minimize_scalar(risk, bracket=(centre - 0.5, centre + 0.5), tol=1e-10)
            assert abs(best.x - m_star[b, d]) < 2e-4, (b, d, best.x, m_star[b, d])
            biggest = max(biggest, abs(m_star[b, d] - centre))
    assert biggest > 1e-3  # these points do show a bias at K = 10


@pytest.mark.slow
def test_laplace_minimiser_bias_shrinks_with_k():
    # c_k ∝ 1/√K: as K grows ℓ becomes quadratic on the posterior's scale and m* → E[ε | x_t].
    process, gmm = processes.get("vp"), oracles.gmm8()
    eps_fn = processes.eps_fn_from_score(process, oracles.gmm_score(process, gmm))
    errors = []
    for k in (10, 1000):
        x, t = _training_points(process, gmm, k, 500, seed=3)
        m_star = bias.loss_minimiser(process, gmm, "laplace", "laplace", k)(x, t)
        eps_star = eps_fn(x, t)
        errors.append(float(jnp.linalg.norm(m_star - eps_star) / jnp.linalg.norm(eps_star)))
    assert errors[0] > 0.02 and errors[1] < 0.5 * errors[0], errors


def test_minimiser_refuses_an_infinite_pair():
    with pytest.raises(ValueError, match="infinite"):
        bias.loss_minimiser(processes.get("vp"), oracles.gmm8(), "laplace", "uniform", 10)


@pytest.mark.fast_first
@pytest.mark.parametrize("spec", ["laplace/uniform", "gaussian", "laplace/laplace/laplace",
                                             "cauchy/laplace", "rademacher/gaussian", "laplace/"])
def test_bad_pair_raises(spec):
    with pytest.raises(ValueError):
        common.parse_pair(spec)


def test_parse_pairs():
    pairs = common.parse_pairs("gaussian/gaussian, student_t:5/laplace")
    assert [common.pair_label(q, p) for q, p in pairs] == [
        "gaussian/gaussian", "student_t(df=5)/laplace"]
    assert pairs[1] == (increments.get("student_t", df=5.0), increments.get("laplace"))
    with pytest.raises(ValueError, match="duplicate"):
        common.parse_pairs("laplace/laplace,laplace/laplace")
    with pytest.raises(ValueError, match="no loss pairs"):
        common.parse_pairs([])


def test_config_shares_the_budget():
    settings = bias.Settings(train_steps=123, batch_size=64, seed=5,
                             pairs=common.parse_pairs(bias.DEFAULT_PAIRS + ",student_t:5/laplace"))
    configs = {(q, p, k): bias.make_config(settings, q, p, k)
               for q, p in settings.pairs for k in settings.ks}
    first = next(iter(configs.values()))
    for (q, p, k), config in configs.items():
        assert config.train.num_steps == 123 and config.data.batch_size == 64
        assert config.seed == 5 and config.data.name == "gmm8" and config.model.name == "mlp"
        assert config.train.sample_every == 0
        assert config.optim.to_dict() == first.optim.to_dict()
        assert config.model.to_dict() == first.model.to_dict()
        experiment = config_lib.resolve(config)  # a valid config, with the laws asked for
        assert (experiment.q, experiment.p, experiment.num_steps) == (q, p, k)
    assert {(c.loss.q, c.loss.p) for c in configs.values()} == {
        ("gaussian", "gaussian"), ("laplace", "laplace"), ("uniform", "laplace"),
        ("student_t:5.0", "laplace")}


@pytest.mark.fast_first
@pytest.mark.parametrize("n, chunks", [(10, 10), (0, 2), (39, 10)])
def test_settings_refuse_too_few_points(n, chunks):
    with pytest.raises(ValueError, match="n must be"):
        bias.Settings(n=n, num_chunks=chunks)


def test_main_rejects_bad_pair_before_running(tmp_path):
    with pytest.raises(ValueError):
        bias.main(["--out", str(tmp_path), "--pairs", "gaussian/uniform"])
    assert not (tmp_path / "bias.json").exists()


def _fake_result(pairs=("gaussian/gaussian", "laplace/laplace"), ks=(10, 100)):
    """A result of the shape run() returns, with tables of random errors (no training)."""
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 1, 400)

    def table(scale):
        return bias.relative_error_table(scale * rng.normal(size=(400, 2)), rng.normal(size=(400, 2)),
                                         t, num_chunks=4)

    rows = [{"pair": pair, "K": k, "network": table(0.2), "loss_minimiser": table(0.05 * j),
             "network_vs_minimiser": table(0.2)} for j, pair in enumerate(pairs) for k in ks]
    controls = [{"K": k, "oracle": table(0.0), "untrained": table(1.0)} for k in ks]
    return {"pairs": list(pairs), "K": list(ks), "rows": rows, "controls": controls, "n": 400,
            "num_chunks": 4, "train_steps": 7, "batch_size": 8, "seed": 0, "process": "vp"}


def test_markdown_table_has_a_line_per_row():
    result = _fake_result()
    lines = bias.markdown_table(result).splitlines()
    network = [line for line in lines if line.startswith("| gaussian/gaussian | 10 |")]
    assert len(network) == 2  # the network table and the minimiser table
    assert network[0].count(" ± ") == 5 and network[0].count("|") == 10
    assert lines[-1].startswith("Controls (overall): K=10: oracle 0.0e+00, untrained")


def test_plot_writes_a_png(tmp_path):
    bias.plot(_fake_result(), str(tmp_path / "bias.png"))
    data = (tmp_path / "bias.png").read_bytes()
    assert data[:8] == _PNG_SIGNATURE and len(data) > 10_000


@pytest.mark.slow  # fast-tier budget: CI's slow tier runs it
def test_run_measures_every_pair_and_k(monkeypatch):
    # Training stubbed by the exact oracle and the untrained net by zero (both are run
    # for real in the slow end-to-end test): what run() adds is the bookkeeping.
    process, gmm = processes.get("vp"), oracles.gmm8()
    oracle = processes.eps_fn_from_score(process, oracles.gmm_score(process, gmm))
    calls = []

    def fake_train_pair(settings, q, p, num_steps):
        calls.append((str(q), str(p), num_steps))
        return oracle, {"train_seconds": 0.0, "final_step": settings.train_steps}

    monkeypatch.setattr(bias, "train_pair", fake_train_pair)
    monkeypatch.setattr(bias, "_untrained_eps_fn", lambda settings: lambda x, t: jnp.zeros_like(x))
    settings = bias.Settings(train_steps=3, ks=(10,), n=400, num_chunks=4,
                             pairs=common.parse_pairs("gaussian/gaussian"))
    result = bias.run(settings, log=lambda *a: None)
    assert calls == [("gaussian", "gaussian", 10)]
    (row,), (control,) = result["rows"], result["controls"]
    assert (row["pair"], row["K"], row["final_step"]) == ("gaussian/gaussian", 10, 3)
    assert row["network"]["overall"]["relative_error"] == 0.0  # the oracle is ε*
    assert row["loss_minimiser"]["overall"]["relative_error"] < 1e-4  # G/G: m* = ε*
    assert control["untrained"]["overall"]["relative_error"] == pytest.approx(1.0)
    grid = processes.sampling_grid(process, 10, processes.DEFAULT_GRID)  # t_1..t_10 by quartile
    assert [c["num_grid_times"] for c in control["quartile_scale"]] == list(
        np.bincount(bias.quartile_of(np.asarray(grid)[1:]), minlength=4))
    assert (result["scheme"], result["grid"]) == (walks.DEFAULT_SCHEME, processes.DEFAULT_GRID)
    assert result["eval_key"] == "fold_in(fold_in(key(0), 7), K)"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bias")
    result = bias.main([
        "--out", str(out), "--workdir", str(out / "runs"), "--steps", "20", "--K", "10",
        "--pairs", "gaussian/gaussian,laplace/laplace", "--n", "2000", "--batch", "64",
    ])
    return out, result


@pytest.mark.slow
def test_end_to_end_writes_json_and_png(tiny_run):
    out, result = tiny_run
    with open(out / "bias.json") as fh:
        written = json.load(fh)
    for key in ("rows", "controls", "pairs", "K", "train_steps", "batch_size", "seed", "n",
                "machine", "wall_seconds", "jax", "command"):
        assert key in written, key
    assert written["train_steps"] == 20 and written["K"] == [10]
    assert written["pairs"] == ["gaussian/gaussian", "laplace/laplace"]
    assert {"platform", "nproc", "jax", "backend"} <= set(written["machine"])
    assert len(written["rows"]) == 2
    for row in written["rows"]:
        assert row["final_step"] == 20 and row["train_seconds"] > 0
        assert row["resumed_from_step"] is None and np.isfinite(row["final_loss"])
        for name in ("network", "loss_minimiser", "network_vs_minimiser"):
            assert len(row[name]["quartiles"]) == 4
            assert np.isfinite(row[name]["overall"]["relative_error"])
    control = written["controls"][0]
    assert control["oracle"]["overall"]["relative_error"] == 0.0
    assert control["untrained"]["overall"]["relative_error"] == pytest.approx(1.0)
    rows = {r["pair"]: r for r in written["rows"]}
    assert rows["gaussian/gaussian"]["loss_minimiser"]["overall"]["relative_error"] < 1e-4
    assert rows["laplace/laplace"]["loss_minimiser"]["overall"]["relative_error"] > 1e-2
    # the network learned something in 20 steps, and is measured against the same points
    assert rows["laplace/laplace"]["network"]["overall"]["relative_error"] < 1.0
    data = (out / "bias.png").read_bytes()
    assert data[:8] == _PNG_SIGNATURE and len(data) > 10_000
    assert (out / "bias.md").read_text().startswith("Relative error")
    assert written["rows"] == json.loads(json.dumps(result["rows"]))


@pytest.mark.slow
def test_a_finished_run_is_restored_not_retrained(tiny_run):
    out, _ = tiny_run
    settings = bias.Settings(train_steps=20, ks=(10,), pairs=common.parse_pairs("laplace/laplace"),
                             batch_size=64, n=2000, workdir=str(out / "runs"))
    eps_fn, info = bias.train_pair(settings, *settings.pairs[0], 10)
    assert info["resumed_from_step"] == 20 and info["final_step"] == 20
    assert eps_fn(jnp.zeros((3, 2)), jnp.full((3,), 0.5)).shape == (3, 2)
