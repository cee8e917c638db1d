"""Every notebook in the repository runs top to bottom: the source notebooks with every
checkpoint passing, the learner notebooks with every checkpoint failing cleanly on its stub."""

from __future__ import annotations

import re

import pytest

from autograder.notebooks import chapters, release_path, source_path
from tests import printed
from tests.conftest import execute_notebook

CHAPTERS = chapters()
_EXECUTED: dict[str, tuple] = {}


def checkpoint_cells(nb):
    return [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]


def shown_text(cell) -> str:
    """What a cell showed as text: its printed output and the plain-text form of displays."""
    return "".join(o.get("text", "") or o.get("data", {}).get("text/plain", "") for o in cell.outputs)


@pytest.fixture(params=CHAPTERS)
def executed_source(request):
    """Each source notebook executed once per test process (the tests of a chapter run on one
    xdist worker: tests/conftest.py), however the tests around it are ordered."""
    chapter = request.param
    if chapter not in _EXECUTED:
        _EXECUTED[chapter] = execute_notebook(source_path(chapter))
    return chapter, *_EXECUTED[chapter]


def test_source_notebook_passes_every_checkpoint(executed_source):
    chapter, nb, seconds = executed_source
    cells = checkpoint_cells(nb)
    assert cells, f"{chapter} has no checkpoint cells"
    for cell in cells:
        text = shown_text(cell)
        assert text.startswith("✓") and text.count("\n") == 0, f"{chapter}: {cell.source.splitlines()[0]} showed {text!r}"
        html = "".join(o.get("data", {}).get("text/html", "") for o in cell.outputs)
        assert "✓" in html and "color" in html, "a ✓ is one green line in JupyterLab"
    print(f"{chapter}: source notebook ran in {seconds:.1f} s")


STRAY_REPR = re.compile(r"<[\w.]+ (object )?at 0x[0-9a-f]+>|^\[?<matplotlib\.|^Text\(|^Result\(|^Verdict\(")


def stray_reprs(nb) -> list[str]:
    """``Out[n]`` reprs a learner should not see: of a set-up call (``<torch._C.Generator at
    0x...>``, ``[<matplotlib.lines.Line2D ...>]``, ``Text(0.5, ...)``) or of a checkpoint
    (``Result(...)``)."""
    found = []
    for cell in (c for c in nb.cells if c.cell_type == "code"):
        for output in cell.outputs:
            text = output.get("data", {}).get("text/plain", "") if output.output_type == "execute_result" else ""
            if STRAY_REPR.search(text):
                found.append(f"{(cell.source.splitlines() or [''])[0]!r} shows {text[:120]!r}")
    return found


def test_no_stray_reprs(executed_source):
    chapter, nb, _ = executed_source
    found = stray_reprs(nb)
    assert not found, f"{chapter}: {found}"


def test_source_notebook_prints_what_was_recorded(executed_source):
    """Two runs print the same numbers: this run against the recorded one (tests/printed.py),
    identical on the machine that recorded it, within stated tolerances on any other."""
    chapter, nb, _ = executed_source
    record = printed.load_record(chapter)
    assert record is not None, f"nothing recorded for {chapter}: run `python -m tests.printed {chapter}`"
    same_machine = record["machine"] == printed.machine()
    found = printed.differences(record["printed"], printed.printed_text(nb), exact=same_machine,
                                machine_dependent=printed.machine_dependent_cells(nb))
    assert not found, (f"{chapter} printed other text than recorded ({'same' if same_machine else 'another'} "
                       f"machine; if the notebook changed, re-record with `python -m tests.printed {chapter}`):\n"
                       + "\n".join(found))


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_learner_notebook_runs_to_the_end_showing_each_stub_as_a_failure(chapter):
    """While studying (the default mode), Run All goes to the end: every cell runs, and each
    checkpoint on a stub shows its ✗ (red HTML in JupyterLab) without raising."""
    nb, _ = execute_notebook(release_path(chapter), allow_errors=True)
    found = stray_reprs(nb)
    assert not found, f"{chapter}: {found}"
    for cell in (c for c in nb.cells if c.cell_type == "code"):
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"a cell failed in the learner notebook:\n{cell.source[:200]}\n{errors}"
        assert cell.execution_count is not None, "a cell did not run"
        if cell in checkpoint_cells(nb):
            text = shown_text(cell)
            assert text.startswith("✗") and "not implemented yet" in text and "Traceback" not in text, text
            html = "".join(o.get("data", {}).get("text/html", "") for o in cell.outputs)
            assert "#cf222e" in html, "a ✗ is a red block in JupyterLab"


def test_in_grade_mode_a_failing_checkpoint_is_an_error_without_a_traceback(monkeypatch):
    """What nbgrader autograde sees (its config sets COURSE_CHECK_MODE=grade): a ✗ is an error
    output, so the cell scores 0, and it shows the message alone."""
    monkeypatch.setenv("COURSE_CHECK_MODE", "grade")
    nb, _ = execute_notebook(release_path(CHAPTERS[0]), allow_errors=True)
    for cell in checkpoint_cells(nb):
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert len(errors) == 1, cell.source
        shown = "\n".join(errors[0].traceback)
        assert "not implemented yet" in shown and "Traceback" not in shown and "File " not in shown
        assert errors[0].ename == "CheckpointFailed"
