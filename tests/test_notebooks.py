"""Every notebook in the repository runs top to bottom: the source notebooks with every
checkpoint passing, the learner notebooks with every checkpoint failing cleanly on its stub."""

from __future__ import annotations

import re
import time

import pytest

from autograder.notebooks import chapters, release_path, source_path
from tests.conftest import execute_notebook, text_outputs

CHAPTERS = chapters()
TIMING = re.compile(r"\d+(\.\d+)? s\b")


def checkpoint_cells(nb):
    return [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]


@pytest.fixture(scope="module", params=CHAPTERS)
def executed_source(request):
    return request.param, *execute_notebook(source_path(request.param))


def test_source_notebook_passes_every_checkpoint(executed_source):
    chapter, nb, seconds = executed_source
    cells = checkpoint_cells(nb)
    assert cells, f"{chapter} has no checkpoint cells"
    for cell in cells:
        text = "".join(o.get("text", "") for o in cell.outputs)
        assert text.startswith("✓"), f"{chapter}: {cell.source.splitlines()[0]} printed {text!r}"
    print(f"{chapter}: source notebook ran in {seconds:.1f} s")


def test_source_notebook_is_reproducible(executed_source):
    chapter, first, _ = executed_source
    second, _ = execute_notebook(source_path(chapter))
    mask = lambda outputs: [TIMING.sub("<time>", t) for t in outputs]  # noqa: E731
    assert mask(text_outputs(first)) == mask(text_outputs(second))


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_learner_notebook_fails_each_checkpoint_cleanly(chapter):
    nb, _ = execute_notebook(release_path(chapter), allow_errors=True)
    for cell in (c for c in nb.cells if c.cell_type == "code"):
        errors = [o for o in cell.outputs if o.output_type == "error"]
        if cell in checkpoint_cells(nb):
            assert len(errors) == 1, cell.source
            shown = "\n".join(errors[0].traceback)
            assert "not implemented yet" in shown and "Traceback" not in shown and "File " not in shown
            assert errors[0].ename == "CheckpointFailed"
        else:
            assert not errors, f"a non-checkpoint cell failed in the learner notebook:\n{cell.source[:200]}\n{errors}"
