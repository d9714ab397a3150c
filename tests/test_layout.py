"""The source tree's shape: no import circle, a thin CLI, `python -m clipdistill` runs.

The import graph counts every import statement, at module level or inside a function (a
lazy import is still a dependency). `from pkg import name` points at `pkg.name` when that is
a module, else at `pkg` (its __init__).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "clipdistill"


def module_name(path: Path, root: Path = SRC) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    """Project module -> the project modules it imports (anywhere in its body)."""
    files = {module_name(p, root): p for p in sorted((root / PACKAGE).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in files else base)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_module_imports_in_a_circle():
    graph = import_graph()
    assert len(graph) > 40 and "clipdistill.cli" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_circle_check_sees_lazy_relative_and_package_imports(tmp_path):
    """A circle through a function-level import, a relative import and a package __init__ is found."""
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from clipdistill.sub import helper\n")
    (pkg / "sub" / "__init__.py").write_text("from .b import helper\n")
    (pkg / "sub" / "b.py").write_text("from clipdistill import a\nhelper = 1\n")
    graph = import_graph(tmp_path)
    assert graph["clipdistill.a"] == {"clipdistill.sub"} and graph["clipdistill.sub"] == {"clipdistill.sub.b"}
    assert find_cycle(graph) == ["clipdistill.a", "clipdistill.sub", "clipdistill.sub.b", "clipdistill.a"]
    (pkg / "sub" / "b.py").write_text("helper = 1\n")
    assert find_cycle(import_graph(tmp_path)) is None


def test_cli_only_parses_and_calls():
    """Stage logic lives in the stage modules; the CLI stays a thin layer of options."""
    lines = (SRC / PACKAGE / "cli.py").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"cli.py has {len(lines)} lines (at most 200)"


def test_cli_imports_stage_modules_only_inside_their_command():
    """A command's import closure starts at its own stage module, not at every stage's."""
    tree = ast.parse((SRC / PACKAGE / "cli.py").read_text(encoding="utf-8"))
    top = {node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    top |= {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    project = sorted(m for m in top if m.startswith(PACKAGE))
    assert project == ["clipdistill", "clipdistill.cli_tools", "clipdistill.io", "clipdistill.params"], project


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", PACKAGE, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "distill" in proc.stdout and "vqa" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", PACKAGE, "distill", "--student", "x"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Missing option" in proc.stderr
