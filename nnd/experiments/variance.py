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

The members share one compiled walk per (process, law, K): η and w are its arguments;
``rule`` is the default rule (:func:`nnd.walks.default_eta` of K). Run (about 25 minutes
on 2 CPU cores)::

    python -m nnd.experiments.variance --out docs/figures/variance

It writes ``variance.json``, ``variance.md`` (a table per process: worst law per member
and K) and ``variance_widths.png`` (width error against η per K) into ``--out``.

With ``--learned ROOT`` it measures learned networks instead: the three toy configs
(``configs/toy_{gaussian,laplace,uniform}.py``, gmm8), each trained (if ``ROOT`` holds no
checkpoint yet) with and without the learned-variance head (``model.learned_variance``),
sampled with the run's law at each K by the ancestral step (η = 1), the default rule, and,
with the head, the moment-matched step (w = 1) and w = 0.5 (about 25 minutes)::

    python -m nnd.experiments.variance --learned runs/variance --steps 10,30,100,1000 \
        --out docs/figures/variance

It writes ``variance_learned.json`` and ``variance_learned.md``.
"""

from __future__ import annotations

import ast
import dataclasses
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
#: The default rule, η alone (no Var[x_0 | x_t] needed), then w at η = 1 (the exact
#: per-point variance).
DEFAULT_MEMBERS = ("rule,eta=0,eta=0.5,eta=0.7,eta=0.8,eta=0.9,eta=1,eta=1.1,eta=1.2,eta=1.3,"
                   "w=0.25,w=0.5,w=0.75,w=1")
#: The toy configs of ``--learned``.
TOYS = ("toy_gaussian", "toy_laplace", "toy_uniform")
#: The population blob width of gmm8 (two coordinates of variance 0.1²).
DATA_WIDTH = 2 * 0.1**2


@dataclasses.dataclass(frozen=True)
class Member:
    """One member of the family: η (None: the default rule of K) and w (w > 0 takes the
    per-point variance: the exact one, or a network's learned one)."""

    eta: float | None = 1.0
    weight: float = 0.0

    def __str__(self):
        eta = "rule" if self.eta is None else f"η={self.eta:g}"
        return eta + (f", w={self.weight:g}" if self.weight else "")

    def resolved_eta(self, num_steps: int) -> float:
        return walks.resolve_eta(self.eta, "ancestral", self.weight, num_steps)


#: The members measured on learned networks: without the head, then with it.
LEARNED_MEMBERS = (Member(1.0), Member(None))
HEAD_MEMBERS = (Member(1.0, 1.0), Member(1.0, 0.5))


def _member(item: str) -> Member:
    if item == "rule":
        return Member(eta=None)
    fields = {}
    for part in item.split(";"):
        name, _, value = part.partition("=")
        if name not in ("eta", "w") or not value:
            raise ValueError(f"a member is 'rule', 'eta=X', 'w=Y' or 'eta=X;w=Y', got {item!r}")
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
    steps: tuple[int, ...] = (10, 15, 20, 30, 100, 300)
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
                    x_NxD = np.asarray(walk(key, member.resolved_eta(num_steps), member.weight))
                    row = _measure(x_NxD, gmm, data_NxD, settings.ed_n)
                    rows.append({"process": name, "law": str(law), "K": num_steps,
                                 "member": str(member), "eta": member.resolved_eta(num_steps),
                                 "w": member.weight, **row,
                                 "seconds": time.perf_counter() - start})
                    log(f"{name} {str(law):>15s} K={num_steps:<4d} {str(member):>12s}  "
                        f"width {row['blob_width']:.4f} ({row['width_error']:+.1%})  "
                        f"ED {row['energy_distance']:+.1e}")
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


def _measure(x_NxD, gmm, data_NxD, ed_n: int) -> dict:
    finite = bool(np.all(np.isfinite(x_NxD)))
    width = metrics.nearest_centre(x_NxD, gmm.means)[0] if finite else math.nan
    ed = metrics.energy_distance(x_NxD[:ed_n], data_NxD) if finite else math.nan
    return {"blob_width": width, "width_error": width / DATA_WIDTH - 1.0, "energy_distance": ed}


def run_learned(root: str, settings: Settings, *, train_missing: bool = True,
                overrides: dict | None = None, log=print) -> dict:
    """Trains (where ``root`` has no checkpoint) and samples the toy networks of :data:`TOYS`
    with and without the learned-variance head; returns the JSON-ready result.

    ``overrides``: {"section.field": value} applied to every config (a smoke run's sizes).
    """
    import importlib

    from nnd import evaluate, paths, samplers, train

    gmm = oracles.gmm8()
    key_walks, key_data = jax.random.split(jax.random.key(settings.seed))
    data_NxD = np.asarray(oracles.sample_gmm(key_data, gmm, settings.ed_n))
    rows = []
    for i, name in enumerate(TOYS):
        for head in (False, True):
            config = importlib.import_module(f"configs.{name}").get_config()
            config.model.learned_variance = head
            for field, value in (overrides or {}).items():
                section, _, key = field.partition(".")
                config[section][key] = value
            workdir = str(paths.get(root) / (name + ("_head" if head else "")))
            if not (paths.get(workdir) / "checkpoints").exists():
                if not train_missing:
                    raise ValueError(f"{workdir} has no checkpoint (train it, or drop --no-train)")
                log(f"training {workdir}")
                train.train(config, workdir)
            restored = evaluate.restore(config, workdir)
            law = restored.experiment.sampling_law
            for num_steps in settings.steps:
                for member in LEARNED_MEMBERS + (HEAD_MEMBERS if head else ()):
                    sampling = dataclasses.replace(
                        restored.experiment.sampling, num_steps=num_steps,
                        batch_size=settings.n, eta=member.eta,
                        variance_weight=member.weight if member.weight else None)
                    key = jax.random.fold_in(jax.random.fold_in(key_walks, i), num_steps)
                    x_NxD, _ = samplers.draw(restored.experiment.model, restored.params,
                                             restored.experiment.process, law, sampling, (2,),
                                             settings.n, key)
                    row = _measure(np.asarray(x_NxD), gmm, data_NxD, settings.ed_n)
                    rows.append({"config": name, "head": head, "law": str(law), "K": num_steps,
                                 "member": str(member), "eta": member.resolved_eta(num_steps),
                                 "w": member.weight, "train_steps": restored.step, **row})
                    log(f"{name:>12s} head={head!s:5s} K={num_steps:<5d} {str(member):>10s}  "
                        f"width {row['blob_width']:.4f} ({row['width_error']:+.1%})  "
                        f"ED {row['energy_distance']:+.1e}")
    return {"experiment": "variance family on learned toy networks (docs/math.md §3, §5)",
            "data": "gmm8", "data_blob_width": DATA_WIDTH, "n": settings.n, "ed_n": settings.ed_n,
            "seed": settings.seed, "steps": list(settings.steps), "configs": list(TOYS),
            "rows": rows, "jax": jax.__version__}


def learned_markdown(result: dict) -> str:
    """One row per (config, head, member): blob width error and energy distance at each K."""
    out = [f"Learned toy networks (gmm8, blob width of the data {result['data_blob_width']:.3f}, "
           f"n = {result['n']}; energy distance on {result['ed_n']} points): width error / "
           "energy distance at each K."]
    head = ["config", "head", "member"] + [f"K={k}" for k in result["steps"]]
    table = []
    keys_ = list(dict.fromkeys((r["config"], r["head"], r["member"]) for r in result["rows"]))
    for config, has_head, member in keys_:
        cells = []
        for k in result["steps"]:
            match = [r for r in result["rows"] if (r["config"], r["head"], r["member"], r["K"])
                     == (config, has_head, member, k)]
            cells.append(f"{match[0]['width_error']:+.1%} / {match[0]['energy_distance']:.1e}"
                         if match else "")
        table.append([config, "yes" if has_head else "no", member] + cells)
    return "\n".join(out + [""] + common.markdown_table(head, table))


def markdown_table(result: dict) -> str:
    """Per process: for each member and K, the worst law's width error and the largest ED."""
    out = [f"Blob width error of the worst law (data {result['data_blob_width']:.3f}; standard "
           f"error {result['width_standard_error']:.1%} at n = {result['n']}) and the largest "
           f"energy distance over the laws ({', '.join(result['laws'])}; n = {result['ed_n']}), "
           f"exact gmm8 score, {result['grid']} grid."]
    for name in result["processes"]:
        rows = [r for r in result["rows"] if r["process"] == name]
        members = list(dict.fromkeys(r["member"] for r in rows))
        head = ["member"] + [f"K={k} width" for k in result["steps"]] + [
            f"K={k} max ED" for k in result["steps"]]
        table = []
        for member in members:
            cells = {k: [r for r in rows if (r["member"], r["K"]) == (member, k)]
                     for k in result["steps"]}
            worst = [max(cells[k], key=lambda r: abs(r["width_error"])) for k in result["steps"]]
            widths = [f"{r['width_error']:+.1%} ({r['law']})" for r in worst]
            eds = [f"{max(r['energy_distance'] for r in cells[k]):.1e}" for k in result["steps"]]
            table.append([member] + widths + eds)
        out += ["", f"**{name}**", ""] + common.markdown_table(head, table)
    return "\n".join(out)


def plot_widths(result: dict, path: str) -> None:
    """Per process, the worst law's blob-width error against η (w = 0), one line per K, with
    the ±5% band and the default rule's η marked."""
    plt = common.pyplot()
    fig, axes = plt.subplots(1, len(result["processes"]), figsize=(5.5 * len(result["processes"]),
                                                                  4.2), dpi=150, squeeze=False)
    for ax, name in zip(axes[0], result["processes"]):
        ax.axhspan(-5, 5, color="0.88", zorder=0, label="within 5%")
        ax.axhline(0, color="0.3", lw=0.8)
        for i, k in enumerate(result["steps"]):
            rows = [r for r in result["rows"] if r["process"] == name and r["K"] == k
                    and r["w"] == 0 and r["member"] != "rule"]
            etas = sorted({r["eta"] for r in rows})
            worst = [max((r for r in rows if r["eta"] == e), key=lambda r: abs(r["width_error"]))
                     for e in etas]
            ax.plot(etas, [100 * r["width_error"] for r in worst], color=f"C{i}", marker="o",
                    ms=4, label=f"K = {k}")
            rule = walks.default_eta(k)
            if rule in etas:
                r = worst[etas.index(rule)]
                ax.plot([rule], [100 * r["width_error"]], color=f"C{i}", marker="*", ms=14,
                        ls="none")
        common.style_axes(ax, title=f"{name}: worst of {len(result['laws'])} laws (★: default rule)",
                          xlabel="η (0: DDIM, 1: ancestral)", ylabel="blob width error (%)",
                          legend="upper right")
    common.save_figure(fig, path, "The reverse-variance family on the exact gmm8 score")


def main(argv: Sequence[str] | None = None) -> dict:
    """Parses flags, runs the experiment, writes ``variance.json`` and ``variance.md``."""
    parser = common.parser("variance", "The reverse-variance family at few steps, exact score.")
    parser.add_argument("--n", type=int, default=20000, help="samples per walk (blob width)")
    parser.add_argument("--ed-n", type=int, default=4000,
                        help="samples for the energy distance (walk and data)")
    parser.add_argument("--steps", default="10,15,20,30,100,300", help="comma-separated K values")
    parser.add_argument("--laws", default=DEFAULT_LAWS, help="comma-separated law specs")
    parser.add_argument("--processes", default="vp,vdm", help="comma-separated process names")
    parser.add_argument("--members", default=DEFAULT_MEMBERS,
                        help="comma-separated 'eta=X', 'w=Y' or 'eta=X;w=Y'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learned", metavar="ROOT",
                        help="measure the toy networks trained under ROOT (trained if missing)")
    parser.add_argument("--no-train", action="store_true",
                        help="with --learned: refuse to train a missing network")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="with --learned: a config override for every network (smoke runs)")
    args = parser.parse_args(argv)
    settings = Settings(n=args.n, ed_n=args.ed_n, steps=common.parse_steps(args.steps),
                        laws=common.parse_laws(args.laws),
                        processes=common.parse_list(args.processes, str, "processes"),
                        members=parse_members(args.members), seed=args.seed)
    start = time.perf_counter()
    if args.learned:
        overrides = {}
        for item in args.set:
            field, _, value = item.partition("=")
            try:
                overrides[field] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                overrides[field] = value  # a bare string
        result = run_learned(args.learned, settings, train_missing=not args.no_train,
                             overrides=overrides)
        return common.write(args.out, "variance_learned", result,
                            markdown=learned_markdown(result), start=start, argv=argv)
    result = run(settings)
    return common.write(args.out, "variance", result, markdown=markdown_table(result),
                        figures={"variance_widths.png": lambda path: plot_widths(result, path)},
                        start=start, argv=argv)


if __name__ == "__main__":
    common.cli(main)
