"""``python -m autograder grade``: sandboxed, bounded, and deaf to every attack in
``tests/attacks.py``; nbgrader agrees with it wherever nbgrader can defend itself."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time

import nbformat
import pytest

from autograder.core import lookup
from autograder.grading import grade_many, grade_notebook, read_submission, SubmissionError
from autograder.notebooks import ROOT, release_path, source_path
from autograder.sandbox import Limits, sandbox_problem, unavailable_message
from tests.attacks import (ATTACKS, CANARY_DIR, CANARY_REPORT, CHAPTER, ROOT_CANARY, SECRET_ENV, TOTAL, total,
                           write_attack)
from tests.test_nbgrader import nbgrader

LIMITS = Limits(seconds=15, memory_mb=2048)
PROBLEM = sandbox_problem()
needs_sandbox = pytest.mark.skipif(PROBLEM is not None, reason=unavailable_message(PROBLEM or ""))


def grade_cli(*args, check=True, env=None):
    done = subprocess.run([sys.executable, "-m", "autograder", "grade", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def escaped() -> list[str]:
    """What attacks left where they may not write: the canary folder, the course folder."""
    found = sorted(p.name for p in CANARY_DIR.iterdir() if p != CANARY_REPORT) if CANARY_DIR.exists() else []
    if CANARY_REPORT.exists() and CANARY_REPORT.read_text() != "original":
        found.append(f"report.json now says {CANARY_REPORT.read_text()!r}")
    return found + sorted(str(p) for p in ROOT.glob(f"{ROOT_CANARY.name}*"))


@pytest.fixture(scope="module")
def attack_grades(tmp_path_factory):
    if PROBLEM:
        pytest.skip(unavailable_message(PROBLEM))
    folder = tmp_path_factory.mktemp("attacks")
    shutil.rmtree(CANARY_DIR, ignore_errors=True)
    CANARY_DIR.mkdir()
    CANARY_REPORT.write_text("original")
    secret = secrets.token_hex(16)
    os.environ[SECRET_ENV] = secret  # the grading processes inherit it: no report may show it
    try:
        paths = [write_attack(attack, folder) for attack in ATTACKS]
        start = time.perf_counter()
        results = grade_many(paths, limits=LIMITS, jobs=2, progress=False)
        print(f"graded {len(paths)} attack notebooks in {time.perf_counter() - start:.1f} s")
        time.sleep(4)  # a process that outlived its checkpoint would act now
        left = escaped()
    finally:
        os.environ.pop(SECRET_ENV, None)
        shutil.rmtree(CANARY_DIR, ignore_errors=True)
        for path in ROOT.glob(f"{ROOT_CANARY.name}*"):
            path.unlink()
    return folder, dict(zip((a.name for a in ATTACKS), results)), paths, {"secret": secret, "escaped": left}


@needs_sandbox
def test_the_solved_notebook_gets_full_marks_and_the_stub_none():
    full = grade_notebook(source_path(CHAPTER), limits=LIMITS)
    assert (full.score, full.max_score) == (TOTAL, TOTAL), [c.message for c in full.checkpoints]
    stub = grade_notebook(release_path(CHAPTER), limits=LIMITS)
    assert stub.score == 0 and all("not implemented" in c.message for c in stub.checkpoints)
    assert stub.flags == []  # the release's test cells lack hidden tests: that is not tampering


@needs_sandbox
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
    _, grades, _, seen = attack_grades
    result = grades[attack.name]
    report = json.dumps(result.to_dict())
    assert len(report) < 200_000, "the report is not bounded"
    assert seen["secret"] not in report, "the grader's environment leaked into the report"
    if attack.refused:
        assert result.score == 0 and not result.checkpoints and result.error.startswith("not graded: "), result
        return
    by_id = {c.checkpoint: c for c in result.checkpoints}
    target = by_id[attack.target]
    assert target.points == 0, f"{attack.name} earned {target.points}: {target.message}"
    if attack.verdict:
        assert target.verdict == attack.verdict, (target.verdict, target.message[:300])
    others = [c for c in result.checkpoints if c.checkpoint != attack.target]
    assert all(c.points == c.max_points for c in others), [(c.checkpoint, c.verdict, c.message[:200]) for c in others]
    assert result.score == total(attack.chapter) - lookup(attack.target).points and not result.error
    if attack.flagged:
        assert result.flags, f"{attack.name} was not flagged"


def test_nothing_is_written_outside_and_nothing_outlives_grading(attack_grades):
    _, _, _, seen = attack_grades
    assert seen["escaped"] == []


def test_the_grader_secrets_stay_secret(tmp_path, attack_grades):
    """The grader's environment and command line (with the seed) appear nowhere in a report
    of the attack that reads every /proc/<pid>/environ and cmdline it can see."""
    folder, _, paths, _ = attack_grades
    attack = next(a for a in ATTACKS if a.kind == "grader's /proc")
    path = paths[ATTACKS.index(attack)]
    seed, secret, report = "918273645", secrets.token_hex(16), tmp_path / "report.json"
    done = grade_cli(path, "--seed", seed, "--json", report, env={**os.environ, SECRET_ENV: secret})
    data = json.loads(report.read_text())[0]
    assert data["seed"] == int(seed)
    data["seed"] = 0
    for text in (done.stdout, done.stderr, json.dumps(data)):
        assert secret not in text and seed not in text


def test_the_reference_cannot_be_reached_from_the_sandbox(attack_grades):
    _, grades, _, _ = attack_grades
    for name in ("import the reference package", "read the reference's files", "monkeypatch the course's check"):
        target = next(c for c in grades[name].checkpoints if c.checkpoint == "01.decode")
        assert target.verdict == "flagged" and "forbidden" in target.message


def test_runaway_code_is_stopped_by_the_limits(attack_grades):
    _, grades, _, _ = attack_grades
    verdict = {a.name: next(c for c in grades[a.name].checkpoints if c.checkpoint == "01.decode")
               for a in ATTACKS if a.kind == "classic"}
    assert verdict["infinite loop"].verdict == "timeout"
    assert verdict["os._exit()"].verdict == "crashed"
    assert verdict["allocate 30 GB"].verdict == "memory" and "MemoryError" in verdict["allocate 30 GB"].message
    assert verdict["spawn processes without end"].verdict == "flagged"


def test_command_line_reports(tmp_path, attack_grades):
    folder, _, _, _ = attack_grades
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


@needs_sandbox
def test_grading_exits_zero_whatever_the_score_and_nonzero_when_it_cannot_run(tmp_path):
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{ not json")
    done = grade_cli(broken)
    assert "could not read the notebook" in done.stdout
    done = grade_cli(tmp_path / "missing.ipynb", check=False)
    assert done.returncode == 2 and "no notebook matches" in done.stderr


def test_without_bwrap_grading_refuses_unless_told_to_run_unsafe(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty)}  # no bwrap on PATH
    done = grade_cli(source_path(CHAPTER), check=False, env=env)
    assert done.returncode == 2 and not done.stdout
    assert "apt-get install bubblewrap" in done.stderr and "container" in done.stderr and "--unsafe-no-sandbox" in done.stderr
    report, table = tmp_path / "report.json", tmp_path / "grades.csv"
    done = grade_cli(source_path(CHAPTER), "--unsafe-no-sandbox", "--json", report, "--csv", table, env=env)
    lines = done.stdout.splitlines()
    assert lines and all(line.startswith("[UNSAFE: graded without the sandbox") for line in lines), lines
    assert "9 / 9" in lines[0]
    data = json.loads(report.read_text())[0]
    assert data["sandbox"].startswith("none") and any("UNSAFE" in flag for flag in data["flags"])
    assert table.read_text().splitlines()[1].endswith("none (--unsafe-no-sandbox)")


def test_malformed_submissions_are_refused_with_a_reason(tmp_path):
    """Read as hostile input, before any sandbox: each is an error for itself only."""
    def write(name, text):
        path = tmp_path / name
        path.write_text(text)
        return path

    nb = nbformat.read(source_path(CHAPTER), as_version=4)
    cases = {
        write("not_json.ipynb", "{ not json"): "could not read the notebook",
        write("deep.ipynb", "[" * 100_000 + "]" * 100_000): "could not read the notebook",
        write("no_cells.ipynb", json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": "x"})): "notebook",
    }
    for key, bad in (("nbgrader", "decode"), ("course", 7)):
        broken = nbformat.from_dict(json.loads(nbformat.writes(nb)))
        broken.cells[3].metadata[key] = bad
        cases[write(f"{key}.ipynb", json.dumps(broken))] = f"metadata.{key} is a"
    (tmp_path / "link.ipynb").symlink_to(source_path(CHAPTER))
    cases[tmp_path / "link.ipynb"] = "symbolic link"
    (tmp_path / "folder").symlink_to(source_path(CHAPTER).parent, target_is_directory=True)
    cases[tmp_path / "folder" / f"{CHAPTER}.ipynb"] = "course's own solution notebooks"
    os.mkfifo(tmp_path / "fifo.ipynb")
    cases[tmp_path / "fifo.ipynb"] = "not a regular file"
    for path, reason in cases.items():
        with pytest.raises(SubmissionError, match=reason):
            read_submission(path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    nbformat.write(nb, outside / f"{CHAPTER}.ipynb")
    (tmp_path / "subs").mkdir()
    (tmp_path / "subs" / "bob").symlink_to(outside, target_is_directory=True)
    with pytest.raises(SubmissionError, match="outside the submission folder"):
        read_submission(tmp_path / "subs" / "bob" / f"{CHAPTER}.ipynb", root=tmp_path / "subs")
    assert read_submission(outside / f"{CHAPTER}.ipynb", root=outside).cells


@needs_sandbox
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
    _, grades, _, _ = attack_grades
    safe = [a for a in ATTACKS if a.nbgrader_safe and a.chapter == CHAPTER]
    course = tmp_path / "course"
    course.mkdir()
    nbgrader(course, "generate_assignment", CHAPTER, "--force")
    for index, attack in enumerate(safe):
        path = write_attack(attack, tmp_path / "built")
        target = course / "submitted" / f"s{index:02d}" / CHAPTER / f"{CHAPTER}.ipynb"
        target.parent.mkdir(parents=True)
        target.write_bytes(path.read_bytes())
    # nbgrader exits 1 when a submission's cell times out (the infinite loop); the grades of
    # every submission are still recorded, and they are what this test compares
    nbgrader(course, "autograde", CHAPTER, "--Execute.timeout=20", check=False)
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


@needs_sandbox
@pytest.mark.parametrize("chapter", [c for c in __import__("autograder.notebooks", fromlist=["chapters"]).chapters() if c != CHAPTER])
def test_every_chapter_grades_full_for_the_solution_and_zero_for_the_stubs(chapter):
    full = grade_notebook(source_path(chapter), limits=LIMITS)
    assert full.score == full.max_score > 0, [(c.checkpoint, c.verdict, c.message[:300]) for c in full.checkpoints if c.verdict != "pass"]
    assert not full.flags, full.flags
    stub = grade_notebook(release_path(chapter), limits=LIMITS)
    assert stub.score == 0 and not stub.flags, stub.flags
