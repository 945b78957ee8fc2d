"""A config's train step compiled for TPU slices side by side: slice, dtype and ``scan``.

Each case ``TOPOLOGY:DTYPE:scan|unrolled`` is the train step of ``--config`` compiled
ahead of time for that slice by :func:`nnd.aot.compile_report` (libtpu's compiler on
this host; no TPU). Reported per case: compile time, per-chip memory (arguments,
temporaries, total), the jaxpr FLOP per step, XLA's cost analysis (FLOP and bytes
accessed, loop bodies counted once) and XLA's own time estimate (``optimal_seconds``)
where the compiler gives one. Cases run one after another in this process (one process
at a time may hold libtpu), and each is written to ``--out`` as it finishes: a rerun
skips the cases already there, so an interrupted sweep loses at most one compile.

Run (docs/tpu.md's tables; about 3–11 min per cifar case on 2 cores, 10–16 GB)::

    python -m nnd.bench.tpu_compile --config configs/cifar_uniform.py \\
        --out runs/tpu_compile.json --case v5litepod-8:float32:unrolled \\
        --case v5litepod-8:float32:scan --case v4-8:float32:unrolled
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

from nnd import aot, paths, provenance

__all__ = ["Case", "parse_case", "compile_case", "markdown", "main"]

DTYPES = ("float32", "bfloat16")
LAYOUTS = ("unrolled", "scan")


class Case(tuple):
    """(topology, dtype, layout) of one compile; its name is ``topology:dtype:layout``."""

    @property
    def name(self) -> str:
        return ":".join(self)


def parse_case(text: str) -> Case:
    """``v5litepod-8:bfloat16:scan`` → Case; a ValueError names what is wrong."""
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or parts[1] not in DTYPES or parts[2] not in LAYOUTS:
        raise ValueError(f"--case {text!r}: expected TOPOLOGY:DTYPE:LAYOUT with DTYPE one of "
                         f"{DTYPES} and LAYOUT one of {LAYOUTS}, e.g. v5litepod-8:float32:scan")
    aot.parse_topology(parts[0])  # a TopologyError names the slice
    return Case(parts)


def load_config(path: str):
    """``get_config()`` of a config file (as ``--config`` takes it)."""
    spec = importlib.util.spec_from_file_location("_nnd_bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def compile_case(config, case: Case) -> dict:
    """The train step of ``config`` with the case's dtype and layout, compiled for its slice."""
    config = config.copy_and_resolve_references()
    topology, dtype, layout = case
    config.model.dtype = dtype
    config.model.scan = layout == "scan"
    report = aot.compile_report(config, topology, programs=("train_step",))
    return {"case": case.name, "topology": report["topology"],
            "libtpu_topology": report["libtpu_topology"], "num_chips": report["num_chips"],
            "hbm_bytes_per_chip": report["hbm_bytes_per_chip"], "config": report["config"],
            "train_step": report["programs"]["train_step"], "estimate": report["estimate"]}


def _mib(n) -> str:
    return f"{n / 2**20:,.0f}" if n is not None else "–"


def markdown(results: list[dict]) -> str:
    """One row per case: compile s, memory per chip, FLOP, bytes, XLA's estimate."""
    rows = ["| slice | dtype | layout | compile s | per chip: args / temp / total MiB | fits "
            "| jaxpr FLOP per step | XLA FLOP (loops once) | XLA bytes accessed (loops once) "
            "| XLA optimal_seconds |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        t = r["train_step"]
        topology, dtype, layout = r["case"].rsplit(":", 2)
        optimal = t.get("xla_optimal_seconds")
        rows.append(
            f"| {topology} (`{r['libtpu_topology']}`) | {dtype} | {layout} | "
            f"{t['compile_seconds']:.0f} | {_mib(t.get('argument_bytes'))} / "
            f"{_mib(t.get('temp_bytes'))} / {_mib(t['total_bytes'])} | {'yes' if t['fits'] else 'no'} "
            f"| {t['flops']:.3g} | {t.get('xla_flops_per_device_loops_once', float('nan')):.3g} "
            f"| {t.get('xla_bytes_accessed_loops_once', float('nan')):.3g} "
            f"| {'–' if optimal is None or optimal < 0 else f'{optimal * 1e3:.1f} ms'} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nnd.bench.tpu_compile",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a config file, e.g. configs/cifar_uniform.py")
    parser.add_argument("--case", action="append", required=True,
                        help="TOPOLOGY:DTYPE:LAYOUT, e.g. v5litepod-8:bfloat16:scan (repeatable)")
    parser.add_argument("--out", required=True, help="JSON file (local or gs://), extended as cases finish")
    parser.add_argument("--markdown", help="also write the table here")
    args = parser.parse_args(argv)
    try:
        cases = [parse_case(c) for c in args.case]
        if not os.path.isfile(args.config):
            raise ValueError(f"--config {args.config}: no such file")
    except ValueError as err:
        print(f"nnd: {err}", file=sys.stderr)
        return 2
    out = paths.get(args.out)
    record = json.loads(out.read_text()) if out.exists() else {"results": []}
    if record.get("config_file", args.config) != args.config:
        print(f"nnd: {args.out} holds cases of {record['config_file']}, not {args.config}",
              file=sys.stderr)
        return 2
    record.update(config_file=args.config, machine=provenance.describe())
    config = load_config(args.config)
    done = {r["case"] for r in record["results"]}
    for case in cases:
        if case.name in done:
            print(f"{case.name}: already in {args.out}")
            continue
        print(f"{case.name}: compiling ...", flush=True)
        record["results"].append(compile_case(config, case))
        paths.write(out, json.dumps(record, indent=1))
        print(markdown(record["results"][-1:]).splitlines()[-1], flush=True)
    table = markdown(record["results"])
    print(table)
    if args.markdown:
        paths.write(paths.get(args.markdown), table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
