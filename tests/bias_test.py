"""Tests for nnd.experiments.bias (SPEC §4 (ii): bias of the learned ε on gmm8)."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from nnd import losses, oracles, processes
from nnd.experiments import bias

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def setup():
    process = processes.get("vp")
    gmm = oracles.gmm8()
    return process, gmm, bias.oracle_eps_fn(process, gmm)


def _error(eps_fn, setup, num_steps=10, n=4000, seed=0):
    process, gmm, _ = setup
    return bias.relative_error(eps_fn, jax.random.key(seed), process=process, gmm=gmm,
                               num_steps=num_steps, n=n)


@pytest.mark.parametrize("num_steps", [10, 1000])
def test_exact_oracle_has_zero_error(setup, num_steps):
    table = _error(setup[2], setup, num_steps)
    for cell in table["quartiles"] + [table["overall"]]:
        assert cell["relative_error"] == 0.0 and cell["stderr"] == 0.0
        assert cell["n"] > 0
    assert sum(c["n"] for c in table["quartiles"]) == table["overall"]["n"] == 4000


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


def test_standard_error_shrinks_with_n(setup):
    oracle = setup[2]

    def noisy(x, t):  # a biased field with an x-dependent error
        return oracle(x, t) + 0.1 * jnp.sin(5 * x)

    small, large = _error(noisy, setup, n=2000), _error(noisy, setup, n=16000)
    assert large["overall"]["stderr"] < small["overall"]["stderr"]
    assert abs(large["overall"]["relative_error"] - small["overall"]["relative_error"]) < (
        4 * small["overall"]["stderr"])


@pytest.mark.parametrize("num_steps", [10, 100])
def test_points_on_the_training_grid(setup, num_steps):
    process, gmm, oracle = setup
    points = bias.draw_points(jax.random.key(3), process, gmm, num_steps, 5000)
    grid, dt = processes.time_grid(process, num_steps)
    np.testing.assert_array_equal(points["t"], np.asarray(grid)[points["k"] + 1])
    assert points["k"].min() == 0 and points["k"].max() == num_steps - 1
    alpha = np.asarray(process.alpha(jnp.asarray(points["t"])))[:, None]
    sigma = np.asarray(process.sigma(jnp.asarray(points["t"])))[:, None]
    np.testing.assert_allclose(points["x"], alpha * points["x0"] + sigma * points["noise"],
                               rtol=1e-5, atol=1e-6)
    c = np.asarray(process.g(jnp.asarray(points["t"]))) * math.sqrt(dt) / sigma[:, 0]
    np.testing.assert_allclose(points["c"], c, rtol=1e-5)
    # ε* = E[ε | x_t]: regressing the noise on ε* gives slope 1 (a property of the
    # conditional mean), and ε* is orthogonal to the residual.
    eps, star = points["noise"].ravel(), points["eps_star"].ravel()
    resid = eps - star
    assert abs(np.mean(resid * star)) < 4 * np.std(resid * star) / math.sqrt(eps.size)


def test_posterior_mean_is_the_oracle(setup):
    process, gmm, oracle = setup
    points = bias.draw_points(jax.random.key(4), process, gmm, 100, 2000)
    r, m, s = bias.posterior_eps(process, gmm, jnp.asarray(points["x"]), jnp.asarray(points["t"]))
    np.testing.assert_allclose(np.einsum("bj,bjd->bd", r, m), points["eps_star"], atol=2e-5)
    assert np.all((np.asarray(s) > 0) & (np.asarray(s) <= 1))


def test_gaussian_minimiser_is_the_posterior_mean(setup):
    process, gmm, _ = setup
    table = _error(bias.loss_minimiser(process, gmm, "gaussian", "gaussian", 10), setup, n=2000)
    assert table["overall"]["relative_error"] < 1e-4


def test_minimiser_of_a_symmetric_posterior_is_its_mean():
    # One-component data: the posterior of ε is Gaussian, so every symmetric ℓ has
    # the posterior mean as its minimiser (no bias at any K).
    process = processes.get("vp")
    gmm = oracles.GMM(np.ones(1), np.array([[0.3, -0.2]]), 0.2**2 * np.eye(2)[None])
    table = bias.relative_error(bias.loss_minimiser(process, gmm, "laplace", "laplace", 10),
                                jax.random.key(0), process=process, gmm=gmm, num_steps=10,
                                n=2000)
    assert table["overall"]["relative_error"] < 1e-4


@pytest.mark.parametrize("pair", ["laplace/laplace", "uniform/laplace"])
def test_minimiser_matches_brute_force(setup, pair):
    process, gmm, _ = setup
    q, p = bias.parse_pair(pair)
    points = bias.draw_points(jax.random.key(2), process, gmm, 10, 64)
    x, t = jnp.asarray(points["x"][:12]), jnp.asarray(points["t"][:12])
    m_star = np.asarray(bias.loss_minimiser(process, gmm, q, p, 10)(x, t))
    r, mean, std = (np.asarray(a, np.float64) for a in bias.posterior_eps(process, gmm, x, t))
    biggest = 0.0
    for b in range(12):
        for d in range(2):
            grid = np.linspace((mean[b, :, d] - 12 * std[b, :, d]).min(),
                               (mean[b, :, d] + 12 * std[b, :, d]).max(), 20001)
            dens = sum(r[b, j] * np.exp(-0.5 * ((grid - mean[b, j, d]) / std[b, j, d]) ** 2)
                       / std[b, j, d] for j in range(8))
            dens /= np.trapezoid(dens, grid)
            c = points["c"][b]

            def risk(m):
                u = jnp.asarray(c * (m - grid), jnp.float32)
                return np.trapezoid(dens * np.asarray(losses.shift_kl(q, p, u), np.float64), grid)

            centre = points["eps_star"][b, d]
            best = optimize.minimize_scalar(risk, bracket=(centre - 0.5, centre + 0.5), tol=1e-10)
            assert abs(best.x - m_star[b, d]) < 2e-4, (b, d, best.x, m_star[b, d])
            biggest = max(biggest, abs(m_star[b, d] - centre))
    assert biggest > 1e-3  # these points do show a bias at K = 10


def test_laplace_minimiser_bias_shrinks_with_k(setup):
    process, gmm, _ = setup
    values = [
        _error(bias.loss_minimiser(process, gmm, "laplace", "laplace", k), setup, k, n=4000)
        ["overall"]["relative_error"] for k in (10, 1000)]
    assert values[0] > 0.02 and values[1] < 0.5 * values[0]


@pytest.mark.parametrize("spec", ["laplace/uniform", "gaussian", "laplace/laplace/laplace",
                                  "cauchy/laplace", "rademacher/gaussian"])
def test_bad_pair_raises(spec):
    with pytest.raises(ValueError):
        bias.parse_pair(spec)


def test_parse_pairs():
    pairs = bias.parse_pairs("gaussian/gaussian, student_t:5/laplace")
    assert [bias.pair_label(q, p) for q, p in pairs] == [
        "gaussian/gaussian", "student_t(df=5)/laplace"]
    with pytest.raises(ValueError, match="duplicate"):
        bias.parse_pairs("laplace/laplace,laplace/laplace")


def test_config_shares_the_budget():
    settings = bias.Settings(train_steps=123, batch_size=64, seed=5)
    configs = [bias.make_config(settings, q, p, k)
               for q, p in settings.pairs for k in settings.ks]
    for config in configs:
        assert config.train.num_steps == 123 and config.data.batch_size == 64
        assert config.seed == 5 and config.data.name == "gmm8" and config.model.name == "mlp"
        assert config.train.sample_every == 0
        assert config.optim.to_dict() == configs[0].optim.to_dict()
    assert {(c.loss.q, c.loss.p, c.loss.num_steps) for c in configs} == {
        (q, p, k) for q, p in (("gaussian", "gaussian"), ("laplace", "laplace"),
                               ("uniform", "laplace")) for k in (10, 100, 1000)}


def test_main_rejects_bad_pair_before_running(tmp_path):
    with pytest.raises(ValueError):
        bias.main(["--out", str(tmp_path), "--pairs", "gaussian/uniform"])
    assert not (tmp_path / "bias.json").exists()


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
                "machine", "wall_seconds", "jax"):
        assert key in written, key
    assert written["train_steps"] == 20 and written["K"] == [10]
    assert written["pairs"] == ["gaussian/gaussian", "laplace/laplace"]
    assert len(written["rows"]) == 2
    for row in written["rows"]:
        assert row["final_step"] == 20 and row["train_seconds"] > 0
        for name in ("network", "loss_minimiser", "network_vs_minimiser"):
            assert len(row[name]["quartiles"]) == 4
            assert np.isfinite(row[name]["overall"]["relative_error"])
    control = written["controls"][0]
    assert control["oracle"]["overall"]["relative_error"] == 0.0
    assert control["untrained"]["overall"]["relative_error"] == pytest.approx(1.0)
    rows = {r["pair"]: r for r in written["rows"]}
    assert rows["gaussian/gaussian"]["loss_minimiser"]["overall"]["relative_error"] < 1e-4
    assert rows["laplace/laplace"]["loss_minimiser"]["overall"]["relative_error"] > 1e-2
    data = (out / "bias.png").read_bytes()
    assert data[:8] == _PNG_SIGNATURE and len(data) > 10_000
    assert written["rows"] == json.loads(json.dumps(result["rows"]))
