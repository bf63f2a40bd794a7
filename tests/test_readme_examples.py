"""Every code example in README.md and on the documentation site runs as written.

The sources are README.md and every page of the site, ``docs/**/*.md`` (``docs/results.md``
included), so a changed API breaks a test, not a reader.

* Every fenced block must name its language: ``python``, ``bash`` or ``text`` (``text`` is for
  what is not meant to run: signatures, output). A block the test must leave alone despite
  its language is preceded by the line ``<!-- test: skip -->`` (no page has one).
* Every ``python`` block is executed on its own, in a fresh namespace (so each one can be
  pasted alone; none builds on another), from a temporary working folder, with the global
  torch random state and the solver registry restored afterwards. Warnings are errors, as
  everywhere in the suite.
* Every ``deqkit ...`` command in a ``bash`` block (also ``.venv/bin/deqkit ...``,
  ``-m deqkit.cli ...`` and ``-m deqkit.train ...`` under ``torchrun``/``python``) is parsed
  by the real command-line parser, without running it, so a renamed or removed flag fails
  here. A ``deqkit train`` command is also turned into its ``TrainConfig`` (validating the
  values) where the files it names exist; ``--resume`` commands, whose run folders are
  local, are only parsed.
"""

from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from deqkit.cli import build_parser
from deqkit.solvers import _loop as solver_loop
from deqkit.train.__main__ import build_parser as build_train_parser
from deqkit.train.__main__ import config_from_args

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").rglob("*.md"))
LANGUAGES = {"python", "bash", "text"}
SKIP = "<!-- test: skip -->"
FENCE = re.compile(r"^```(.*)$")


@dataclass(frozen=True)
class Block:
    language: str
    line: int  # 1-based line of the opening fence
    code: str
    skipped: bool
    source: str = "README.md"  # path relative to the repository root

    def __str__(self) -> str:
        return f"{self.source}:{self.line}"


def readme_blocks(text: str, source: str = "README.md") -> list[Block]:
    """The fenced code blocks of ``text`` (the Markdown file ``source``), in order."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"{source}:{start + 1}: unclosed code fence")
        before = [ln.strip() for ln in lines[:start] if ln.strip()]
        skipped = bool(before) and before[-1] == SKIP
        language = opening.group(1).strip()
        blocks.append(Block(language, start + 1, "\n".join(body) + "\n", skipped, source))
        i += 1
    return blocks


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


SOURCES = {_relative(p): p.read_text(encoding="utf-8") for p in [README, *PAGES]}
BLOCKS = [b for source, text in SOURCES.items() for b in readme_blocks(text, source)]
PYTHON = [b for b in BLOCKS if b.language == "python" and not b.skipped]


def deqkit_commands(block: Block) -> list[tuple[str, list[str]]]:
    """``(where, argv)`` of every deqkit invocation in a bash block (``argv`` after ``deqkit``).

    ``where`` is ``SOURCE:LINE: the command``; backslash continuations are joined.
    """
    out, pending, first = [], "", 0
    for offset, physical in enumerate(block.code.splitlines(), start=1):
        if not pending:
            first = block.line + offset
        if physical.endswith("\\"):
            pending += physical[:-1] + " "
            continue
        line, pending = pending + physical, ""
        tokens = shlex.split(line, comments=True)
        argv = None
        if tokens and tokens[0].rsplit("/", 1)[-1] == "deqkit":  # deqkit, .venv/bin/deqkit
            argv = tokens[1:]
        for i in range(len(tokens) - 1):
            if tokens[i] == "-m" and tokens[i + 1] == "deqkit.cli":
                argv = tokens[i + 2 :]
            elif tokens[i] == "-m" and tokens[i + 1] == "deqkit.train":
                argv = ["train", *tokens[i + 2 :]]
        if argv is not None:
            out.append((f"{block.source}:{first}: deqkit {shlex.join(argv)}", argv))
    return out


COMMANDS = [
    cmd for b in BLOCKS if b.language == "bash" and not b.skipped for cmd in deqkit_commands(b)
]


def test_every_block_names_a_known_language():
    assert {b.source for b in BLOCKS} >= {"README.md", "docs/getting-started.md"}
    bad = [f"{b}: {b.language or '(none)'}" for b in BLOCKS if b.language not in LANGUAGES]
    assert not bad, f"code blocks need one of {sorted(LANGUAGES)} as their language: {bad}"


def test_the_examples_are_found():
    readme = [b for b in PYTHON if b.source == "README.md"]
    assert len(readme) >= 1  # the README's DEQ example
    assert len(PYTHON) >= 10  # getting started, solving, gradients, analysis, ...
    pages = {b.source for b in PYTHON}
    for page in ("getting-started", "solving", "gradients", "analysis", "tasks-and-models"):
        assert f"docs/{page}.md" in pages, f"docs/{page}.md has no python example"
    assert {argv[0] for _, argv in COMMANDS} >= {"train", "eval", "sweep", "examine", "demo"}


def test_block_extraction():
    text = "a\n```python\nx = 1\n```\n<!-- test: skip -->\n\n```bash\nrm -rf /\n```\n"
    first, second = readme_blocks(text)
    assert first == Block("python", 2, "x = 1\n", skipped=False)
    assert (second.language, second.skipped) == ("bash", True)
    assert str(readme_blocks(text, "docs/x.md")[0]) == "docs/x.md:2"
    code = "make demo\ndeqkit eval x.pt \\\n  --n 3  # note\npython -m deqkit.train --lr 1\n"
    first, second = deqkit_commands(Block("bash", 10, code, False))
    assert first == ("README.md:12: deqkit eval x.pt --n 3", ["eval", "x.pt", "--n", "3"])
    assert second[1] == ["train", "--lr", "1"] and second[0].startswith("README.md:14:")
    (venv,) = deqkit_commands(Block("bash", 1, ".venv/bin/deqkit demo\n", False, "docs/x.md"))
    assert venv == ("docs/x.md:2: deqkit demo", ["demo"])


@pytest.fixture
def solver_registry():
    """An example may register a solver (docs/solving.md does); the registry is global."""
    saved = dict(solver_loop._REGISTRY)
    yield
    solver_loop._REGISTRY.clear()
    solver_loop._REGISTRY.update(saved)


@pytest.mark.parametrize("block", PYTHON, ids=str)
def test_python_block_runs(block, tmp_path, monkeypatch, capsys, solver_registry):
    monkeypatch.chdir(tmp_path)
    code = compile(block.code, str(block), "exec", dont_inherit=True)  # not our __future__
    start = time.perf_counter()
    with torch.random.fork_rng():
        exec(code, {"__name__": "__readme__"})
    seconds = time.perf_counter() - start
    assert seconds < 60, f"{block} took {seconds:.1f} s; examples should take seconds"


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[where for where, _ in COMMANDS])
def test_bash_command_parses(where, argv, monkeypatch):
    monkeypatch.chdir(ROOT)  # the pages' paths are relative to the repository root
    try:
        args = build_parser().parse_args(argv)
        if args.command == "train":
            train_args = build_train_parser("deqkit train").parse_args(args.rest)
    except SystemExit as exc:
        if exc.code != 0:  # 0: a --help line
            pytest.fail(f"{where}: the command does not parse")
        return
    if args.command == "train" and train_args.resume is None:
        try:
            config_from_args(train_args)  # validates the values, writes nothing
        except FileNotFoundError:
            pass  # a placeholder config file (cfg.toml): the flags parsed, that is the check
