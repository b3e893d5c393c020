"""The README's examples work as written.

Every ```python block of README.md (and of docs/library.md) runs in a fresh interpreter in an
empty folder, twice, as a reader pasting it would run it and run it again. Every command of a
```bash/```sh block is either run here (the quick ones, and the main job on the default model) or
is one of the install and test commands, which must be exactly the ones `.ci/run` runs: pip and
pytest are never run from inside the test suite. The README's links must point at files that
exist, and it must stay short enough to read in five minutes.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PYTHON_PAGES = [README, ROOT / "docs" / "library.md"]
MAX_LINES = 250
QUICK_COMMANDS = {"edgeemb --help", "edgeemb models", "edgeemb recipes"}  # run in the fast suite
MAIN_JOB = "edgeemb compress"  # the default recipe on the embedded MiniLM: run by a real test
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def code_blocks(text: str, *languages: str) -> list[str]:
    return [body for language, body in FENCE.findall(text) if language in languages]


def shell_commands(text: str) -> list[str]:
    """The commands of a page's bash/sh blocks: comments dropped, continuation lines joined, and
    each `a && b` chain split into its commands."""
    commands = []
    for block in code_blocks(text, "bash", "sh"):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*", "", line).strip()
            commands += [" ".join(part.split()) for part in line.split("&&") if part.strip()]
    return commands


def ci_commands(script: str) -> list[str]:
    """The install and test commands `.ci/run` runs, without pip's `-q` (quiet in CI, the same
    command for a reader)."""
    commands = []
    for line in script.replace("\\\n", " ").splitlines():
        for part in line.split("&&"):
            words = shlex.split(part, comments=True)
            if words[:2] in (["pip", "install"], ["python", "-m"]):
                commands.append(shlex.join(w for w in words if w != "-q"))
    return commands


def unchecked_commands(text: str, ci_script: str) -> list[str]:
    """Commands of the page that this test neither runs nor finds in `.ci/run`."""
    ci = {shlex.join(shlex.split(c)) for c in ci_commands(ci_script)}
    known = ci | QUICK_COMMANDS | {MAIN_JOB}
    return [c for c in shell_commands(text) if shlex.join(shlex.split(c)) not in known]


def run_python(code: str, folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=900)


def run_edgeemb(command: str, folder: Path) -> subprocess.CompletedProcess:
    # The console script of this interpreter's environment; a wide terminal so rich wraps nothing.
    edgeemb = Path(sys.executable).parent / "edgeemb"
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run(
        [str(edgeemb), *shlex.split(command)[1:]], cwd=folder, capture_output=True, text=True, timeout=900, env=env
    )


def failed(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"


def python_examples() -> list:
    return [
        pytest.param(code, id=f"{page.name}-{i}")
        for page in PYTHON_PAGES
        for i, code in enumerate(code_blocks(page.read_text(), "python"))
    ]


# --- fast ------------------------------------------------------------------------------------


def test_readme_is_short_and_has_examples():
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_LINES
    assert code_blocks(text, "python") and shell_commands(text)
    assert not re.search(r"[Ii]ssue #\d", text), "status is written by capability, not by issue number"


def test_readme_install_and_test_commands_are_the_ones_ci_runs():
    script = (ROOT / ".ci" / "run").read_text()
    readme = [
        shlex.join(shlex.split(c)) for c in shell_commands(README.read_text()) if c.split()[0] in ("pip", "python")
    ]
    assert readme == ci_commands(script) and len(readme) == 3


def test_every_readme_command_is_run_or_checked():
    assert unchecked_commands(README.read_text(), (ROOT / ".ci" / "run").read_text()) == []


@pytest.mark.parametrize("command", sorted(QUICK_COMMANDS))
def test_readme_quick_commands_run(command, tmp_path):
    if command not in shell_commands(README.read_text()):
        pytest.skip(f"the README no longer shows `{command}`")
    result = run_edgeemb(command, tmp_path)
    assert result.returncode == 0 and result.stdout.strip(), failed(result)


@pytest.mark.parametrize("code", python_examples())
def test_python_example_imports_resolve(code, tmp_path):
    """The names an example imports exist (fast: the example itself runs in a real test)."""
    imports = [ast.unparse(node) for node in ast.parse(code).body if isinstance(node, ast.Import | ast.ImportFrom)]
    assert imports
    result = run_python("\n".join(imports), tmp_path)
    assert result.returncode == 0, failed(result)


def test_links_in_readme_and_docs_point_at_files():
    pages = [README, *sorted((ROOT / "docs").rglob("*.md"))]
    missing = []
    for page in pages:
        for target in LINK.findall(page.read_text()):
            path = target.split("#")[0]
            if path and "://" not in path and not (page.parent / path).exists():
                missing.append(f"{page.relative_to(ROOT)} -> {target}")
    assert missing == []


def test_the_checks_catch_a_broken_readme(tmp_path):
    """What the tests above would say of a README gone wrong: an example that fails, one that
    fails when run again, a command nobody checks, an install line CI does not use."""
    assert run_python("from edgeemb.pipeline import no_such_name", tmp_path).returncode != 0
    once = "import os\nos.mkdir('out')"
    assert run_python(once, tmp_path).returncode == 0 and run_python(once, tmp_path).returncode != 0
    ci = "pip install -q -e '.[test]'\npython -m pytest\n"
    page = "```bash\npip install -e '.[test]' && edgeemb compress\nrm -rf /tmp/x  # cleanup\n```\n"
    assert unchecked_commands(page, ci) == ["rm -rf /tmp/x"]
    assert ci_commands(ci) == [c for c in shell_commands(page) if c.startswith("pip")] + ["python -m pytest"]
    assert shell_commands("```bash\npip install -e '.[test,models]'\n```\n") != ci_commands(ci)[:1]


# --- real: the embedded MiniLM --------------------------------------------------------------


@pytest.mark.real
@pytest.mark.parametrize("code", python_examples())
def test_python_example_runs_and_reruns(code, tmp_path):
    for attempt in ("first run", "second run, same folder"):
        result = run_python(code, tmp_path)
        assert result.returncode == 0, f"{attempt}: {failed(result)}"


@pytest.mark.real
def test_main_job_prints_what_the_readme_shows(tmp_path):
    text = README.read_text()
    assert MAIN_JOB in shell_commands(text)
    shown = [block for block in code_blocks(text, "text") if "written to edgeemb-out/" in block]
    assert len(shown) == 1
    result = run_edgeemb(MAIN_JOB, tmp_path)
    assert result.returncode == 0, failed(result)
    assert [line.rstrip() for line in result.stdout.splitlines()] == [line.rstrip() for line in shown[0].splitlines()]
    assert (tmp_path / "edgeemb-out" / "minilm-int4" / "report.json").is_file()
