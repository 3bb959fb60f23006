"""Every command the docs tell a reader to type exists: README.md and docs/*.md cannot drift from the code.

The fenced code blocks of the docs are scanned for command lines that run ``make TARGET ...`` or a
Python module (``python -m MOD``, ``.venv/bin/python -m MOD``, launchers such as ``srun``,
``accelerate launch`` and ``torchrun`` with ``-m MOD``; ``VAR=value`` prefixes allowed; ``\\``
continuation lines joined). For a module the line's ``--flags`` must all appear in ``MOD --help``
(``MOD SUB --help`` for a LightningCLI subcommand such as ``python -m train fit``), run with this
interpreter; every ``--config FILE`` must exist. For make, each target must be a rule of the Makefile,
each ``VAR=`` a variable the Makefile mentions, and flags passed through ``*_ARGS`` variables must
parse for the module that variable feeds. A fence whose info string contains ``skip-check`` is not
scanned (documented in docs/scaling.md; for scheduler lines the scanner cannot parse).
"""
from __future__ import annotations

import fnmatch
import functools
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SKIP_MARK = "skip-check"
LAUNCHERS = {"srun", "accelerate", "torchrun"}  # wrappers whose own options precede `-m MOD`
MAKE_OPTS_WITH_ARG = {"-o", "-j", "-C", "-f", "-W", "-l"}
FENCE = re.compile(r"^\s*(`{3,}|~{3,})(.*)$")
ENV_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class DocCommand:
    """One command line of a fenced block: where it is and its shell words (comments dropped)."""

    source: str
    line: int
    words: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def fenced_commands(text: str, source: str) -> list[DocCommand]:
    """Command lines (``make`` or a Python module) inside the fenced blocks of one Markdown text."""
    out: list[DocCommand] = []
    fence: str | None = None
    skip = False
    pending: list[str] = []
    start = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        m = FENCE.match(raw)
        if fence is None:
            if m:
                fence, skip = m.group(1), SKIP_MARK in m.group(2)
            continue
        if m and m.group(1).startswith(fence[0]) and len(m.group(1)) >= len(fence) and not m.group(2).strip():
            fence, pending = None, []
            continue
        if skip:
            continue
        if not pending:
            start = lineno
        line = raw.rstrip()
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        pending.append(line)
        joined, pending = " ".join(pending), []
        try:
            words = tuple(shlex.split(joined, comments=True))
        except ValueError:  # not shell (e.g. a tree drawing with an apostrophe)
            continue
        if command_kind(words) is not None:
            out.append(DocCommand(source, start, words))
    return out


def _strip_env(words: tuple[str, ...]) -> tuple[str, ...]:
    i = 0
    while i < len(words) and ENV_ASSIGN.match(words[i]):
        i += 1
    return words[i:]


def _is_python(word: str) -> bool:
    return re.fullmatch(r"(.*/)?python(3(\.\d+)?)?", word) is not None


def command_kind(words: tuple[str, ...]) -> str | None:
    """``"make"``, ``"python"`` (a ``-m`` module run) or None for any other line."""
    w = _strip_env(words)
    if not w:
        return None
    if w[0] == "make":
        return "make"
    if (_is_python(w[0]) and len(w) > 2 and w[1] == "-m") or (w[0] in LAUNCHERS and "-m" in w):
        return "python"
    return None


def module_call(words: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """(module, its arguments) of a python/launcher line."""
    w = _strip_env(words)
    i = w.index("-m")
    return w[i + 1], tuple(w[i + 2:])


def flags_of(args: tuple[str, ...]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("--") and len(a) > 2]


def subcommand_of(module: str, args: tuple[str, ...]) -> tuple[str, ...]:
    """LightningCLI modules take a subcommand first (``python -m train fit``)."""
    if module == "train" and args and not args[0].startswith("-"):
        return (args[0],)
    return ()


@functools.lru_cache(maxsize=None)
def module_help(module: str, sub: tuple[str, ...] = ()) -> str:
    """``python -m module [sub] --help`` with this interpreter, from the repo root (cached per run)."""
    proc = subprocess.run([sys.executable, "-m", module, *sub, "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise LookupError(f"`python -m {' '.join((module, *sub))} --help` exited {proc.returncode}: {' | '.join(tail)}")
    return proc.stdout + proc.stderr


def flag_in_help(flag: str, help_text: str) -> bool:
    return re.search(rf"(?<![\w.-]){re.escape(flag)}(?![\w.-])", help_text) is not None


def check_module(module: str, args: tuple[str, ...]) -> list[str]:
    """Problems of one module call: help that does not run, flags it does not list, missing configs."""
    sub = subcommand_of(module, args)
    try:
        text = module_help(module, sub)
    except LookupError as e:
        return [str(e)]
    call = " ".join(("python -m", module, *sub))
    problems = [f"`{call}` has no flag {f}" for f in flags_of(args) if not flag_in_help(f, text)]
    for i, a in enumerate(args[:-1]):
        if a == "--config" and not (REPO / args[i + 1]).is_file():
            problems.append(f"`{call}`: config file {args[i + 1]} does not exist")
    return problems


@dataclass(frozen=True)
class Makefile:
    """What the docs may refer to: rule targets (patterns allowed), variables, and which module each
    ``*_ARGS``-style variable is passed to."""

    targets: frozenset[str]
    variables: frozenset[str]
    passes_to: dict[str, tuple[str, tuple[str, ...]]]

    def has_target(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, t.replace("%", "*")) for t in self.targets)


def parse_makefile(text: str) -> Makefile:
    lines = text.replace("\\\n", " ").splitlines()
    targets: set[str] = set()
    variables: set[str] = set()
    passes: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line in lines:
        if not line.startswith(("\t", "#")):
            rule = re.match(r"^([^\s:=#][^:=]*?)\s*:(?![:=])", line)
            if rule and not rule.group(1).startswith("."):
                targets.update(rule.group(1).split())
            assign = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*[:?+]?=", line)
            if assign:
                variables.add(assign.group(1))
        used = set(re.findall(r"\$[({]([A-Za-z_][A-Za-z0-9_]*)[)}]", line))
        variables |= used
        call = re.search(r"-m\s+([\w.]+)((?:\s+[a-z]+)?)", line)
        if call:
            module, sub = call.group(1), tuple(call.group(2).split())
            sub = sub if module == "train" else ()
            for var in used:
                passes.setdefault(var, (module, sub))
    # a variable that names a command (FEATURES_CMD = ... -m MOD ... $(FEATURE_ARGS)) passes its
    # own *_ARGS through; keep only the *_ARGS ones, the others are paths and sizes
    passes = {v: m for v, m in passes.items() if v.endswith("_ARGS")}
    return Makefile(frozenset(targets), frozenset(variables), passes)


@functools.lru_cache(maxsize=None)
def repo_makefile() -> Makefile:
    return parse_makefile((REPO / "Makefile").read_text())


def check_make(words: tuple[str, ...], makefile: Makefile) -> list[str]:
    w = _strip_env(words)[1:]
    problems: list[str] = []
    targets: list[str] = []
    i = 0
    while i < len(w):
        a = w[i]
        if a.startswith("-"):
            i += 2 if a in MAKE_OPTS_WITH_ARG else 1
            continue
        if "=" in a:
            var, value = a.split("=", 1)
            if var not in makefile.variables:
                problems.append(f"`make`: the Makefile has no variable {var}")
            elif var in makefile.passes_to:
                module, sub = makefile.passes_to[var]
                problems += [f"{var}: {p}" for p in check_module(module, (*sub, *shlex.split(value)))]
            elif var == "CONFIGS":
                problems += [f"CONFIGS: config file {c} does not exist" for c in value.split()
                             if not (REPO / c).is_file()]
        else:
            targets.append(a)
        i += 1
    problems += [f"`make`: the Makefile has no target {t}" for t in targets if not makefile.has_target(t)]
    return problems


def check_command(cmd: DocCommand, makefile: Makefile | None = None) -> list[str]:
    if command_kind(cmd.words) == "make":
        return check_make(cmd.words, makefile or repo_makefile())
    return check_module(*module_call(cmd.words))


def doc_commands() -> list[DocCommand]:
    return [c for p in DOC_FILES for c in fenced_commands(p.read_text(), str(p.relative_to(REPO)))]


DOC_COMMANDS = doc_commands()


def help_keys(cmds: list[DocCommand], makefile: Makefile) -> set[tuple[str, tuple[str, ...]]]:
    """Every (module, subcommand) whose --help the commands need, pass-through variables included."""
    keys = set()
    for c in cmds:
        if command_kind(c.words) == "python":
            module, args = module_call(c.words)
            keys.add((module, subcommand_of(module, args)))
        else:
            keys |= {makefile.passes_to[a.split("=", 1)[0]] for a in c.words if a.split("=", 1)[0] in makefile.passes_to}
    return keys


@pytest.fixture(scope="module")
def prefetched_help():
    """Run the --help calls side by side once (each imports torch; one after another took minutes on a
    loaded 2-core machine); the checks then read the cache."""
    def fetch(key):
        try:
            module_help(*key)
        except LookupError:
            pass  # reported by the test of the command that uses it

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(fetch, help_keys(DOC_COMMANDS, repo_makefile())))


def test_docs_have_commands_to_check():
    """The scan finds the README's two commands and the walkthrough (guards against a scanner that finds nothing)."""
    found = {" ".join(c.words) for c in DOC_COMMANDS if c.source == "README.md"}
    assert {"make demo", "make test"} <= found
    assert any(c.words[0].endswith("python") and "pipeline.avsbench" in c.words for c in DOC_COMMANDS)
    assert len(DOC_COMMANDS) >= 20


@pytest.mark.parametrize("cmd", DOC_COMMANDS, ids=[c.where for c in DOC_COMMANDS])
def test_doc_command_exists(cmd: DocCommand, prefetched_help):
    problems = check_command(cmd)
    assert not problems, f"{cmd.where}: {' '.join(cmd.words)}\n  " + "\n  ".join(problems)


# --- the checker itself, on made-up docs ----------------------------------------------------------

FAKE_DOC = """\
Intro with an inline `make nothing` that is not in a fence.

```bash
make demo CLIPS=400                       # fine
make demo NO_SUCH_VAR=1
make no-such-target
make -o .venv/.installed demo-model-teso
make features FEATURE_ARGS="--levels s8 --no-such-flag 3"
FOO=1 .venv/bin/python -m pipeline.synthavs --clips 10 \\
    --no-such-flag 3
PYTHONPATH=. python -m pipeline.synthavs --clips=10 --seed 1
python -m no_such_module --x
python -m train fit --config configs/trainer/cpu.yaml --no_such_key 1
python -m train fit --config configs/trainer/none.yaml
accelerate launch --num_processes 2 -m pipeline.synthavs --clips 4
echo "not a command to check"
```

```bash skip-check
python -m pipeline.synthavs --invented
```

```python
from pipeline.runner import latest
```
"""


def test_scanner_finds_fenced_commands_only():
    cmds = fenced_commands(FAKE_DOC, "fake.md")
    lines = [c.line for c in cmds]
    assert lines == [4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15]  # no inline, no echo, no skip-check, no python code
    assert cmds[5].words[-2:] == ("--no-such-flag", "3")  # continuation joined
    assert cmds[0].words == ("make", "demo", "CLIPS=400")  # comment dropped


def test_checker_rejects_made_up_flags_targets_and_variables(prefetched_help):
    makefile = repo_makefile()
    problems = {c.line: check_command(c, makefile) for c in fenced_commands(FAKE_DOC, "fake.md")}
    assert problems[4] == []
    assert problems[5] == ["`make`: the Makefile has no variable NO_SUCH_VAR"]
    assert problems[6] == ["`make`: the Makefile has no target no-such-target"]
    assert problems[7] == []  # pattern rule demo-model-%, option with an argument skipped
    assert problems[8] == ["FEATURE_ARGS: `python -m pipeline.features` has no flag --no-such-flag"]
    assert problems[9] == ["`python -m pipeline.synthavs` has no flag --no-such-flag"]
    assert problems[11] == []  # --flag=value form
    assert len(problems[12]) == 1 and "no_such_module --help` exited" in problems[12][0]
    assert problems[13] == ["`python -m train fit` has no flag --no_such_key"]
    assert problems[14] == ["`python -m train fit`: config file configs/trainer/none.yaml does not exist"]
    assert problems[15] == []


def test_makefile_parse_knows_the_pass_through_variables():
    mk = repo_makefile()
    assert {"demo", "test", "features", "train"} <= mk.targets
    assert {"CLIPS", "SCENES", "RUN", "VARIANT"} <= mk.variables
    assert mk.passes_to["FEATURE_ARGS"] == ("pipeline.features", ())
    assert mk.passes_to["TRAIN_ARGS"] == ("train", ("fit",))


# --- links between the pages ----------------------------------------------------------------------

LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of a page's headings (lower case, punctuation dropped, spaces to dashes)."""
    anchors = set()
    in_fence = False
    for line in text.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def broken_links(text: str, page: Path) -> list[str]:
    """Relative links of one page whose file or heading does not exist."""
    out = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+://|^mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            out.append(f"{target}: no file {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in heading_anchors(dest.read_text()):
            out.append(f"{target}: no heading #{anchor} in {dest.name}")
    return out


@pytest.mark.parametrize("page", DOC_FILES, ids=[p.name for p in DOC_FILES])
def test_doc_links_resolve(page: Path):
    assert broken_links(page.read_text(), page) == []


def test_link_checker_finds_a_missing_heading(tmp_path):
    (tmp_path / "a.md").write_text("# A page\n\n## Real heading: `x.y`\n")
    page = tmp_path / "b.md"
    text = "[ok](a.md#real-heading-xy) [bad](a.md#made-up) [gone](c.md) [web](https://example.org/x)"
    assert broken_links(text, page) == ["a.md#made-up: no heading #made-up in a.md", f"c.md: no file {tmp_path / 'c.md'}"]
