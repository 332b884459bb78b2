"""The README's promise: it leads with two commands, both exist, and CI runs exactly the test one."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

from stagefleet.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]


def first_code_block(text: str) -> tuple[int, list[str]]:
    """(line number where it starts, its lines) of the README's first fenced code block."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("```"))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
    return start, lines[start + 1:end]


def commands(block: list[str]) -> list[str]:
    """The commands of a shell block: each line's words before a `#` comment."""
    out = []
    for ln in block:
        words = shlex.split(ln, comments=True)
        if words:
            out.append(" ".join(words))
    return out


def script_lines(path: Path) -> list[list[str]]:
    """A shell script's command lines as words (comments and blank lines dropped)."""
    return [w for ln in path.read_text().splitlines() if (w := shlex.split(ln, comments=True))]


def test_readme_leads_with_the_two_commands() -> None:
    text = (REPO / "README.md").read_text()
    start, block = first_code_block(text)
    # "leads with": no section heading comes before the commands, only the title and the pitch
    headings = [ln for ln in text.splitlines()[:start] if ln.startswith("#")]
    assert len(headings) == 1, f"sections before the first commands: {headings[1:]}"
    assert commands(block)[:2] == ["./scripts/demo", "./scripts/test"]


def test_both_commands_exist_as_executable_bash_scripts() -> None:
    for name in ("demo", "test"):
        script = REPO / "scripts" / name
        assert script.is_file(), script
        assert os.access(script, os.X_OK), f"{script} is not executable"
        assert script.read_text().startswith("#!/usr/bin/env bash")
        syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert syntax.returncode == 0, syntax.stderr


def test_demo_script_runs_the_demo_subcommand() -> None:
    lines = script_lines(REPO / "scripts" / "demo")
    assert any(w[i:i + 2] == ["stagefleet", "demo"] for w in lines for i in range(len(w))), lines
    assert "demo" in {name for name, _, _ in COMMANDS}


def test_test_script_lints_type_checks_and_runs_the_whole_suite() -> None:
    words = [" ".join(w) for w in script_lines(REPO / "scripts" / "test")]
    assert any(re.search(r"\bruff check\b", w) for w in words)
    assert any(re.search(r"\bmypy\b", w) for w in words)
    # pytest's own arguments (what follows `pytest` on its line)
    pytest_args = [w.rsplit("pytest", 1)[1].split() for w in words if re.search(r"\bpytest\b", w)]
    assert pytest_args, words
    # the whole suite: no -k/-m selection and no narrower test path (extra args come only from "$@")
    for args in pytest_args:
        assert not [a for a in args if a in ("-k", "-m") or a.startswith("tests")], args


def test_ci_runs_the_readme_test_command() -> None:
    ci = REPO / ".ci" / "run"
    assert os.access(ci, os.X_OK)
    lines = script_lines(ci)
    assert ["set", "-euo", "pipefail"] in lines  # a failing test fails CI
    # it runs from the repository root ...
    cds = [w for w in lines if w[0] == "cd"]
    assert cds and cds[0][1].endswith("/..") and "dirname" in cds[0][1]
    # ... and its command is the README's `./scripts/test` (however it spells the call)
    calls = [w for w in lines if any(Path(x).as_posix().lstrip("./") == "scripts/test" for x in w)]
    assert calls, lines
    _, block = first_code_block((REPO / "README.md").read_text())
    readme_test = commands(block)[1].split()[0]
    assert (REPO / readme_test).resolve() == (REPO / "scripts" / "test").resolve()
    allowed = ("exec", "bash", "./scripts/test", "scripts/test", "$@")
    assert all(x in allowed for w in calls for x in w), calls


def test_a_cluster_command_without_the_operator_extra_says_what_to_install() -> None:
    """`pip install stagefleet` brings only the worker's dependencies; the operator's are an extra."""
    import subprocess
    import sys

    # an interpreter that cannot import kopf (a meta-path finder refusing it), running `stagefleet operator`
    code = (
        "import sys, importlib.abc\n"
        "class No(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('kopf', 'kubernetes'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name.split('.')[0])\n"
        "sys.meta_path.insert(0, No())\n"
        "from stagefleet.cli import main\n"
        "sys.exit(main(['operator', '--namespace', 'x']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'stagefleet[operator]'" in proc.stderr and "Traceback" not in proc.stderr
