"""What the experiments share: command-line lists, Markdown tables, figures and outputs.

An experiment is a ``Settings`` dataclass (its flags, checked), a ``run`` that returns a
JSON-ready result, a Markdown table and figures of that result. :func:`write` puts
them in the output folder the same way for all: ``NAME.json`` (with the machine's
description, :func:`nnd.provenance.describe`, the wall time and the command line),
``NAME.md`` and the figures, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from typing import Callable, Iterable, Sequence

from nnd import increments, losses, paths, pictures, processes, provenance
from nnd.increments import Law
from nnd.pictures import pyplot

__all__ = ["parse_list", "parse_laws", "parse_pair", "parse_pairs", "parse_steps", "pair_label",
           "law_spec", "check_int", "latest_step", "markdown_table", "pyplot", "style_axes",
           "save_figure", "parser", "add_process_and_seed", "write", "cli"]


# -- command-line values --------------------------------------------------------------


def parse_list(text: str | Sequence, parse_item: Callable, what: str, *,
               label: Callable = str) -> tuple:
    """Comma-separated items (or a sequence of them), each through ``parse_item``.

    Raises:
      ValueError: no items, an item ``parse_item`` refuses, or two items with the
        same ``label``.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    values = tuple(parse_item(item.strip() if isinstance(item, str) else item) for item in items)
    if not values:
        raise ValueError(f"no {what} given")
    labels = [label(v) for v in values]
    if len(set(labels)) != len(labels):
        raise ValueError(f"duplicate {what} in {labels}")
    return values


def parse_laws(text: str | Sequence) -> tuple[Law, ...]:
    """Law specs such as ``'gaussian,student_t:5'`` (see :func:`nnd.increments.parse`)."""
    return parse_list(text, increments.parse, "increment laws")


def parse_pair(spec: str) -> tuple[Law, Law]:
    """``'q/p'`` (each a law spec) → (q, p); a pair whose KL is infinite raises ValueError."""
    if not isinstance(spec, str) or spec.count("/") != 1:
        raise ValueError(f"a loss pair is 'q/p', e.g. 'laplace/laplace', got {spec!r}")
    return losses.check_pair(*spec.split("/"))


def pair_label(q: Law, p: Law) -> str:
    return f"{q}/{p}"


def parse_pairs(text: str | Sequence) -> tuple[tuple[Law, Law], ...]:
    """Loss pairs such as ``'gaussian/gaussian,student_t:5/laplace'``."""
    return parse_list(text, parse_pair, "loss pairs", label=lambda pair: pair_label(*pair))


def _step_count(item) -> int:
    try:
        k = int(str(item))
    except ValueError:
        raise ValueError(f"step counts must be integers, got {item!r}") from None
    return processes.check_num_steps(k)


def parse_steps(text: str | Sequence) -> tuple[int, ...]:
    """Step counts K ≥ 1 such as ``'10,100'``, sorted."""
    return tuple(sorted(parse_list(text, _step_count, "step counts")))


def law_spec(law: Law) -> str:
    """The spec :func:`nnd.increments.parse` reads back as ``law`` (a config's law field)."""
    return ":".join([law.name] + [repr(float(v)) for v in law.params().values()])


def check_int(name: str, value, low: int) -> None:
    """Raises ValueError unless ``value`` is an integer ≥ ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def latest_step(workdir: str) -> int | None:
    """The newest checkpoint step in ``WORKDIR/checkpoints`` (local or gs://), or None."""
    ckpt = paths.get(workdir) / "checkpoints"
    steps = [int(d.name) for d in ckpt.iterdir() if d.name.isdigit()] if ckpt.is_dir() else []
    return max(steps, default=None)


# -- tables and figures ---------------------------------------------------------------


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def style_axes(ax, *, title: str, xlabel: str | None = None, ylabel: str | None = None,
               logx: bool = False, logy: bool = False, legend: str = "upper right",
               fontsize: int = 7) -> None:
    """Title, labels, log scales, a light grid and a small legend."""
    ax.set_title(title, fontsize=10)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=fontsize, loc=legend)


def save_figure(fig, path: str, title: str) -> None:
    """Gives ``fig`` its title, lays it out, saves it to ``path`` and closes it."""
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    pictures.save(fig, path)


# -- sections of a page that other commands make ------------------------------------


def _markers(name: str) -> tuple[str, str]:
    return (f"<!-- begin {name}: made by its own command; kept when the page is remade -->",
            f"<!-- end {name} -->")


def put_section(page: str, name: str, text: str) -> None:
    """Puts ``text`` into the section ``name`` of the Markdown file ``page`` (local or gs://):
    between its markers if it has them, else appended (the page is created if missing)."""
    begin, end = _markers(name)
    path = paths.get(page)
    old = path.read_text() if path.exists() else ""
    block = f"{begin}\n{text.strip()}\n{end}\n"
    if begin in old and end in old:
        new = old[:old.index(begin)] + block + old[old.index(end) + len(end):].lstrip("\n")
    else:
        new = old.rstrip("\n") + ("\n\n" if old.strip() else "") + block
    paths.write(path, new)


def kept_sections(page: str) -> str:
    """The marked sections of ``page`` (:func:`put_section`), for a command that remakes the
    rest of it; "" if there are none or no page."""
    path = paths.get(page)
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(r"^<!-- begin ([^:]+): made by its own command; kept when the page is "
                         r"remade -->$.*?^<!-- end \1 -->$", re.S | re.M)
    return "".join(match.group(0) + "\n" for match in pattern.finditer(text))


# -- entry points ---------------------------------------------------------------------


def parser(name: str, description: str, *, out: str | None = None) -> argparse.ArgumentParser:
    """``python -m nnd.experiments.NAME`` with ``--out`` (the output folder; required without a default)."""
    parser_ = argparse.ArgumentParser(prog=f"python -m nnd.experiments.{name}",
                                      description=description)
    parser_.add_argument("--out", required=out is None, default=out,
                         help="output folder (created if missing)")
    return parser_


def add_process_and_seed(parser_: argparse.ArgumentParser) -> None:
    """``--process`` (a name of :data:`nnd.processes.PROCESSES`) and ``--seed`` (the root key)."""
    parser_.add_argument("--process", default="vp", choices=sorted(processes.PROCESSES))
    parser_.add_argument("--seed", type=int, default=0)


def write(out: str, name: str, result: dict, *, markdown: str,
          figures: dict[str, Callable[[str], None]] | None = None,
          start: float | None = None, argv: Sequence[str] | None = None,
          module: str | None = None) -> dict:
    """Writes ``OUT/NAME.json``, ``OUT/NAME.md``, then ``figures`` ({file name: draw(path)}).

    ``OUT`` may be local or gs:// (:mod:`nnd.paths`).

    Adds to ``result`` the machine (:func:`nnd.provenance.describe`), the wall
    time since ``start`` (``time.perf_counter()``) and the command line's arguments
    ``argv`` as ``python -m nnd.experiments.MODULE ...`` (MODULE: ``module``, default NAME;
    each left out when None). Prints the table and the files written;
    returns ``result``.
    """
    figures = figures or {}
    result["machine"] = provenance.describe()
    if start is not None:
        result["wall_seconds"] = time.perf_counter() - start
    if argv is not None:
        result["command"] = f"python -m nnd.experiments.{module or name} " + " ".join(argv)
    root = paths.get(out)
    paths.write(root / f"{name}.json", json.dumps(result, indent=2))
    paths.write(root / f"{name}.md", markdown + "\n")
    for filename, draw in figures.items():
        draw(str(root / filename))
    wall = f"wall time {result['wall_seconds']:.1f}s; " if start is not None else ""
    print(f"\n{markdown}\n\n{wall}wrote {out}/: " + ", ".join([f"{name}.json", f"{name}.md", *figures]),
          flush=True)
    return result


def cli(main: Callable[[Sequence[str]], object]) -> None:
    """Runs ``main(sys.argv[1:])`` with progress logged; a ValueError exits with its message."""
    # absl (imported by jax) installs a root handler that hides INFO: replace it.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    for name in ("jax", "absl"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        main(sys.argv[1:])
    except ValueError as err:
        sys.exit(f"error: {err}")
