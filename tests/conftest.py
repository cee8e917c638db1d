"""Shared fixtures: paths, and running a notebook the way Jupyter and nbgrader do."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
# Under pytest-xdist each worker is one process on one core: torch (and the notebook kernels,
# which inherit the environment) use one thread each, so two workers do not oversubscribe
# a 2-core machine (two 2-thread torch processes slow each other down up to 10x).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
# Notebooks executed by the tests must not write into a learner's own progress record.
os.environ["COURSE_PROGRESS_FILE"] = os.path.join(tempfile.mkdtemp(prefix="course-progress-"), "progress.json")
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


def execute_notebook(path: Path, *, allow_errors: bool = False, timeout: int = 600):
    """Run a notebook top to bottom in a fresh kernel, in its own folder; returns (nb, seconds)."""
    import time

    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", allow_errors=allow_errors,
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute()
    return nb, time.perf_counter() - start


def text_outputs(nb) -> list[str]:
    """Printed text of every code cell, for comparing two runs."""
    out = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        out.append("".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream"))
    return out


def pytest_collection_modifyitems(config, items):
    """Spread the suite over xdist workers (``--dist loadgroup``): each test file stays on one
    worker (its module-scoped fixtures run once), except the notebook tests, which are the
    longest and are grouped per chapter so that chapters run side by side."""
    for item in items:
        module = item.nodeid.split("::")[0]
        group = module
        if module.endswith("test_notebooks.py") and hasattr(item, "callspec"):
            chapter = item.callspec.params.get("executed_source") or item.callspec.params.get("chapter")
            if chapter:
                group = f"notebooks/{chapter}"
        item.add_marker(pytest.mark.xdist_group(group))
