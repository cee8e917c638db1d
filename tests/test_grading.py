"""``python -m autograder grade``: sandboxed, bounded, and deaf to every attack in
``tests/attacks.py``; nbgrader agrees with it wherever nbgrader can defend itself."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import nbformat
import pytest

from autograder.core import lookup
from autograder.grading import grade_many, grade_notebook
from autograder.notebooks import ROOT, release_path, source_path
from autograder.sandbox import Limits
from tests.attacks import ATTACKS, CHAPTER, TOTAL, write_attack
from tests.test_nbgrader import nbgrader

LIMITS = Limits(seconds=15, memory_mb=2048)


def grade_cli(*args, check=True):
    done = subprocess.run([sys.executable, "-m", "autograder", "grade", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def attack_grades(tmp_path_factory):
    folder = tmp_path_factory.mktemp("attacks")
    paths = [write_attack(attack, folder) for attack in ATTACKS]
    start = time.perf_counter()
    results = grade_many(paths, limits=LIMITS, jobs=2, progress=False)
    print(f"graded {len(paths)} attack notebooks in {time.perf_counter() - start:.1f} s")
    return folder, dict(zip((a.name for a in ATTACKS), results)), paths


def test_the_solved_notebook_gets_full_marks_and_the_stub_none():
    full = grade_notebook(source_path(CHAPTER), limits=LIMITS)
    assert (full.score, full.max_score) == (TOTAL, TOTAL), [c.message for c in full.checkpoints]
    stub = grade_notebook(release_path(CHAPTER), limits=LIMITS)
    assert stub.score == 0 and all("not implemented" in c.message for c in stub.checkpoints)
    assert stub.flags == []  # the release's test cells lack hidden tests: that is not tampering


def test_a_wrong_answer_costs_its_checkpoint_only(tmp_path):
    nb = nbformat.read(source_path(CHAPTER), as_version=4)
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "decode")
    cell.source = cell.source.split("### BEGIN SOLUTION")[0] + "return b''.join(vocab[i] for i in ids).decode()\n"
    path = tmp_path / f"{CHAPTER}.ipynb"
    nbformat.write(nb, path)
    result = grade_notebook(path, limits=LIMITS)
    decode = next(c for c in result.checkpoints if c.checkpoint == "01.decode")
    assert result.score == TOTAL - 1 and decode.verdict == "fail" and "errors='replace'" in decode.hint


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack_earns_nothing_and_harms_nothing_else(attack_grades, attack):
    _, grades, _ = attack_grades
    result = grades[attack.name]
    by_id = {c.checkpoint: c for c in result.checkpoints}
    target = by_id[attack.target]
    assert target.points == 0, f"{attack.name} earned {target.points}: {target.message}"
    others = [c for c in result.checkpoints if c.checkpoint != attack.target]
    assert all(c.points == c.max_points for c in others), [(c.checkpoint, c.verdict, c.message[:200]) for c in others]
    assert result.score == TOTAL - lookup(attack.target).points
    if attack.flagged:
        assert result.flags, f"{attack.name} was not flagged"
    assert len(json.dumps(result.to_dict())) < 200_000, "the report is not bounded"


def test_the_reference_cannot_be_reached_from_the_sandbox(attack_grades):
    _, grades, _ = attack_grades
    for name in ("import the reference package", "read the reference's files", "monkeypatch the course's check"):
        target = next(c for c in grades[name].checkpoints if c.checkpoint == "01.decode")
        assert target.verdict == "flagged" and "forbidden" in target.message


def test_runaway_code_is_stopped_by_the_limits(attack_grades):
    _, grades, _ = attack_grades
    verdict = {name: next(c for c in grades[name].checkpoints if c.checkpoint == "01.decode") for name in grades}
    assert verdict["infinite loop"].verdict == "timeout"
    assert verdict["os._exit()"].verdict == "crashed"
    assert verdict["allocate 30 GB"].verdict == "memory" and "MemoryError" in verdict["allocate 30 GB"].message
    assert verdict["spawn processes without end"].verdict == "flagged"


def test_command_line_reports(tmp_path, attack_grades):
    folder, _, _ = attack_grades
    report, scope, table = tmp_path / "report.json", tmp_path / "results.json", tmp_path / "grades.csv"
    done = grade_cli(source_path(CHAPTER), "--json", report, "--gradescope", scope, "--seed", "7")
    assert "9 / 9" in done.stdout and "01.train_bpe" in done.stdout
    data = json.loads(report.read_text())[0]
    assert data["score"] == 9 and data["seed"] == 7 and len(data["checkpoints"]) == 5
    results = json.loads(scope.read_text())
    assert results["score"] == 9 and {t["name"] for t in results["tests"]} == {c["checkpoint"] for c in data["checkpoints"]}
    assert all(set(t) >= {"name", "score", "max_score", "output"} for t in results["tests"])

    done = grade_cli(folder / "sys_exit", folder / "infinite_loop", "--csv", table, "--time-limit", "5")
    rows = table.read_text().splitlines()
    assert rows[0].startswith("notebook,chapter,score,max_score") and len(rows) == 3


def test_grading_exits_zero_whatever_the_score_and_nonzero_when_it_cannot_run(tmp_path):
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{ not json")
    done = grade_cli(broken)
    assert "could not read the notebook" in done.stdout
    done = grade_cli(tmp_path / "missing.ipynb", check=False)
    assert done.returncode == 2 and "no notebook matches" in done.stderr


def test_the_secret_seed_differs_between_runs_and_can_be_fixed():
    a = grade_notebook(source_path(CHAPTER), limits=LIMITS)
    b = grade_notebook(source_path(CHAPTER), limits=LIMITS)
    assert a.seed != b.seed
    c = grade_notebook(source_path(CHAPTER), seed=a.seed, limits=LIMITS)
    assert [x.message for x in c.checkpoints] == [x.message for x in a.checkpoints]


# ------------------------------------------------------------------ nbgrader agreement

def test_nbgrader_agrees_where_it_can_defend(tmp_path, attack_grades):
    """nbgrader autograde on every attack that is safe to run unsandboxed. Where nbgrader
    cannot defend (it runs the submission with the reference importable and the check
    functions patchable) the attack's ``nbgrader_score`` records what nbgrader gives."""
    _, grades, _ = attack_grades
    safe = [a for a in ATTACKS if a.nbgrader_safe]
    course = tmp_path / "course"
    course.mkdir()
    nbgrader(course, "generate_assignment", CHAPTER, "--force")
    for index, attack in enumerate(safe):
        path = write_attack(attack, tmp_path / "built")
        target = course / "submitted" / f"s{index:02d}" / CHAPTER / f"{CHAPTER}.ipynb"
        target.parent.mkdir(parents=True)
        target.write_bytes(path.read_bytes())
    nbgrader(course, "autograde", CHAPTER, "--Execute.timeout=20")
    from nbgrader.api import Gradebook

    disagreements = []
    with Gradebook(f"sqlite:///{course}/gradebook.db") as gb:
        for index, attack in enumerate(safe):
            ours = grades[attack.name].score
            theirs = gb.find_submission(CHAPTER, f"s{index:02d}").score
            expected = ours if attack.nbgrader_score is None else attack.nbgrader_score
            if theirs != expected:
                disagreements.append((attack.name, ours, theirs))
            print(f"{attack.name:40s} grade command {ours:g}  nbgrader {theirs:g}")
    assert not disagreements


@pytest.mark.parametrize("chapter", [c for c in __import__("autograder.notebooks", fromlist=["chapters"]).chapters() if c != CHAPTER])
def test_every_chapter_grades_full_for_the_solution_and_zero_for_the_stubs(chapter):
    full = grade_notebook(source_path(chapter), limits=LIMITS)
    assert full.score == full.max_score > 0, [(c.checkpoint, c.verdict, c.message[:300]) for c in full.checkpoints if c.verdict != "pass"]
    assert not full.flags, full.flags
    stub = grade_notebook(release_path(chapter), limits=LIMITS)
    assert stub.score == 0 and not stub.flags, stub.flags
