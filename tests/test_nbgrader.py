"""nbgrader end to end with the repository's own nbgrader_config.py: release, autograde
four submissions, and feedback that shows hints but not hidden tests."""

from __future__ import annotations

import shutil
import subprocess
import sys

import nbformat
import pytest

from autograder.notebooks import ROOT, SOURCE_DIR, release_path, source_path

CHAPTER = "01_tokenizer"
TOTAL = sum(cp.points for cid, cp in __import__("autograder.core", fromlist=["registry"]).registry().items()
            if cid.startswith("01."))  # chapter 01's points, as declared in autograder/checks/


def nbgrader(course, *args, check: bool = True):
    cmd = [
        sys.executable, "-m", "nbgrader", *args,
        f"--CourseDirectory.root={course}",
        f"--CourseDirectory.source_directory={SOURCE_DIR}",
        f"--CourseDirectory.db_url=sqlite:///{course}/gradebook.db",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0 or not check, done.stdout + done.stderr
    return done


def submit(course, student, nb):
    path = course / "submitted" / student / CHAPTER / f"{CHAPTER}.ipynb"
    path.parent.mkdir(parents=True)
    nbformat.write(nb, path)


def answer_cell(nb, grade_id):
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    course = tmp_path_factory.mktemp("course")
    nbgrader(course, "generate_assignment", CHAPTER, "--force")
    source = nbformat.read(source_path(CHAPTER), as_version=4)

    submit(course, "full", source)
    submit(course, "untouched", nbformat.read(release_path(CHAPTER), as_version=4))

    wrong = nbformat.read(source_path(CHAPTER), as_version=4)
    cell = answer_cell(wrong, "decode")  # a leaf: no later answer calls decode
    cell.source = cell.source.split("### BEGIN SOLUTION")[0] + 'return b"".join(vocab[i] for i in ids).decode()\n'
    submit(course, "wrong", wrong)

    tampered = nbformat.read(source_path(CHAPTER), as_version=4)
    answer_cell(tampered, "decode").source = answer_cell(wrong, "decode").source
    answer_cell(tampered, "check_decode").source = "print('✓ trust me')"
    tampered.cells.remove(answer_cell(tampered, "check_train_bpe"))
    submit(course, "tampered", tampered)

    nbgrader(course, "autograde", CHAPTER)
    nbgrader(course, "generate_feedback", CHAPTER)
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course}/gradebook.db") as gb:
        scores = {s: gb.find_submission(CHAPTER, s).score for s in ("full", "untouched", "wrong", "tampered")}
        max_score = gb.find_assignment(CHAPTER).max_score
    return course, scores, max_score


def test_points_in_the_notebook(graded):
    _, _, max_score = graded
    nb = nbformat.read(source_path(CHAPTER), as_version=4)
    assert max_score == sum(c.metadata["nbgrader"].get("points", 0) for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")) == TOTAL


def test_full_zero_and_partial_marks(graded):
    _, scores, _ = graded
    assert scores["full"] == TOTAL
    assert scores["untouched"] == 0
    assert scores["wrong"] == TOTAL - 1  # only 01.decode (1 point) is wrong


def test_edited_and_deleted_test_cells_are_restored(graded):
    _, scores, _ = graded
    assert scores["tampered"] == TOTAL - 1


def test_feedback_shows_the_hint_but_not_the_hidden_tests(graded):
    course, _, _ = graded
    html = (course / "feedback" / "wrong" / CHAPTER / f"{CHAPTER}.html").read_text()
    text = " ".join(html.split())  # reports wrap long lines
    assert "01.decode" in text and "decode with errors=" in text
    assert "hidden=True" not in html and "BEGIN HIDDEN TESTS" not in html


def test_release_has_no_solutions_or_hidden_tests(graded):
    course, _, _ = graded
    text = (course / "chapters" / CHAPTER / f"{CHAPTER}.ipynb").read_text()
    assert "BEGIN SOLUTION" not in text and "hidden=True" not in text
    assert text.count("raise NotImplementedError()") >= 5
