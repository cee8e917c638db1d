"""One source of truth: solution cells come from solutions/, learner notebooks from nbgrader."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import nbformat
import pytest

from autograder.notebooks import ROOT, build, chapters, release_path, render_notebook, source_path

CHAPTERS = chapters()


def test_committed_notebooks_are_exactly_what_the_pipeline_generates():
    done = subprocess.run([sys.executable, "-m", "autograder", "build", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_a_drifted_solution_cell_is_detected(chapter):
    nb = nbformat.read(source_path(chapter), as_version=4)
    cell = next(c for c in nb.cells if c.metadata.get("course", {}).get("render"))
    cell.source += "\n# edited by hand"
    assert render_notebook(nb), "a hand-edited solution cell went unnoticed"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_learner_notebooks_are_clean(chapter):
    nb = json.loads(release_path(chapter).read_text())
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        assert "BEGIN SOLUTION" not in source and "BEGIN HIDDEN TESTS" not in source
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_graded_function_has_a_stub_and_a_checkpoint(chapter):
    nb = nbformat.read(release_path(chapter), as_version=4)
    stubs = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]
    checks = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    assert stubs and all("raise NotImplementedError()" in c.source for c in stubs)
    assert len(checks) == len(stubs) and all("autograder.check(" in c.source for c in checks)


def test_regenerating_never_overwrites_a_learners_work(tmp_path):
    chapter = CHAPTERS[0]
    mine = release_path(chapter, tmp_path)
    mine.parent.mkdir(parents=True)
    nb = nbformat.read(release_path(chapter), as_version=4)
    stub = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution"))
    stub.source = stub.source.replace("raise NotImplementedError()", "return 'my answer'")
    nbformat.write(nb, mine)
    before = mine.read_text()

    with pytest.raises(SystemExit, match="--force"):
        build(chapters_=[chapter], release_dir=tmp_path, write_sources=False)
    assert mine.read_text() == before

    build(chapters_=[chapter], release_dir=tmp_path, force=True, write_sources=False)
    assert mine.with_name(mine.stem + ".backup.ipynb").read_text() == before
    assert mine.read_text() == release_path(chapter).read_text()


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_graded_cells_are_written_from_the_declarations(chapter):
    """Every graded cell names its checkpoint in its metadata, and its source and nbgrader points
    are what the checkpoint's declaration renders (build --check fails otherwise)."""
    from autograder.core import lookup
    from autograder.notebooks import checkpoint_cell_source

    nb = nbformat.read(source_path(chapter), as_version=4)
    cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    assert cells
    for cell in cells:
        checkpoint_id = cell.metadata["course"]["checkpoint"]
        assert cell.source == checkpoint_cell_source(checkpoint_id), checkpoint_id
        assert cell.metadata["nbgrader"]["points"] == lookup(checkpoint_id).points, checkpoint_id


def test_a_declaration_change_rewrites_its_graded_cell(monkeypatch):
    import dataclasses

    from autograder import core
    from autograder.notebooks import render_notebook

    nb = nbformat.read(source_path(CHAPTERS[0]), as_version=4)
    assert not render_notebook(nb)  # up to date
    cell = next(c for c in nb.cells if c.metadata.get("course", {}).get("checkpoint"))
    checkpoint_id = cell.metadata["course"]["checkpoint"]
    changed = dataclasses.replace(core.lookup(checkpoint_id), points=7)
    monkeypatch.setitem(core.registry(), checkpoint_id, changed)
    assert render_notebook(nb)
    assert cell.metadata["nbgrader"]["points"] == 7 and "(7 points)" in cell.source
