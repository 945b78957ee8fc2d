"""A small Table 2 on the bundled digits: the paper's four (q, p) rows, one budget, one machine.

For each row of :data:`nnd.defaults.ROWS` (gaussian/gaussian, laplace/laplace,
uniform/gaussian, uniform/laplace) the run ``defaults.image("digits", row)`` in
``ROOT/digits_<row>`` is trained if it has no checkpoint (``--train``), then
evaluated by :func:`nnd.evaluate.evaluate`: PF-ODE bits/dim of all 359 test
digits, the eq. (5) walk sum with and without the penalty K·D·ℓ(0), the
pixel-space energy distance of 1000 reverse-walk samples (law q) to the test
digits, and NFE. Writes ``OUT/table2.md``, ``OUT/table2.json`` and
``OUT/table2_samples.png`` (64 samples per row from one key, side by side).

uniform/gaussian trains exactly like gaussian/gaussian (SPEC §4 (i): the losses
differ by the constant ℓ(0); tests/train_test.py checks the parameters agree), so
by default its checkpoint is a copy of the gaussian/gaussian one and the row
differs only in sampling with uniform steps; ``--no-share`` trains it separately.

Run::

    python -m nnd.experiments.table2 --root runs/table2 --out docs/figures --train
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Sequence

from nnd import defaults, evaluate, keys, paths, pictures, train
from nnd.experiments import common

__all__ = ["PAPER", "run", "markdown", "main"]

#: The paper's Table 2 (CIFAR-10): (bpd, FID) per row (SPEC §8).
PAPER = {"gaussian": (2.49, 1.98), "laplace": (2.47, 2.44), "uniform": (2.82, 1.99),
         "uniform_laplace": (2.66, 2.39)}


def _config(row: str, overrides: dict | None = None):
    config = defaults.image("digits", row)
    for dotted, value in (overrides or {}).items():
        section, field = dotted.split(".")
        config[section][field] = value
    return config


def run(root: str, out: str, *, train_missing: bool = False, share: bool = True,
        overrides: dict | None = None, log=logging.info) -> dict:
    """Trains (if asked) and evaluates the four digits rows; writes the table and figure.

    ``overrides`` maps ``"section.field"`` to a value set in every row's config.

    Raises:
      FileNotFoundError: a row has no checkpoint and ``train_missing`` is False.
    """
    rows, panels = {}, {}
    for row, (q, p) in defaults.ROWS.items():
        config = _config(row, overrides)
        workdir = os.path.join(root, f"digits_{row}")
        if common.latest_step(workdir) is None:
            gaussian_dir = os.path.join(root, "digits_gaussian")
            if row == "uniform" and share and common.latest_step(gaussian_dir) is not None:
                log(f"{row}: sharing the gaussian/gaussian checkpoint (same gradients)")
                paths.copytree(os.path.join(gaussian_dir, "checkpoints"),
                               os.path.join(workdir, "checkpoints"))
            elif train_missing:
                log(f"{row}: training in {workdir}")
                start = time.perf_counter()
                train.train(config, workdir)
                log(f"{row}: trained in {time.perf_counter() - start:.0f} s")
            else:
                raise FileNotFoundError(f"no checkpoint in {workdir}; pass --train")
        log(f"{row}: evaluating")
        rows[row] = evaluate.evaluate(config, workdir)
        restored = evaluate.restore(config, workdir)
        panels[f"{q}/{p}"], _ = evaluate.draw(
            restored, 64, keys.stream(restored.root, keys.Stream.EXPERIMENT))
    result = {"rows": rows, "shared_uniform_checkpoint": share, "paper_cifar10": PAPER}
    figure = functools.partial(pictures.side_by_side_png, panels, title=(
        "digits: 64 samples per row (reverse walk with law q, one key)"))
    return common.write(out, "table2", result, markdown=markdown(result),
                        figures={"table2_samples.png": figure})


def markdown(result: dict) -> str:
    """One line per row: pf-ode bpd, the law-p walk's bound, the eq. (5) estimate with the
    penalty, energy distance, NFE."""
    lines = []
    for row, r in result["rows"].items():
        q, p = defaults.ROWS[row]
        lik, bound, smp = r.get("likelihood"), r["walk_bound"], r["samples"]
        estimate = r["walk_estimate"]
        bpd = f"{lik['bpd']:.3f} ± {lik['se_examples']:.3f}" if lik else "–"
        nfe_lik = f"{lik['nfe_mean']:.0f}" if lik else "–"
        paper = result["paper_cifar10"][row]
        lines.append([f"{q} / {p}", bpd, f"{bound['total_bpd']:.3f}" if "total_bpd" in bound else
                      "none: bounded support",
                      f"{estimate['total_with_penalty_bpd']:.2f}", f"{smp['energy_distance']:.4f}",
                      f"{smp['nfe']:.0f} / {nfe_lik}", f"{paper[0]}, {paper[1]}"])
    return "\n".join(common.markdown_table(
        ["q / p", "pf-ode bpd", "bound bpd (law-p walk)", "estimate bpd (eq. (5) + K·D·ℓ(0))",
         "energy distance",
         "NFE sample / likelihood", "paper CIFAR-10 bpd, FID"], lines))


def main(argv: Sequence[str] | None = None) -> dict:
    """Parses flags, trains (with ``--train``) and evaluates the rows, writes the outputs."""
    parser = common.parser("table2", __doc__.split("\n")[0], out="docs/figures")
    parser.add_argument("--root", default="runs/table2", help="one workdir per row below it")
    parser.add_argument("--train", action="store_true", help="train rows without a checkpoint")
    parser.add_argument("--no-share", action="store_true",
                        help="train uniform/gaussian instead of copying gaussian/gaussian")
    args = parser.parse_args(argv)
    return run(args.root, args.out, train_missing=args.train, share=not args.no_share)


if __name__ == "__main__":
    common.cli(main)
