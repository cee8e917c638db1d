"""Each check records its verdict; ``python -m autograder progress`` reads them back."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import autograder
from autograder.notebooks import ROOT
from solutions import tokenizer


@pytest.fixture
def progress_file(tmp_path, monkeypatch):
    path = tmp_path / "progress.json"
    monkeypatch.setenv("COURSE_PROGRESS_FILE", str(path))
    return path


def progress_output(path):
    env = {**__import__("os").environ, "COURSE_PROGRESS_FILE": str(path)}
    done = subprocess.run([sys.executable, "-m", "autograder", "progress"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_checks_record_passes_and_failures(progress_file):
    autograder.check("01.merge", tokenizer.merge, quiet=True)
    autograder.check("01.decode", lambda ids, vocab: "")  # study mode: shown, not raised
    data = json.loads(progress_file.read_text())
    assert data["01.merge"]["passed"] is True and data["01.decode"]["passed"] is False
    out = progress_output(progress_file)
    assert "01_tokenizer" in out and " 1 / 5" in out
    assert "01.train_bpe: write it and run its checkpoint cell" in out


def test_hidden_checks_are_not_recorded(progress_file):
    autograder.check("01.merge", tokenizer.merge, hidden=True, quiet=True)
    assert not progress_file.exists()


def test_a_finished_chapter_says_done(progress_file):
    for checkpoint_id, fn in [("01.merge", tokenizer.merge), ("01.train_bpe", tokenizer.train_bpe),
                              ("01.encode", tokenizer.encode_ordinary), ("01.decode", tokenizer.decode),
                              ("01.special_tokens", tokenizer.encode)]:
        autograder.check(checkpoint_id, fn, quiet=True)
    out = progress_output(progress_file)
    assert "5 / 5" in out and "done ✓" in out


def test_an_unwritable_record_never_breaks_a_check(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("COURSE_PROGRESS_FILE", str(blocker / "progress.json"))
    autograder.check("01.merge", tokenizer.merge, quiet=True)
