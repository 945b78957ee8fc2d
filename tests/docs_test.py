"""Docs that stay true: the README's commands, WORKSPACE.md's names, docs/math.md's sections.

``.ci/run`` runs this file first, so a drifted document fails CI before the long tiers.

- README "Two commands": exactly two fenced commands; every file, module and config they
  name exists, the test command is what CI runs, and (slow tier) the main job of the first
  command runs as written, shortened by overrides.
- WORKSPACE.md and docs/math.md: every ``nnd.…`` name in backticks resolves to a module,
  function, class or attribute.
- Every "docs/math.md §N" (or §N.M) reference in nnd/, configs/, launch/ and tests/ names a
  heading of docs/math.md.
- README at most 250 lines; no reference leaves the repository (no ../shared).
"""

import importlib
import importlib.util
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
MATH = ROOT / "docs" / "math.md"


def _section(text: str, heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README has no section '## {heading}'"
    return match.group(1)


def _commands() -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", _section(README, "Two commands"), re.S)


def test_readme_has_two_commands():
    assert len(_commands()) == 2, _commands()


def test_readme_commands_name_what_exists():
    setup, tests = _commands()
    for part in setup.split("&&"):
        words = shlex.split(part)
        for i, word in enumerate(words):
            if word == "-r":
                assert (ROOT / words[i + 1]).is_file(), f"README installs from missing {words[i + 1]}"
            if word == "-m" and words[i + 1] not in ("venv", "pip", "pytest"):
                assert importlib.util.find_spec(words[i + 1]), f"README runs missing module {words[i + 1]}"
            if word.startswith("--config="):
                assert (ROOT / word.split("=", 1)[1]).is_file(), f"README names missing {word}"
    assert tests.strip() == ".venv/bin/python -m pytest -q"
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'python -m pytest -q -m "slow or not slow"' in ci, "CI must run the README's command, every tier"


@pytest.mark.slow
def test_readme_main_job_runs(tmp_path):
    # The first command after the install, as written, with a shorter run appended; run in a
    # copy of the workdir argument so the checkout is left clean.
    setup = _commands()[0]
    jobs = [part.strip() for part in setup.split("&&") if " -m nnd.main " in part]
    assert len(jobs) == 2, jobs
    for job in jobs:
        words = shlex.split(job)
        words = [sys.executable if w.endswith("/python") else w for w in words]
        words = [f"--workdir={tmp_path / 'run'}" if w.startswith("--workdir=") else w for w in words]
        words += ["--config.train.num_steps=4", "--config.train.sample_every=0",
                  "--config.train.log_every=2", "--config.sampling.num_samples=16",
                  "--config.sampling.num_steps=5", "--config.sampling.batch_size=16"]
        result = subprocess.run(words, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "samples.npz").is_file()


def _resolve(dotted: str):
    """The object named by ``nnd.a.b.C.d``: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def _named(text: str) -> list[str]:
    """``nnd.…`` names opening a backtick span; a pattern such as ``nnd.losses.kl_<q>_<p>`` is
    not a name."""
    found = re.findall(r"`(nnd(?:\.[A-Za-z_][A-Za-z0-9_]*)+)(.?)", text)
    return sorted({name for name, after in found if after != "<"})


@pytest.mark.parametrize("doc", ["WORKSPACE.md", "docs/math.md"])
def test_every_name_in_the_doc_exists(doc):
    names = _named((ROOT / doc).read_text())
    assert len(names) >= 10, f"{doc}: expected nnd.… names in backticks, found {names}"
    missing = []
    for name in names:
        try:
            _resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert not missing, f"{doc} names what does not exist: {missing}"


def test_the_name_check_can_fail():
    with pytest.raises(AttributeError):
        _resolve("nnd.walks.reverse_step_that_is_not_there")


def _math_sections() -> set[str]:
    return set(re.findall(r"^#{2,3} §(\d+(?:\.\d+)*)[ \n]", MATH.read_text(), re.M))


def test_math_has_the_eight_sections():
    assert {str(i) for i in range(1, 9)} <= _math_sections()


def _references() -> list[tuple[str, str]]:
    found = []
    for folder in ("nnd", "configs", "launch", "tests"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix not in (".py", ".sh", ".md") or "__pycache__" in path.parts:
                continue
            for ref in re.findall(r"docs/math\.md §(\d+(?:\.\d+)*)", path.read_text()):
                found.append((str(path.relative_to(ROOT)), ref))
    return found


def test_every_math_reference_names_a_section():
    refs = _references()
    assert len(refs) >= 20, refs  # the docstrings do cite it
    sections = _math_sections()
    dangling = sorted({(path, ref) for path, ref in refs if ref.rstrip(".") not in sections})
    assert not dangling, f"references to sections docs/math.md does not have: {dangling}"


def test_no_reference_leaves_the_repository():
    for folder in ("nnd", "configs", "launch", "tests", "docs"):
        for path in sorted((ROOT / folder).rglob("*")):
            if (path.suffix in (".py", ".sh", ".md") and "__pycache__" not in path.parts
                    and path != pathlib.Path(__file__).resolve()):
                text = path.read_text()
                assert "../shared" not in text and "SPEC.md" not in text, path
    for doc in ("README.md", "WORKSPACE.md"):
        text = (ROOT / doc).read_text()
        assert "../shared" not in text and "SPEC.md" not in text, doc


def test_readme_is_a_front_page():
    lines = README.count("\n")
    assert lines <= 250, f"README.md has {lines} lines (at most 250)"
