"""The benchmarks in one process: one JSON, Markdown tables naming the machine.

Parts (``--parts``, default ``train,walks,memory``; run in this order):

- ``train``: the train step per (q, p) on the reduced-width CIFAR-10 config with
  the matmul peak, the convolution and attention probes timed in the same turns,
  and the step's fraction of the peak (:mod:`nnd.bench.train`).
- ``walks``: reverse walk per increment law against the Gaussian walk
  (:mod:`nnd.bench.walks`).
- ``memory``: compile time and XLA memory of the K = 1000 walk against K = 10 (and
  K = 1000 keeping its path), for the gmm8 score and for the CIFAR network's score.
- ``full``: the train step of the full-width CIFAR VDM config (width 128, 32 blocks),
  gaussian/gaussian only, no probes; off unless named (meant for accelerators).

The evaluation benchmark (likelihood solvers, samplers at matched quality) runs
apart: ``python -m nnd.bench.evaluation``.

The JSON (``--out``) and the Markdown (``--markdown``) are rewritten after each
part, so a run cut short keeps what it finished. ``summary`` gathers the headline
figures: examples/s, achieved FLOP/s, matmul peak and their ratio; the largest
loss and sampler overheads against the goal; compile times of train step and
sampler; walk memory at K = 10 and K = 1000.

Run::

    python -m nnd.bench --out bench.json [--markdown bench.md] [--parts train,walks] [--quick]

``--quick`` shrinks everything (tests; seconds of work, not meaningful timings).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from nnd import increments, processes
from nnd.bench import OVERHEAD_GOAL, PEAK_FRACTION_GOAL, machine
from nnd.bench import train as bench_train
from nnd.bench import walks as bench_walks

PARTS = ("train", "walks", "memory", "full")

# (name, type, help) of the sizes; their defaults, and those of --quick.
_SIZES = (
    ("width", int, "VDM net width of the reduced CIFAR config"),
    ("blocks", int, "residual blocks (VDM net: N down, N + 1 up)"),
    ("batch", int, "batch of the train steps and of the network walk"),
    ("steps", int, "train steps per turn (at least)"),
    ("repeats", int, "round-robin turns"),
    ("matmul_sizes", str, "N of the float32 matmul probes, e.g. 1024,2048"),
    ("query_chunk", int, "attention queries per chunk in the train steps (0: auto, -1: all at once)"),
    ("walk_steps", int, "K of the per-law walk"),
    ("walk_points", int, "points of the per-law walk"),
    ("walk_repeats", int, "repeats of the per-law walk"),
)
_DEFAULTS = dict(width=32, blocks=4, batch=32, steps=5, repeats=7, matmul_sizes="",
                 query_chunk=bench_train.QUERY_CHUNK, walk_steps=1000, walk_points=10_000,
                 walk_repeats=5)
_QUICK = dict(width=8, blocks=1, batch=4, steps=1, repeats=1, matmul_sizes="128,256",
              query_chunk=bench_train.QUERY_CHUNK, walk_steps=5, walk_points=100,
              walk_repeats=1)


def _log(msg: str) -> None:
    print(f"[nnd.bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def network_memory(*, width: int, blocks: int, batch: int, num_steps, path_steps,
                   workdir: str, query_chunk: int = bench_train.QUERY_CHUNK) -> dict:
    """:func:`nnd.bench.walks.walk_memory` with the reduced-width CIFAR network as score."""
    run = bench_train.network("gaussian", width=width, blocks=blocks, batch=batch,
                              workdir=workdir, query_chunk=query_chunk)
    model, params, process = run.experiment.model, run.state.ema_params, run.experiment.process
    score = processes.score_fn_from_eps(process,
                                        lambda x, t: model.apply({"params": params}, x, t))
    shape = (batch,) + run.example_shape
    return {"score": f"VDM net width {width}, {blocks} blocks (initial parameters)",
            "law": "gaussian", "shape": list(shape),
            "rows": bench_walks.walk_memory(process, increments.get("gaussian"), score, shape,
                                            num_steps=num_steps, path_steps=path_steps)}


def summary(report: dict) -> dict:
    """Headline figures of whatever parts the report holds."""
    out = {"goals": {"overhead_ratio": OVERHEAD_GOAL,
                     "fraction_of_matmul_peak": PEAK_FRACTION_GOAL},
           "compile_seconds": {}}
    if "train" in report:
        t = report["train"]
        ref = t["rows"][0]
        out["train_step"] = {
            "examples_per_second": ref["examples_per_second"],
            "achieved_flops_per_second": ref["achieved_flops_per_second"],
            "matmul_peak_flops_per_second": t["matmul_peak"]["flops_per_second"],
            "fraction_of_matmul_peak": ref["fraction_of_matmul_peak"],
            "fraction_goal_met": ref["fraction_of_matmul_peak"] >= PEAK_FRACTION_GOAL,
            "probes_fraction_of_matmul_peak": {p["name"]: p["fraction_of_matmul_peak"]
                                               for p in t.get("probes", [])},
        }
        worst = max(t["rows"], key=lambda r: r["ratio"])
        out["loss_overhead"] = {"max_ratio": worst["ratio"], "pair": f"{worst['q']}/{worst['p']}",
                                "goal_met": all(r["ratio"] <= OVERHEAD_GOAL for r in t["rows"])}
        out["compile_seconds"]["train_step"] = ref["compile_seconds"]
    if "walks" in report:
        w = report["walks"]
        worst = max(w["rows"], key=lambda r: r["ratio"])
        out["sampler_overhead"] = {
            "ratios": {r["law"]: r["ratio"] for r in w["rows"]},
            "max_ratio": worst["ratio"], "law": worst["law"],
            "over_goal": [r["law"] for r in w["rows"] if r["ratio"] > OVERHEAD_GOAL],
            "goal_met": all(r["ratio"] <= OVERHEAD_GOAL for r in w["rows"])}
        out["compile_seconds"]["sampler_walk_gmm8"] = w["rows"][0]["compile_seconds"]
    if "memory" in report:
        out["walk_memory_bytes"] = {}
        for name, res in report["memory"].items():
            out["walk_memory_bytes"][name] = {
                f"K={r['num_steps']}{' path' if r['return_path'] else ''}": r["bytes"]["total"]
                for r in res["rows"]}
            nopath = [r for r in res["rows"] if not r["return_path"]]
            if name == "network" and nopath:
                out["compile_seconds"]["sampler_walk_network"] = nopath[-1]["compile_seconds"]
    if "full" in report:
        ref = report["full"]["rows"][0]
        out["full_width_train_step"] = {
            "examples_per_second": ref["examples_per_second"],
            "achieved_flops_per_second": ref["achieved_flops_per_second"],
            "fraction_of_matmul_peak": ref["fraction_of_matmul_peak"],
            "compile_seconds": ref["compile_seconds"]}
    return out


def markdown(report: dict) -> str:
    """All tables of the report, headed by the machine."""
    s = report["summary"]
    lines = [f"# nnd benchmarks on {machine.machine_line(report['machine'])}", ""]
    if "train" in report:
        lines += ["## Train step", "", bench_train.markdown(report["train"]), ""]
    if "walks" in report:
        over = s["sampler_overhead"]["over_goal"]
        lines += ["## Sampler: reverse walk per law", "",
                  bench_walks.markdown_table(report["walks"]), "",
                  f"Over the {OVERHEAD_GOAL}× goal: {', '.join(over) if over else 'none'}.", ""]
    if "memory" in report:
        lines += ["## Memory of the reverse walk (XLA memory analysis, compiled, not run)", "",
                  bench_walks.memory_table(report["memory"]), ""]
    if "full" in report:
        lines += ["## Train step, full-width CIFAR VDM config", "",
                  bench_train.markdown(report["full"]), ""]
    if s["compile_seconds"]:
        lines += ["## Compile times", "", "| what | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in s["compile_seconds"].items()]
        lines.append("")
    return "\n".join(lines)


def _write(report: dict, out: str | None, md: str | None) -> None:
    report["summary"] = summary(report)
    for path, text in ((out, lambda: json.dumps(report, indent=2)), (md, lambda: markdown(report))):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            tmp = path + ".tmp"
            with open(tmp, "w") as fh:
                fh.write(text())
            os.replace(tmp, path)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m nnd.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="JSON report")
    parser.add_argument("--markdown", default=None, help="Markdown tables")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (tests)")
    parser.add_argument("--parts", default="train,walks,memory", help=f"any of {PARTS}")
    parser.add_argument("--rows", default=",".join(bench_train.PAIRS),
                        help="Table 2 rows, the first is the reference")
    for name, kind, text in _SIZES:
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None,
                            help=f"{text} (default {_DEFAULTS[name] or 'by backend'}; "
                                 f"--quick: {_QUICK[name]})")
    args = parser.parse_args(argv)
    for name, _, _ in _SIZES:  # --quick changes the defaults, not what was asked for
        if getattr(args, name) is None:
            setattr(args, name, (_QUICK if args.quick else _DEFAULTS)[name])
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise ValueError(f"unknown parts {bad}; choose from {PARTS}")
    rows = bench_train.parse_rows(args.rows)
    if args.quick and args.rows == parser.get_default("rows"):
        rows = ["gaussian", "uniform_laplace"]
    sizes = [int(n) for n in args.matmul_sizes.split(",")] if args.matmul_sizes else None
    memory_steps = (10, 1000)
    report = {"benchmark": "nnd", "machine": machine.describe(),
              "settings": {**vars(args), "rows": rows, "parts": parts, "matmul_sizes": sizes}}
    _log(f"machine: {machine.machine_line(report['machine'])}")
    _write(report, args.out, args.markdown)
    train_sizes = dict(batch=args.batch, steps=args.steps, repeats=args.repeats,
                       matmul_sizes=sizes, query_chunk=args.query_chunk, log=_log)
    with tempfile.TemporaryDirectory() as workdir:
        if "train" in parts:
            _log(f"train step: rows {rows}, width {args.width}, {args.blocks} blocks, "
                 f"batch {args.batch}")
            report["train"] = bench_train.benchmark(rows, width=args.width, blocks=args.blocks,
                                                    workdir=workdir, **train_sizes)
            _write(report, args.out, args.markdown)
        if "walks" in parts:
            _log(f"reverse walk per law: K = {args.walk_steps}, {args.walk_points} points")
            report["walks"] = bench_walks.benchmark(
                num_steps=args.walk_steps, num_points=args.walk_points,
                repeats=args.walk_repeats, log=_log)
            _write(report, args.out, args.markdown)
        if "memory" in parts:
            _log(f"walk memory: K = {memory_steps} and K = 1000 with path")
            report["memory"] = {
                "gmm8": bench_walks.gmm8_memory(num_points=args.walk_points,
                                                num_steps=memory_steps),
                "network": network_memory(width=args.width, blocks=args.blocks,
                                          batch=args.batch, num_steps=memory_steps,
                                          path_steps=1000, query_chunk=args.query_chunk,
                                          workdir=os.path.join(workdir, "memory")),
            }
            _write(report, args.out, args.markdown)
        if "full" in parts:
            width, blocks = (16, 2) if args.quick else (128, 32)
            _log(f"full-width train step: width {width}, {blocks} blocks, batch {args.batch}")
            report["full"] = bench_train.benchmark(rows[:1], width=width, blocks=blocks,
                                                   probes=False, workdir=workdir, **train_sizes)
            _write(report, args.out, args.markdown)
    print(markdown(report), flush=True)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
