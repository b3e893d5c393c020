"""Module boundaries: every edgeemb module imports on its own, the import graph has no cycle
(imports inside functions included: they hide a cycle from the interpreter, not from a reader),
and `import edgeemb.cli` leaves the heavy runtimes unloaded."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import edgeemb

PACKAGE = Path(edgeemb.__file__).parent
HEAVY = ("torch", "transformers", "sentence_transformers", "onnxruntime", "llama_cpp", "numba")


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = _modules()


def _imported(module: str, path: Path) -> set[str]:
    """The edgeemb modules `module` imports anywhere in its file: `import a.b` and `from a import b`
    name the module a.b if it is one, else a (an attribute of a); relative imports resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names += [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
    found = set()
    for name in names:
        while name and name not in MODULES:  # a.b.attr -> a.b
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def _cycles(graph: dict[str, set[str]], limit: int = 20) -> list[list[str]]:
    """Cycles of `graph`, each found after cutting the first edge of those before it: every
    tangle shows up, not only the first."""
    graph = {module: set(targets) for module, targets in graph.items()}
    found = []
    while len(found) < limit and (cycle := _cycle(graph)) is not None:
        found.append(cycle)
        graph[cycle[0]].discard(cycle[1])
    return found


def test_the_cycle_finder_finds_every_cycle_and_only_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}}) == [
        ["a", "b", "c", "a"],
        ["d", "e", "d"],
    ]
    assert _cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_every_edgeemb_import_is_an_edge_inside_functions_too(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from edgeemb.errors import EdgeembError\n"
        "from edgeemb import formats, __version__\n"
        "from . import vocab\n"
        "import numpy\n"
        "def f():\n"
        "    from edgeemb.sources import gguf\n"
        "    import edgeemb.table\n"
    )
    assert _imported("edgeemb.probe", probe) == {
        "edgeemb",
        "edgeemb.errors",
        "edgeemb.formats",
        "edgeemb.vocab",
        "edgeemb.sources.gguf",
        "edgeemb.table",
    }
    assert "edgeemb.sources.hf" in _imported("edgeemb.sources", MODULES["edgeemb.sources"])  # a package's own


def test_edgeemb_modules_import_one_another_without_a_cycle():
    graph = {module: _imported(module, path) for module, path in MODULES.items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


# Imports each module in a child forked from an interpreter that has loaded no edgeemb module, only
# the third-party libraries most modules load (what makes a fresh interpreter per module cost
# ~0.4 s; forked, a module costs only its own edgeemb code). One line per failure on stdout.
_IMPORT_EACH = """
import importlib, os, sys
for library in ("numpy", "scipy.sparse", "pydantic", "yaml", "gguf", "safetensors", "tokenizers", "click", "rich"):
    importlib.import_module(library)
assert not any(name.split(".")[0] == "edgeemb" for name in sys.modules)
for module in sys.argv[1:]:
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(module)
        except BaseException as exc:
            print(f"{module}: {type(exc).__name__}: {exc}", flush=True)
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status and os.waitstatus_to_exitcode(status) != 1:
        print(f"{module}: died with status {os.waitstatus_to_exitcode(status)}", flush=True)
"""


def _import_each(modules: list[str], cwd: Path | None = None) -> str:
    """The failures of importing each module alone, one line each, run over the CPUs side by side."""
    workers = len(os.sched_getaffinity(0))
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _IMPORT_EACH, *modules[i::workers]],
            cwd=cwd,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(workers)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err for _, err in outputs]
    return "".join(out for out, _ in outputs)


def test_the_import_check_names_each_module_that_fails_alone(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("A = 1\n")
    (package / "b.py").write_text("import pkg\nB = pkg.a.A\n")  # works only once pkg.a is loaded
    (package / "c.py").write_text("from pkg.d import D\nC = 3\n")  # c and d: a cycle
    (package / "d.py").write_text("from pkg.c import C\nD = 4\n")
    failures = _import_each(["pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d"], cwd=tmp_path)
    assert sorted(line.split(":")[0] for line in failures.splitlines()) == ["pkg.b", "pkg.c", "pkg.d"]


def test_every_module_imports_alone_in_a_fresh_interpreter():
    # A module that only imports after another one has would pass in a shared interpreter.
    # A __main__ module runs its command when imported (`python -m edgeemb.cli`): it is in the
    # cycle check, not imported here.
    failures = _import_each(sorted(name for name in MODULES if not name.endswith(".__main__")))
    assert failures == "", failures


def test_importing_the_cli_leaves_the_heavy_runtimes_unloaded():
    code = f"import sys, edgeemb.cli; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert run.stdout.split() == [], f"import edgeemb.cli loads {run.stdout.strip()}"
