"""Train-step throughput per (q, p) pair on a reduced-width CIFAR-10 configuration.

For each of the paper's Table 2 pairs (gaussian/gaussian, laplace/laplace,
uniform/gaussian, uniform/laplace) the jitted, sharded train step of
:mod:`nnd.train` is compiled once (compile time reported); then the rows are
timed round-robin, ``steps`` calls on a fixed batch per turn, median over
``repeats`` turns, all in one process, so drift of a shared machine hits every
row alike and the ratios to gaussian/gaussian compare like with like. Goal: every pair within
1.05× of gaussian/gaussian (the loss is a closed form for all four).

Run::

    python -m nnd.bench.train [--out FILE.json] [--width 32] [--blocks 4] [--batch 32]

The data source is ``tfds.testing.mock_data`` (random CIFAR-shaped records, no
download) and the timed batch is fixed: the step's cost does not depend on pixel
values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import numpy as np

from configs import images
from nnd import train

__all__ = ["PAIRS", "prepare", "time_once", "measure_all", "main"]

PAIRS = ("gaussian", "laplace", "uniform", "uniform_laplace")


def _config(row: str, width: int, blocks: int, batch: int):
    config = images.cifar(row)
    config.model.channels = width
    config.model.num_blocks = blocks
    config.model.embed_dim = width
    config.data.batch_size = batch
    return config


def prepare(row: str, *, width: int, blocks: int, batch: int, workdir: str) -> dict:
    """Builds and compiles the train step of one Table 2 row; returns what timing needs."""
    import tensorflow_datasets as tfds  # noqa: PLC0415

    config = _config(row, width, blocks, batch)
    # Random stand-in records (no download): the step's cost does not depend on pixels.
    with tfds.testing.mock_data(num_examples=batch):
        run = train.build(config, os.path.join(workdir, row))
    rng = np.random.default_rng(0)
    batch_x = jax.make_array_from_process_local_data(
        run["batch_sharding"],
        rng.uniform(-1, 1, (batch,) + run["batches"].shape).astype(np.float32))
    key = jax.random.key(0)
    start = time.perf_counter()
    compiled = run["step_fn"].lower(run["state"], batch_x, key).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    state, metrics = compiled(run["state"], batch_x, key)  # warm-up
    jax.block_until_ready(metrics)
    return {"row": row, "q": str(run["experiment"].q), "p": str(run["experiment"].p),
            "compile_seconds": compile_s, "flops_per_step": flops, "repeats": [],
            "_compiled": compiled, "_state": state, "_batch": batch_x, "_key": key}


def time_once(entry: dict, steps: int) -> None:
    """Times ``steps`` train steps of a prepared row and appends seconds per step."""
    compiled, state, batch_x, key = (entry[k] for k in ("_compiled", "_state", "_batch", "_key"))
    start = time.perf_counter()
    for i in range(steps):
        state, metrics = compiled(state, batch_x, jax.random.fold_in(key, i))
    jax.block_until_ready(metrics)
    entry["repeats"].append((time.perf_counter() - start) / steps)
    entry["_state"] = state


def measure_all(rows, *, width: int, blocks: int, batch: int, steps: int, repeats: int,
                workdir: str) -> list[dict]:
    """Compiles every row, then times them round-robin so drift hits all rows alike."""
    entries = [prepare(r, width=width, blocks=blocks, batch=batch, workdir=workdir)
               for r in rows]
    for _ in range(repeats):
        for entry in entries:
            time_once(entry, steps)
    results = []
    for entry in entries:
        sec = statistics.median(entry["repeats"])
        result = {k: v for k, v in entry.items() if not k.startswith("_")}
        result.update(seconds_per_step=sec, examples_per_second=batch / sec)
        results.append(result)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rows", default=",".join(PAIRS))
    args = parser.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",")]
    bad = [r for r in rows if r not in images.ROWS]
    if bad:
        raise ValueError(f"unknown rows {bad}; choose from {sorted(images.ROWS)}")
    import tempfile  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as workdir:
        results = measure_all(rows, width=args.width, blocks=args.blocks, batch=args.batch,
                              steps=args.steps, repeats=args.repeats, workdir=workdir)
    for r in results:
        print(f"{r['row']:>16s}  {r['seconds_per_step'] * 1e3:8.1f} ms/step  "
              f"{r['examples_per_second']:8.1f} ex/s  compile {r['compile_seconds']:.1f}s",
              flush=True)
    base = results[0]["seconds_per_step"]
    for r in results:
        r["ratio"] = r["seconds_per_step"] / base
    print(f"\nTrain step, reduced-width CIFAR-10 (VDM net width {args.width}, "
          f"{args.blocks} blocks, batch {args.batch}), {jax.default_backend()}, "
          f"{jax.device_count()} device(s)\n")
    print("| q / p | ms/step | examples/s | ratio | GFLOP/step | compile s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['q']} / {r['p']} | {r['seconds_per_step'] * 1e3:.1f} | "
              f"{r['examples_per_second']:.1f} | {r['ratio']:.3f} | "
              f"{r['flops_per_step'] / 1e9:.2f} | {r['compile_seconds']:.1f} |")
    report = {
        "benchmark": "train step per (q, p)", "width": args.width, "blocks": args.blocks,
        "batch": args.batch, "steps": args.steps, "repeats": args.repeats, "rows": results,
        "machine": {"platform": platform.platform(), "nproc": os.cpu_count(),
                    "python": platform.python_version(), "jax": jax.__version__,
                    "backend": jax.default_backend(), "devices": jax.device_count()},
    }
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
