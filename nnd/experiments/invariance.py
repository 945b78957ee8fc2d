"""Theorem 3.3 (invariance principle) on the 8-Gaussian toy with the exact score.

Theorem 3.3 of the paper says that a structured random walk (eq. 8) whose i.i.d.
increments z_k have E z = 0, Var z = 1 and E z⁴ < ∞ converges, as Δt → 0, to the
same SDE (eq. 1) whatever the law of z_k. For the reverse walk (SPEC §3)

.. math::  x_k = x_{k+1} - \\big[f x_{k+1} - g^2 s(x_{k+1}, t_{k+1})\\big]\\Delta t
                 + g\\sqrt{\\Delta t}\\, z_k,

driven by the exact score s of the data (nnd.oracles.gmm_score on ``gmm8``), the
samples at t_eps (after the Tweedie denoising step) should therefore tend to the
data law for every increment law as K = 1/Δt grows. This experiment measures,
for each law and each K,

- the energy distance (nnd.metrics.energy_distance) between n walk samples and a
  fresh data sample of the same size, next to the data-vs-data floor (two
  independent data samples; its spread over a few seeds is the noise level: the
  U-statistic is unbiased, so below the floor a value is indistinguishable from 0);
- the blob width, the mean squared distance to the nearest of the 8 centres
  (0.02 for the data: two coordinates of variance 0.1²).

Run (about a minute on 2 CPU cores)::

    python -m nnd.experiments.invariance --out docs/figures

It writes ``invariance.json``, ``invariance_ed.png`` and ``invariance_samples.png``
into ``--out`` and prints one line per (law, K) and a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import platform
import sys
import time
import zlib
from typing import Sequence

import jax
import numpy as np

from nnd import increments
from nnd import metrics
from nnd import oracles
from nnd import processes
from nnd import walks

__all__ = [
    "DEFAULT_LAWS",
    "DEFAULT_STEPS",
    "Settings",
    "parse_law",
    "parse_laws",
    "parse_steps",
    "make_walk",
    "data_floor",
    "run",
    "markdown_table",
    "plot_energy_distance",
    "plot_samples",
    "main",
]

DEFAULT_LAWS = "gaussian,laplace,uniform,logistic,student_t:5,rademacher"
DEFAULT_STEPS = "10,30,100,300,1000"
#: Independent data-vs-data pairs used for the floor and its spread.
FLOOR_SEEDS = 10


# -- command-line values --------------------------------------------------------------


def parse_law(spec: str) -> increments.Law:
    """Parses ``'name'`` or ``'name:param'`` into a standardised increment law.

    The single parameter goes to the law's only parameter: ``student_t:5`` is
    ``increments.get('student_t', df=5.0)`` and ``gennorm:1.5`` is
    ``increments.get('gennorm', beta=1.5)``.

    Raises:
      ValueError: unknown law, a parameter for a law without one, a parameter that
        is not a number, or a value nnd.increments refuses.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty increment law spec {spec!r}")
    name, sep, value = spec.strip().partition(":")
    name = name.strip()
    if name not in increments.LAWS:
        raise ValueError(
            f"unknown increment law {name!r} in {spec!r}; choose one of {sorted(increments.LAWS)}"
        )
    fields = [f.name for f in dataclasses.fields(increments.LAWS[name])]
    if not sep:
        return increments.get(name)
    if not fields:
        raise ValueError(f"increment law {name!r} takes no parameter, got {spec!r}")
    try:
        param = float(value)
    except ValueError:
        raise ValueError(
            f"parameter of {name!r} ({fields[0]}) must be a number, got {value!r} in {spec!r}"
        ) from None
    return increments.get(name, **{fields[0]: param})


def parse_laws(text: str | Sequence[str]) -> tuple[increments.Law, ...]:
    """Comma-separated law specs (or a sequence of them) → laws; duplicates raise."""
    specs = text.split(",") if isinstance(text, str) else list(text)
    laws = tuple(parse_law(s) for s in specs)
    if not laws:
        raise ValueError("no increment laws given")
    labels = [str(law) for law in laws]
    if len(set(labels)) != len(labels):
        raise ValueError(f"duplicate increment laws in {labels}")
    return laws


def parse_steps(text: str | Sequence[int]) -> tuple[int, ...]:
    """Comma-separated step counts K ≥ 1 (or a sequence of ints) → sorted unique tuple."""
    items = text.split(",") if isinstance(text, str) else list(text)
    steps = []
    for item in items:
        try:
            k = int(str(item).strip())
        except ValueError:
            raise ValueError(f"step counts must be integers, got {item!r}") from None
        steps.append(processes.check_num_steps(k))
    if not steps:
        raise ValueError("no step counts given")
    return tuple(sorted(set(steps)))


@dataclasses.dataclass(frozen=True)
class Settings:
    """One run of the experiment (the command-line flags, parsed)."""

    n: int = 2000
    steps: tuple[int, ...] = (10, 30, 100, 300, 1000)
    laws: tuple[increments.Law, ...] = dataclasses.field(
        default_factory=lambda: parse_laws(DEFAULT_LAWS))
    process: str = "vp"
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 2:
            raise ValueError(f"n must be an integer >= 2, got {self.n!r}")


# -- the measurements -----------------------------------------------------------------


def make_walk(process, law, score_fn, n: int, num_steps: int):
    """The reverse walk of SPEC §3 (Theorem 3.3's sampler) as a compiled ``key -> x [n, 2]``.

    Compiled ahead of time so the compile and run times can be reported apart.

    Returns:
      (compiled function, compile seconds).
    """
    walk = functools.partial(
        walks.reverse, process, law, score_fn, shape=(n, 2), num_steps=num_steps, denoise=True)
    start = time.perf_counter()
    compiled = jax.jit(walk).lower(jax.random.key(0)).compile()
    return compiled, time.perf_counter() - start


def data_floor(key, gmm: oracles.GMM, n: int, num_seeds: int = FLOOR_SEEDS) -> list[float]:
    """Energy distances between pairs of independent data samples of size n.

    Their mean is ≈ 0 (unbiased U-statistic) and their spread is the noise level
    that any walk's energy distance at this n is measured against.
    """
    out = []
    for i in range(num_seeds):
        key_a, key_b = jax.random.split(jax.random.fold_in(key, i))
        x_a = oracles.sample_gmm(key_a, gmm, n)
        x_b = oracles.sample_gmm(key_b, gmm, n)
        out.append(metrics.energy_distance(x_a, x_b))
    return out


def _law_tag(law) -> int:
    """A stable fold_in tag for a law (independent of its place in --laws)."""
    return zlib.crc32(str(law).encode()) & 0x7FFFFFFF


def _machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
    }


def _sample_columns(steps: Sequence[int], max_columns: int = 3) -> tuple[int, ...]:
    """Up to ``max_columns`` K values for the scatter grid: smallest, (middle), largest."""
    if len(steps) <= max_columns:
        return tuple(steps)
    idx = np.unique(np.round(np.linspace(0, len(steps) - 1, max_columns)).astype(int))
    return tuple(steps[i] for i in idx)


def run(settings: Settings, *, log=print):
    """Runs the experiment; returns (result dict for JSON, samples, data sample).

    Keys: one root key ``PRNGKey(seed)`` split into named keys (walks, data, floor);
    the walk for (law, K) uses ``fold_in(fold_in(walks_key, tag(law)), K)``.

    Returns:
      result: the JSON-ready table (see ``main``),
      samples: {(law label, K): x [n, 2]} for the K shown in the scatter grid,
      data_NxD: the reference data sample every row is compared with.
    """
    process = processes.get(settings.process)
    gmm = oracles.gmm8()
    score_fn = oracles.gmm_score(process, gmm)
    key_walks, key_data, key_floor = jax.random.split(jax.random.key(settings.seed), 3)
    n = settings.n

    data_NxD = np.asarray(oracles.sample_gmm(key_data, gmm, n))
    data_width, _ = metrics.nearest_centre(data_NxD, gmm.means)
    floor = data_floor(key_floor, gmm, n)
    floor_mean, floor_std = float(np.mean(floor)), float(np.std(floor, ddof=1))
    log(f"data-vs-data energy distance over {len(floor)} seeds: "
        f"mean {floor_mean:.2e}, std {floor_std:.2e}; data blob width {data_width:.4f}")

    shown = set(_sample_columns(settings.steps))
    rows, samples = [], {}
    for law in settings.laws:
        key_law = jax.random.fold_in(key_walks, _law_tag(law))
        for num_steps in settings.steps:
            walk, compile_s = make_walk(process, law, score_fn, n, num_steps)
            start = time.perf_counter()
            x_NxD = walk(jax.random.fold_in(key_law, num_steps)).block_until_ready()
            run_s = time.perf_counter() - start
            x_NxD = np.asarray(x_NxD)
            finite = bool(np.all(np.isfinite(x_NxD)))
            ed = metrics.energy_distance(x_NxD, data_NxD) if finite else math.nan
            width = metrics.nearest_centre(x_NxD, gmm.means)[0] if finite else math.nan
            rows.append({
                "law": str(law),
                "K": num_steps,
                "energy_distance": ed,
                "blob_width": width,
                "seconds": run_s,
                "compile_seconds": compile_s,
            })
            if num_steps in shown:
                samples[(str(law), num_steps)] = x_NxD
            log(f"{str(law):>18s}  K={num_steps:<5d}  ED {ed:+.2e}  width {width:.4f}  "
                f"run {run_s:6.2f}s  compile {compile_s:5.2f}s")

    result = {
        "experiment": "invariance (Theorem 3.3)",
        "process": settings.process,
        "data": "gmm8",
        "n": n,
        "seed": settings.seed,
        "steps": list(settings.steps),
        "laws": [str(law) for law in settings.laws],
        "denoise": True,
        "floor": {
            "energy_distance_mean": floor_mean,
            "energy_distance_std": floor_std,
            "energy_distance_samples": floor,
            "num_seeds": len(floor),
        },
        "data_blob_width": data_width,
        "rows": rows,
        "jax": jax.__version__,
        "machine": _machine(),
    }
    return result, samples, data_NxD


# -- reporting ------------------------------------------------------------------------


def markdown_table(result: dict) -> str:
    """ED and blob width per law (rows) and K (columns), plus the data floor."""
    steps = result["steps"]
    by_key = {(r["law"], r["K"]): r for r in result["rows"]}
    head = "| law | " + " | ".join(f"K={k}" for k in steps) + " |"
    rule = "|---|" + "---|" * len(steps)
    lines = ["Energy distance to data (data-vs-data floor: "
             f"{result['floor']['energy_distance_mean']:+.1e} ± "
             f"{result['floor']['energy_distance_std']:.1e}, n = {result['n']})", "",
             head, rule]
    for law in result["laws"]:
        cells = [f"{by_key[(law, k)]['energy_distance']:+.2e}" for k in steps]
        lines.append(f"| {law} | " + " | ".join(cells) + " |")
    lines += ["", f"Blob width (data: {result['data_blob_width']:.4f})", "", head, rule]
    for law in result["laws"]:
        cells = [f"{by_key[(law, k)]['blob_width']:.4f}" for k in steps]
        lines.append(f"| {law} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_energy_distance(result: dict, path: str) -> None:
    """ED vs K (log-log, one line per law) beside blob width vs K.

    The grey band is the data-vs-data noise: from a quarter of the floor's standard
    deviation up to its mean + 2 sd. The U-statistic is unbiased, so at the floor
    it is as often ≤ 0 as not; values below the band's bottom (including ≤ 0) are
    drawn on it as open downward triangles ("indistinguishable from data").
    """
    plt = _pyplot()
    floor = result["floor"]
    floor_sd = max(floor["energy_distance_std"], 1e-12)
    band_top = max(floor["energy_distance_mean"] + 2.0 * floor_sd, floor_sd)
    bottom = 0.25 * floor_sd
    finite = [r["energy_distance"] for r in result["rows"] if np.isfinite(r["energy_distance"])]
    top = 2.0 * max(finite + [band_top])
    fig, (ax, ax_w) = plt.subplots(1, 2, figsize=(11.0, 4.4), dpi=150)
    ax.axhspan(bottom, band_top, color="0.85", zorder=0,
               label=f"data vs data (mean + 2 sd, {floor['num_seeds']} seeds)")
    ax_w.axhline(result["data_blob_width"], color="0.3", ls="--", lw=1, label="data")
    for i, law in enumerate(result["laws"]):
        color = f"C{i % 10}"
        rows = sorted((r for r in result["rows"] if r["law"] == law), key=lambda r: r["K"])
        k = np.array([r["K"] for r in rows], float)
        ed = np.array([r["energy_distance"] for r in rows], float)
        clipped = ~(ed > bottom)
        ax.plot(k, np.where(clipped, bottom, ed), color=color, marker="o", ms=4, label=law)
        if clipped.any():
            ax.plot(k[clipped], np.full(clipped.sum(), bottom), ls="none", marker="v", ms=8,
                    mfc="white", mec=color)
        width = np.array([r["blob_width"] for r in rows], float)
        ax_w.plot(k, width, color=color, marker="o", ms=4, label=law)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(bottom * 0.8, top)
    ax.set_xlabel("number of reverse steps K")
    ax.set_ylabel(f"energy distance to data (n = {result['n']})")
    ax.set_title("energy distance (▽: below data-vs-data noise)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    ax_w.set_xscale("log")
    ax_w.set_yscale("log")
    ax_w.set_xlabel("number of reverse steps K")
    ax_w.set_ylabel("mean squared distance to nearest centre")
    ax_w.set_title("blob width", fontsize=10)
    ax_w.grid(True, which="both", alpha=0.3)
    ax_w.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"Invariance principle (Theorem 3.3): gmm8, exact score, {result['process']}, "
                 "reverse walk + Tweedie step")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_samples(result: dict, samples: dict, data_NxD, path: str) -> None:
    """Scatter grid: rows are laws, columns a few K and the data (same limits)."""
    plt = _pyplot()
    columns = sorted({k for _, k in samples})
    laws = result["laws"]
    ncols = len(columns) + 1
    fig, axes = plt.subplots(len(laws), ncols, figsize=(2.0 * ncols, 2.0 * len(laws)),
                             dpi=110, squeeze=False)
    lim = 1.8
    for i, law in enumerate(laws):
        for j, num_steps in enumerate(columns):
            x = samples[(law, num_steps)]
            axes[i, j].scatter(x[:, 0], x[:, 1], s=0.5, alpha=0.5, c=f"C{i % 10}",
                               rasterized=True)
            if i == 0:
                axes[i, j].set_title(f"K = {num_steps}", fontsize=9)
        axes[i, -1].scatter(data_NxD[:, 0], data_NxD[:, 1], s=0.5, alpha=0.5, c="k",
                            rasterized=True)
        if i == 0:
            axes[i, -1].set_title("data", fontsize=9)
        axes[i, 0].set_ylabel(law, fontsize=9)
    for ax in axes.flat:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Reverse walk samples by increment law (gmm8, {result['process']}, "
                 f"n = {result['n']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- entry point ----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nnd.experiments.invariance",
        description="Theorem 3.3: reverse walks with any increment law converge to the data.")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--n", type=int, default=2000, help="samples per walk and per data set")
    parser.add_argument("--steps", default=DEFAULT_STEPS, help="comma-separated K values")
    parser.add_argument("--laws", default=DEFAULT_LAWS,
                        help="comma-separated laws, 'name' or 'name:param' (student_t:5)")
    parser.add_argument("--process", default="vp", choices=sorted(processes.PROCESSES))
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """Parses flags, runs the experiment, writes the JSON and both figures.

    Raises ValueError on a bad --laws / --steps / --n before anything compiles.
    Returns the result dict that was written to ``OUT/invariance.json``.
    """
    args = _parser().parse_args(argv)
    settings = Settings(n=args.n, steps=parse_steps(args.steps), laws=parse_laws(args.laws),
                        process=args.process, seed=args.seed)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    result, samples, data_NxD = run(settings)
    plot_energy_distance(result, os.path.join(args.out, "invariance_ed.png"))
    plot_samples(result, samples, data_NxD, os.path.join(args.out, "invariance_samples.png"))
    result["wall_seconds"] = time.perf_counter() - start
    with open(os.path.join(args.out, "invariance.json"), "w") as fh:
        json.dump(result, fh, indent=2)
    print()
    print(markdown_table(result))
    print(f"\nwall time {result['wall_seconds']:.1f}s; wrote {args.out}/invariance.json, "
          "invariance_ed.png, invariance_samples.png")
    return result


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except ValueError as err:
        sys.exit(f"error: {err}")
