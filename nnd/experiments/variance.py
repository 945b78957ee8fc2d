"""The reverse-variance family at few steps, on the exact gmm8 score (docs/math.md §3).

Every member of :func:`nnd.walks.ancestral_step`'s family (η from DDIM's 0 through the
ancestral 1 and above; w from the ancestral variance to the moment-matched one, with the
exact per-point Var[x_0 | x_t] of :func:`nnd.oracles.gmm_x0_variance`) is run with every
increment law, on each process, at each K, and measured against the data:

- the blob width, the mean squared distance to the nearest of the 8 centres (the
  population's is 2·0.1² = 0.02; its standard error at n samples is 0.02/√n, as the
  squared distance is 0.1²χ²₂ with sd 0.02), reported as the relative error;
- the energy distance to a fresh data sample of ``--ed-n`` points (the U-statistic, ≈ 0
  for the data itself).

The members share one compiled walk per (process, law, K): η and w are its arguments.
Run (about 6 minutes on 2 CPU cores)::

    python -m nnd.experiments.variance --out docs/figures/variance

It writes ``variance.json`` and ``variance.md`` (a table per process: worst law per member
and K) into ``--out``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Sequence

import jax
import numpy as np

from nnd import metrics, oracles, processes, walks
from nnd.experiments import common
from nnd.increments import Law

__all__ = ["DEFAULT_MEMBERS", "Member", "Settings", "parse_members", "run", "markdown_table",
           "main"]

DEFAULT_LAWS = "gaussian,laplace,uniform,logistic,student_t:5"
#: η alone (no Var[x_0 | x_t] needed), then w at η = 1 (the exact per-point variance).
DEFAULT_MEMBERS = ("eta=0,eta=0.5,eta=0.8,eta=1,eta=1.1,eta=1.2,eta=1.3,"
                   "w=0.25,w=0.5,w=0.75,w=1")
#: The population blob width of gmm8 (two coordinates of variance 0.1²).
DATA_WIDTH = 2 * 0.1**2


@dataclasses.dataclass(frozen=True)
class Member:
    """One member of the family: η and w (w > 0 takes the exact per-point variance)."""

    eta: float = 1.0
    weight: float = 0.0

    def __str__(self):
        return f"η={self.eta:g}" + (f", w={self.weight:g}" if self.weight else "")


def _member(item: str) -> Member:
    fields = {}
    for part in item.split(";"):
        name, _, value = part.partition("=")
        if name not in ("eta", "w") or not value:
            raise ValueError(f"a member is 'eta=X', 'w=Y' or 'eta=X;w=Y', got {item!r}")
        fields["eta" if name == "eta" else "weight"] = float(value)
    member = Member(**fields)
    walks.check_family("ancestral", member.eta, member.weight, True)
    return member


def parse_members(text: str | Sequence) -> tuple[Member, ...]:
    """Members such as ``'eta=0,eta=1,w=0.5,eta=0.8;w=0.5'``."""
    return common.parse_list(text, _member, "family members")


@dataclasses.dataclass(frozen=True)
class Settings:
    """One run of the experiment (the command-line flags, parsed)."""

    n: int = 20000
    ed_n: int = 4000
    steps: tuple[int, ...] = (10, 30, 100)
    laws: tuple[Law, ...] = common.parse_laws(DEFAULT_LAWS)
    processes: tuple[str, ...] = ("vp", "vdm")
    members: tuple[Member, ...] = parse_members(DEFAULT_MEMBERS)
    seed: int = 0

    def __post_init__(self):
        common.check_int("n", self.n, 2)
        common.check_int("ed_n", self.ed_n, 2)
        if self.ed_n > self.n:
            raise ValueError(f"ed_n ({self.ed_n}) must not exceed n ({self.n})")
        for name in self.processes:
            processes.get(name)


def _walk(process, law, gmm, n: int, num_steps: int):
    """``(key, eta, w) -> x [n, 2]``, compiled once: the family member is an argument."""
    def walk(key, eta, weight):
        return walks.reverse(process, law, oracles.gmm_score(process, gmm), key, (n, 2),
                             num_steps, x0_variance_fn=oracles.gmm_x0_variance(process, gmm),
                             eta=eta, variance_weight=weight)

    return jax.jit(walk)


def run(settings: Settings, *, log=print) -> dict:
    """Runs every (process, law, K, member); returns the JSON-ready result.

    Keys: ``key(seed)`` is split into (walks, data); the walk of (process, law, K) uses
    ``fold_in`` of the walks key by their positions, the same key for every member (so
    members differ by their settings, not their noise).
    """
    gmm = oracles.gmm8()
    key_walks, key_data = jax.random.split(jax.random.key(settings.seed))
    data_NxD = np.asarray(oracles.sample_gmm(key_data, gmm, settings.ed_n))
    rows = []
    for i, name in enumerate(settings.processes):
        process = processes.get(name)
        for j, law in enumerate(settings.laws):
            for num_steps in settings.steps:
                walk = _walk(process, law, gmm, settings.n, num_steps)
                key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key_walks, i), j),
                                         num_steps)
                for member in settings.members:
                    start = time.perf_counter()
                    x_NxD = np.asarray(walk(key, member.eta, member.weight))
                    finite = bool(np.all(np.isfinite(x_NxD)))
                    width = metrics.nearest_centre(x_NxD, gmm.means)[0] if finite else math.nan
                    ed = (metrics.energy_distance(x_NxD[:settings.ed_n], data_NxD) if finite
                          else math.nan)
                    rows.append({"process": name, "law": str(law), "K": num_steps,
                                 "eta": member.eta, "w": member.weight, "blob_width": width,
                                 "width_error": width / DATA_WIDTH - 1.0, "energy_distance": ed,
                                 "seconds": time.perf_counter() - start})
                    log(f"{name} {str(law):>15s} K={num_steps:<4d} {str(member):>12s}  "
                        f"width {width:.4f} ({width / DATA_WIDTH - 1:+.1%})  ED {ed:+.1e}")
    return {
        "experiment": "variance family (docs/math.md §3)",
        "data": "gmm8", "data_blob_width": DATA_WIDTH,
        "width_standard_error": DATA_WIDTH / math.sqrt(settings.n) / DATA_WIDTH,
        "n": settings.n, "ed_n": settings.ed_n, "seed": settings.seed,
        "steps": list(settings.steps), "laws": [str(law) for law in settings.laws],
        "processes": list(settings.processes),
        "members": [dataclasses.asdict(m) for m in settings.members],
        "grid": processes.DEFAULT_GRID, "denoise": True, "rows": rows, "jax": jax.__version__,
    }


def markdown_table(result: dict) -> str:
    """Per process: for each member and K, the worst law's width error and the largest ED."""
    out = [f"Blob width error of the worst law (data {result['data_blob_width']:.3f}; standard "
           f"error {result['width_standard_error']:.1%} at n = {result['n']}) and the largest "
           f"energy distance over the laws ({', '.join(result['laws'])}; n = {result['ed_n']}), "
           f"exact gmm8 score, {result['grid']} grid."]
    for name in result["processes"]:
        rows = [r for r in result["rows"] if r["process"] == name]
        members = list(dict.fromkeys((r["eta"], r["w"]) for r in rows))
        head = ["member"] + [f"K={k} width" for k in result["steps"]] + [
            f"K={k} max ED" for k in result["steps"]]
        table = []
        for eta, weight in members:
            cells = {k: [r for r in rows if (r["eta"], r["w"], r["K"]) == (eta, weight, k)]
                     for k in result["steps"]}
            worst = [max(cells[k], key=lambda r: abs(r["width_error"])) for k in result["steps"]]
            widths = [f"{r['width_error']:+.1%} ({r['law']})" for r in worst]
            eds = [f"{max(r['energy_distance'] for r in cells[k]):.1e}" for k in result["steps"]]
            table.append([str(Member(eta, weight))] + widths + eds)
        out += ["", f"**{name}**", ""] + common.markdown_table(head, table)
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> dict:
    """Parses flags, runs the experiment, writes ``variance.json`` and ``variance.md``."""
    parser = common.parser("variance", "The reverse-variance family at few steps, exact score.")
    parser.add_argument("--n", type=int, default=20000, help="samples per walk (blob width)")
    parser.add_argument("--ed-n", type=int, default=4000,
                        help="samples for the energy distance (walk and data)")
    parser.add_argument("--steps", default="10,30,100", help="comma-separated K values")
    parser.add_argument("--laws", default=DEFAULT_LAWS, help="comma-separated law specs")
    parser.add_argument("--processes", default="vp,vdm", help="comma-separated process names")
    parser.add_argument("--members", default=DEFAULT_MEMBERS,
                        help="comma-separated 'eta=X', 'w=Y' or 'eta=X;w=Y'")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    settings = Settings(n=args.n, ed_n=args.ed_n, steps=common.parse_steps(args.steps),
                        laws=common.parse_laws(args.laws),
                        processes=common.parse_list(args.processes, str, "processes"),
                        members=parse_members(args.members), seed=args.seed)
    start = time.perf_counter()
    result = run(settings)
    return common.write(args.out, "variance", result, markdown=markdown_table(result),
                        start=start, argv=argv)


if __name__ == "__main__":
    common.cli(main)
