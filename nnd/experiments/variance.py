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

With ``--learned ROOT`` it measures learned networks instead, the configs of ``--configs``:
``toys`` (``configs/toy_{gaussian,laplace,uniform}.py``, gmm8: blob width and energy
distance, as above) or ``digits`` (the four Table 2 rows on 8×8 digits: FD, precision and
recall in a digits classifier's features (:mod:`nnd.experiments.digit_features`), the energy
distance, and the spread error, the samples' total per-pixel variance over the test
digits', minus 1). Each is trained (if ``ROOT`` holds no checkpoint yet) without and with
the learned-variance head (``model.learned_variance``) and sampled with the run's law at
each K by the members of ``--no-head-members`` (default: the ancestral step η = 1 and the
default rule) and of ``--head-members`` (default: those two, the moment-matched step w = 1
and w = 0.5). ``digits_uniform`` samples ``digits_gaussian``'s networks (same gradients, as
in Table 2). A network's rows are kept in its workdir, so an interrupted run resumes and two
processes with different ``--configs`` can fill one ``ROOT`` side by side. The toys (about
40 minutes; ``variance_learned.json`` and ``.md``)::

    python -m nnd.experiments.variance --learned runs/variance --steps 10,30,100,1000 \
        --n 10000 --out docs/figures/variance

and the digits (``variance_digits.json`` and ``.md``, and the section of the results page;
on 2 CPU cores 11–14 minutes of training per network and 40–50 minutes of sampling per
network pair, measured with six runs side by side)::

    python -m nnd.experiments.variance --learned runs/variance --configs digits \
        --steps 10,30,100,1000 --n 500 --ed-n 500 --head-members w=1,w=0.5 \
        --out docs/figures/variance --results docs/results.md
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import time
from typing import Sequence

import jax
import numpy as np

from nnd import metrics, oracles, processes, provenance, walks
from nnd.experiments import common
from nnd.increments import Law

__all__ = ["DEFAULT_MEMBERS", "Member", "Settings", "Learned", "parse_members", "parse_configs",
           "run", "run_learned", "markdown_table", "learned_markdown", "main"]

DEFAULT_LAWS = "gaussian,laplace,uniform,logistic,student_t:5"
#: The default rule, η alone (no Var[x_0 | x_t] needed), then w at η = 1 (the exact
#: per-point variance).
DEFAULT_MEMBERS = ("rule,eta=0,eta=0.5,eta=0.7,eta=0.8,eta=0.9,eta=1,eta=1.1,eta=1.2,eta=1.3,"
                   "w=0.25,w=0.5,w=0.75,w=1")
#: The configs of ``--learned``: the toys (gmm8, scored by blob width) and the digits rows
#: of Table 2 (scored in a digits classifier's features); ``--configs toys`` or ``digits``.
TOYS = ("toy_gaussian", "toy_laplace", "toy_uniform")
DIGITS = ("digits_gaussian", "digits_laplace", "digits_uniform", "digits_uniform_laplace")
CONFIG_SETS = {"toys": TOYS, "digits": DIGITS}
#: A config that samples another's networks (config -> config): uniform/gaussian trains
#: exactly like gaussian/gaussian (the ε losses differ by the constant ℓ(0), and the head's
#: term depends on p alone), as in Table 2.
SHARED = {"digits_uniform": "digits_gaussian"}
#: Where a ``--learned`` network keeps its rows (reused while the settings are the same).
UNIT_JSON = "variance_unit.json"
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


def _config_index(name: str) -> int:
    """The position of a ``--learned`` config in :data:`TOYS` + :data:`DIGITS` (its key's fold-in)."""
    return (TOYS + DIGITS).index(name)


def parse_configs(text: str | Sequence) -> tuple[str, ...]:
    """``toys``, ``digits`` or config names of :data:`TOYS` and :data:`DIGITS`."""
    def one(item: str) -> tuple[str, ...]:
        if item in CONFIG_SETS:
            return CONFIG_SETS[item]
        if item not in TOYS + DIGITS:
            raise ValueError(f"unknown --configs entry {item!r}; choose 'toys', 'digits' or "
                             f"one of {', '.join(TOYS + DIGITS)}")
        return (item,)
    nested = common.parse_list(text, one, "configs")
    return tuple(dict.fromkeys(name for group in nested for name in group))


@dataclasses.dataclass(frozen=True)
class Learned:
    """What ``--learned`` samples: the configs, and the members on networks without and with
    the learned-variance head."""

    configs: tuple[str, ...] = TOYS
    members: tuple[Member, ...] = LEARNED_MEMBERS
    head_members: tuple[Member, ...] = LEARNED_MEMBERS + HEAD_MEMBERS

    def __post_init__(self):
        if not self.configs or not (self.members or self.head_members):
            raise ValueError("--learned needs at least one config and one member")
        if any(member.weight for member in self.members):
            raise ValueError("a network without the head has no Var[x_0 | x_t]: w > 0 goes in "
                             "--head-members")


class _DigitsScore:
    """FD, precision, recall and energy distance of digit samples against the 359 test digits
    (:func:`nnd.experiments.digit_features.sample_quality`), and the spread error: the samples'
    total per-pixel variance over the test digits', minus 1 (the digits' blob width)."""

    def __init__(self):
        from nnd.experiments import digit_features

        self._quality = digit_features.sample_quality
        self.classifier = digit_features.fit_classifier(0)
        self.reference = digit_features.held_out_digits()
        self._spread = float(np.sum(np.var(self.reference.reshape(len(self.reference), -1), 0)))

    def __call__(self, x) -> dict:
        x_NxD = np.asarray(x).reshape(len(x), -1)
        if not np.all(np.isfinite(x_NxD)):
            return {"fd": math.nan, "spread_error": math.nan, "energy_distance": math.nan}
        quality = self._quality(self.classifier, x_NxD, self.reference)
        spread = float(np.sum(np.var(x_NxD, axis=0)))
        return {"fd": quality["fd"], "precision": quality["precision"],
                "recall": quality["recall"], "energy_distance": quality["energy_distance"],
                "spread_error": spread / self._spread - 1.0}


def _unit_settings(settings: Settings, members: Sequence[Member], overrides: dict) -> dict:
    return {"n": settings.n, "ed_n": settings.ed_n, "seed": settings.seed,
            "steps": list(settings.steps), "members": [str(m) for m in members],
            "overrides": overrides}


def _learned_unit(root: str, name: str, head: bool, settings: Settings,
                  members: Sequence[Member], key_walks, score, *, train_missing: bool,
                  overrides: dict, log) -> list[dict]:
    """Trains (if missing), samples and scores one network; its rows are kept in
    ``<workdir>/variance_unit.json`` and reused while the settings are the same."""
    import importlib

    from nnd import evaluate, paths, samplers, train

    config = importlib.import_module(f"configs.{name}").get_config()
    config.model.learned_variance = head
    for field, value in overrides.items():
        section, _, key = field.partition(".")
        config[section][key] = value
    suffix = "_head" if head else ""
    workdir = str(paths.get(root) / (name + suffix))
    unit_json = paths.get(workdir) / UNIT_JSON
    wanted = _unit_settings(settings, members, overrides)
    if unit_json.exists():
        saved = json.loads(unit_json.read_text())
        if saved["settings"] == wanted:
            log(f"{workdir}: reusing {UNIT_JSON}")
            return saved["rows"]
        log(f"{workdir}: its {UNIT_JSON} has other settings; sampling again")
    if common.latest_step(workdir) is None:
        source = str(paths.get(root) / (SHARED[name] + suffix)) if name in SHARED else None
        if source is not None and common.latest_step(source) is not None:
            log(f"{workdir}: copying the {SHARED[name] + suffix} checkpoint (same gradients)")
            paths.copytree(str(paths.get(source) / "checkpoints"),
                           str(paths.get(workdir) / "checkpoints"))
        elif not train_missing:
            raise ValueError(f"{workdir} has no checkpoint (train it, or drop --no-train)")
        else:
            log(f"training {workdir}")
            train.train(config, workdir)
    restored = evaluate.restore(config, workdir)
    law = restored.experiment.sampling_law
    rows = []
    for num_steps in settings.steps:
        key = jax.random.fold_in(jax.random.fold_in(key_walks, _config_index(name)), num_steps)
        for member in members:
            start = time.perf_counter()
            sampling = dataclasses.replace(
                restored.experiment.sampling, num_steps=num_steps,
                batch_size=settings.n,
                eta=member.eta, variance_weight=member.weight if member.weight else None)
            x, _ = samplers.draw(restored.experiment.model, restored.params,
                                 restored.experiment.process, law, sampling,
                                 restored.example_shape, settings.n, key)
            row = score(name, x)
            rows.append({"config": name, "head": head, "law": str(law), "K": num_steps,
                         "member": str(member), "eta": member.resolved_eta(num_steps),
                         "w": member.weight, "train_steps": restored.step, **row,
                         "seconds": time.perf_counter() - start})
            log(f"{name:>12s} head={head!s:5s} K={num_steps:<5d} {str(member):>10s}  "
                + _cell(row) + f"  ({rows[-1]['seconds']:.0f} s)")
    paths.write(unit_json, json.dumps({"settings": wanted, "rows": rows,
                                       "machine": provenance.describe()}, indent=2))
    return rows


def _cell(row: dict) -> str:
    if "fd" in row:
        return f"FD {row['fd']:.2f}, spread {row['spread_error']:+.1%}"
    return f"width {row['blob_width']:.4f} ({row['width_error']:+.1%})  ED {row['energy_distance']:+.1e}"


class _Scores:
    """Scores samples of a config: blob width and energy distance for the toys (gmm8), and
    :class:`_DigitsScore` for the digits (its classifier fitted on first use)."""

    def __init__(self, settings: Settings, key_data):
        self._gmm = oracles.gmm8()
        self._data_NxD = np.asarray(oracles.sample_gmm(key_data, self._gmm, settings.ed_n))
        self._ed_n = settings.ed_n
        self._digits = None

    def __call__(self, name: str, x) -> dict:
        if name in TOYS:
            return _measure(np.asarray(x), self._gmm, self._data_NxD, self._ed_n)
        if self._digits is None:
            self._digits = _DigitsScore()
        return self._digits(x)


def run_learned(root: str, settings: Settings, learned: Learned = Learned(), *,
                train_missing: bool = True, overrides: dict | None = None, log=print) -> dict:
    """Trains (where ``root`` has no checkpoint) and samples the networks of
    ``learned.configs`` without and with the learned-variance head; returns the JSON-ready
    result.

    Each network is a unit, workdir ``ROOT/<config>[_head]``: its rows are saved in the
    workdir and reused by a later run with the same settings (an interrupted run resumes;
    two processes with different ``--configs`` fill one root in parallel). A config of
    :data:`SHARED` copies the other config's checkpoint. Every member of a (config, K)
    samples from the same key. ``overrides``: {"section.field": value} applied to every
    config (a smoke run's sizes).
    """
    overrides = dict(overrides or {})
    key_walks, key_data = jax.random.split(jax.random.key(settings.seed))
    score = _Scores(settings, key_data)
    rows = []
    for name in learned.configs:
        for head, members in ((False, learned.members), (True, learned.head_members)):
            if members:
                rows += _learned_unit(root, name, head, settings, members, key_walks, score,
                                      train_missing=train_missing, overrides=overrides, log=log)
    digits = [name for name in learned.configs if name in DIGITS]
    result = {"experiment": "variance family on learned networks (docs/math.md §3, §5)",
              "configs": list(learned.configs), "n": settings.n, "ed_n": settings.ed_n,
              "seed": settings.seed, "steps": list(settings.steps), "rows": rows,
              "jax": jax.__version__}
    if len(digits) < len(learned.configs):
        result.update(data="gmm8", data_blob_width=DATA_WIDTH)
    if digits:
        result["digits_reference"] = "the 359 test digits (digit_features.held_out_digits)"
    return result


def _members_or_none(text: str) -> tuple[Member, ...]:
    return parse_members(text) if text.strip() else ()


def results_section(result: dict) -> str:
    """The results page's section: a heading, the command, the machine and the table."""
    return "\n".join([
        "## The reverse-variance family on learned networks (docs/math.md §3.4, §5.6)", "",
        f"Made by `{result['command']}` in {result['wall_seconds'] / 60:.0f} min on "
        f"{provenance.machine_line(result['machine'])}.",
        "Samples of the run's law (`sampling.law`), the same key for every member of a "
        "(config, K); `rule` is the default η of K (`walks.default_eta`); w > 0 takes "
        "Var[x_0 | x_t] from the network's learned-variance head (`model.learned_variance`). "
        "digits_uniform (uniform/gaussian) samples the digits_gaussian networks with uniform "
        "steps (the two train alike).",
        "", learned_markdown(result)])


def learned_markdown(result: dict) -> str:
    """One row per (config, head, member) and a column per K: width error / energy distance
    (toys), FD / spread error (digits)."""
    out = []
    for names, what in ((TOYS, "toys"), (DIGITS, "digits")):
        rows = [r for r in result["rows"] if r["config"] in names]
        if not rows:
            continue
        if what == "toys":
            out += [f"Learned toy networks (gmm8, blob width of the data "
                    f"{result['data_blob_width']:.3f}, n = {result['n']}; energy distance on "
                    f"{result['ed_n']} points): width error / energy distance at each K."]
            cell = lambda r: f"{r['width_error']:+.1%} / {r['energy_distance']:.1e}"  # noqa: E731
        else:
            out += [f"Digits networks (n = {result['n']} samples per cell against the 359 test "
                    "digits; FD in the digits classifier's features; spread: the samples' total "
                    "per-pixel variance over the test digits', minus 1): FD / spread error at each K."]
            cell = lambda r: f"{r['fd']:.2f} / {r['spread_error']:+.1%}"  # noqa: E731
        head = ["config", "head", "member"] + [f"K={k}" for k in result["steps"]]
        table = []
        for config, has_head, member in dict.fromkeys((r["config"], r["head"], r["member"])
                                                      for r in rows):
            cells = []
            for k in result["steps"]:
                match = [r for r in rows if (r["config"], r["head"], r["member"], r["K"])
                         == (config, has_head, member, k)]
                cells.append(cell(match[0]) if match else "")
            table.append([config, "yes" if has_head else "no", member] + cells)
        out += [""] + common.markdown_table(head, table) + [""]
    return "\n".join(out).rstrip("\n")


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
                        help="measure the networks of --configs trained under ROOT (trained if "
                             "missing) instead of the exact score")
    parser.add_argument("--configs", default="toys",
                        help="with --learned: 'toys', 'digits' or comma-separated config names")
    parser.add_argument("--no-head-members", default="eta=1,rule",
                        help="with --learned: the members sampled on networks without the head")
    parser.add_argument("--head-members", default="eta=1,rule,w=1,w=0.5",
                        help="with --learned: the members sampled on networks with the head "
                             "(empty: train and sample no head)")
    parser.add_argument("--no-train", action="store_true",
                        help="with --learned: refuse to train a missing network")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="with --learned: a config override for every network (smoke runs)")
    parser.add_argument("--results", metavar="PAGE",
                        help="with --learned: also put the table into this Markdown page's "
                             "'variance-learned' section (docs/results.md)")
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
        learned = Learned(configs=parse_configs(args.configs),
                          members=_members_or_none(args.no_head_members),
                          head_members=_members_or_none(args.head_members))
        result = run_learned(args.learned, settings, learned, train_missing=not args.no_train,
                             overrides=overrides)
        name = "variance_digits" if set(learned.configs) <= set(DIGITS) else "variance_learned"
        result = common.write(args.out, name, result, markdown=learned_markdown(result),
                              start=start, argv=argv, module="variance")
        if args.results:
            common.put_section(args.results, "variance-learned", results_section(result))
            print(f"updated the 'variance-learned' section of {args.results}", flush=True)
        return result
    elif args.results:
        raise ValueError("--results goes with --learned")
    result = run(settings)
    return common.write(args.out, "variance", result, markdown=markdown_table(result),
                        figures={"variance_widths.png": lambda path: plot_widths(result, path)},
                        start=start, argv=argv)


if __name__ == "__main__":
    common.cli(main)
