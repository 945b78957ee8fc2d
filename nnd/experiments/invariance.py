"""Theorem 3.3 (invariance principle) on the 8-Gaussian toy with the exact score.

Theorem 3.3 of the paper says that a structured random walk (eq. 8) whose i.i.d.
increments z_k have E z = 0, Var z = 1 and E z⁴ < ∞ converges, as Δt → 0, to the
same SDE (eq. 1) whatever the law of z_k. For the reverse walk (docs/math.md §3)

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

It writes ``invariance.json``, ``invariance.md``, ``invariance_ed.png`` and
``invariance_samples.png`` into ``--out`` and prints one line per (law, K) and the table.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import zlib
from typing import Callable, Sequence

import jax
import numpy as np

from nnd import metrics
from nnd import oracles
from nnd import processes
from nnd import walks
from nnd.experiments import common
from nnd.increments import Law
from nnd.processes import Process

__all__ = ["DEFAULT_LAWS", "DEFAULT_STEPS", "FLOOR_SEEDS", "Settings", "make_walk", "data_floor",
           "run", "markdown_table", "plot_energy_distance", "plot_samples", "main"]

DEFAULT_LAWS = "gaussian,laplace,uniform,logistic,student_t:5,rademacher"
DEFAULT_STEPS = "10,30,100,300,1000"
#: Independent data-vs-data pairs used for the floor and its spread.
FLOOR_SEEDS = 10


@dataclasses.dataclass(frozen=True)
class Settings:
    """One run of the experiment (the command-line flags, parsed)."""

    n: int = 2000
    steps: tuple[int, ...] = common.parse_steps(DEFAULT_STEPS)
    laws: tuple[Law, ...] = common.parse_laws(DEFAULT_LAWS)
    process: str = "vp"
    seed: int = 0
    scheme: str = walks.DEFAULT_SCHEME
    grid: str = processes.DEFAULT_GRID

    def __post_init__(self):
        common.check_int("n", self.n, 2)
        if self.scheme not in walks.SCHEMES:
            raise ValueError(f"unknown scheme {self.scheme!r}; choose one of {walks.SCHEMES}")
        if self.grid not in processes.GRIDS:
            raise ValueError(f"unknown grid {self.grid!r}; choose one of {processes.GRIDS}")


# -- the measurements -----------------------------------------------------------------


def make_walk(process: Process, law: Law, score_fn: Callable, n: int, num_steps: int, *,
              scheme: str = walks.DEFAULT_SCHEME,
              grid: str = processes.DEFAULT_GRID) -> tuple[Callable[[jax.Array], jax.Array], float]:
    """The reverse walk of docs/math.md §3 (Theorem 3.3's sampler) as a compiled ``key -> x [n, 2]``.

    Compiled ahead of time so the compile and run times can be reported apart.

    Returns:
      (compiled function, compile seconds).
    """
    walk = functools.partial(
        walks.reverse, process, law, score_fn, shape=(n, 2), num_steps=num_steps, denoise=True,
        scheme=scheme, grid=grid)
    start = time.perf_counter()
    compiled = jax.jit(walk).lower(jax.random.key(0)).compile()
    return compiled, time.perf_counter() - start


def data_floor(key: jax.Array, gmm: oracles.GMM, n: int,
               num_seeds: int = FLOOR_SEEDS) -> list[float]:
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


def _law_tag(law: Law) -> int:
    """A stable fold_in tag for a law (independent of its place in --laws)."""
    return zlib.crc32(str(law).encode()) & 0x7FFFFFFF


def _sample_columns(steps: Sequence[int], max_columns: int = 3) -> tuple[int, ...]:
    """Up to ``max_columns`` K values for the scatter grid: smallest, (middle), largest."""
    if len(steps) <= max_columns:
        return tuple(steps)
    idx = np.unique(np.round(np.linspace(0, len(steps) - 1, max_columns)).astype(int))
    return tuple(steps[i] for i in idx)


def run(settings: Settings, *, log=print) -> tuple[dict, dict, np.ndarray]:
    """Runs the experiment; returns (result dict for JSON, samples, data sample).

    Keys: one root key ``key(seed)`` split into named keys (walks, data, floor);
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
            walk, compile_s = make_walk(process, law, score_fn, n, num_steps,
                                        scheme=settings.scheme, grid=settings.grid)
            start = time.perf_counter()
            x_NxD = np.asarray(walk(jax.random.fold_in(key_law, num_steps)).block_until_ready())
            run_s = time.perf_counter() - start
            finite = bool(np.all(np.isfinite(x_NxD)))
            ed = metrics.energy_distance(x_NxD, data_NxD) if finite else math.nan
            width = metrics.nearest_centre(x_NxD, gmm.means)[0] if finite else math.nan
            rows.append({"law": str(law), "K": num_steps, "energy_distance": ed,
                         "blob_width": width, "seconds": run_s, "compile_seconds": compile_s})
            if num_steps in shown:
                samples[(str(law), num_steps)] = x_NxD
            log(f"{str(law):>18s}  K={num_steps:<5d}  ED {ed:+.2e}  width {width:.4f}  "
                f"run {run_s:6.2f}s  compile {compile_s:5.2f}s")

    result = {
        "experiment": "invariance (Theorem 3.3)",
        "process": settings.process,
        "scheme": settings.scheme,
        "grid": settings.grid,
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
    }
    return result, samples, data_NxD


# -- reporting ------------------------------------------------------------------------


def markdown_table(result: dict) -> str:
    """ED and blob width per law (rows) and K (columns), plus the data floor."""
    by_key = {(r["law"], r["K"]): r for r in result["rows"]}
    head = ["law"] + [f"K={k}" for k in result["steps"]]

    def table(cell):
        return common.markdown_table(head, ([law] + [cell(by_key[(law, k)]) for k in result["steps"]]
                                            for law in result["laws"]))

    floor = result["floor"]
    return "\n".join(
        [f"Energy distance to data (data-vs-data floor: {floor['energy_distance_mean']:+.1e} ± "
         f"{floor['energy_distance_std']:.1e}, n = {result['n']})", ""]
        + table(lambda r: f"{r['energy_distance']:+.2e}")
        + ["", f"Blob width (data: {result['data_blob_width']:.4f})", ""]
        + table(lambda r: f"{r['blob_width']:.4f}"))


def plot_energy_distance(result: dict, path: str) -> None:
    """ED vs K (log-log, one line per law) beside blob width vs K.

    The grey band is the data-vs-data noise: from a quarter of the floor's standard
    deviation up to its mean + 2 sd. The U-statistic is unbiased, so at the floor
    it is as often ≤ 0 as not; values below the band's bottom (including ≤ 0) are
    drawn on it as open downward triangles ("indistinguishable from data").
    """
    plt = common.pyplot()
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
    ax.set_ylim(bottom * 0.8, top)
    common.style_axes(ax, title="energy distance (▽: below data-vs-data noise)",
                      xlabel="number of reverse steps K",
                      ylabel=f"energy distance to data (n = {result['n']})", logx=True, logy=True)
    common.style_axes(ax_w, title="blob width", xlabel="number of reverse steps K",
                      ylabel="mean squared distance to nearest centre", logx=True, logy=True)
    common.save_figure(fig, path, "Invariance principle (Theorem 3.3): gmm8, exact score, "
                                  f"{result['process']}, reverse walk + Tweedie step")


def plot_samples(result: dict, samples: dict, data_NxD: np.ndarray, path: str) -> None:
    """Scatter grid: rows are laws, columns a few K and the data (same limits)."""
    plt = common.pyplot()
    columns = sorted({k for _, k in samples})
    laws = result["laws"]
    ncols = len(columns) + 1
    fig, axes = plt.subplots(len(laws), ncols, figsize=(2.0 * ncols, 2.0 * len(laws)),
                             dpi=110, squeeze=False)
    lim = 1.8
    for i, law in enumerate(laws):
        panels = [(samples[(law, k)], f"K = {k}", f"C{i % 10}") for k in columns]
        for ax, (x, title, color) in zip(axes[i], panels + [(data_NxD, "data", "k")]):
            ax.scatter(x[:, 0], x[:, 1], s=0.5, alpha=0.5, c=color, rasterized=True)
            if i == 0:
                ax.set_title(title, fontsize=9)
        axes[i, 0].set_ylabel(law, fontsize=9)
    for ax in axes.flat:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    common.save_figure(fig, path, f"Reverse walk samples by increment law (gmm8, "
                                  f"{result['process']}, n = {result['n']})")


# -- entry point ----------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict:
    """Parses flags, runs the experiment, writes ``invariance.json``, ``.md`` and both figures.

    Raises ValueError on a bad --laws / --steps / --n before anything compiles.
    Returns the result dict that was written to ``OUT/invariance.json``.
    """
    parser = common.parser("invariance", "Theorem 3.3: reverse walks with any increment law "
                                         "converge to the data.")
    parser.add_argument("--n", type=int, default=2000, help="samples per walk and per data set")
    parser.add_argument("--steps", default=DEFAULT_STEPS, help="comma-separated K values")
    parser.add_argument("--laws", default=DEFAULT_LAWS,
                        help="comma-separated laws, 'name' or 'name:param' (student_t:5)")
    parser.add_argument("--scheme", default=walks.DEFAULT_SCHEME, choices=walks.SCHEMES,
                        help="reverse step (docs/math.md §3)")
    parser.add_argument("--grid", default=processes.DEFAULT_GRID, choices=processes.GRIDS,
                        help="times: uniform in t or in log-SNR")
    common.add_process_and_seed(parser)
    args = parser.parse_args(argv)
    settings = Settings(n=args.n, steps=common.parse_steps(args.steps),
                        laws=common.parse_laws(args.laws), process=args.process, seed=args.seed,
                        scheme=args.scheme, grid=args.grid)
    start = time.perf_counter()
    result, samples, data_NxD = run(settings)
    figures = {"invariance_ed.png": functools.partial(plot_energy_distance, result),
               "invariance_samples.png": functools.partial(plot_samples, result, samples, data_NxD)}
    return common.write(args.out, "invariance", result, markdown=markdown_table(result),
                        figures=figures, start=start, argv=argv)


if __name__ == "__main__":
    common.cli(main)
