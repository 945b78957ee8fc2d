"""Learned models sampled at coarse and fine K: does the reverse walk stay right at K = 30?

For each config (``configs/<name>.py``: the toys, the digits rows) the run in
``ROOT/<name>`` is trained if it has no checkpoint (``--train``), then its EMA
parameters draw ``--n`` samples with the configured sampler, scheme and grid at each K of
``--steps`` (one key for every K). Toys: energy distance to fresh gmm8 data and the
blob width (mean squared distance to the nearest centre), with the data-vs-data floor
and the data's width beside them. Digits: the energy distance in pixel space to the
dequantised test digits, as ``--mode=eval`` measures it. Writes ``OUT/coarse.json``,
``OUT/coarse.md`` and ``OUT/coarse_samples.png`` (one panel per run and K).

Run::

    python -m nnd.experiments.coarse --root runs/coarse --out docs/figures --train
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
import os
import time
from typing import Sequence

import jax
import numpy as np

from nnd import data, evaluate, keys, metrics, oracles, pictures, train
from nnd.experiments import common

__all__ = ["DEFAULT_CONFIGS", "run", "markdown", "main"]

DEFAULT_CONFIGS = "toy_gaussian,toy_laplace,toy_uniform,digits_gaussian,digits_laplace"
DEFAULT_STEPS = "30,1000"


def _config(name: str, overrides: dict | None):
    try:
        module = importlib.import_module(f"configs.{name}")
    except ModuleNotFoundError:
        raise ValueError(f"no config configs/{name}.py") from None
    config = module.get_config()
    for dotted, value in (overrides or {}).items():
        section, field = dotted.split(".")
        config[section][field] = value
    return config


def _reference(config, restored, key) -> np.ndarray:
    """Held-out data the samples are compared with (fresh toy draws; dequantised test digits)."""
    x, levels = evaluate.held_out(config, config.eval.num_examples)
    if levels is None:
        return x
    u = np.asarray(jax.random.uniform(key, levels.shape))
    return data.dequantize(levels, u, restored.num_levels)


def _measure(config, workdir: str, steps: Sequence[int], n: int) -> tuple[dict, dict]:
    restored = evaluate.restore(config, workdir)
    root = keys.stream(restored.root, keys.Stream.EXPERIMENT)
    reference = _reference(config, restored, keys.stream(root, 0))
    toy = config.data.name == "gmm8"
    row = {"step": restored.step, "dataset": config.data.name, "q": str(restored.experiment.q),
           "p": str(restored.experiment.p), "scheme": restored.experiment.sampling.scheme,
           "grid": restored.experiment.sampling.grid, "reference_examples": len(reference),
           "by_steps": {}}
    if toy:
        gmm = oracles.gmm8()
        other = np.asarray(oracles.sample_gmm(keys.stream(root, 1), gmm, n))
        row["data_floor"] = metrics.energy_distance(other, reference)
        row["data_blob_width"] = metrics.nearest_centre(other, gmm.means)[0]
    panels = {}
    for k in steps:
        settings = dataclasses.replace(restored.experiment.sampling, num_steps=k)
        start = time.perf_counter()
        samples, nfe = evaluate.draw(restored, n, keys.stream(root, 2), settings=settings)
        cell = {"nfe": nfe, "seconds": time.perf_counter() - start,
                "finite": bool(np.all(np.isfinite(samples))),
                "energy_distance": metrics.energy_distance(samples.reshape(n, -1),
                                                           reference.reshape(len(reference), -1))}
        if toy:
            cell["blob_width"] = metrics.nearest_centre(samples, oracles.gmm8().means)[0]
        row["by_steps"][str(k)] = cell
        panels[k] = samples[:64] if not toy else samples
    return row, panels


def run(names: Sequence[str], root: str, out: str, *, steps: Sequence[int], n: int,
        train_missing: bool = False, overrides: dict | None = None, log=logging.info,
        argv=None) -> dict:
    """Trains (if asked) and samples each run at every K; writes the table and figure.

    ``overrides`` maps ``"section.field"`` to a value set in every run's config.

    Raises:
      FileNotFoundError: a run has no checkpoint and ``train_missing`` is False.
    """
    start = time.perf_counter()
    rows, panels = {}, {}
    for name in names:
        config = _config(name, overrides)
        workdir = os.path.join(root, name)
        if common.latest_step(workdir) is None:
            if not train_missing:
                raise FileNotFoundError(f"no checkpoint in {workdir}; pass --train")
            log(f"{name}: training in {workdir}")
            config.train.sample_every = 0
            train.train(config, workdir)
        log(f"{name}: sampling at K = {', '.join(map(str, steps))}")
        rows[name], by_k = _measure(config, workdir, steps, n)
        for k, samples in by_k.items():
            panels[f"{name}, K = {k}"] = samples
    result = {"runs": rows, "steps": list(steps), "num_samples": n}
    figure = functools.partial(pictures.side_by_side_png, panels, title=(
        "learned models, default sampler: samples at each K (one key)"))
    return common.write(out, "coarse", result, markdown=markdown(result),
                        figures={"coarse_samples.png": figure}, start=start, argv=argv)


def markdown(result: dict) -> str:
    """One line per run: energy distance (and blob width for toys) at each K."""
    steps = result["steps"]
    lines = []
    for name, r in result["runs"].items():
        cells = []
        for k in steps:
            c = r["by_steps"][str(k)]
            width = f", width {c['blob_width']:.4f}" if "blob_width" in c else ""
            cells.append(f"{c['energy_distance']:.4f}{width}")
        floor = (f"{r['data_floor']:.4f}, width {r['data_blob_width']:.4f}"
                 if "data_floor" in r else "–")
        lines.append([name, f"{r['q']} / {r['p']}", f"{r['scheme']}, {r['grid']}", *cells, floor])
    return "\n".join(common.markdown_table(
        ["run", "q / p", "scheme, grid", *[f"energy distance, K = {k}" for k in steps],
         "data vs data"], lines))


def main(argv: Sequence[str] | None = None) -> dict:
    """Parses flags, trains (with ``--train``) and samples the runs, writes the outputs."""
    parser = common.parser("coarse", __doc__.split("\n")[0], out="docs/figures")
    parser.add_argument("--root", default="runs/coarse", help="one workdir per config below it")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated configs/ names")
    parser.add_argument("--steps", default=DEFAULT_STEPS, help="comma-separated K values")
    parser.add_argument("--n", type=int, default=2000, help="samples per run and K")
    parser.add_argument("--train", action="store_true", help="train runs without a checkpoint")
    args = parser.parse_args(argv)
    common.check_int("--n", args.n, 2)
    names = common.parse_list(args.configs, str, "configs")
    return run(names, args.root, args.out, steps=common.parse_steps(args.steps), n=args.n,
               train_missing=args.train, argv=argv)


if __name__ == "__main__":
    common.cli(main)
