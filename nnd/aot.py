"""``--mode=compile``: the run's programs compiled for a Cloud TPU slice, without a TPU.

With ``libtpu`` installed, :func:`jax.experimental.topologies.get_topology_desc`
describes the devices of a TPU slice on any host, and XLA's TPU compiler builds for
them ahead of time. :func:`compile_report` compiles, for one topology:

- ``train_step``: the real train step, from :func:`nnd.train.jit_train_step` (the
  same function, shardings and donation as training: a ``('data',)`` mesh over every
  chip of every host, the global batch split along it, the state replicated);
- ``sampler``: one call of the compiled sampler (:func:`nnd.samplers.compiled`,
  ``sampling.batch_size`` samples, ``sampling.num_steps`` network evaluations),
  placed on one chip as evaluation runs it today;
- ``likelihood``: one PF-ODE log-likelihood solve of ``eval.batch_size`` examples
  (:func:`nnd.likelihood.log_prob_with_stats`, float32 network, 'highest' precision),
  on one chip;

and reports per device the argument, output, temporary and total bytes against the
chip's HBM (``fits``), FLOP per step and per example, and an estimated step time
and time to ``train.num_steps`` at an assumed MFU. Every time is an estimate from
FLOP and the chip's public peak, never a measurement.

FLOP are counted on the jaxpr (matrix multiplications and convolutions, scan bodies
times their length): XLA's cost analysis counts a loop body once, so after the
network's blocks became a ``scan`` it reports a fraction of the work.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import logging
import math
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P, SingleDeviceSharding

from nnd import config as config_lib
from nnd import data, likelihood, models, paths, processes, samplers, train

__all__ = ["Chip", "CHIPS", "ASSUMED_MFU", "Topology", "TopologyError", "parse_topology",
           "topology_devices", "flop_count", "compile_report", "format_table", "run"]


@dataclasses.dataclass(frozen=True)
class Chip:
    """Public per-chip figures of a TPU generation."""

    device_kind: str  # as libtpu names it
    hbm_gib: float  # HBM per chip
    peak_bf16_tflops: float  # dense bfloat16 peak per chip
    megacore: bool  # two TensorCores as one device (Cloud names count cores)


#: TPU generations (Cloud TPU documentation's per-chip figures). On TPU a float32
#: matmul at default precision is one bfloat16 pass, so the bf16 peak bounds both dtypes.
CHIPS = {
    "v4": Chip("TPU v4", 32, 275, True),
    "v5e": Chip("TPU v5 lite", 16, 197, False),
    "v5p": Chip("TPU v5", 95, 459, True),
    "v6e": Chip("TPU v6 lite", 32, 918, False),
}
#: Model FLOP utilisation assumed by the time estimates (a small conv net rarely does better).
ASSUMED_MFU = 0.3
#: Cloud names use these spellings of the generations.
_CLOUD_GENERATIONS = {"v4": "v4", "v5p": "v5p", "v5litepod": "v5e", "v5e": "v5e", "v6e": "v6e"}
#: chips -> libtpu shape of the usual slices (3-D for v4/v5p, 2-D for v5e/v6e).
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
              256: "4x8x8", 512: "8x8x8"}
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
              256: "16x16"}


class TopologyError(config_lib.ConfigError):
    """A topology name nnd cannot compile for (reported in one line by nnd.main)."""


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # as asked
    generation: str  # key of CHIPS
    libtpu_name: str  # e.g. v4:2x2x1

    @property
    def chip(self) -> Chip:
        return CHIPS[self.generation]

    @property
    def num_chips(self) -> int:
        return math.prod(int(n) for n in self.libtpu_name.split(":")[1].split("x"))


def parse_topology(name: str) -> Topology:
    """A libtpu name (``v4:2x2x1``, ``v5e:4x4``) or a Cloud name (``v4-8``, ``v5litepod-16``).

    Cloud names count TensorCores on v4 and v5p (``v4-8`` is 4 chips) and chips on
    v5e and v6e. Anything else raises :class:`TopologyError` naming what is accepted.
    """
    hint = (f"unknown TPU topology {name!r}; use a libtpu name such as v4:2x2x1, v5e:4x4, "
            f"v5p:2x2x1, v6e:2x4 or a Cloud name such as v4-8, v5litepod-16, v5p-8, v6e-8")
    match = re.fullmatch(r"(v\w+?):(\d+(?:x\d+){1,2})", name or "")
    if match:
        generation, shape = match.groups()
        generation = _CLOUD_GENERATIONS.get(generation)
        dims = 3 if generation in ("v4", "v5p") else 2
        if generation is None or shape.count("x") + 1 != dims:
            raise TopologyError(hint)
        return Topology(name, generation, f"{generation}:{shape}")
    match = re.fullmatch(r"(v\w+?)-(\d+)", name or "")
    if match and match.group(1) in _CLOUD_GENERATIONS:
        generation = _CLOUD_GENERATIONS[match.group(1)]
        count = int(match.group(2))
        chips = count // 2 if CHIPS[generation].megacore else count
        shapes = _SHAPES_3D if CHIPS[generation].megacore else _SHAPES_2D
        if chips in shapes and (not CHIPS[generation].megacore or count % 2 == 0):
            return Topology(name, generation, f"{generation}:{shapes[chips]}")
    raise TopologyError(hint)


def tpu_present() -> bool:
    """True if this host may have a TPU: ``/dev/accel*`` or ``/dev/vfio/<n>`` device files, or a
    PCI device of Google's vendor id 0x1ae0 (what jax itself looks for)."""
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        return True
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(vendor) as f:
                if f.read().strip() == "0x1ae0":
                    return True
        except OSError:
            continue
    return False


def topology_devices(topology: Topology) -> list:
    """The devices of ``topology`` (every host's), described by libtpu on this host.

    On a host without TPU, libtpu is told it is one host alone (``TPU_WORKER_HOSTNAMES``,
    ``TPU_HOST_BOUNDS``, unless set), so it does not print five lines about the cloud
    metadata it cannot find; the description (devices, processes, coordinates) and the
    compiled programs are the same either way.
    """
    from jax.experimental import topologies

    # libtpu takes a machine-wide lock file meant for real TPUs; a description needs none
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    if not tpu_present():
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
        os.environ.setdefault("TPU_HOST_BOUNDS", "1,1,1")
    kwargs = {"chip_config_name": "megacore"} if topology.chip.megacore else {}
    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topology.libtpu_name,
                                            **kwargs)
    except Exception as err:  # noqa: BLE001  (no libtpu, or a shape libtpu refuses)
        raise TopologyError(f"cannot describe TPU topology {topology.libtpu_name!r} "
                            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                            "is libtpu installed (pip install -r requirements-tpu.txt)?") from None
    return list(desc.devices)


# ---------------------------------------------------------------------------------------
# FLOP on the jaxpr


def _sub_jaxprs(params):
    for value in params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, jax.extend.core.ClosedJaxpr):
                yield v.jaxpr
            elif isinstance(v, jax.extend.core.Jaxpr):
                yield v


def _jaxpr_flops(jaxpr) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in contract)
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) / out_features
        subs = [_jaxpr_flops(j) for j in _sub_jaxprs(eqn.params)]
        if name == "cond":
            total += max(subs, default=0.0)  # one branch runs
        else:
            total += eqn.params.get("length", 1) * sum(subs) if name == "scan" else sum(subs)
    return total


def flop_count(fn, *args) -> float:
    """FLOP of matrix multiplications and convolutions in one call of ``fn`` (global, not
    per device), counting scan bodies ``length`` times and while-loop bodies once."""
    return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


# ---------------------------------------------------------------------------------------
# compiling


def _memory(compiled, hbm_bytes: float) -> dict:
    m = compiled.memory_analysis()
    total = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
             + m.temp_size_in_bytes)
    return {"argument_bytes": int(m.argument_size_in_bytes), "output_bytes": int(m.output_size_in_bytes),
            "alias_bytes": int(m.alias_size_in_bytes), "temp_bytes": int(m.temp_size_in_bytes),
            "total_bytes": int(total), "fits": bool(total <= hbm_bytes)}


_UNIT = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _out_of_memory(err: Exception, hbm_bytes: float) -> dict | None:
    """XLA:TPU refuses a program that cannot fit: its numbers, or None for another error."""
    match = (re.search(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm", str(err))
             or re.search(r"\(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)",
                          str(err)))
    if not match:
        return None
    used = float(match.group(1)) * _UNIT[match.group(2)]
    return {"total_bytes": int(used), "fits": False, "hbm_bytes_reported": int(
        float(match.group(3)) * _UNIT[match.group(4)]), "error": str(err).splitlines()[0][:300]}


def _compile(label: str, jitted, args, hbm_bytes: float) -> dict:
    """Lower and compile ``jitted`` for ``args`` (abstract, with shardings); memory, FLOP, time."""
    started = time.time()
    lowered = jitted.lower(*args)
    try:
        compiled = lowered.compile()
    except Exception as err:  # noqa: BLE001  (only an out-of-memory refusal is a result)
        result = _out_of_memory(err, hbm_bytes)
        if result is None:
            raise
    else:
        result = _memory(compiled, hbm_bytes)
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        cost = cost or {}
        result["xla_flops_per_device_loops_once"] = float(cost.get("flops", -1.0))
        result["xla_bytes_accessed_loops_once"] = float(cost.get("bytes accessed", -1.0))
        if "optimal_seconds" in cost:  # XLA's own estimate; -1 or absent where it has none
            result["xla_optimal_seconds"] = float(cost["optimal_seconds"])
    result["compile_seconds"] = round(time.time() - started, 1)
    result["flops"] = flop_count(jitted, *args)
    logging.info("compiled %s in %.0f s", label, result["compile_seconds"])
    return result


def _abstract(x, sharding):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def _key(sharding):
    return _abstract(jax.eval_shape(lambda: jax.random.key(0)), sharding)


def compile_report(config, topology: str | Topology, *, programs=("train_step", "sampler",
                                                                  "likelihood")) -> dict:
    """Compiles the run's ``programs`` for ``topology``; the report as a JSON-ready dict.

    The networks choose their automatic settings (``query_chunk = 0``) for the TPU, not
    for this host (:func:`nnd.models.target_platform`).
    """
    with models.target_platform("tpu"):
        return _compile_report(config, topology, programs)


def _compile_report(config, topology, programs) -> dict:
    topology = parse_topology(topology) if isinstance(topology, str) else topology
    devices = topology_devices(topology)
    chip = topology.chip
    hbm = chip.hbm_gib * 2**30
    mesh = jax.sharding.Mesh(np.asarray(devices), ("data",))
    experiment = config_lib.resolve(config, num_devices=mesh.size)
    shape = tuple(data.example_shape(config.data.name))
    batch = config.data.batch_size
    report = {
        "topology": topology.name, "libtpu_topology": topology.libtpu_name,
        "device_kind": devices[0].device_kind, "num_devices": len(devices),
        "num_processes": len({d.process_index for d in devices}), "num_chips": topology.num_chips,
        "hbm_bytes_per_chip": int(hbm),
        "config": {"dataset": config.data.name, "model": config.model.name,
                   "dtype": config.model.get("dtype", "float32"),
                   "remat": bool(config.model.get("remat", False)), "global_batch": batch,
                   "per_device_batch": batch // len(devices), "num_steps": config.train.num_steps},
        "programs": {},
    }
    one_chip = SingleDeviceSharding(devices[0])
    if "train_step" in programs:
        example = jnp.zeros((1,) + shape, jnp.float32)
        jitted = train.jit_train_step(experiment, mesh, example)
        args = (jitted.abstract_state,
                jax.ShapeDtypeStruct((batch,) + shape, jnp.float32, sharding=jitted.batch_sharding),
                _key(NamedSharding(mesh, P())))
        result = _compile("train step", jitted.step_fn, args, hbm)
        result["flops_per_example"] = result["flops"] / batch
        report["programs"]["train_step"] = result
    params = None
    if "sampler" in programs or "likelihood" in programs:
        params = jax.tree.map(lambda a: _abstract(a, one_chip), jax.eval_shape(
            functools.partial(models.init_params, experiment.model), jax.random.key(0),
            jax.ShapeDtypeStruct((1,) + shape, jnp.float32)))
    if "sampler" in programs:
        settings = experiment.sampling
        n = settings.batch_size
        draw = samplers.compiled(experiment.model, experiment.process, experiment.sampling_law,
                                 (n,) + shape, settings)
        result = _compile("sampler", draw, (params, _key(one_chip)), hbm)
        result.update(samples_per_call=n, flops_per_sample=result["flops"] / n)
        report["programs"]["sampler"] = result
    if "likelihood" in programs:
        n = config.eval.batch_size
        solve = likelihood_solve(config, experiment)
        args = (params, jax.ShapeDtypeStruct((n,) + shape, jnp.float32, sharding=one_chip),
                _key(one_chip))
        result = _compile("likelihood", solve, args, hbm)
        result.update(examples_per_call=n, note="FLOP of one ODE step: the adaptive solver's "
                      "while loop is counted once")
        report["programs"]["likelihood"] = result
    report["fits"] = all(p["fits"] for p in report["programs"].values())
    if "train_step" in report["programs"]:
        report["estimate"] = _estimate(report["programs"]["train_step"]["flops"], topology,
                                       config.train.num_steps)
    return report


def likelihood_solve(config, experiment):
    """The jitted PF-ODE solve ``(params, z, key) -> (log p, nfe)`` with a float32 network
    (whatever the training dtype) at 'highest' matmul precision (inside ``log_prob``)."""
    model = experiment.model
    if "dtype" in {f.name for f in dataclasses.fields(model)}:
        model = model.clone(dtype="float32")
    e, process = config.eval, experiment.process

    @jax.jit
    def solve(params, z, key):
        score = processes.score_fn_from_eps(
            process, lambda x, t: model.apply({"params": params}, x, t))
        lp, stats = likelihood.log_prob_with_stats(process, score, z, key, e.divergence, e.rtol,
                                                   e.atol, solver=e.solver, num_steps=e.ode_steps)
        return lp, stats.nfe

    return solve


def _estimate(flops_per_step: float, topology: Topology, num_steps: int) -> dict:
    peak = topology.chip.peak_bf16_tflops * 1e12 * topology.num_chips
    step = flops_per_step / (peak * ASSUMED_MFU)
    return {"label": f"ESTIMATE: jaxpr FLOP / ({topology.num_chips} chips x "
                     f"{topology.chip.peak_bf16_tflops:g} TFLOP/s bf16 peak x MFU {ASSUMED_MFU})",
            "assumed_mfu": ASSUMED_MFU, "peak_flops_per_second": peak,
            "step_seconds": step, "train_hours": step * num_steps / 3600.0}


# ---------------------------------------------------------------------------------------
# the report


def _mib(n) -> str:
    return f"{n / 2**20:,.0f}"


def _figure(x: float) -> str:
    """At least three significant figures, no exponent below 10^15: 13,804, 13.2, 0.00123."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _duration(seconds: float) -> str:
    """Three significant figures in a unit that suits: "0.241 µs", "4.7 ms", "2.1 min", "17.2 h"."""
    for unit, size in (("h", 3600.0), ("min", 60.0), ("s", 1.0), ("ms", 1e-3)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds / 1e-6:.3g} µs"


def format_table(report: dict) -> str:
    """A short human-readable table of :func:`compile_report`'s result."""
    c = report["config"]
    lines = [
        f"{report['topology']} ({report['libtpu_topology']}): {report['num_devices']} x "
        f"{report['device_kind']}, {report['num_processes']} process(es), "
        f"HBM {_mib(report['hbm_bytes_per_chip'])} MiB per chip",
        f"{c['dataset']} {c['model']} {c['dtype']}{' remat' if c['remat'] else ''}: global batch "
        f"{c['global_batch']} ({c['per_device_batch']} per device), {c['num_steps']:,} steps",
        f"{'program':<11} {'args MiB':>9} {'out MiB':>9} {'temp MiB':>9} {'total MiB':>10} "
        f"{'fits':>5} {'GFLOP':>10} {'compile s':>9}",
    ]
    for name, p in report["programs"].items():
        get = lambda k: _mib(p[k]) if k in p else "-"  # noqa: E731
        lines.append(f"{name:<11} {get('argument_bytes'):>9} {get('output_bytes'):>9} "
                     f"{get('temp_bytes'):>9} {get('total_bytes'):>10} {str(p['fits']):>5} "
                     f"{_figure(p['flops'] / 1e9):>10} {p['compile_seconds']:>9.1f}")
    if "train_step" in report["programs"]:
        t = report["programs"]["train_step"]
        e = report["estimate"]
        lines.append(f"train step: {t['flops']:.3g} FLOP ({t['flops_per_example']:.3g} per example); "
                     f"ESTIMATED {_duration(e['step_seconds'])}/step, "
                     f"{_duration(e['step_seconds'] * c['num_steps'])} to {c['num_steps']:,} steps "
                     f"at MFU {e['assumed_mfu']} (not measured)")
    lines.append(f"fits: {report['fits']}")
    return "\n".join(lines)


def run(config, workdir: str, topology: str | None) -> dict:
    """``--mode=compile``: writes ``WORKDIR/compile/<topology>.json``, prints the table."""
    if not topology:
        raise TopologyError("--mode=compile needs --topology (e.g. v4:2x2x1, v5e:4x4, v4-8, "
                            "v5litepod-16)")
    parsed = parse_topology(topology)
    report = compile_report(config, parsed)
    path = paths.get(workdir) / "compile" / f"{parsed.name.replace(':', '_')}.json"
    paths.write(path, json.dumps(report, indent=1))  # local or gs://, whole or not at all
    print(format_table(report))
    print(f"written {path}")
    return report
