"""Shared fixtures: paths, and running a notebook the way Jupyter and nbgrader do."""

from __future__ import annotations

import os
import re
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


def pytest_xdist_make_scheduler(config, log):
    """Spread the suite over the xdist workers: each test file goes whole to one worker (its
    module-scoped fixtures run once), except the notebook tests, the longest, which go per
    chapter (``[06_pretraining]`` in the test's id), so that chapters run side by side. (A
    scheduler of our own rather than ``xdist_group`` marks, which pytest-xdist 3.8 cannot
    apply under pytest 9.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ByFileAndChapter(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path, _, name = nodeid.partition("::")
            chapter = _notebook_chapter(nodeid)
            return f"{path}[{chapter}]" if chapter else path

    # Hand out the groups in collection order (pytest_collection_modifyitems puts the longest first),
    # not xdist's default of the groups with the most tests first, which left the chapter notebooks,
    # a few tests each and minutes long, for the end: one worker idle while the other ran them.
    config.option.loadscopereorder = False
    return ByFileAndChapter(config, log)


def _notebook_chapter(nodeid: str) -> str | None:
    """``12_dpo_grpo`` for a notebook test of that chapter, else None."""
    path, _, name = nodeid.partition("::")
    chapter = re.search(r"\[(\d\d_[a-z_]+)\]", name)
    return chapter.group(1) if path.endswith("test_notebooks.py") and chapter else None


def pytest_collection_modifyitems(config, items):
    """The chapter notebooks first, the later (longer: training runs) chapters before the earlier,
    so that the two workers finish together (longest jobs first); everything else after, in order."""
    def order(item):
        chapter = _notebook_chapter(item.nodeid)
        return (0, -int(chapter[:2])) if chapter else (1, 0)

    items.sort(key=order)  # stable: the order within each group is kept
