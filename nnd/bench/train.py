"""Train-step throughput per (q, p) row of Table 2, against the machine's float32 matmul peak.

For each row (gaussian/gaussian, laplace/laplace, uniform/gaussian, uniform/laplace)
the jitted, sharded train step of :func:`nnd.train.build` on a reduced-width CIFAR-10
config (:func:`config`) is compiled once (compile time reported); its FLOP per step
are XLA's cost analysis of the compiled step. Then, in one process, the rows, the
loss alone of each row, float32 matmuls (the peak, :mod:`nnd.bench.machine`) and two
probes are timed round-robin (``repeats`` turns, median per entry), so drift of a
shared machine hits every entry alike.

Reported per row: examples/s, achieved FLOP/s (FLOP per step over the median step
time) and its fraction of the matmul peak; the ratio to gaussian/gaussian of the step
and of the loss alone (the eq. (5) objective with ``eps = w x``, no network, forward
and backward). Goals: ratio ≤ :data:`nnd.bench.OVERHEAD_GOAL` for every row; on CPU
the fraction ≥ :data:`nnd.bench.PEAK_FRACTION_GOAL`. The probes are the step's two
main ops alone, forward+backward: the 3×3 convolution at the network's shape and the
attention block; their fractions of the peak say which op holds the step back
(docs/bench_studies.md has the full breakdown of an earlier study).

No data is read: :func:`nnd.train.build` gets :class:`StandInBatches`, the same
random batch every step (the step's cost does not depend on pixel values).

Run::

    python -m nnd.bench.train [--rows gaussian,laplace] [--width 32] [--blocks 4]
        [--batch 32] [--query-chunk 128] [--no-analysis] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from nnd import data, defaults, losses, models, train
from nnd.bench import OVERHEAD_GOAL, PEAK_FRACTION_GOAL, machine

__all__ = ["PAIRS", "config", "StandInBatches", "network", "step_runner", "benchmark", "markdown",
           "parse_rows", "main"]

#: The Table 2 rows benchmarked, the first is the reference.
PAIRS = tuple(defaults.ROWS)


#: Attention queries per chunk on the benchmark's CPU net (``models.attention``): the
#: [B, N, N] weights of a 32×32 image otherwise go through memory several times.
QUERY_CHUNK = 128


def config(row: str, *, width: int, blocks: int, batch: int, query_chunk: int = QUERY_CHUNK):
    """The CIFAR-10 config of Table 2 row ``row`` with a VDM network of reduced width."""
    cfg = defaults.image("cifar10", row, net="vdm")
    cfg.model = defaults.model("vdm", channels=width, num_blocks=blocks, embed_dim=width,
                               query_chunk=query_chunk)
    cfg.data.batch_size = batch
    return cfg


@dataclasses.dataclass(frozen=True)
class StandInBatches:
    """A batch source for :func:`nnd.train.build` that reads no data: one random batch."""

    shape: tuple[int, ...]
    local_batch: int

    def __call__(self, step: int) -> np.ndarray:
        del step
        rng = np.random.default_rng(0)
        return rng.uniform(-1, 1, (self.local_batch,) + self.shape).astype(np.float32)


def network(row: str, *, width: int, blocks: int, batch: int, workdir: str,
            query_chunk: int = QUERY_CHUNK) -> train.Run:
    """:func:`nnd.train.build` of :func:`config` with :class:`StandInBatches`."""
    batches = StandInBatches(data.example_shape("cifar10"), batch // jax.process_count())
    return train.build(config(row, width=width, blocks=blocks, batch=batch, query_chunk=query_chunk),
                       os.path.join(workdir, f"{row}_w{width}_b{blocks}_n{batch}_c{query_chunk}"),
                       batches=batches, mesh=train.make_mesh())


def step_runner(compiled, state, batch_x, key, num_keys: int = 64):
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

    return run


def _prepare(row: str, *, width: int, blocks: int, batch: int, workdir: str,
             query_chunk: int = QUERY_CHUNK) -> dict:
    """Compiles one row's train step and its loss alone: {'row', 'q', 'p', 'compile_seconds',
    'step': Timed, 'loss': Timed, 'shape'}.

    FLOP and bytes per step are XLA's cost analysis of the same step with the attention
    unchunked (``query_chunk = -1``): XLA counts a loop body once, and the chunked step
    recomputes the attention weights in its backward pass; the network's own work is
    the same either way.
    """
    run = network(row, width=width, blocks=blocks, batch=batch, workdir=workdir,
                  query_chunk=query_chunk)
    batch_x = jax.make_array_from_process_local_data(run.batch_sharding, run.batches(0))
    key = jax.random.key(0)
    start = time.perf_counter()
    compiled = run.step_fn.lower(run.state, batch_x, key).compile()
    compile_s = time.perf_counter() - start
    if _chunk(query_chunk, run.example_shape) > 0:
        whole = network(row, width=width, blocks=blocks, batch=batch, workdir=workdir,
                        query_chunk=-1)
        cost = machine.cost(whole.step_fn.lower(whole.state, batch_x, key).compile())
    else:
        cost = machine.cost(compiled)
    e = run.experiment

    def loss_alone(w, x):
        loss_B, _ = losses.objective(lambda x_t, t: w * x_t, x, key, process=e.process, q=e.q,
                                     p=e.p, num_steps=e.num_steps)
        return jnp.mean(loss_B)

    return {"row": row, "q": str(e.q), "p": str(e.p), "compile_seconds": compile_s,
            "shape": list(run.example_shape),
            "step": machine.Timed(f"step {row}", step_runner(compiled, run.state, batch_x, key),
                                  cost["flops"], cost["bytes"]),
            "loss": machine.compiled_timed(f"loss alone {row}", jax.value_and_grad(loss_alone),
                                           jnp.float32(0.5), batch_x)}


def _chunk(query_chunk: int, shape) -> int:
    """The queries per chunk ``query_chunk`` gives at ``shape`` (-1: all at once)."""
    return query_chunk or models.auto_query_chunk(shape[0] * shape[1])


def _probes(batch: int, shape, width: int, query_chunk: int = QUERY_CHUNK) -> list[machine.Timed]:
    """The step's main ops alone, forward+backward: the 3×3 convolution at the network's
    shape; the up blocks' 1×1 shortcut [.., 2·width]→width as the convolution it was and
    as :class:`nnd.models.Pointwise`; the attention block with all queries at once and
    in chunks of ``query_chunk``. The pairs are the before and after of the network's
    two CPU formulations, timed in the same turns."""
    h = jax.random.normal(jax.random.key(3), (batch, *shape[:2], width))
    w = jax.random.normal(jax.random.key(4), (3, 3, width, width)) / (3 * math.sqrt(width))
    h2 = jnp.concatenate([h, h[::-1]], -1)
    w1 = jax.random.normal(jax.random.key(6), (1, 1, 2 * width, width)) / math.sqrt(2 * width)
    attn = models.AttnBlock(query_chunk=-1)
    attn_params = attn.init(jax.random.key(5), h)
    chunked = models.AttnBlock(query_chunk=query_chunk)

    def conv(h, w):
        y = jax.lax.conv_general_dilated(h, w, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(y * h)

    def shortcut_conv(h2, w1):  # as nn.Conv((1, 1)) computes it, bias included
        y = jax.lax.conv_general_dilated(h2, w1, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum((y + w1[0, 0, 0]) * h)

    def shortcut_pointwise(h2, w1):
        return jnp.sum(models.Pointwise(width).apply({"params": {"kernel": w1, "bias": w1[0, 0, 0]}},
                                                     h2) * h)

    def attention(p, h):
        return jnp.sum(attn.apply(p, h) * h)

    def attention_chunked(p, h):
        return jnp.sum(chunked.apply(p, h) * h)

    grad = lambda fn: jax.value_and_grad(fn, argnums=(0, 1))  # noqa: E731
    where = f"[{batch},{shape[0]},{shape[1]},{width}]"
    wide = f"[{batch},{shape[0]},{shape[1]},{2 * width}]"
    probes = [machine.compiled_timed(f"conv 3×3 {where}→{width} forward+backward", grad(conv), h, w),
              machine.compiled_timed(f"shortcut 1×1 {wide}→{width} as a convolution, "
                                     "forward+backward", grad(shortcut_conv), h2, w1),
              machine.compiled_timed(f"shortcut 1×1 {wide}→{width} as Pointwise (a matmul), "
                                     "forward+backward", grad(shortcut_pointwise), h2, w1),
              machine.compiled_timed(f"attention block {where} forward+backward", grad(attention),
                                     attn_params, h)]
    chunk = _chunk(query_chunk, shape)
    if chunk > 0:
        flops = probes[-1].flops  # the chunked form's loop is counted once by XLA
        timed = machine.compiled_timed(
            f"attention block {where}, query_chunk={chunk}, forward+backward",
            grad(attention_chunked), attn_params, h)
        probes.append(machine.Timed(timed.name, timed.run, flops, timed.bytes))
    return probes


def benchmark(rows=PAIRS, *, width: int = 32, blocks: int = 4, batch: int = 32, steps: int = 5,
              repeats: int = 7, matmul_sizes=None, probes: bool = True,
              min_turn_seconds: float = 0.3, workdir: str | None = None,
              query_chunk: int = QUERY_CHUNK, log=print) -> dict:
    """Compiles every row (and the probes), times all round-robin; a JSON-ready dict."""
    if workdir is None:
        with tempfile.TemporaryDirectory() as tmp:
            return benchmark(rows, width=width, blocks=blocks, batch=batch, steps=steps,
                             repeats=repeats, matmul_sizes=matmul_sizes, probes=probes,
                             min_turn_seconds=min_turn_seconds, workdir=tmp,
                             query_chunk=query_chunk, log=log)
    entries = []
    for row in rows:
        entries.append(_prepare(row, width=width, blocks=blocks, batch=batch, workdir=workdir,
                                query_chunk=query_chunk))
        log(f"compiled {row}: {entries[-1]['compile_seconds']:.1f}s, "
            f"{entries[-1]['step'].flops / 1e9:.2f} GFLOP/step")
    matmuls = machine.matmul_probes(matmul_sizes)
    probe_timed = _probes(batch, entries[0]["shape"], width, query_chunk) if probes else []
    steps_timed = [e["step"] for e in entries]
    others = [e["loss"] for e in entries] + matmuls + probe_timed
    # Train steps take `steps` calls per turn; short entries run long enough per turn
    # for the timer to resolve them.
    machine.calibrate(steps_timed, min_calls=steps)
    machine.calibrate(others, min_turn_seconds=min_turn_seconds)
    machine.time_round_robin(steps_timed + others, repeats=repeats)
    matmul_summaries = [m.summary() for m in matmuls]
    peak = machine.peak(matmul_summaries)
    results = []
    for e in entries:
        step = e["step"].summary(peak["flops_per_second"])
        results.append({
            "row": e["row"], "q": e["q"], "p": e["p"], "compile_seconds": e["compile_seconds"],
            "flops_per_step": step["flops"], "bytes_per_step": step["bytes"],
            "seconds_per_step": step["seconds"], "examples_per_second": batch / step["seconds"],
            "achieved_flops_per_second": step["flops_per_second"],
            "fraction_of_matmul_peak": step["fraction_of_matmul_peak"],
            "repeats": step["repeats"], "steps_per_turn": step["calls_per_turn"],
            "loss_alone_seconds": e["loss"].median,
        })
    for r in results:
        r["ratio"] = r["seconds_per_step"] / results[0]["seconds_per_step"]
        r["loss_alone_ratio"] = r["loss_alone_seconds"] / results[0]["loss_alone_seconds"]
    report = {
        "benchmark": "train step per (q, p)",
        "config": {"dataset": "cifar10 (stand-in batch, no data read)", "model": "vdm",
                   "width": width, "blocks": blocks, "batch": batch, "query_chunk": query_chunk,
                   "image_shape": entries[0]["shape"]},
        "steps": steps, "repeats": repeats,
        "goal_ratio": OVERHEAD_GOAL, "goal_fraction_of_peak": PEAK_FRACTION_GOAL,
        "matmul_peak": {**peak, "dtype": "float32", "probes": matmul_summaries},
        "rows": results,
    }
    if probes:
        report["probes"] = [p.summary(peak["flops_per_second"]) for p in probe_timed]
    return report


def markdown(report: dict) -> str:
    """Markdown tables of a :func:`benchmark` report."""
    c = report["config"]
    peak = report["matmul_peak"]
    lines = [f"Train step, CIFAR-10 shape, VDM net width {c['width']}, {c['blocks']}+"
             f"{c['blocks'] + 1} blocks, batch {c['batch']}, attention query_chunk "
             f"{c.get('query_chunk', 0)}; median of {report['repeats']} round-robin turns", "",
             f"Matmul peak (float32 {peak['name']}, same turns): "
             f"{peak['flops_per_second'] / 1e9:.1f} GFLOP/s. Goals: ratio ≤ "
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
    if "probes" in report:
        lines += ["", "| probe | ms | GFLOP | GFLOP/s | of matmul peak |", "|---|---|---|---|---|"]
        lines += [f"| {p['name']} | {p['seconds'] * 1e3:.2f} | {p['flops'] / 1e9:.3f} | "
                  f"{p['flops_per_second'] / 1e9:.1f} | {p['fraction_of_matmul_peak']:.1%} |"
                  for p in report["probes"]]
    return "\n".join(lines)


def parse_rows(text: str) -> list[str]:
    """Comma-separated Table 2 rows, checked against :data:`nnd.defaults.ROWS`."""
    rows = [r.strip() for r in text.split(",") if r.strip()]
    bad = [r for r in rows if r not in defaults.ROWS]
    if bad or not rows:
        raise ValueError(f"unknown rows {bad}; choose from {sorted(defaults.ROWS)}")
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m nnd.bench.train",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="JSON report")
    parser.add_argument("--rows", default=",".join(PAIRS), help="Table 2 rows, the first is "
                        "the reference")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--query-chunk", type=int, default=QUERY_CHUNK,
                        help="attention queries per chunk (0: auto, -1: all at once)")
    parser.add_argument("--steps", type=int, default=5, help="train steps per turn (at least)")
    parser.add_argument("--repeats", type=int, default=7, help="round-robin turns")
    parser.add_argument("--matmul-sizes", default=None, help="N of the matmul probes, e.g. 1024,2048")
    parser.add_argument("--no-analysis", action="store_true",
                        help="skip the convolution and attention probes: rows and peak only")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.matmul_sizes.split(",")] if args.matmul_sizes else None
    report = benchmark(parse_rows(args.rows), width=args.width, blocks=args.blocks,
                       batch=args.batch, steps=args.steps, repeats=args.repeats,
                       matmul_sizes=sizes, probes=not args.no_analysis,
                       query_chunk=args.query_chunk)
    report["machine"] = machine.describe()
    print(f"\n{machine.machine_line(report['machine'])}\n\n{markdown(report)}", flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
