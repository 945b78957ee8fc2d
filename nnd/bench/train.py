"""Train-step throughput per (q, p) pair, against the machine's matmul peak.

For each of the paper's Table 2 pairs (gaussian/gaussian, laplace/laplace,
uniform/gaussian, uniform/laplace) the jitted, sharded train step that
:func:`nnd.train.build` makes is compiled once (compile time reported); its FLOP
per step come from the compiled step's XLA cost analysis. Then, in one process,
the rows, the loss alone of each row, float32 matmuls (the machine's matmul peak,
:mod:`nnd.bench.machine`) and the probes of :mod:`nnd.bench.limits` are timed
round-robin (``repeats`` turns, median per entry), so drift of a shared machine
hits every entry alike.

Reported per row: examples/s, achieved FLOP/s (cost-analysis FLOP per step over
the median step time) and its fraction of the matmul peak; the ratio to
gaussian/gaussian of the step and of the loss alone (the eq. (5) objective with a
trivial ε-network, ``eps = w x``, forward and backward). Goals of issue 5: the
ratio ≤ :data:`nnd.bench.OVERHEAD_GOAL` for every pair; on CPU, the reduced-width
CIFAR step at ≥ :data:`nnd.bench.PEAK_FRACTION_GOAL` of the matmul peak, else a
list of what limits it (:func:`nnd.bench.limits.limits`).

Run::

    python -m nnd.bench.train [--out FILE.json] [--width 32] [--blocks 4] [--batch 32]

No data is read: :func:`nnd.train.build` gets a stand-in for the batch source
(shape and batch size only) and the timed batch is a fixed random array; the
step's cost does not depend on pixel values.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

from configs import images
from nnd import data, losses, train
from nnd.bench import OVERHEAD_GOAL, PEAK_FRACTION_GOAL
from nnd.bench import limits as limits_lib
from nnd.bench import machine

__all__ = ["PAIRS", "network", "prepare", "benchmark", "markdown", "main"]

PAIRS = ("gaussian", "laplace", "uniform", "uniform_laplace")


def _config(row: str, width: int, blocks: int, batch: int):
    config = images.cifar(row)
    config.model.channels = width
    config.model.num_blocks = blocks
    config.model.embed_dim = width
    config.data.batch_size = batch
    return config


class _StandInBatches:
    """What :func:`nnd.train.build` takes from ``data.make_batches``, with no data source."""

    def __init__(self, config, split: str = "train"):
        del split
        spec = data.IMAGES[config.data.name]
        self.shape, self.num_levels = spec.shape, spec.num_levels
        self.global_batch = config.data.batch_size
        self.local_batch = config.data.batch_size // jax.process_count()

    def __call__(self, step: int):
        raise RuntimeError("the benchmark times a fixed batch; it reads no data")


def network(row: str, *, width: int, blocks: int, batch: int, workdir: str):
    """(config, run) of :func:`nnd.train.build` for a reduced-width CIFAR-10 Table 2 row."""
    config = _config(row, width, blocks, batch)
    with mock.patch.object(data, "make_batches", _StandInBatches):
        run = train.build(config, os.path.join(workdir, f"{row}_w{width}_b{blocks}_n{batch}"))
    return config, run


def _fixed_batch(run, batch: int):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch,) + tuple(run["batches"].shape)).astype(np.float32)
    return jax.make_array_from_process_local_data(run["batch_sharding"], x)


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    cost = cost or {}
    return {"flops": float(cost.get("flops", float("nan"))),
            "bytes": float(cost.get("bytes accessed", float("nan")))}


def _step_runner(compiled, state, batch_x, key, num_keys: int = 64):
    """``run(n)``: n train steps (state threaded, donated), then block.

    The per-step keys are made before timing and reused cyclically: the step's cost
    does not depend on them.
    """
    keys = [jax.random.fold_in(key, i) for i in range(num_keys)]
    cell = {"state": state, "i": 0}

    def run(n: int) -> None:
        metrics = None
        for _ in range(n):
            cell["state"], metrics = compiled(cell["state"], batch_x, keys[cell["i"] % num_keys])
            cell["i"] += 1
        jax.block_until_ready((cell["state"], metrics))

    return run, cell


def _loss_alone(experiment, batch_x, key):
    """The eq. (5) objective with ``eps = w x`` (no network), value and gradient; compiled."""

    def loss(w):
        loss_B, _ = losses.objective(lambda x, t: w * x, batch_x, key, process=experiment.process,
                                     q=experiment.q, p=experiment.p,
                                     num_steps=experiment.num_steps)
        return jnp.mean(loss_B)

    return jax.jit(jax.value_and_grad(loss)).lower(jnp.float32(0.5)).compile()


def prepare(row: str, *, width: int, blocks: int, batch: int, workdir: str,
            count_ops: bool = False, loss_alone: bool = True) -> dict:
    """Builds and compiles the train step of one Table 2 row; returns what timing needs.

    Keys starting with ``_`` hold live objects (compiled step, run, timed entries).
    """
    config, run = network(row, width=width, blocks=blocks, batch=batch, workdir=workdir)
    batch_x = _fixed_batch(run, batch)
    key = jax.random.key(0)
    op_flops = (limits_lib.flops_by_kind(run["step_fn"], run["state"], batch_x, key)
                if count_ops else None)
    start = time.perf_counter()
    compiled = run["step_fn"].lower(run["state"], batch_x, key).compile()
    compile_s = time.perf_counter() - start
    cost = _cost(compiled)
    step_run, cell = _step_runner(compiled, run["state"], batch_x, key)
    entry = {"row": row, "q": str(run["experiment"].q), "p": str(run["experiment"].p),
            "compile_seconds": compile_s, "flops_per_step": cost["flops"],
            "bytes_per_step": cost["bytes"], "op_flops": op_flops,
            "_config": config, "_run": run, "_cell": cell, "_batch": batch_x, "_key": key,
            "_step": machine.Timed(f"step {row}", step_run, cost["flops"], cost["bytes"])}
    if loss_alone:
        loss = _loss_alone(run["experiment"], batch_x, key)
        loss_cost = _cost(loss)
        w = jnp.float32(0.5)

        def loss_run(n: int) -> None:
            out = None
            for _ in range(n):
                out = loss(w)
            jax.block_until_ready(out)

        entry["_loss"] = machine.Timed(f"loss alone {row}", loss_run, loss_cost["flops"],
                                       loss_cost["bytes"])
    return entry


def benchmark(rows=PAIRS, *, width: int = 32, blocks: int = 4, batch: int = 32, steps: int = 5,
              repeats: int = 7, matmul_sizes=None, analysis: bool = True, scale_batch: int = 4,
              min_turn_seconds: float = 0.3, workdir: str | None = None, log=print) -> dict:
    """Compiles every row (and the probes), times all round-robin; a JSON-ready dict.

    ``analysis`` adds the probes of :mod:`nnd.bench.limits` for the first row
    (forward, forward+backward, convolution alone, the step at ``scale_batch`` × batch)
    and the list of limits when the step is below the peak-fraction goal.
    """
    rows = list(rows)
    if workdir is None:
        with tempfile.TemporaryDirectory() as tmp:
            return benchmark(rows, width=width, blocks=blocks, batch=batch, steps=steps,
                             repeats=repeats, matmul_sizes=matmul_sizes, analysis=analysis,
                             scale_batch=scale_batch, min_turn_seconds=min_turn_seconds,
                             workdir=tmp, log=log)
    entries = []
    for i, row in enumerate(rows):
        entries.append(prepare(row, width=width, blocks=blocks, batch=batch, workdir=workdir,
                               count_ops=analysis and i == 0))
        log(f"compiled {row}: {entries[-1]['compile_seconds']:.1f}s, "
            f"{entries[-1]['flops_per_step'] / 1e9:.2f} GFLOP/step")
    matmuls = machine.matmul_probes(matmul_sizes)
    stream = machine.bandwidth_probe()
    probes = []
    if analysis:
        first = entries[0]
        probes = limits_lib.probes(first["_run"], first["_cell"]["state"], first["_batch"],
                                   first["_key"], width=width, batch=batch)
        if scale_batch > 1:
            scaled = prepare(rows[0], width=width, blocks=blocks, batch=batch * scale_batch,
                             workdir=workdir, loss_alone=False)
            probes.append((scaled["_step"], {"probe": "step_scaled_batch",
                                             "batch": batch * scale_batch}))
        log(f"compiled {len(probes)} probes")
    steps_timed = [e["_step"] for e in entries]
    others = [e["_loss"] for e in entries] + matmuls + [stream] + [p for p, _ in probes]
    # Train steps take `steps` calls per turn; short entries run long enough per turn
    # for the timer to resolve them.
    machine.calibrate(steps_timed, min_calls=steps)
    machine.calibrate(others, min_turn_seconds=min_turn_seconds)
    machine.time_round_robin(steps_timed + others, repeats=repeats)
    matmul_summaries = [m.summary() for m in matmuls]
    peak = machine.peak(matmul_summaries)
    stream_summary = stream.summary()
    results = []
    for e in entries:
        step, loss = e["_step"].summary(), e["_loss"].summary()
        sec = step["seconds"]
        results.append({
            "row": e["row"], "q": e["q"], "p": e["p"], "compile_seconds": e["compile_seconds"],
            "flops_per_step": e["flops_per_step"], "bytes_per_step": e["bytes_per_step"],
            "seconds_per_step": sec, "examples_per_second": batch / sec,
            "achieved_flops_per_second": e["flops_per_step"] / sec,
            "fraction_of_matmul_peak": e["flops_per_step"] / sec / peak["flops_per_second"],
            "repeats": step["repeats"], "steps_per_turn": step["calls_per_turn"],
            "loss_alone_seconds": loss["seconds"],
        })
    for r in results:
        r["ratio"] = r["seconds_per_step"] / results[0]["seconds_per_step"]
        r["loss_alone_ratio"] = r["loss_alone_seconds"] / results[0]["loss_alone_seconds"]
    report = {
        "benchmark": "train step per (q, p)",
        "config": {"dataset": "cifar10 (stand-in batch, no data read)", "model": "vdm",
                   "width": width, "blocks": blocks, "batch": batch,
                   "image_shape": list(entries[0]["_run"]["batches"].shape)},
        "steps": steps, "repeats": repeats,
        "goal_ratio": OVERHEAD_GOAL, "goal_fraction_of_peak": PEAK_FRACTION_GOAL,
        "matmul_peak": {**peak, "dtype": "float32", "probes": matmul_summaries},
        "stream_bandwidth": stream_summary,
        "rows": results,
    }
    if analysis:
        probe_rows = []
        for timed, meta in probes:
            s = timed.summary()
            probe_rows.append({**meta, **s, "fraction_of_matmul_peak":
                               s["flops_per_second"] / peak["flops_per_second"]})
        report["analysis"] = {
            "op_flops": entries[0]["op_flops"],
            "probes": probe_rows,
            "limits": limits_lib.limits(results[0], entries[0]["op_flops"], probe_rows, peak,
                                        stream_summary, width=width, batch=batch,
                                        goal=PEAK_FRACTION_GOAL),
        }
    for e in entries:  # free the donated states and compiled executables now
        e.clear()
    return report


def markdown(report: dict, machine_info: dict | None = None) -> str:
    """Markdown tables of a :func:`benchmark` report."""
    c = report["config"]
    peak = report["matmul_peak"]
    head = (f"Train step, CIFAR-10 shape, VDM net width {c['width']}, {c['blocks']}+"
            f"{c['blocks'] + 1} blocks, batch {c['batch']}; median of {report['repeats']} "
            f"round-robin turns")
    if machine_info:
        head += f" on {machine.machine_line(machine_info)}"
    lines = [head, "",
             f"Matmul peak (float32 {peak['name']}, same turns): "
             f"{peak['flops_per_second'] / 1e9:.1f} GFLOP/s; stream bandwidth "
             f"{report['stream_bandwidth']['bytes_per_second'] / 1e9:.1f} GB/s. Goals: ratio ≤ "
             f"{report['goal_ratio']}, fraction of matmul peak ≥ "
             f"{report['goal_fraction_of_peak']:.0%} (CPU).", "",
             "| q / p | ms/step | examples/s | GFLOP/step | achieved GFLOP/s | of matmul peak | "
             "ratio to G/G | loss alone ratio | compile s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        flag = "" if r["ratio"] <= report["goal_ratio"] else " ✗"
        lines.append(
            f"| {r['q']} / {r['p']} | {r['seconds_per_step'] * 1e3:.1f} | "
            f"{r['examples_per_second']:.1f} | {r['flops_per_step'] / 1e9:.2f} | "
            f"{r['achieved_flops_per_second'] / 1e9:.1f} | {r['fraction_of_matmul_peak']:.1%} | "
            f"{r['ratio']:.3f}{flag} | {r['loss_alone_ratio']:.2f} | {r['compile_seconds']:.1f} |")
    if "analysis" in report:
        lines.append("")
        lines.append(limits_lib.markdown(report["analysis"]))
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m nnd.bench.train",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rows", default=",".join(PAIRS))
    parser.add_argument("--matmul-sizes", default=None, help="e.g. 1024,2048")
    parser.add_argument("--scale-batch", type=int, default=4,
                        help="also time the first row at this × batch (1: don't)")
    parser.add_argument("--no-analysis", action="store_true", help="rows and peak only")
    args = parser.parse_args(argv)
    rows = parse_rows(args.rows)
    sizes = [int(n) for n in args.matmul_sizes.split(",")] if args.matmul_sizes else None
    report = benchmark(rows, width=args.width, blocks=args.blocks, batch=args.batch,
                       steps=args.steps, repeats=args.repeats, matmul_sizes=sizes,
                       analysis=not args.no_analysis, scale_batch=args.scale_batch)
    report["machine"] = machine.describe()
    print()
    print(markdown(report, report["machine"]), flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return report


def parse_rows(text: str) -> list[str]:
    """Comma-separated Table 2 rows, checked against :data:`configs.images.ROWS`."""
    rows = [r.strip() for r in text.split(",") if r.strip()]
    bad = [r for r in rows if r not in images.ROWS]
    if bad or not rows:
        raise ValueError(f"unknown rows {bad}; choose from {sorted(images.ROWS)}")
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
