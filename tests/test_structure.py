"""The autograder's modules import in one direction, and a learner's ``import autograder``
runs nothing of the grader's sandbox."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from autograder.notebooks import ROOT

PACKAGE = ROOT / "autograder"


def module_imports(path: Path) -> set[str]:
    """The ``autograder`` modules a module imports at import time (module level, not inside
    functions: a function that loads the chapters' checks when called is not a cycle)."""
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("autograder."):
            found.add(node.module.split(".")[1])
    return found


def test_no_import_cycle_between_the_autograders_modules():
    graph = {p.stem: module_imports(p) - {p.stem} for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    visiting, done = set(), set()

    def visit(name, path):
        if name in done or name not in graph:
            return
        assert name not in visiting, "import cycle: " + " -> ".join(path + [name])
        visiting.add(name)
        for dep in sorted(graph[name]):
            visit(dep, path + [name])
        visiting.discard(name)
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert "fixtures" not in graph["declarations"] and "core" not in graph["fixtures"]


def test_import_autograder_does_not_run_the_sandbox_worker():
    code = (
        "import sys, autograder; "
        "bad = sorted(m for m in sys.modules if m.endswith(('sandbox_worker', 'sandbox', 'grading', 'notebooks'))); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
