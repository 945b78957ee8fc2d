"""Same seeds, same numbers: losses, draws, walks, bounds and a short training run.

``tests/data/behaviour.npz`` was recorded before the reference-codebase reorganisation
(moves and renames of issue 20) with

    python tests/behaviour_test.py --record

at commit 1b4de84; these tests recompute every array through today's public names and
compare. Re-record only for a change that is meant to alter numbers, and say so in the
commit. The ``reverse/`` arrays were re-recorded alone for issue 22 (per-example keys and the
default η rule of ``walks.reverse`` change every reverse walk's draws on purpose). The tolerance is a few float32 ulps: moving code must not move results, but XLA may
fuse a moved function differently.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnd import defaults, increments, likelihood, losses, oracles, processes, train, walks

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "behaviour.npz")
LAWS = ["gaussian", "laplace", "uniform", "logistic", "student_t:5", "gennorm:1.5", "rademacher"]
SHIFTS = np.linspace(-6.0, 6.0, 49, dtype=np.float32)


def _law(spec: str) -> increments.Law:
    name, _, param = spec.partition(":")
    params = {"student_t": "df", "gennorm": "beta"}
    return increments.get(name, **({params[name]: float(param)} if param else {}))


def law_arrays(*, closed_only: bool = False, quadrature_only: bool = False) -> dict[str, np.ndarray]:
    """Draws of every law and ℓ_{q,p}(u) of every finite pair (or only the closed-form pairs
    with the draws, or only the quadrature pairs)."""
    out = {}
    key = jax.random.key(0)
    for i, spec in enumerate([] if quadrature_only else LAWS):
        out[f"sample/{spec}"] = np.asarray(_law(spec).sample(jax.random.fold_in(key, i), (4096,)))
    for q in LAWS[:-1]:
        for p in LAWS[:-1]:
            try:
                losses.check_pair(q, p)
            except ValueError:
                continue
            if (closed_only and not losses.has_closed_form(q, p)) or (
                    quadrature_only and losses.has_closed_form(q, p)):
                continue
            out[f"shift_kl/{q}/{p}"] = np.asarray(losses.shift_kl(_law(q), _law(p), jnp.asarray(SHIFTS)))
    return out


def walk_arrays() -> dict[str, np.ndarray]:
    """Forward and reverse walks with the exact gmm8 score, and walk bounds, on vp and vdm."""
    out = {}
    gmm = oracles.gmm8()
    for name in ("vp", "vdm"):
        process = processes.get(name)
        score_fn = oracles.gmm_score(process, gmm)
        x0 = oracles.sample_gmm(jax.random.key(1), gmm, 256)
        out[f"forward/{name}"] = np.asarray(walks.forward(process, _law("laplace"), x0, jax.random.key(2), 30))
        for scheme in ("euler", "ancestral"):  # analytic = ancestral + a variance function
            out[f"reverse/{name}/{scheme}"] = np.asarray(walks.reverse(
                process, _law("uniform"), score_fn, jax.random.key(3), (256, 2), 30, scheme=scheme))
        eps_fn = processes.eps_fn_from_score(process, score_fn)
        for p in ("gaussian", "laplace", "logistic"):
            bound = likelihood.walk_bound(process, eps_fn, x0, jax.random.key(4), q=p, p=p, num_steps=10)
            out[f"walk_bound/{name}/{p}"] = np.asarray(bound["total"])
    return out


def _tiny_config():
    # Its own copy (train_test has a similar one): the recording fixes these values.
    config = defaults.default()
    config.data.batch_size = 64
    config.model.hidden = 32
    config.model.depth = 1
    config.model.embed_dim = 16
    config.loss.num_steps = 20
    config.train.num_steps = 4
    config.train.log_every = 2
    config.train.checkpoint_every = 4
    config.optim.warmup_steps = 2
    return config


def train_arrays(workdir: str) -> dict[str, np.ndarray]:
    import json

    state = train.train(_tiny_config(), workdir)
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    out = {"train/loss": np.asarray([r["loss"] for r in records], np.float64)}
    for i, leaf in enumerate(jax.tree.leaves(state.params)):
        out[f"train/param{i}"] = np.asarray(leaf)
    return out


def _golden(prefix: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as data:
        return {k: data[k] for k in data.files if k.startswith(prefix)}


def _compare(now: dict, golden: dict, rtol: float, atol: float):
    assert sorted(now) == sorted(golden), sorted(set(now) ^ set(golden))
    for name in golden:
        np.testing.assert_allclose(now[name], golden[name], rtol=rtol, atol=atol, err_msg=name)


def _closed(name: str) -> bool:
    return not name.startswith("shift_kl/") or losses.has_closed_form(*name.split("/")[1:])


def test_draws_and_closed_form_losses_match_the_recording():
    golden = {k: v for k, v in {**_golden("sample/"), **_golden("shift_kl/")}.items() if _closed(k)}
    _compare(law_arrays(closed_only=True), golden, rtol=1e-6, atol=1e-7)


@pytest.mark.slow  # fast-tier budget: CI's slow tier runs it
def test_quadrature_losses_match_the_recording():
    golden = {k: v for k, v in _golden("shift_kl/").items() if not _closed(k)}
    now = {k: v for k, v in law_arrays(quadrature_only=True).items()}
    _compare(now, golden, rtol=1e-6, atol=1e-7)


@pytest.mark.slow  # fast-tier budget: CI's slow tier runs it
def test_walks_and_bounds_match_the_recording():
    golden = {**_golden("forward/"), **_golden("reverse/"), **_golden("walk_bound/")}
    # A walk of 30 steps compounds rounding: a few ulps per step of |x| ≲ 3.
    _compare(walk_arrays(), golden, rtol=2e-6, atol=2e-6)


@pytest.mark.slow
def test_training_matches_the_recording(tmp_path):
    _compare(train_arrays(str(tmp_path)), _golden("train/"), rtol=1e-5, atol=1e-6)


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/behaviour_test.py --record")
    import tempfile

    arrays = {**law_arrays(), **walk_arrays()}
    with tempfile.TemporaryDirectory() as workdir:
        arrays.update(train_arrays(workdir))
    os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
    np.savez_compressed(GOLDEN, **arrays)
    print(f"wrote {len(arrays)} arrays to {GOLDEN}")
