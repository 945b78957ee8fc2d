"""A small Table 2 on the bundled digits: the paper's four (q, p) rows, one budget, one machine.

For each row of :data:`configs.images.ROWS` (gaussian/gaussian, laplace/laplace,
uniform/gaussian, uniform/laplace) the ``configs/digits_<row>.py`` run in
``ROOT/digits_<row>`` is trained if it has no checkpoint (``--train``), then
evaluated with ``--mode=eval`` (nnd.evaluate): PF-ODE bits/dim of all 359 test
digits, the eq. (5) walk sum with and without the penalty K·D·ℓ(0), the
pixel-space energy distance of 1000 reverse-walk samples (law q) to the test
digits, and NFE. Writes ``OUT/table2.md``, ``OUT/table2.json`` and
``OUT/table2_samples.png`` (64 samples per row from one seed, side by side).

uniform/gaussian trains exactly like gaussian/gaussian (SPEC §4 (i): the losses
differ by the constant ℓ(0); tests/train_test.py checks the parameters agree), so
by default its checkpoint is a copy of the gaussian/gaussian one and the row
differs only in sampling with uniform steps; ``--no-share`` trains it separately.

Run::

    python -m nnd.experiments.table2 --root runs/table2 --out docs/figures --train
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import shutil
import sys
import time

import jax
import numpy as np

from configs import images
from nnd import evaluate, pictures, train
from nnd.bench.walks import _machine

__all__ = ["PAPER", "run", "markdown", "main"]

#: The paper's Table 2 (CIFAR-10): (bpd, FID) per row (SPEC §8).
PAPER = {"gaussian": (2.49, 1.98), "laplace": (2.47, 2.44), "uniform": (2.82, 1.99),
         "uniform_laplace": (2.66, 2.39)}


def _config(row: str, overrides: dict | None = None):
    config = importlib.import_module(f"configs.digits_{row}").get_config()
    for dotted, value in (overrides or {}).items():
        section, field = dotted.split(".")
        config[section][field] = value
    return config


def _has_checkpoint(workdir: str) -> bool:
    ckpt = os.path.join(workdir, "checkpoints")
    return os.path.isdir(ckpt) and any(d.isdigit() for d in os.listdir(ckpt))


def run(root: str, out: str, *, train_missing: bool = False, share: bool = True,
        overrides: dict | None = None, log=logging.info) -> dict:
    """Trains (if asked) and evaluates the four digits rows; writes the table and figure."""
    os.makedirs(out, exist_ok=True)
    rows, panels = {}, {}
    for row in images.ROWS:
        config = _config(row, overrides)
        workdir = os.path.join(root, f"digits_{row}")
        if not _has_checkpoint(workdir):
            gaussian_dir = os.path.join(root, "digits_gaussian")
            if row == "uniform" and share and _has_checkpoint(gaussian_dir):
                log(f"{row}: sharing the gaussian/gaussian checkpoint (same gradients)")
                shutil.copytree(os.path.join(gaussian_dir, "checkpoints"),
                                os.path.join(workdir, "checkpoints"))
            elif train_missing:
                log(f"{row}: training in {workdir}")
                start = time.time()
                train.train_and_evaluate(config, workdir)
                log(f"{row}: trained in {time.time() - start:.0f} s")
            else:
                raise FileNotFoundError(f"no checkpoint in {workdir}; pass --train")
        log(f"{row}: evaluating")
        rows[row] = evaluate.evaluate(config, workdir)
        restored = evaluate.restore(config, workdir)
        samples, _ = train.draw_samples(restored, config, restored["state"].ema_params, 64,
                                        jax.random.key(2024))
        q, p = images.ROWS[row]
        panels[f"{q}/{p}"] = samples
    pictures.side_by_side_png(panels, os.path.join(out, "table2_samples.png"),
                              "digits: 64 samples per row (reverse walk with law q, one seed)")
    result = {"rows": rows, "shared_uniform_checkpoint": share, "machine": _machine(),
              "paper_cifar10": PAPER}
    with open(os.path.join(out, "table2.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out, "table2.md"), "w") as f:
        f.write(markdown(result) + "\n")
    return result


def markdown(result: dict) -> str:
    lines = [
        "| q / p | bpd, PF-ODE | walk sum, bpd | walk sum + K·D·ℓ(0), bpd | energy distance | "
        "NFE sample / likelihood | paper CIFAR-10 bpd, FID |",
        "|---|---|---|---|---|---|---|",
    ]
    for row, r in result["rows"].items():
        q, p = images.ROWS[row]
        lik, bound, smp = r.get("likelihood"), r["walk_bound"], r["samples"]
        bpd = f"{lik['bpd']:.3f} ± {lik['se_examples']:.3f}" if lik else "–"
        nfe_lik = f"{lik['nfe_mean']:.0f}" if lik else "–"
        paper = result["paper_cifar10"][row]
        lines.append(
            f"| {q} / {p} | {bpd} | {bound['total_bpd']:.3f} | {bound['total_with_penalty_bpd']:.2f} | "
            f"{smp['energy_distance']:.4f} | {smp['nfe']:.0f} / {nfe_lik} | {paper[0]}, {paper[1]} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="runs/table2")
    parser.add_argument("--out", default="docs/figures")
    parser.add_argument("--train", action="store_true", help="train rows without a checkpoint")
    parser.add_argument("--no-share", action="store_true",
                        help="train uniform/gaussian instead of copying gaussian/gaussian")
    args = parser.parse_args(argv)
    # absl (imported by jax) installs a root handler that hides INFO until flags are
    # parsed; replace it so progress shows.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    result = run(args.root, args.out, train_missing=args.train, share=not args.no_share)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
